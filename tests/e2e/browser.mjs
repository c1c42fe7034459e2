// Headless Chromium publishes a fake camera over WHIP and watches it over WHEP.
//
//   node tests/e2e/browser.mjs <base_url> <room> [--watch-first] [--timeout-ms N] [--screenshots DIR]
//
// Prints one JSON line {ok, reason, watch, publish, elapsed_ms, console, errors}
// and exits 0 when the viewer decoded video, 1 when it did not, 2 on bad usage.
//
// --watch-first opens the viewer before the publisher and waits until the viewer
// has been told 409 (nothing published yet) at least once, so the retry path runs.

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM_PATH = process.env.SFU_E2E_CHROMIUM ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
];
const POLL_INTERVAL_MS = 250;
const WAIT_FOR_409_MS = 10_000;
const CONSOLE_LINES_MAX = 200;

function parseArgs(argv) {
  const options = { timeoutMs: 30_000, watchFirst: false, screenshots: null, positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--watch-first') options.watchFirst = true;
    else if (arg === '--timeout-ms') options.timeoutMs = Number(argv[++i]);
    else if (arg === '--screenshots') options.screenshots = argv[++i];
    else if (arg.startsWith('--')) throw new Error(`unknown option ${arg}`);
    else options.positional.push(arg);
  }
  if (options.positional.length !== 2 || !Number.isFinite(options.timeoutMs)) {
    throw new Error('usage: node browser.mjs <base_url> <room> [--watch-first] [--timeout-ms N] [--screenshots DIR]');
  }
  [options.baseUrl, options.room] = options.positional;
  return options;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Collects one page's console output and uncaught errors, capped. */
class PageRecorder {
  constructor(name, page) {
    this.name = name;
    this.console = [];
    this.errors = [];
    page.on('console', (message) => this._push(this.console, `${message.type()}: ${message.text()}`));
    page.on('pageerror', (error) => this._push(this.errors, `pageerror: ${error.message}`));
    page.on('requestfailed', (request) => {
      this._push(this.errors, `requestfailed: ${request.method()} ${request.url()} ${request.failure()?.errorText ?? ''}`);
    });
    page.on('response', (response) => {
      const url = new URL(response.url());
      if (/^\/(whip|whep)\//.test(url.pathname)) {
        this._push(this.console, `http: ${response.request().method()} ${url.pathname} -> ${response.status()}`);
      }
    });
  }

  _push(list, line) {
    if (list.length < CONSOLE_LINES_MAX) list.push(line);
  }
}

async function pageStats(page) {
  try {
    return await page.evaluate(() => (window.sfuStats ? window.sfuStats() : null));
  } catch (error) {
    return { evaluateError: error.message };
  }
}

function pageUrl(baseUrl, file, room) {
  const url = new URL(file, baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`);
  url.searchParams.set('room', room);
  url.searchParams.set('autostart', '1');
  return url.href;
}

async function waitUntil(predicate, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() >= deadline) return null;
    await sleep(POLL_INTERVAL_MS);
  }
}

async function run(options) {
  const result = {
    ok: false,
    reason: '',
    room: options.room,
    watch_first: options.watchFirst,
    watch: null,
    publish: null,
    elapsed_ms: 0,
    console: {},
    errors: [],
  };
  const startedAt = Date.now();
  const userDataDir = mkdtempSync(join(tmpdir(), 'sfu-e2e-chromium-'));
  let context = null;
  const recorders = [];
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 800 },
    });
    await context.grantPermissions(['camera', 'microphone'], { origin: new URL(options.baseUrl).origin });

    const publishPage = await context.newPage();
    const watchPage = await context.newPage();
    recorders.push(new PageRecorder('publish', publishPage), new PageRecorder('watch', watchPage));
    const publishUrl = pageUrl(options.baseUrl, 'publish.html', options.room);
    const watchUrl = pageUrl(options.baseUrl, 'watch.html', options.room);

    if (options.watchFirst) {
      await watchPage.goto(watchUrl, { waitUntil: 'domcontentloaded' });
      const told409 = await waitUntil(async () => (await pageStats(watchPage))?.notPublishedRetries > 0, WAIT_FOR_409_MS);
      if (!told409) {
        result.watch = await pageStats(watchPage);
        result.reason = 'the viewer was never told 409 (nothing published yet) before the publisher started';
        return result;
      }
      await publishPage.goto(publishUrl, { waitUntil: 'domcontentloaded' });
    } else {
      await publishPage.goto(publishUrl, { waitUntil: 'domcontentloaded' });
      await watchPage.goto(watchUrl, { waitUntil: 'domcontentloaded' });
    }

    // Done when the viewer decodes video, or early when the publisher gave up.
    const outcome = await waitUntil(async () => {
      const watch = await pageStats(watchPage);
      if (watch && watch.framesDecoded > 0 && watch.frameWidth > 0 && watch.connectionState === 'connected') {
        return 'decoded';
      }
      const publish = await pageStats(publishPage);
      return publish?.status === 'error' ? 'publisher failed' : null;
    }, options.timeoutMs);
    result.publish = await pageStats(publishPage);
    result.watch = await pageStats(watchPage);
    result.ok = outcome === 'decoded';
    if (outcome === 'publisher failed') result.reason = `the publisher failed: ${result.publish.error}`;
    else if (!outcome) result.reason = `no decoded video on the viewer within ${options.timeoutMs} ms`;

    if (options.screenshots) {
      mkdirSync(options.screenshots, { recursive: true });
      await publishPage.screenshot({ path: join(options.screenshots, 'publish.png') });
      await watchPage.screenshot({ path: join(options.screenshots, 'watch.png') });
    }
    return result;
  } catch (error) {
    result.ok = false;
    result.reason = `${error.name}: ${error.message}`;
    return result;
  } finally {
    for (const recorder of recorders) {
      result.console[recorder.name] = recorder.console;
      result.errors.push(...recorder.errors.map((line) => `${recorder.name}: ${line}`));
    }
    result.elapsed_ms = Date.now() - startedAt;
    if (context) await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

let options;
try {
  options = parseArgs(process.argv.slice(2));
} catch (error) {
  console.error(error.message);
  process.exit(2);
}
const result = await run(options);
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(result.ok ? 0 : 1);
