// Unit tests of clients/js/pgsse-client.js in node (node --test), with a scripted EventSource and
// mocked timers: backoff, dedupe, resync, status and degradation, auth-expired, cleanup.
import { test, mock, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { connectNotifications, backoffDelay, logIdOf } from '../../clients/js/pgsse-client.js';
import { FakeEventSource } from './fakes.mjs';

const last = () => FakeEventSource.instances.at(-1);
/** The history part of the event ids the tests send (`pgsse.history()`: 8 lowercase hex digits). */
const H = '0a1b2c3d';
const flush = async () => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};
const answer = (status, type = 'application/json') => async () => ({
  status,
  ok: status >= 200 && status < 300,
  headers: { get: () => type },
});

/** A connection whose handlers record every call. */
function record(fetchImpl = answer(503), url = 'http://gw.test/api/notifications/stream') {
  const calls = [];
  const names = ['onResync', 'onCreated', 'onRead', 'onUpdated', 'onDeleted', 'onReset', 'onConnected', 'onAuthExpired', 'onStatus'];
  const handlers = Object.fromEntries(names.map((n) => [n, (...args) => calls.push([n, ...args])]));
  const conn = connectNotifications(url, handlers, { EventSource: FakeEventSource, fetch: fetchImpl });
  const of = (name) => calls.filter((c) => c[0] === name).map((c) => c.slice(1));
  return { conn, calls, of };
}

const connected = (resumed = false) => ({ userId: 'alice', connectionId: 1, resumed, replayed: 0, heartbeatMs: 30000 });

beforeEach(() => {
  FakeEventSource.instances = [];
  mock.timers.enable({ apis: ['setTimeout'] });
});
afterEach(() => mock.timers.reset());

test('backoff: 1s, 2s, 4s, 8s ... capped at 30s, jitter within 20% and never above the cap', () => {
  const mid = () => 0.5;
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 50].map((a) => backoffDelay(a, {}, mid)), [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  assert.equal(backoffDelay(3, {}, () => 0), 3200);
  assert.equal(backoffDelay(3, {}, () => 0.99999), 4800);
  assert.equal(backoffDelay(6, {}, () => 0.99999), 30000);
  assert.equal(backoffDelay(6, {}, () => 0), 24000);
  assert.equal(backoffDelay(1, { minDelayMs: 250 }, mid), 250);
});

test('log ids come from <history>.<horizon>-<logid> (or a legacy <horizon>-<logid>) only', () => {
  assert.equal(logIdOf('0a1b2c3d.812-77'), '77');
  assert.equal(logIdOf('0a1b2c3d.812'), null);
  assert.equal(logIdOf('812-77'), '77');
  assert.equal(logIdOf('812'), null);
  assert.equal(logIdOf(''), null);
  assert.equal(logIdOf(null), null);
  assert.equal(logIdOf('x-1'), null);
  assert.equal(logIdOf('0A1B2C3D.812-77'), null);
  assert.equal(logIdOf('a1b2c3d.812-77'), null);
  assert.equal(logIdOf('0a1b2c3d.x-1'), null);
});

test('events are dispatched by type, duplicates dropped, resync on fresh connect and reset only', () => {
  const { conn, of } = record();
  assert.equal(conn.status, 'connecting');
  const es = last();
  es.emit('connected', connected(false), `${H}.100`);
  assert.equal(conn.status, 'open');
  assert.deepEqual(of('onResync'), [['connected']]);
  es.emit('notification', { type: 'created', notification: { id: 1, title: 'a' } }, `${H}.100-7`);
  es.emit('notification', { type: 'created', notification: { id: 1, title: 'a' } }, `${H}.100-7`);
  es.emit('notification', { type: 'read', notificationId: 1 }, `${H}.101-8`);
  es.emit('notification', { type: 'updated', notification: { id: 1, title: 'b' } }, `${H}.101-9`);
  es.emit('notification', { type: 'deleted', notificationId: 1 }, `${H}.102-10`);
  assert.deepEqual(of('onCreated'), [[{ id: 1, title: 'a' }]]);
  assert.deepEqual(of('onRead'), [[1]]);
  assert.deepEqual(of('onUpdated'), [[{ id: 1, title: 'b' }]]);
  assert.deepEqual(of('onDeleted'), [[1]]);
  assert.equal(conn.stats.duplicates, 1);
  assert.equal(conn.lastEventId, `${H}.102-10`);
  es.emit('connected', connected(true), `${H}.102`);
  assert.equal(of('onResync').length, 1, 'a resume needs no refetch');
  es.emit('reset', { reason: 'expired', message: 'refetch' }, `${H}.140`);
  assert.deepEqual(of('onResync'), [['connected'], ['reset']]);
  assert.equal(of('onReset').length, 1);
  // After a failover or restore (a reset, the stream goes on in a new history) the database may
  // hand a log id out again: in another history it is another event.
  const H2 = '0a1b2c3e';
  es.emit('reset', { reason: 'history_changed', message: 'refetch' }, `${H2}.5`);
  es.emit('notification', { type: 'read', notificationId: 2 }, `${H2}.5-7`);
  assert.deepEqual(of('onRead'), [[1], [2]]);
  assert.equal(conn.stats.duplicates, 1);
  assert.equal(conn.lastEventId, `${H2}.5-7`);
  conn.close();
});

test('a drop: the browser retries once, then the client backs off and resumes with lastEventId', async () => {
  const { conn } = record();
  const es = last();
  es.emit('connected', connected(false), `${H}.100`);
  es.emit('notification', { type: 'created', notification: { id: 1 } }, `${H}.100-5`);
  es.fail(FakeEventSource.CONNECTING);
  assert.equal(conn.status, 'reconnecting');
  assert.equal(FakeEventSource.instances.length, 1, "the browser's own retry comes first");
  es.fail(FakeEventSource.CONNECTING);
  await flush();
  assert.equal(es.readyState, FakeEventSource.CLOSED, 'the client takes over');
  const { attempt, retryInMs, degraded, code } = conn.info;
  assert.equal(attempt, 2);
  assert.ok(retryInMs >= 1600 && retryInMs <= 2400, `${retryInMs}`);
  assert.equal(degraded, false);
  assert.equal(code, 'network');
  mock.timers.tick(retryInMs - 1);
  assert.equal(FakeEventSource.instances.length, 1);
  mock.timers.tick(1);
  assert.equal(FakeEventSource.instances.length, 2);
  assert.equal(new URL(last().url).searchParams.get('lastEventId'), `${H}.100-5`);
  last().emit('connected', connected(true), `${H}.100`);
  assert.equal(conn.status, 'open');
  assert.equal(conn.info.attempt, 0, 'a good connection resets the backoff');
  conn.close();
});

test('HTTP errors: the probe tells 503 (retry) from 401/404 (degrade at once); repeated failures degrade', async () => {
  let status = 503;
  const { conn } = record(async () => answer(status)());
  for (const expected of [1, 2, 3]) {
    last().fail(FakeEventSource.CLOSED);
    await flush();
    assert.equal(conn.info.code, 'unavailable');
    assert.match(conn.info.reason, /503/);
    assert.equal(conn.info.attempt, expected);
    assert.equal(conn.info.degraded, expected >= 3, `degraded after ${expected}`);
    mock.timers.tick(conn.info.retryInMs);
  }
  status = 401;
  last().fail(FakeEventSource.CLOSED);
  await flush();
  assert.equal(conn.info.code, 'unauthorized');
  assert.match(conn.info.reason, /401/);
  mock.timers.tick(conn.info.retryInMs);
  last().emit('connected', connected(true), `${H}.9`);
  assert.deepEqual([conn.info.degraded, conn.info.reason, conn.status], [false, null, 'open']);
  conn.close();

  for (const [st, type, code] of [[401, 'application/json', 'unauthorized'], [403, 'application/json', 'forbidden'], [404, 'text/html', 'not_found'], [200, 'text/html', 'not_a_stream']]) {
    const r = record(answer(st, type));
    last().fail(FakeEventSource.CLOSED);
    await flush();
    assert.equal(r.conn.info.code, code);
    assert.equal(r.conn.info.degraded, true, `${st} degrades at once`);
    r.conn.close();
  }
});

test('auth-expired closes the stream and reconnects at once, after the refresh handler', async () => {
  let refreshed = false;
  const conn = connectNotifications('http://gw.test/s', {
    onAuthExpired: async () => {
      await Promise.resolve();
      refreshed = true;
    },
  }, { EventSource: FakeEventSource });
  const es = last();
  es.emit('connected', connected(false), `${H}.5`);
  es.emit('auth-expired', { reason: 'expired', message: 'token expired' }, `${H}.6`);
  assert.equal(es.readyState, FakeEventSource.CLOSED);
  assert.equal(conn.info.code, 'auth_expired');
  await flush();
  assert.ok(refreshed);
  assert.equal(FakeEventSource.instances.length, 2);
  assert.equal(new URL(last().url).searchParams.get('lastEventId'), `${H}.6`);
  conn.close();
});

test('close() leaves nothing: no EventSource, no pending reconnect, no more handler calls', async () => {
  const { conn, calls } = record();
  last().fail(FakeEventSource.CLOSED);
  await flush();
  assert.ok(conn.info.retryInMs > 0, 'a reconnect is pending');
  conn.close();
  assert.equal(conn.status, 'closed');
  const n = calls.length;
  mock.timers.tick(120000);
  await flush();
  assert.equal(FakeEventSource.instances.length, 1, 'no reconnect after close');
  assert.ok(FakeEventSource.instances.every((s) => s.readyState === FakeEventSource.CLOSED));
  FakeEventSource.instances[0].emit('notification', { type: 'created', notification: { id: 1 } }, `${H}.1-1`);
  assert.equal(calls.length, n, 'no handler runs after close');
});

test('a url function is asked again for every new EventSource (fresh credentials)', async () => {
  let n = 0;
  const conn = connectNotifications(() => `http://gw.test/s?access_token=t${++n}`, {}, { EventSource: FakeEventSource, fetch: answer(503) });
  await flush();
  assert.equal(new URL(last().url).searchParams.get('access_token'), 't1');
  last().fail(FakeEventSource.CLOSED);
  await flush();
  mock.timers.tick(conn.info.retryInMs);
  await flush();
  assert.equal(new URL(last().url).searchParams.get('access_token'), 't2');
  conn.close();
});
