// clients/js/pgsse-client.js in a real browser against a real `pgsse serve` that the Rust test
// kills and restarts on the same port: backoff, resume (Last-Event-ID / ?lastEventId=), dedupe,
// degradation on 401/404, and full cleanup on close.
//
// Env: GATEWAY_URL (http://127.0.0.1:PORT), TOKEN (alice's JWT; sent as the pgsse_token cookie),
// CLIENT_JS (path of pgsse-client.js). The test page is served at the gateway's origin by request
// interception, so the stream is same-origin as in an app behind one proxy.
// Steps: `insert <title>`, `kill` (SIGKILL the gateway, then insert offline-1 and offline-2 and mark
// live-1 read), `restart`, `bounce` (kill, insert bounce-1, restart at once), `kill-for-good`.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { main, waitFor, check, step, watchConsole, log, waitStreams } from './lib.mjs';

const base = process.env.GATEWAY_URL;
const token = process.env.TOKEN;
const clientJs = readFileSync(process.env.CLIENT_JS, 'utf8');
const transportsJs = readFileSync(new URL('./transports.js', `file://${process.env.CLIENT_JS}`), 'utf8');
const pageHtml = readFileSync(fileURLToPath(new URL('./client-page.html', import.meta.url)), 'utf8');
const cookie = { name: 'pgsse_token', value: token, url: base };

/** The reconnect delays the client announced, checked against 1s, 2s, 4s ... +-20%. */
function checkBackoff(statuses) {
  const waits = statuses.filter((s) => s.status === 'reconnecting' && s.attempt >= 2 && s.retryInMs !== null);
  check(waits.length > 0, 'the client backed off at least once by itself');
  for (const s of waits) {
    const nominal = Math.min(30000, 1000 * 2 ** (s.attempt - 1));
    check(
      s.retryInMs >= nominal * 0.8 && s.retryInMs <= Math.min(30000, nominal * 1.2),
      `attempt ${s.attempt} waits ${s.retryInMs} ms, expected ${nominal} ms +-20%`,
    );
  }
  return waits.map((s) => `${s.attempt}:${s.retryInMs}ms`).join(' ');
}

await main('client-resume', async (context, notes) => {
  await context.addCookies([cookie]);
  await context.route(`${base}/client-test/**`, (route) => {
    const path = new URL(route.request().url()).pathname;
    if (path.endsWith('/index.html')) return route.fulfill({ contentType: 'text/html', body: pageHtml });
    if (path.endsWith('/pgsse-client.js')) return route.fulfill({ contentType: 'text/javascript', body: clientJs });
    if (path.endsWith('/transports.js')) return route.fulfill({ contentType: 'text/javascript', body: transportsJs });
    return route.fulfill({ status: 404, body: 'not found' });
  });
  const page = await context.newPage();
  watchConsole(page, notes);
  await page.goto(`${base}/client-test/index.html`);
  await waitFor(page, 'the test page', () => window.ready === true);

  // Connect: a fresh start asks the app to refetch once.
  await page.evaluate(() => window.connect('a'));
  await waitFor(page, 'connected', () => T.a.connected.length === 1 && T.a.conn.status === 'open');
  const first = await page.evaluate(() => ({ c: T.a.connected[0], resyncs: T.a.resyncs }));
  check(first.c.resumed === false && first.c.userId === 'alice', `first connect: ${JSON.stringify(first.c)}`);
  check(JSON.stringify(first.resyncs) === '["connected"]', `refetch once on connect: ${first.resyncs}`);

  await step('insert live-1');
  await waitFor(page, 'live-1 arrives', () => titles('a').includes('created:live-1'));
  log('live: ok');

  // The gateway dies; rows are written meanwhile. The browser retries once by itself, then the
  // client backs off with its own EventSources.
  await step('kill');
  await waitFor(
    page,
    'the client backing off by itself',
    () => T.a.statuses.some((s) => s.status === 'reconnecting' && s.attempt >= 2),
    undefined,
    10000,
  );
  await step('restart');
  await waitFor(page, 'resumed after the restart', () => T.a.connected.length === 2, undefined, 20000);
  const after = await page.evaluate(() => ({
    c: T.a.connected[1],
    titles: titles('a'),
    reads: T.a.events.filter((e) => e.type === 'read').length,
    resyncs: T.a.resyncs.length,
    sources: sources.map((s) => s.url),
    stats: T.a.conn.stats,
    statuses: T.a.statuses,
    ids: T.a.ids,
    info: T.a.conn.info,
  }));
  check(after.c.resumed === true, `the new stream resumed: ${JSON.stringify(after.c)}`);
  check(after.titles.includes('created:offline-1') && after.titles.includes('created:offline-2'), `missed rows replayed: ${after.titles}`);
  check(after.reads === 1, `the missed read replayed once: ${after.reads}`);
  check(after.resyncs === 1, 'no refetch needed after a resume');
  check(after.stats.eventSources >= 2, 'the client opened a new EventSource itself');
  check(after.sources.slice(1).every((u) => /[?&]lastEventId=[0-9a-f]{8}\.\d+/.test(u)), `new EventSources carry lastEventId: ${after.sources}`);
  check(new Set(after.ids).size === after.ids.length, `no event handled twice: ${after.ids}`);
  check(after.info.status === 'open' && !after.info.degraded && after.info.reason === null, JSON.stringify(after.info));
  log(`kill/restart: ok (backoff ${checkBackoff(after.statuses)}; ${after.c.replayed} replayed)`);

  // A short outage: the browser's own reconnect (Last-Event-ID header) or ours, whichever wins.
  await step('bounce');
  await waitFor(page, 'resumed after a quick restart', () => T.a.connected.length === 3 && titles('a').includes('created:bounce-1'), undefined, 20000);
  check(await page.evaluate(() => T.a.connected[2].resumed), 'the quick restart resumed too');
  check(await page.evaluate(() => new Set(T.a.ids).size === T.a.ids.length), 'still no duplicates');
  log('bounce: ok');

  // close(): nothing left behind, in the page or on the server.
  const closed = await page.evaluate(() => {
    T.a.conn.close();
    return { timers: pendingTimers.size, open: openSources(), status: T.a.conn.status };
  });
  check(closed.timers === 0 && closed.open === 0 && closed.status === 'closed', `after close(): ${JSON.stringify(closed)}`);
  await waitStreams(base, 0, 'after close()');
  log('close: ok');

  // Degradation: 404 and 401 say so, in words, at once; the stream comes back by itself.
  await page.evaluate(() => window.connect('nf', '/api/notifications/nope'));
  await waitFor(page, '404 diagnosed', () => T.nf.conn.info.code === 'not_found' && T.nf.conn.info.degraded);
  check(/404/.test(await page.evaluate(() => T.nf.conn.info.reason)), 'the 404 reason names the status');
  await page.evaluate(() => T.nf.conn.close());
  await context.clearCookies();
  await page.evaluate(() => window.connect('ua'));
  await waitFor(page, '401 diagnosed', () => T.ua.conn.info.code === 'unauthorized' && T.ua.conn.info.degraded);
  const reason = await page.evaluate(() => T.ua.conn.info.reason);
  check(/401/.test(reason), `the 401 reason names the status: ${reason}`);
  await context.addCookies([cookie]);
  await waitFor(page, 'back once signed in again', () => T.ua.conn.status === 'open' && !T.ua.conn.info.degraded, undefined, 10000);
  await page.evaluate(() => T.ua.conn.close());
  log(`degraded: ok (${reason})`);

  // Closing the page closes its stream on the server.
  await page.evaluate(() => window.connect('b'));
  await waitFor(page, 'b open', () => T.b.conn.status === 'open');
  await waitStreams(base, 1, 'one open stream');
  await page.close();
  await waitStreams(base, 0, 'after closing the page');
  log('page close: ok');

  // close() during a backoff wait cancels the pending reconnect.
  const p2 = await context.newPage();
  watchConsole(p2, notes);
  await p2.goto(`${base}/client-test/index.html`);
  await waitFor(p2, 'the test page', () => window.ready === true);
  await p2.evaluate(() => window.connect('c'));
  await waitFor(p2, 'c open', () => T.c.conn.status === 'open');
  await step('kill-for-good');
  await waitFor(p2, 'c backing off', () => T.c.conn.info.attempt >= 2 && pendingTimers.size > 0, undefined, 10000);
  const sourcesBefore = await p2.evaluate(() => sources.length);
  const left = await p2.evaluate(async () => {
    T.c.conn.close();
    await new Promise((r) => setTimeout(r, 300));
    return { timers: pendingTimers.size, open: openSources(), sources: sources.length };
  });
  check(left.timers === 0 && left.open === 0 && left.sources === sourcesBefore, `close() while waiting: ${JSON.stringify(left)}`);
  log('close while backing off: ok');
});
