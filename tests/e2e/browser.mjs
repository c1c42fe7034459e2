// Headless Chromium publishes a fake camera over WHIP and watches it over WHEP.
//
//   node tests/e2e/browser.mjs <base_url> <room> [--watch-first] [--timeout-ms N] [--screenshots DIR]
//
// Prints one JSON line {ok, reason, watch, publish, elapsed_ms, console, errors}
// and exits 0 when the viewer decoded video, 1 when it did not, 2 on bad usage.
//
// --watch-first opens the viewer before the publisher and waits until the viewer
// has been told 409 (nothing published yet) at least once, so the retry path runs.
//
//   node tests/e2e/browser.mjs <base_url> --control
//
// Control mode, for tests that act on the server while pages play: one JSON
// command per line on stdin, one JSON answer per line on stdout
// ({"id", "ok", "value"} or {"id", "ok": false, "error"}), after a first
// {"event": "ready"}. Each page opened gets a browser context of its own (its
// own connections to the server). Commands ({"id", "op", ...}):
//   open    {name, page, params}  page (e.g. "watch.html") with ?autostart=1 and params
//   stats   {name}                the page's window.sfuStats()
//   sample  {name, intervalMs}    start recording in the page, every intervalMs:
//                                 {t, decoded, shown, moves, status, connection}, with
//                                 decoded = framesDecodedTotal (else framesDecoded);
//                                 and the time of every frame its <video> presents
//   samples {name}                {samples, presented} recorded so far
//   eval    {name, expression}    the value of a JS expression in the page
//   log     {name}                {console, errors} of the page
//   close   {name}
//   quit                          (closing stdin does the same)
// Times are milliseconds since the epoch (performance.timeOrigin + now), comparable
// with Python's time.time() * 1000.

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
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
// Control mode keeps several pages playing at once: none may be throttled as hidden.
const CONTROL_ARGS = [
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];
const POLL_INTERVAL_MS = 250;
const WAIT_FOR_409_MS = 10_000;
const CONSOLE_LINES_MAX = 200;

function parseArgs(argv) {
  const options = { timeoutMs: 30_000, watchFirst: false, screenshots: null, control: false, positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--control') options.control = true;
    else if (arg === '--watch-first') options.watchFirst = true;
    else if (arg === '--timeout-ms') options.timeoutMs = Number(argv[++i]);
    else if (arg === '--screenshots') options.screenshots = argv[++i];
    else if (arg.startsWith('--')) throw new Error(`unknown option ${arg}`);
    else options.positional.push(arg);
  }
  if (options.control && options.positional.length === 1) {
    [options.baseUrl] = options.positional;
    return options;
  }
  if (options.positional.length !== 2 || !Number.isFinite(options.timeoutMs)) {
    throw new Error('usage: node browser.mjs <base_url> <room> [--watch-first] [--timeout-ms N] [--screenshots DIR]\n'
      + '       node browser.mjs <base_url> --control');
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
      const line = `requestfailed: ${request.method()} ${request.url()} ${request.failure()?.errorText ?? ''}`;
      // A page closing a session's event stream (it moved, or stopped) aborts its GET.
      const closedStream = /\/sse\/[^/]+$/.test(new URL(request.url()).pathname)
        && request.failure()?.errorText === 'net::ERR_ABORTED';
      this._push(closedStream ? this.console : this.errors, line);
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

function pageUrl(baseUrl, file, room, params = {}) {
  const url = new URL(file, baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`);
  url.searchParams.set('room', room);
  url.searchParams.set('autostart', '1');
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, String(value));
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

// ---------------------------------------------------------------- control mode

/** Installed in a page by `sample`: what it decodes and presents, every intervalMs. */
function installSampler(intervalMs) {
  if (window.sfuSampler) return false;
  const origin = performance.timeOrigin;
  const sampler = { samples: [], presented: [] };
  window.sfuSampler = sampler;
  let busy = false;
  setInterval(async () => {
    if (busy || !window.sfuStats) return;
    busy = true;
    const t = origin + performance.now();
    try {
      const s = await window.sfuStats();
      sampler.samples.push({
        t,
        decoded: s.framesDecodedTotal ?? s.framesDecoded ?? 0,
        shown: s.framesShown ?? null,
        moves: s.moves ?? 0,
        status: s.status,
        connection: s.connectionState,
      });
    } finally {
      busy = false;
    }
  }, intervalMs);
  const video = document.querySelector('video');
  if (video && 'requestVideoFrameCallback' in video) {
    const tick = (now) => {
      sampler.presented.push(origin + now);
      video.requestVideoFrameCallback(tick);
    };
    video.requestVideoFrameCallback(tick);
  }
  return true;
}

async function control(options) {
  const emit = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);
  const browser = await chromium.launch({
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: [...CHROMIUM_ARGS, ...CONTROL_ARGS],
  });
  const origin = new URL(options.baseUrl).origin;
  const pages = new Map(); // name -> {context, page, recorder}
  const get = (name) => {
    const entry = pages.get(name);
    if (!entry) throw new Error(`no page named ${JSON.stringify(name)}`);
    return entry;
  };
  const ops = {
    async open({ name, page: file, params = {} }) {
      if (pages.has(name)) throw new Error(`a page named ${JSON.stringify(name)} is open already`);
      const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      await context.grantPermissions(['camera', 'microphone'], { origin });
      const page = await context.newPage();
      const recorder = new PageRecorder(name, page);
      pages.set(name, { context, page, recorder });
      const { room = '', ...rest } = params;
      await page.goto(pageUrl(options.baseUrl, file, room, rest), { waitUntil: 'domcontentloaded' });
      return page.url();
    },
    stats: async ({ name }) => pageStats(get(name).page),
    sample: async ({ name, intervalMs = 100 }) => get(name).page.evaluate(installSampler, intervalMs),
    samples: async ({ name }) => get(name).page.evaluate(() => window.sfuSampler ?? { samples: [], presented: [] }),
    eval: async ({ name, expression }) => get(name).page.evaluate(expression),
    log: async ({ name }) => ({ console: get(name).recorder.console, errors: get(name).recorder.errors }),
    async close({ name }) {
      const { context } = get(name);
      pages.delete(name);
      await context.close();
      return true;
    },
  };
  emit({ event: 'ready' });
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let command;
    try {
      command = JSON.parse(line);
    } catch (error) {
      emit({ id: null, ok: false, error: `not JSON: ${error.message}` });
      continue;
    }
    if (command.op === 'quit') {
      emit({ id: command.id, ok: true, value: null });
      break;
    }
    try {
      const op = ops[command.op];
      if (!op) throw new Error(`unknown op ${JSON.stringify(command.op)}`);
      emit({ id: command.id, ok: true, value: (await op(command)) ?? null });
    } catch (error) {
      emit({ id: command.id, ok: false, error: `${error.name}: ${error.message}` });
    }
  }
  for (const { context } of pages.values()) await context.close().catch(() => {});
  await browser.close().catch(() => {});
  return 0;
}

let options;
try {
  options = parseArgs(process.argv.slice(2));
} catch (error) {
  console.error(error.message);
  process.exit(2);
}
if (options.control) {
  process.exit(await control(options));
}
const result = await run(options);
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(result.ok ? 0 : 1);
