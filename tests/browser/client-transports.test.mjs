// Unit tests of clients/js/pgsse-client.js in node (node --test), for what both transports share:
// the dead-connection watchdog (timer, visibilitychange, online), AbortSignal, the fetch transport
// (Authorization header, Last-Event-ID header, stream parsing, resume, dedupe, backoff, statuses).
import { test, mock, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { connectNotifications, sseParser } from '../../clients/js/pgsse-client.js';
import { FakeEventSource } from './fakes.mjs';

const H = '0a1b2c3d';
const URL_ = 'http://gw.test/api/notifications/stream';
const flush = async () => {
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
};

/** A fetch whose every call returns a stream the test writes to. */
function fakeFetch() {
  const calls = [];
  const fn = async (url, init) => {
    let ctrl;
    const body = new ReadableStream({ start: (c) => (ctrl = c) });
    const call = {
      url,
      init,
      status: 200,
      aborted: false,
      write: (text) => ctrl.enqueue(new TextEncoder().encode(text)),
      end: () => ctrl.close(),
    };
    init.signal?.addEventListener('abort', () => {
      call.aborted = true;
      try {
        ctrl.error(new DOMException('aborted', 'AbortError'));
      } catch {}
    });
    calls.push(call);
    const status = fn.nextStatus ?? 200;
    fn.nextStatus = undefined;
    return {
      status,
      ok: status < 300,
      headers: { get: () => (status < 300 ? 'text/event-stream' : 'application/json') },
      body,
    };
  };
  fn.calls = calls;
  return fn;
}

const connectedBlock = (id, resumed = false, heartbeatMs = 1000) =>
  `retry: 1000\nevent: connected\nid: ${id}\ndata: ${JSON.stringify({ userId: 'alice', resumed, heartbeatMs })}\n\n`;

let doc;
beforeEach(() => {
  FakeEventSource.instances = [];
  doc = new EventTarget();
  doc.visibilityState = 'visible';
  globalThis.document = doc;
  // A window's `online` event: node's globalThis is no EventTarget.
  const win = new EventTarget();
  globalThis.addEventListener = win.addEventListener.bind(win);
  globalThis.removeEventListener = win.removeEventListener.bind(win);
  globalThis.dispatchEvent = win.dispatchEvent.bind(win);
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
});
afterEach(() => {
  mock.timers.reset();
  for (const k of ['document', 'addEventListener', 'removeEventListener', 'dispatchEvent']) delete globalThis[k];
});

function recordStatus(transport, extra = {}) {
  const statuses = [];
  const created = [];
  const resyncs = [];
  const fetch = fakeFetch();
  const conn = connectNotifications(
    URL_,
    {
      onStatus: (s, info) => statuses.push(info),
      onCreated: (row) => created.push(row.id),
      onResync: (why) => resyncs.push(why),
    },
    { EventSource: FakeEventSource, fetch, transport, ...extra },
  );
  return { conn, statuses, created, resyncs, fetch };
}

test('watchdog: a stream silent (no heartbeat) for 2x heartbeatMs is replaced, resuming', async () => {
  const { conn, statuses } = recordStatus('eventsource');
  const es = FakeEventSource.instances[0];
  es.emit('connected', { resumed: false, heartbeatMs: 1000 }, `${H}.100`);
  mock.timers.tick(1500);
  es.emit('heartbeat', { timestamp: 1 }, `${H}.101`);
  mock.timers.tick(1900);
  assert.equal(FakeEventSource.instances.length, 1, 'a heartbeat 1.5 s ago keeps it alive');
  assert.equal(conn.status, 'open');
  mock.timers.tick(200);
  assert.equal(es.readyState, FakeEventSource.CLOSED, 'the silent EventSource is closed');
  assert.equal(conn.status, 'reconnecting');
  assert.equal(statuses.at(-1).code, 'stale');
  assert.equal(conn.stats.stale, 1);
  mock.timers.tick(1200);
  await flush();
  assert.equal(FakeEventSource.instances.length, 2, 'a new connection');
  assert.equal(new URL(FakeEventSource.instances[1].url).searchParams.get('lastEventId'), `${H}.101`);
  conn.close();
});

test('watchdog: coming back visible (or online) after a sleep checks at once, before any timer', async () => {
  const { conn } = recordStatus('eventsource');
  const es = FakeEventSource.instances[0];
  es.emit('connected', { resumed: false, heartbeatMs: 1000 }, `${H}.100`);
  // The laptop slept: the clock moved, no timer ran.
  mock.timers.setTime(Date.now() + 60_000);
  doc.dispatchEvent(new Event('visibilitychange'));
  assert.equal(conn.status, 'reconnecting', 'found dead on visibilitychange');
  assert.equal(es.readyState, FakeEventSource.CLOSED);
  conn.close();

  const second = recordStatus('eventsource');
  const es2 = FakeEventSource.instances.at(-1);
  es2.emit('connected', { resumed: false, heartbeatMs: 1000 }, `${H}.100`);
  mock.timers.setTime(Date.now() + 60_000);
  globalThis.dispatchEvent(new Event('online'));
  assert.equal(second.conn.status, 'reconnecting', 'found dead on online');
  second.conn.close();
});

test('AbortSignal: aborting closes for good; an aborted signal never connects', async () => {
  const ctrl = new AbortController();
  const { conn } = recordStatus('eventsource', { signal: ctrl.signal });
  const es = FakeEventSource.instances[0];
  es.emit('connected', { resumed: false, heartbeatMs: 1000 }, `${H}.100`);
  ctrl.abort();
  assert.equal(conn.status, 'closed');
  assert.equal(es.readyState, FakeEventSource.CLOSED);
  mock.timers.tick(60_000);
  assert.equal(FakeEventSource.instances.length, 1, 'no reconnect, no watchdog');

  const { conn: never } = recordStatus('eventsource', { signal: AbortSignal.abort() });
  assert.equal(never.status, 'closed');
  assert.equal(FakeEventSource.instances.length, 1);
});

test('fetch transport: Authorization header, stream parsing, resume with Last-Event-ID, dedupe, backoff', async () => {
  let token = 't1';
  const { conn, statuses, created, resyncs, fetch } = recordStatus('fetch', {
    headers: async () => ({ Authorization: `Bearer ${token}` }),
  });
  await flush();
  assert.equal(fetch.calls.length, 1);
  const first = fetch.calls[0];
  assert.equal(first.init.headers.Authorization, 'Bearer t1');
  assert.equal(first.init.headers.Accept, 'text/event-stream');
  assert.equal(first.init.headers['Last-Event-ID'], undefined);
  // Blocks split anywhere, CRLF line ends, the retry field inside the connected block.
  const text = `${connectedBlock(`${H}.100`)}event: notification\r\nid: ${H}.100-7\r\ndata: {"type":"created",`;
  first.write(text.slice(0, 17));
  first.write(text.slice(17));
  first.write(`"notification":{"id":7}}\r\n\r\n: a comment\n\n`);
  await flush();
  assert.equal(conn.status, 'open');
  assert.deepEqual(resyncs, ['connected']);
  assert.deepEqual(created, [7]);
  assert.equal(conn.stats.eventSources, 0);

  // The server goes away: backoff as for EventSource, then a resume with the header.
  token = 't2';
  first.end();
  await flush();
  assert.equal(conn.status, 'reconnecting');
  const wait = statuses.at(-1);
  assert.equal(wait.attempt, 1);
  assert.ok(wait.retryInMs >= 800 && wait.retryInMs <= 1200, `first retry ${wait.retryInMs} ms`);
  mock.timers.tick(1200);
  await flush();
  assert.equal(fetch.calls.length, 2);
  const second = fetch.calls[1];
  assert.equal(second.init.headers['Last-Event-ID'], `${H}.100-7`);
  assert.equal(second.init.headers.Authorization, 'Bearer t2', 'headers are asked again for every connection');
  second.write(connectedBlock(`${H}.100`, true));
  second.write(`event: notification\nid: ${H}.100-7\ndata: {"type":"created","notification":{"id":7}}\n\n`);
  second.write(`event: notification\nid: ${H}.101-8\ndata: {"type":"created","notification":{"id":8}}\n\n`);
  await flush();
  assert.deepEqual(created, [7, 8], 'the replayed duplicate is dropped');
  assert.deepEqual(resyncs, ['connected'], 'a resume needs no refetch');
  assert.equal(conn.stats.duplicates, 1);

  // The watchdog works the same on this transport.
  mock.timers.tick(2100);
  await flush();
  assert.ok(second.aborted, 'the silent fetch is aborted');
  assert.equal(statuses.at(-1).code, 'stale');

  conn.close();
  await flush();
  assert.ok(fetch.calls.every((c) => c.aborted), 'nothing left open');
});

test('fetch transport: the status is read directly (401 degrades at once, no probe)', async () => {
  const fetch = fakeFetch();
  fetch.nextStatus = 401;
  const statuses = [];
  const conn = connectNotifications(URL_, { onStatus: (_s, i) => statuses.push(i) }, { transport: 'fetch', fetch });
  await flush();
  assert.equal(fetch.calls.length, 1, 'one request, no diagnostic probe');
  assert.equal(statuses.at(-1).code, 'unauthorized');
  assert.equal(statuses.at(-1).degraded, true);
  conn.close();
});

test('sseParser: line ends of every kind, split anywhere; comments and retry-only blocks dispatch nothing', () => {
  const out = [];
  const feed = sseParser((type, data, id) => out.push([type, data, id]));
  const stream = 'retry: 1000\n\n: hi\n\nid: 1\nevent: a\ndata: x\r\ndata:y\r\rdata: z\n\n';
  for (const ch of stream) feed(ch);
  assert.deepEqual(out, [
    ['a', 'x\ny', '1'],
    ['message', 'z', '1'],
  ]);
});
