// Shared by the browser scripts that tests/browser.rs runs: launching Debian's chromium through
// playwright-core, waiting on the page, and the step protocol with the Rust test.
//
// Step protocol: a script prints `STEP <name>` on stdout and waits for one line on stdin; the Rust
// test does what the step names (insert rows, kill or restart the gateway) and answers `ok`.
// The script ends with `PASS` and exit 0, or `FAIL: <why>` and exit 1.

import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export function chromiumPath() {
  const p = process.env.CHROMIUM || '/usr/bin/chromium';
  if (!existsSync(p)) throw new Error(`chromium not found at ${p}: run ./scripts/test (it installs Debian's chromium)`);
  return p;
}

/** A persistent context in a fresh profile dir; `close()` removes the dir. */
export async function launch() {
  const dir = mkdtempSync(join(tmpdir(), 'pgsse-chromium-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: chromiumPath(),
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 30000,
  });
  return {
    context,
    async close() {
      await context.close().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Collects a page's console errors and failures, for the failure report. */
export function watchConsole(page, sink) {
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') sink.push(`[console.${m.type()}] ${m.text()}`);
  });
  page.on('pageerror', (e) => sink.push(`[pageerror] ${e.message}`));
}

/** Waits until `fn(arg)` is truthy in the page; fails with `what` after `timeout` ms. */
export async function waitFor(page, what, fn, arg, timeout = 15000) {
  try {
    return await page.waitForFunction(fn, arg, { timeout, polling: 50 });
  } catch (err) {
    throw new Error(`timed out after ${timeout} ms waiting for: ${what} (${err.message.split('\n')[0]})`);
  }
}

export function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${message}`);
}

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Asks the Rust test to do `name`; resolves once it answered. */
export async function step(name) {
  process.stdout.write(`STEP ${name}\n`);
  const { value, done } = await stdinLines.next();
  if (done || value.trim() !== 'ok') throw new Error(`step ${name}: the test answered ${done ? 'EOF' : value}`);
}

/** Open streams of the gateway at `base`, from its /readyz. */
export async function openStreams(base) {
  const res = await fetch(`${base}/readyz`);
  return (await res.json()).connections;
}

/** Waits until the gateway at `base` holds `n` open streams; fails naming `what`. */
export async function waitStreams(base, n, what, timeout = 15000) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await openStreams(base).catch(() => undefined);
    if (last === n) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what}: /readyz connections stayed ${last}, expected ${n}`);
}

export function log(...args) {
  process.stdout.write(`${args.join(' ')}\n`);
}

/** Runs the scenario with an overall deadline; prints PASS or FAIL and exits accordingly. */
export async function main(name, scenario, deadlineMs = 90000) {
  const notes = [];
  const browser = await launch();
  const deadline = setTimeout(() => {
    process.stdout.write(`FAIL: ${name} did not finish within ${deadlineMs} ms\n${notes.join('\n')}\n`);
    process.exit(1);
  }, deadlineMs);
  let code = 0;
  try {
    await scenario(browser.context, notes);
    process.stdout.write('PASS\n');
  } catch (err) {
    process.stdout.write(`FAIL: ${err.stack || err}\n${notes.join('\n')}\n`);
    code = 1;
  } finally {
    clearTimeout(deadline);
    await browser.close();
  }
  process.exit(code);
}
