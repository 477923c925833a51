// pgsse browser client: live notifications from the pgsse gateway. No dependencies, no build step
// (the demo page imports it as is, with transports.js beside it). Types: types.ts (tsc checks this
// file against them and generates its declarations). See README.md beside this file.
//
//   import { connectNotifications } from 'pgsse-client';
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
// One implementation of the protocol (resume position, dedupe, backoff, status, the watchdog) over
// two transports (transports.js): the native EventSource (default), or a streaming fetch for apps
// that send an Authorization header. A transport only opens one connection and reports its events
// and how it failed; everything else is decided here, the same way for both.

/** @typedef {import('./types.js').NotificationRow} NotificationRow */
/** @typedef {import('./types.js').NotificationEvent} NotificationEvent */
/** @typedef {import('./types.js').ConnectedInfo} ConnectedInfo */
/** @typedef {import('./types.js').ResetInfo} ResetInfo */
/** @typedef {import('./types.js').ConnectionStatus} ConnectionStatus */
/** @typedef {import('./types.js').FailureCode} FailureCode */
/** @typedef {import('./types.js').ConnectionInfo} ConnectionInfo */
/** @typedef {import('./types.js').ConnectionStats} ConnectionStats */
/** @typedef {import('./types.js').ConnectOptions} ConnectOptions */
/** @typedef {import('./types.js').Connection} Connection */
/** @template [Row=NotificationRow] @typedef {import('./types.js').Handlers<Row>} Handlers */
/** @typedef {import('./transports.js').Failure} Failure */
/** @typedef {import('./transports.js').Sink} Sink */
/** @typedef {import('./transports.js').Transport} Transport */

import { REASONS, eventSourceTransport, fetchTransport } from './transports.js';

export { sseParser } from './transports.js';

/** @type {Readonly<Required<Omit<ConnectOptions, 'EventSource' | 'fetch' | 'lastEventId' | 'headers' | 'signal'>>>} */
export const DEFAULT_OPTIONS = Object.freeze({
  withCredentials: false,
  minDelayMs: 1000,
  maxDelayMs: 30000,
  jitter: 0.2,
  degradeAfter: 3,
  probeTimeoutMs: 5000,
  dedupeWindow: 1000,
  transport: /** @type {'eventsource' | 'fetch'} */ ('eventsource'),
  watchdogFactor: 2,
});

/**
 * Delay before reconnect attempt `attempt` (1-based): minDelayMs * 2^(attempt-1), capped at
 * maxDelayMs, times a random factor in [1 - jitter, 1 + jitter], never above maxDelayMs.
 * @param {number} attempt
 * @param {{minDelayMs?: number, maxDelayMs?: number, jitter?: number}} [options]
 * @param {() => number} [random]
 * @returns {number}
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
 * @returns {string | null}
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

/** Codes after which retrying soon is pointless: the app should poll at once. */
const HOPELESS = new Set(['unauthorized', 'forbidden', 'not_found', 'not_a_stream']);

/**
 * Opens the notification stream and keeps it open until `close()` (or `options.signal` aborts).
 * @template [Row=NotificationRow]
 * @param {string | URL | (() => string | URL | Promise<string | URL>)} url
 * @param {Handlers<Row>} [handlers]
 * @param {ConnectOptions} [options]
 * @returns {Connection}
 */
export function connectNotifications(url, handlers = {}, options = {}) {
  const opts = { ...DEFAULT_OPTIONS, ...options };
  const ES = opts.EventSource ?? globalThis.EventSource;
  const doFetch = opts.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : null);
  /** @type {Transport} */
  let transport;
  if (opts.transport === 'fetch') {
    if (!doFetch) throw new Error('pgsse-client: fetch is not available in this environment');
    transport = fetchTransport(doFetch, opts);
  } else {
    if (!ES) throw new Error('pgsse-client: EventSource is not available in this environment');
    transport = eventSourceTransport(ES, doFetch, opts);
  }
  const H = /** @type {Record<string, ((...args: any[]) => unknown) | undefined>} */ (handlers);

  /** @type {{ close(): void } | null} the open connection (or attempt) */
  let current = null;
  /** @type {ReturnType<typeof setTimeout> | null} */
  let timer = null;
  /** @type {ReturnType<typeof setTimeout> | null} */
  let watchdog = null;
  let closed = false;
  let failures = 0; // consecutive failed attempts since the last successful connection
  let lastEventId = opts.lastEventId ?? null;
  /** @type {number | null} from the last `connected` */
  let heartbeatMs = null;
  let lastActivity = Date.now();
  const seen = new Set();
  /** @type {string[]} */
  const seenOrder = [];
  /** @type {ConnectionStats} */
  const stats = { opened: 0, eventSources: 0, connects: 0, resumes: 0, duplicates: 0, stale: 0 };
  /** @type {ConnectionInfo} */
  let info = { status: 'connecting', reason: null, code: null, degraded: false, attempt: 0, retryInMs: null, lastEventId };

  /** @param {string} name @param {...unknown} args */
  const call = (name, ...args) => {
    const fn = H[name];
    if (typeof fn !== 'function' || (closed && name !== 'onStatus')) return undefined;
    try {
      return fn(...args);
    } catch (err) {
      console.error(`pgsse-client: ${name} handler threw`, err);
      return undefined;
    }
  };

  /** @param {ConnectionStatus} status @param {Partial<ConnectionInfo>} [extra] */
  const setStatus = (status, extra = {}) => {
    info = Object.freeze({ ...info, status, ...extra, lastEventId });
    call('onStatus', status, info);
  };

  /** @param {string} type @param {string} text @returns {any} */
  const parse = (type, text) => {
    try {
      return JSON.parse(text);
    } catch {
      console.warn('pgsse-client: ignoring an event whose data is not JSON', type);
      return null;
    }
  };

  /** True the first time an event is seen; remembers the last `dedupeWindow` of them. @param {string} key */
  const firstSight = (key) => {
    if (seen.has(key)) return false;
    seen.add(key);
    seenOrder.push(key);
    if (seenOrder.length > opts.dedupeWindow) seen.delete(seenOrder.shift());
    return true;
  };

  /** One event of the open connection, whichever transport read it. */
  function onEvent(/** @type {string} */ type, /** @type {string} */ text, /** @type {string} */ id) {
    lastActivity = Date.now();
    if (id) lastEventId = id;
    switch (type) {
      case 'connected': {
        const data = parse(type, text) ?? {};
        failures = 0;
        stats.connects += 1;
        if (data.resumed) stats.resumes += 1;
        if (typeof data.heartbeatMs === 'number' && data.heartbeatMs > 0) heartbeatMs = data.heartbeatMs;
        armWatchdog();
        setStatus('open', { reason: null, code: null, degraded: false, attempt: 0, retryInMs: null });
        call('onConnected', data);
        // A fresh start (not a resume): whatever the app fetched before may already be stale.
        if (!data.resumed) call('onResync', 'connected');
        return;
      }
      case 'notification': {
        const key = eventKeyOf(id);
        if (key !== null && !firstSight(key)) {
          stats.duplicates += 1;
          return;
        }
        const data = parse(type, text);
        if (!data || typeof data.type !== 'string') return;
        call('onNotification', data, id);
        if (data.type === 'created') call('onCreated', data.notification);
        else if (data.type === 'read') call('onRead', data.notificationId);
        else if (data.type === 'updated') call('onUpdated', data.notification);
        else if (data.type === 'deleted') call('onDeleted', data.notificationId);
        return;
      }
      case 'heartbeat':
        call('onHeartbeat', parse(type, text) ?? {});
        return;
      case 'reset':
        call('onReset', parse(type, text) ?? {});
        call('onResync', 'reset');
        return;
      case 'auth-expired': {
        const data = parse(type, text) ?? {};
        drop();
        setStatus('reconnecting', { reason: REASONS.auth_expired, code: 'auth_expired', retryInMs: 0 });
        // The handler may refresh the credentials (e.g. a cookie) before we reconnect.
        Promise.resolve(call('onAuthExpired', data))
          .catch(() => undefined)
          .then(() => {
            if (!closed && !current && !timer) open();
          });
        return;
      }
      default:
    }
  }

  /** How the open connection failed; `retrying`: the transport retries by itself (EventSource). */
  function onFailure(/** @type {Failure} */ f) {
    failures += 1;
    if (f.retrying && failures === 1) {
      setStatus('reconnecting', { reason: REASONS.lost, code: 'network', attempt: failures, retryInMs: opts.minDelayMs });
      return;
    }
    drop();
    retryLater(f.code, f.reason);
  }

  function drop() {
    if (watchdog) clearTimeout(watchdog);
    watchdog = null;
    const c = current;
    current = null;
    c?.close();
  }

  /** Checks for silence when it is due, then re-arms for the rest: one timer, not one per event. */
  function armWatchdog() {
    if (watchdog) clearTimeout(watchdog);
    watchdog = null;
    if (closed || !current || !heartbeatMs || !(opts.watchdogFactor > 0)) return;
    const left = lastActivity + heartbeatMs * opts.watchdogFactor - Date.now();
    if (left <= 0) {
      stats.stale += 1;
      drop();
      failures += 1;
      retryLater('stale', REASONS.stale);
      return;
    }
    watchdog = setTimeout(armWatchdog, left);
  }

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
    if (closed || current) return;
    const u = new URL(String(target), globalThis.location?.href);
    /** @type {{ conn: { close(): void } | null, dropped: boolean, close(): void }} */
    const self = {
      conn: null,
      dropped: false,
      close() {
        self.dropped = true;
        self.conn?.close();
      },
    };
    /** @type {Sink} */
    const sink = {
      event: (type, text, id) => {
        if (current === self && !closed) onEvent(type, text, id);
      },
      failure: (f) => {
        if (current === self && !closed) onFailure(f);
      },
    };
    current = self;
    stats.opened += 1;
    if (opts.transport !== 'fetch') stats.eventSources += 1;
    lastActivity = Date.now();
    self.conn = transport(u.toString(), lastEventId, sink);
    if (self.dropped) self.conn.close();
    armWatchdog();
    return undefined;
  }

  /** @param {FailureCode} code @param {string} reason */
  function retryLater(code, reason) {
    const delay = backoffDelay(failures, opts);
    const degraded = HOPELESS.has(code) || failures >= opts.degradeAfter;
    setStatus('reconnecting', { reason, code, degraded, attempt: failures, retryInMs: delay });
    timer = setTimeout(open, delay);
  }

  /** Back online or visible again: a socket may have died meanwhile, and a long backoff is moot. */
  const wake = () => {
    if (closed) return;
    if (timer) {
      clearTimeout(timer);
      open();
    } else {
      armWatchdog();
    }
  };
  const onVisibility = () => {
    if (globalThis.document?.visibilityState !== 'hidden') wake();
  };
  globalThis.addEventListener?.('online', wake);
  globalThis.document?.addEventListener?.('visibilitychange', onVisibility);

  /** @type {Connection} */
  const connection = {
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
      drop();
      failures = 0;
      setStatus('connecting', { reason: null, code: null, retryInMs: null, attempt: 0 });
      open();
    },
    check() {
      if (!closed && !timer) armWatchdog();
    },
    close() {
      if (closed) return;
      closed = true;
      if (timer) clearTimeout(timer);
      timer = null;
      drop();
      globalThis.removeEventListener?.('online', wake);
      globalThis.document?.removeEventListener?.('visibilitychange', onVisibility);
      opts.signal?.removeEventListener('abort', onAbort);
      setStatus('closed', { reason: null, code: null, degraded: false, retryInMs: null });
    },
  };
  const onAbort = () => connection.close();

  setStatus('connecting');
  if (opts.signal?.aborted) {
    connection.close();
    return connection;
  }
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  open();
  return connection;
}
