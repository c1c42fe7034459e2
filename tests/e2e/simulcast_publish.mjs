// Headless Chromium publishes three-layer VP8 simulcast over WHIP from a y4m "camera".
//
//   node tests/e2e/simulcast_publish.mjs <base_url> <room> --video-file F.y4m [--token T] [--max-ms N]
//        [--kbps L,M,H]   (the layers' ceilings, publish.html's ?kbps=)
//
// Opens publish.html?simulcast=1 and prints one JSON line per event on stdout:
//   {"event":"stats","t":<CLOCK_MONOTONIC s>,"publish":{...,"layers":[{rid,frameWidth,kbps,...}]}}
// every STATS_INTERVAL_MS, then {"event":"end",...} when stdin closes (the test is done),
// --max-ms passes, or the publisher fails. Exits 0 after a clean stop, 1 on failure,
// 2 on bad usage. The time `t` is comparable with Python's time.monotonic().

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM_PATH = process.env.SFU_E2E_CHROMIUM ?? '/usr/bin/chromium';
const STATS_INTERVAL_MS = 500;

function parseArgs(argv) {
  const options = { token: '', videoFile: '', maxMs: 120_000, positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--token') options.token = argv[++i];
    else if (arg === '--video-file') options.videoFile = argv[++i];
    else if (arg === '--max-ms') options.maxMs = Number(argv[++i]);
    else if (arg === '--kbps') options.kbps = argv[++i];
    else if (arg.startsWith('--')) throw new Error(`unknown option ${arg}`);
    else options.positional.push(arg);
  }
  if (options.positional.length !== 2 || !options.videoFile || !Number.isFinite(options.maxMs)) {
    throw new Error('usage: node simulcast_publish.mjs <base_url> <room> --video-file F.y4m [--token T] [--max-ms N]');
  }
  [options.baseUrl, options.room] = options.positional;
  return options;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const monotonicS = () => Number(process.hrtime.bigint()) / 1e9; // CLOCK_MONOTONIC, as Python's
const emit = (event) => process.stdout.write(`${JSON.stringify({ t: monotonicS(), ...event })}\n`);

/** Adds kbit/s per layer from successive byte counters. */
class LayerRates {
  constructor() {
    this.last = new Map();
  }

  annotate(layers, atS) {
    for (const layer of layers) {
      const previous = this.last.get(layer.rid);
      layer.kbps = previous && atS > previous.atS ? ((layer.bytesSent - previous.bytes) * 8) / 1000 / (atS - previous.atS) : 0;
      this.last.set(layer.rid, { bytes: layer.bytesSent, atS });
    }
  }
}

async function run(options) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'sfu-e2e-simulcast-'));
  let context = null;
  const errors = [];
  let stdinClosed = false;
  process.stdin.on('end', () => { stdinClosed = true; });
  process.stdin.on('close', () => { stdinClosed = true; });
  process.stdin.resume();
  const origin = new URL(options.baseUrl).origin;
  // getUserMedia needs a secure context: loopback is one, a test's veth address is not.
  const loopback = ['localhost', '127.0.0.1', '[::1]'].includes(new URL(origin).hostname);
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--use-fake-device-for-media-stream',
        '--use-fake-ui-for-media-stream',
        `--use-file-for-fake-video-capture=${options.videoFile}`,
        ...(loopback ? [] : [`--unsafely-treat-insecure-origin-as-secure=${origin}`]),
      ],
    });
    await context.grantPermissions(['camera', 'microphone'], { origin });
    const page = await context.newPage();
    page.on('pageerror', (error) => errors.push(`pageerror: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error') errors.push(`console: ${message.text()}`);
    });
    const url = new URL('publish.html', options.baseUrl.endsWith('/') ? options.baseUrl : `${options.baseUrl}/`);
    url.searchParams.set('room', options.room);
    if (options.token) url.searchParams.set('token', options.token);
    url.searchParams.set('simulcast', '1');
    if (options.kbps) url.searchParams.set('kbps', options.kbps);
    url.searchParams.set('autostart', '1');
    await page.goto(url.href, { waitUntil: 'domcontentloaded' });

    const rates = new LayerRates();
    const deadline = Date.now() + options.maxMs;
    while (!stdinClosed && Date.now() < deadline) {
      const publish = await page.evaluate(() => (window.sfuStats ? window.sfuStats() : null));
      if (publish) rates.annotate(publish.layers ?? [], monotonicS());
      emit({ event: 'stats', publish, errors: errors.splice(0) });
      if (publish?.status === 'error') {
        emit({ event: 'end', ok: false, reason: `the publisher failed: ${publish.error}` });
        return 1;
      }
      await sleep(STATS_INTERVAL_MS);
    }
    await page.evaluate(() => document.getElementById('stop').click()); // DELETE the WHIP resource
    await sleep(300);
    emit({ event: 'end', ok: true, reason: stdinClosed ? 'stdin closed' : `--max-ms ${options.maxMs} passed` });
    return 0;
  } catch (error) {
    emit({ event: 'end', ok: false, reason: `${error.name}: ${error.message}`, errors });
    return 1;
  } finally {
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
process.exit(await run(options));
