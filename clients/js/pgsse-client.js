// pgsse browser client: live notifications over the native EventSource. No build step, no
// dependencies; types in pgsse-client.d.ts. See README.md beside this file.
//
//   import { connectNotifications } from './pgsse-client.js';
//   const conn = connectNotifications('/api/notifications/stream', {
//     onResync: () => refetchEverything(),        // first connect and `reset`: the cache may be stale
//     onCreated: (n) => addToCache(n),
//     onRead: (id) => markReadInCache(id),
//     onUpdated: (n) => replaceInCache(n),
//     onDeleted: (id) => removeFromCache(id),
//     onStatus: (status, info) => showStatus(status, info.reason),
//   });
//   conn.close();
//
// Reconnection: after a network drop the browser's EventSource retries once by itself (sending
// Last-Event-ID). Any further failure, and any HTTP error status (after which EventSource gives up
// for good), makes this client close it and open a new one after 1s, 2s, 4s, 8s ... (capped at
// 30s, with jitter), passing the last id as the `lastEventId` query parameter. A successful
// connection resets the backoff. When the stream cannot be had (401/403/404, not an event stream,
// or failing repeatedly) `info.degraded` is true and `info.reason` says why, in words: the app
// should then refetch on an interval until the stream is back.

/** @type {Required<Omit<import('./pgsse-client').ConnectOptions, 'EventSource' | 'fetch' | 'lastEventId'>>} */
export const DEFAULT_OPTIONS = Object.freeze({
  withCredentials: false,
  minDelayMs: 1000,
  maxDelayMs: 30000,
  jitter: 0.2,
  degradeAfter: 3,
  probeTimeoutMs: 5000,
  dedupeWindow: 1000,
});

/**
 * Delay before reconnect attempt `attempt` (1-based): minDelayMs * 2^(attempt-1), capped at
 * maxDelayMs, times a random factor in [1 - jitter, 1 + jitter], never above maxDelayMs.
 * @param {number} attempt
 * @param {{minDelayMs?: number, maxDelayMs?: number, jitter?: number}} [options]
 * @param {() => number} [random]
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
  const { minDelayMs, maxDelayMs, jitter } = { ...DEFAULT_OPTIONS, ...options };
  const exp = Math.min(Math.max(0, attempt - 1), 30);
  const base = Math.min(maxDelayMs, minDelayMs * 2 ** exp);
  const factor = 1 + jitter * (2 * random() - 1);
  return Math.max(0, Math.round(Math.min(maxDelayMs, base * factor)));
}

/** An event id: `<history>.<horizon>[-<logid>]` (history: 8 lowercase hex digits), or a
 * `<horizon>[-<logid>]` of a gateway before histories. */
const EVENT_ID = /^(?:([0-9a-f]{8})\.)?\d+-(\d+)$/;

/**
 * The log id of an event id `<history>.<horizon>-<logid>` (or `<horizon>-<logid>`), or null for
 * positions without one (`connected`, `heartbeat`, `reset`).
 * @param {string | null | undefined} id
 */
export function logIdOf(id) {
  const m = EVENT_ID.exec(id ?? '');
  return m ? m[2] : null;
}

/**
 * What identifies an event for dedupe: its log id within its history (after a failover or a
 * restore the database may hand the same log ids out again, to other events), or null.
 * @param {string | null | undefined} id
 */
function eventKeyOf(id) {
  const m = EVENT_ID.exec(id ?? '');
  return m ? `${m[1] ?? ''}.${m[2]}` : null;
}

const REASONS = {
  unauthorized: 'Not signed in, or the session expired (HTTP 401)',
  forbidden: 'Not allowed to receive notifications (HTTP 403)',
  not_found: 'The notification stream was not found at this URL (HTTP 404)',
  not_a_stream: 'The URL answered, but not with an event stream',
  network: 'Cannot reach the notification service',
  lost: 'Connection lost; reconnecting',
  auth_expired: 'Credentials expired; reconnecting with fresh ones',
  bad_url: 'Could not get the stream URL',
};

/** Codes after which retrying soon is pointless: the app should poll at once. */
const HOPELESS = new Set(['unauthorized', 'forbidden', 'not_found', 'not_a_stream']);

/**
 * Opens the notification stream and keeps it open until `close()`.
 * @param {string | URL | (() => string | URL | Promise<string | URL>)} url
 * @param {import('./pgsse-client').Handlers} [handlers]
 * @param {import('./pgsse-client').ConnectOptions} [options]
 * @returns {import('./pgsse-client').Connection}
 */
export function connectNotifications(url, handlers = {}, options = {}) {
  const opts = { ...DEFAULT_OPTIONS, ...options };
  const ES = opts.EventSource ?? globalThis.EventSource;
  const doFetch = opts.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : null);
  if (!ES) throw new Error('pgsse-client: EventSource is not available in this environment');

  /** @type {EventSource | null} */
  let es = null;
  /** @type {ReturnType<typeof setTimeout> | null} */
  let timer = null;
  /** @type {AbortController | null} */
  let probe = null;
  let closed = false;
  let failures = 0; // consecutive failed attempts since the last successful connection
  let lastEventId = opts.lastEventId ?? null;
  const seen = new Set();
  const seenOrder = [];
  const stats = { eventSources: 0, connects: 0, resumes: 0, duplicates: 0 };
  /** @type {import('./pgsse-client').ConnectionInfo} */
  let info = { status: 'connecting', reason: null, code: null, degraded: false, attempt: 0, retryInMs: null, lastEventId };

  const call = (name, ...args) => {
    const fn = handlers[name];
    if (typeof fn !== 'function' || (closed && name !== 'onStatus')) return undefined;
    try {
      return fn(...args);
    } catch (err) {
      console.error(`pgsse-client: ${name} handler threw`, err);
      return undefined;
    }
  };

  const setStatus = (status, extra = {}) => {
    info = Object.freeze({ ...info, status, ...extra, lastEventId });
    call('onStatus', status, info);
  };

  const track = (/** @type {MessageEvent} */ e) => {
    if (e.lastEventId) lastEventId = e.lastEventId;
  };

  const parse = (/** @type {MessageEvent} */ e) => {
    try {
      return JSON.parse(e.data);
    } catch {
      console.warn('pgsse-client: ignoring an event whose data is not JSON', e.type);
      return null;
    }
  };

  /** True the first time an event is seen; remembers the last `dedupeWindow` of them. */
  const firstSight = (key) => {
    if (seen.has(key)) return false;
    seen.add(key);
    seenOrder.push(key);
    if (seenOrder.length > opts.dedupeWindow) seen.delete(seenOrder.shift());
    return true;
  };

  const listeners = {
    connected(e) {
      track(e);
      const data = parse(e) ?? {};
      failures = 0;
      stats.connects += 1;
      if (data.resumed) stats.resumes += 1;
      setStatus('open', { reason: null, code: null, degraded: false, attempt: 0, retryInMs: null });
      call('onConnected', data);
      // A fresh start (not a resume): whatever the app fetched before may already be stale.
      if (!data.resumed) call('onResync', 'connected');
    },
    notification(e) {
      track(e);
      const key = eventKeyOf(e.lastEventId);
      if (key !== null && !firstSight(key)) {
        stats.duplicates += 1;
        return;
      }
      const data = parse(e);
      if (!data || typeof data.type !== 'string') return;
      call('onNotification', data, e.lastEventId);
      switch (data.type) {
        case 'created':
          call('onCreated', data.notification);
          break;
        case 'read':
          call('onRead', data.notificationId);
          break;
        case 'updated':
          call('onUpdated', data.notification);
          break;
        case 'deleted':
          call('onDeleted', data.notificationId);
          break;
        default:
          break;
      }
    },
    heartbeat(e) {
      track(e);
      call('onHeartbeat', parse(e) ?? {});
    },
    reset(e) {
      track(e);
      call('onReset', parse(e) ?? {});
      call('onResync', 'reset');
    },
    'auth-expired'(e) {
      track(e);
      const data = parse(e) ?? {};
      dropSource();
      setStatus('reconnecting', { reason: REASONS.auth_expired, code: 'auth_expired', retryInMs: 0 });
      // The handler may refresh the credentials (e.g. a cookie) before we reconnect.
      Promise.resolve(call('onAuthExpired', data))
        .catch(() => undefined)
        .then(() => {
          if (!closed && !es && !timer) open();
        });
    },
  };

  const dropSource = () => {
    if (!es) return;
    for (const [name, fn] of Object.entries(listeners)) es.removeEventListener(name, fn);
    es.onerror = null;
    es.close();
    es = null;
  };

  async function open() {
    timer = null;
    if (closed) return;
    let target;
    try {
      target = typeof url === 'function' ? await url() : url;
    } catch (err) {
      console.warn('pgsse-client: the url function failed', err);
      failures += 1;
      return retryLater('bad_url', REASONS.bad_url);
    }
    if (closed || es) return;
    const u = new URL(String(target), globalThis.location?.href);
    // A new EventSource cannot send Last-Event-ID; the gateway takes the query parameter instead.
    if (lastEventId) u.searchParams.set('lastEventId', lastEventId);
    const source = new ES(u.toString(), { withCredentials: opts.withCredentials });
    es = source;
    stats.eventSources += 1;
    for (const [name, fn] of Object.entries(listeners)) source.addEventListener(name, fn);
    source.onerror = () => onError(source, u.toString());
  }

  function onError(source, target) {
    if (closed || source !== es) return;
    failures += 1;
    if (source.readyState === ES.CONNECTING && failures === 1) {
      // A drop after (or during) a good connection: the browser retries in `retry:` ms (1s) with
      // Last-Event-ID. If that fails too, the next error takes over with backoff.
      setStatus('reconnecting', { reason: REASONS.lost, code: 'network', attempt: failures, retryInMs: 1000 });
      return;
    }
    // CLOSED: an HTTP error status or a wrong content type; the browser will not retry.
    const gaveUp = source.readyState === ES.CLOSED;
    dropSource();
    diagnose(target, gaveUp).then(({ code, reason }) => {
      if (!closed && !es && !timer) retryLater(code, reason);
    });
  }

  function retryLater(code, reason) {
    const delay = backoffDelay(failures, opts);
    const degraded = HOPELESS.has(code) || failures >= opts.degradeAfter;
    setStatus('reconnecting', { reason, code, degraded, attempt: failures, retryInMs: delay });
    timer = setTimeout(open, delay);
  }

  /** Why the stream failed: EventSource does not tell, a fetch of the same URL does. */
  async function diagnose(target, gaveUp) {
    if (!doFetch || !gaveUp) return { code: 'network', reason: REASONS.network };
    probe = new AbortController();
    const ctrl = probe;
    const timeout = setTimeout(() => ctrl.abort(), opts.probeTimeoutMs);
    try {
      const res = await doFetch(target, {
        credentials: opts.withCredentials ? 'include' : 'same-origin',
        headers: { Accept: 'text/event-stream' },
        cache: 'no-store',
        signal: ctrl.signal,
      });
      const type = res.headers.get('content-type') ?? '';
      ctrl.abort(); // never read a (possibly endless) body
      if (res.status === 401) return { code: 'unauthorized', reason: REASONS.unauthorized };
      if (res.status === 403) return { code: 'forbidden', reason: REASONS.forbidden };
      if (res.status === 404) return { code: 'not_found', reason: REASONS.not_found };
      if (res.ok && !type.includes('text/event-stream')) {
        return { code: 'not_a_stream', reason: `${REASONS.not_a_stream} (content-type: ${type || 'none'})` };
      }
      if (res.ok) return { code: 'network', reason: REASONS.lost };
      return { code: 'unavailable', reason: `The notification service is unavailable (HTTP ${res.status}); retrying` };
    } catch {
      return { code: 'network', reason: REASONS.network };
    } finally {
      clearTimeout(timeout);
      if (probe === ctrl) probe = null;
    }
  }

  const onOnline = () => {
    // Back online: don't sit out the rest of a long backoff.
    if (timer && !closed) {
      clearTimeout(timer);
      open();
    }
  };
  globalThis.addEventListener?.('online', onOnline);

  setStatus('connecting');
  open();

  return {
    get status() {
      return info.status;
    },
    get info() {
      return info;
    },
    get lastEventId() {
      return lastEventId;
    },
    get stats() {
      return { ...stats };
    },
    reconnect() {
      if (closed) return;
      if (timer) clearTimeout(timer);
      timer = null;
      probe?.abort();
      dropSource();
      failures = 0;
      setStatus('connecting', { reason: null, code: null, retryInMs: null, attempt: 0 });
      open();
    },
    close() {
      if (closed) return;
      closed = true;
      if (timer) clearTimeout(timer);
      timer = null;
      probe?.abort();
      probe = null;
      dropSource();
      globalThis.removeEventListener?.('online', onOnline);
      setStatus('closed', { reason: null, code: null, degraded: false, retryInMs: null });
    },
  };
}
