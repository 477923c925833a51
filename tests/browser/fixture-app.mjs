// examples/react-app (built from the packed pgsse-client) in Chromium against a real `pgsse demo`
// that the Rust test (tests/fixture_app.rs) SIGKILLs and restarts with the same --state-dir.
//
// Env: GATEWAY_URL (http://127.0.0.1:PORT), APP_DIST (the app's `vite build` output). The app is
// served at the gateway's origin (/app/...) by request interception, as one proxy would.
// Steps: `insert <title>` (one row for alice, by SQL), `insert-many <n>` (n rows in ONE statement),
// `update <title> <new title>`, `kill` (SIGKILL the demo, then insert `offline-1` by SQL),
// `restart`.
import { readFileSync } from 'node:fs';
import { join, normalize } from 'node:path';
import { main, waitFor, check, step, watchConsole, log, waitStreams } from './lib.mjs';

const base = process.env.GATEWAY_URL;
const dist = process.env.APP_DIST;
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml' };

await main('fixture-app', async (context, notes) => {
  // Every EventSource the page makes, and how many list/count fetches it sends.
  await context.addInitScript(() => {
    const Native = window.EventSource;
    window.__eventSources = [];
    window.EventSource = class extends Native {
      constructor(...args) {
        super(...args);
        window.__eventSources.push(this);
      }
    };
  });
  await context.route(`${base}/app/**`, (route) => {
    const rel = normalize(new URL(route.request().url()).pathname.slice('/app/'.length) || 'index.html');
    if (rel.startsWith('..')) return route.fulfill({ status: 404, body: 'not found' });
    try {
      const body = readFileSync(join(dist, rel));
      const ext = rel.slice(rel.lastIndexOf('.'));
      return route.fulfill({ contentType: TYPES[ext] ?? 'application/octet-stream', body });
    } catch {
      return route.fulfill({ status: 404, body: 'not found' });
    }
  });
  const fetches = { list: 0, count: 0 };
  const page = await context.newPage();
  watchConsole(page, notes);
  page.on('request', (r) => {
    const path = new URL(r.url()).pathname;
    if (r.method() !== 'GET') return;
    if (path === '/demo/api/notifications') fetches.list += 1;
    if (path === '/demo/api/unread-count') fetches.count += 1;
  });
  const open = () => page.evaluate(() => window.__eventSources.filter((e) => e.readyState !== 2).length);
  const created = () => page.evaluate(() => window.__eventSources.length);
  const both = (what, fn, arg) => waitFor(page, what, fn, arg);
  const inList = (title) => `[data-testid=list] li:has(.title:text-is("${title}"))`;

  await page.goto(`${base}/app/index.html`);
  await both('the stream is open', () => document.querySelector('[data-testid=status]')?.dataset.status === 'open');
  await both('both components loaded', () => document.querySelector('[data-testid=bell]') && document.querySelector('[data-testid=list]'));
  check(fetches.list === 1, `one list fetch at load, for two components (got ${fetches.list})`);
  check(fetches.count === 1, `one unread-count fetch at load (got ${fetches.count})`);
  check((await created()) === 1 && (await open()) === 1, 'exactly one EventSource for the page');
  await waitStreams(base, 1, 'one stream for the page');

  // created: both components.
  await step('insert first');
  await both('created: in the list', (t) => [...document.querySelectorAll('[data-testid=list] .title')].some((e) => e.textContent === t), 'first');
  await both('created: newest in the bell, count 1', () => {
    const b = document.querySelector('[data-testid=bell]');
    return b?.dataset.count === '1' && document.querySelector('[data-testid=bell-newest]')?.textContent === 'first';
  });
  const age = await page.getAttribute('[data-testid=bell-newest]', 'data-age-ms');
  check(age !== '' && Number.isFinite(Number(age)), `a live row's createdAt is a Date (age ${age} ms)`);

  // updated: both.
  await step('update first renamed');
  await both('updated: in the list', () => [...document.querySelectorAll('[data-testid=list] .title')].some((e) => e.textContent === 'renamed'));
  await both('updated: in the bell', () => document.querySelector('[data-testid=bell-newest]')?.textContent === 'renamed');

  // read (by the list's button: a string id in the cache, a number on the stream): both.
  await page.click(`${inList('renamed')} button[data-action=read]`);
  await both('read: in the list', () => document.querySelector('[data-testid=list] li')?.dataset.read === 'true');
  await both('read: bell count 0', () => document.querySelector('[data-testid=bell]')?.dataset.count === '0');

  // deleted: both.
  await step('insert second');
  await both('second arrives', () => document.querySelector('[data-testid=bell-newest]')?.textContent === 'second');
  await page.click(`${inList('second')} button[data-action=delete]`);
  await both('deleted: gone from the list', () => ![...document.querySelectorAll('[data-testid=list] .title')].some((e) => e.textContent === 'second'));
  await both('deleted: bell shows the previous row, count 0', () => {
    const b = document.querySelector('[data-testid=bell]');
    return b?.dataset.count === '0' && document.querySelector('[data-testid=bell-newest]')?.textContent === 'renamed';
  });

  // Many events from one statement each: one render burst, no refetch per event.
  const N = 200;
  await step(`insert-many ${N}`);
  await both(`${N} created: bell count`, (n) => document.querySelector('[data-testid=bell]')?.dataset.count === String(n), N);
  await both(`${N} created: list`, (n) => document.querySelectorAll('[data-testid=list] li[data-read=false]').length === n, N);
  const before = await page.evaluate(() => ({ ...window.__renders }));
  await page.click('[data-testid=mark-all]');
  await both('markAllAsRead: bell 0', () => document.querySelector('[data-testid=bell]')?.dataset.count === '0');
  await both('markAllAsRead: list all read', () => document.querySelectorAll('[data-testid=list] li[data-read=false]').length === 0);
  await page.waitForTimeout(300);
  const after = await page.evaluate(() => ({ ...window.__renders }));
  const burst = { bell: after.bell - before.bell, list: after.list - before.list };
  log(`markAllAsRead of ${N} rows: bell rendered ${burst.bell}x, list ${burst.list}x`);
  check(burst.bell <= 12 && burst.list <= 12, `one render burst for ${N} read events, not one per event: ${JSON.stringify(burst)}`);
  await page.click('[data-testid=delete-read]');
  await both('deleteAllRead: list empty', () => document.querySelectorAll('[data-testid=list] li').length === 0);
  await both('deleteAllRead: bell empty', () => document.querySelector('[data-testid=bell-newest]')?.textContent === '');
  check(fetches.list === 1, `no list refetch for any event (list fetches: ${fetches.list})`);
  log(`fetches after all changes: list ${fetches.list}, unread-count ${fetches.count}`);

  // The gateway is SIGKILLed; a row is written meanwhile; it comes back with the same state dir.
  await step('kill');
  await both('reconnecting', () => document.querySelector('[data-testid=status]')?.dataset.status !== 'open');
  await step('restart');
  await both('open again', () => document.querySelector('[data-testid=status]')?.dataset.status === 'open', undefined);
  await both('offline-1 arrives in the list', () => [...document.querySelectorAll('[data-testid=list] .title')].some((e) => e.textContent === 'offline-1'));
  await both('offline-1 in the bell', () => document.querySelector('[data-testid=bell-newest]')?.textContent === 'offline-1');
  await step('insert after-restart');
  await both('live again', () => document.querySelector('[data-testid=bell-newest]')?.textContent === 'after-restart');
  check(fetches.list === 1, `resumed, not refetched (list fetches: ${fetches.list})`);
  check((await open()) === 1, `one open EventSource after the reconnect (created in all: ${await created()})`);
  await waitStreams(base, 1, 'one stream after the reconnect');

  await page.close();
  await waitStreams(base, 0, 'no stream left once the page closed');
  log(`EventSources created: 1 before the kill; list fetches ${fetches.list}`);

  // `liveUpdates: 'refetch'`: a batch of events is one refetch, not one per event.
  const refetching = await context.newPage();
  watchConsole(refetching, notes);
  let lists = 0;
  refetching.on('request', (r) => {
    if (r.method() === 'GET' && new URL(r.url()).pathname === '/demo/api/notifications') lists += 1;
  });
  await refetching.goto(`${base}/app/index.html?live=refetch`);
  await waitFor(refetching, 'the refetching page is live', () => document.querySelector('[data-testid=status]')?.dataset.status === 'open');
  await waitFor(refetching, 'its list loaded', () => document.querySelector('[data-testid=list]'));
  check(lists === 1, `one list fetch at load (got ${lists})`);
  const unread = Number(await refetching.getAttribute('[data-testid=bell]', 'data-count'));
  await step('insert-many 50');
  await waitFor(refetching, '50 more unread, by refetching', (n) => document.querySelector('[data-testid=bell]')?.dataset.count === String(n), unread + 50);
  await waitFor(refetching, '50 more rows listed', (n) => document.querySelectorAll('[data-testid=list] li[data-read=false]').length === n, unread + 50);
  await refetching.waitForTimeout(300);
  log(`refetch mode: 50 created events, ${lists - 1} list refetch(es)`);
  check(lists >= 2 && lists <= 4, `50 events refetched in a batch or two, not one per event (list fetches: ${lists})`);
  await refetching.close();
  await waitStreams(base, 0, 'no stream left once the second page closed');
});
