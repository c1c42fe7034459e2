// Headless Chromium watches a room with watch.html and reports what it decodes.
//
//   node tests/e2e/twcc_viewer.mjs <watch_url> [--interval-ms N] [--max-ms N]
//
// Opens <watch_url> (watch.html?room=…&token=…&autostart=1) and prints one JSON line
// per sample on stdout: {"t": <CLOCK_MONOTONIC s>, "stats": window.sfuStats()}, every
// --interval-ms (250), until stdin closes or --max-ms (120000) passes; then
// {"event": "end", "console": [...], "errors": [...]}. The page needs no camera, so
// any origin works (a test namespace's plain-http address too). Exits 0, or 2 on bad
// usage. `t` is comparable with Python's time.monotonic().

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM_PATH = process.env.SFU_E2E_CHROMIUM ?? '/usr/bin/chromium';
const CONSOLE_LINES_MAX = 200;

function parseArgs(argv) {
  const options = { intervalMs: 250, maxMs: 120_000, positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--interval-ms') options.intervalMs = Number(argv[++i]);
    else if (arg === '--max-ms') options.maxMs = Number(argv[++i]);
    else if (arg.startsWith('--')) throw new Error(`unknown option ${arg}`);
    else options.positional.push(arg);
  }
  if (options.positional.length !== 1 || !Number.isFinite(options.intervalMs) || !Number.isFinite(options.maxMs)) {
    throw new Error('usage: node twcc_viewer.mjs <watch_url> [--interval-ms N] [--max-ms N]');
  }
  [options.url] = options.positional;
  return options;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const monotonicS = () => Number(process.hrtime.bigint()) / 1e9;
const emit = (event) => process.stdout.write(`${JSON.stringify({ t: monotonicS(), ...event })}\n`);

async function run(options) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'sfu-e2e-twcc-'));
  let stdinClosed = false;
  process.stdin.on('end', () => { stdinClosed = true; });
  process.stdin.on('close', () => { stdinClosed = true; });
  process.stdin.resume();
  const consoleLines = [];
  const errors = [];
  let context = null;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      viewport: { width: 1600, height: 1000 }, // a box the top layer (1280x720) fills
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required',
        '--disable-background-timer-throttling', '--disable-renderer-backgrounding'],
    });
    const page = context.pages()[0] ?? await context.newPage();
    page.on('console', (message) => {
      if (consoleLines.length < CONSOLE_LINES_MAX) consoleLines.push(`${message.type()}: ${message.text()}`);
    });
    page.on('pageerror', (error) => errors.push(String(error)));
    await page.goto(options.url, { waitUntil: 'domcontentloaded' });
    const started = Date.now();
    while (!stdinClosed && Date.now() - started < options.maxMs) {
      const stats = await page.evaluate(() => (window.sfuStats ? window.sfuStats() : null)).catch(() => null);
      emit({ stats });
      await sleep(options.intervalMs);
    }
  } catch (error) {
    errors.push(`${error.name}: ${error.message}`);
  } finally {
    emit({ event: 'end', console: consoleLines, errors });
    if (context) await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  }
  return 0;
}

let options;
try {
  options = parseArgs(process.argv.slice(2));
} catch (error) {
  console.error(error.message);
  process.exit(2);
}
process.exit(await run(options));
