// pgsse browser client: live notifications from the pgsse gateway. No dependencies; one file, so
// it also runs as is (the demo page imports it). Types: types.ts (tsc checks this file against them
// and generates its declarations). See README.md beside this file.
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
// two transports: the native EventSource (default), or a streaming fetch for apps that send an
// Authorization header. A transport only opens one connection and reports its events and how it
// failed; everything else is decided here, the same way for both.

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
/** @typedef {{ code: FailureCode, reason: string, retrying?: boolean }} Failure */
/** @typedef {{ event(type: string, data: string, id: string): void, failure(f: Failure): void }} Sink */
/** @typedef {(target: string, lastEventId: string | null, sink: Sink) => { close(): void }} Transport */

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

/** The events of the gateway's protocol (the `EventSource` transport listens to these). */
const EVENTS = ['connected', 'notification', 'heartbeat', 'reset', 'auth-expired'];

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

const REASONS = {
  unauthorized: 'Not signed in, or the session expired (HTTP 401)',
  forbidden: 'Not allowed to receive notifications (HTTP 403)',
  not_found: 'The notification stream was not found at this URL (HTTP 404)',
  not_a_stream: 'The URL answered, but not with an event stream',
  network: 'Cannot reach the notification service',
  lost: 'Connection lost; reconnecting',
  stale: 'Nothing arrived for too long (heartbeats included); reconnecting',
  auth_expired: 'Credentials expired; reconnecting with fresh ones',
  bad_url: 'Could not get the stream URL',
};

/** Codes after which retrying soon is pointless: the app should poll at once. */
const HOPELESS = new Set(['unauthorized', 'forbidden', 'not_found', 'not_a_stream']);

/**
 * What an HTTP response to a stream request means: null for an event stream, else the failure.
 * @param {Response} res
 * @returns {Failure | null}
 */
function classify(res) {
  const type = res.headers.get('content-type') ?? '';
  if (res.status === 401) return { code: 'unauthorized', reason: REASONS.unauthorized };
  if (res.status === 403) return { code: 'forbidden', reason: REASONS.forbidden };
  if (res.status === 404) return { code: 'not_found', reason: REASONS.not_found };
  if (res.ok && !type.includes('text/event-stream')) {
    return { code: 'not_a_stream', reason: `${REASONS.not_a_stream} (content-type: ${type || 'none'})` };
  }
  if (res.ok) return null;
  return { code: 'unavailable', reason: `The notification service is unavailable (HTTP ${res.status}); retrying` };
}

/**
 * An incremental `text/event-stream` parser (the WHATWG steps): feed it text, it calls `emit`
 * for every event with data. The id persists across events, as an `EventSource`'s does.
 * @param {(type: string, data: string, id: string) => void} emit
 * @returns {(text: string) => void}
 */
export function sseParser(emit) {
  let buf = '';
  let type = '';
  let id = '';
  /** @type {string[]} */
  let data = [];
  /** @param {string} line */
  const line = (line) => {
    if (line === '') {
      if (data.length) emit(type || 'message', data.join('\n'), id);
      type = '';
      data = [];
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') type = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id' && !value.includes('\0')) id = value;
  };
  return (text) => {
    buf += text;
    for (;;) {
      const i = buf.search(/[\r\n]/);
      if (i < 0 || (buf[i] === '\r' && i === buf.length - 1)) return; // a CR may precede an LF to come
      const skip = buf[i] === '\r' && buf[i + 1] === '\n' ? 2 : 1;
      const current = buf.slice(0, i);
      buf = buf.slice(i + skip);
      line(current);
    }
  };
}

/**
 * The native `EventSource`. It resumes by itself once after a drop (with `Last-Event-ID`); a new
 * one cannot send that header, so the position goes in `?lastEventId=`. It hides the HTTP status
 * of a failure, so a fetch of the same URL (body never read) tells 401 from 404 from 503.
 * @param {typeof EventSource} ES
 * @param {typeof fetch | null} doFetch
 * @param {{ withCredentials: boolean, probeTimeoutMs: number }} opts
 * @returns {Transport}
 */
function eventSourceTransport(ES, doFetch, opts) {
  return (target, lastEventId, sink) => {
    const u = new URL(target);
    if (lastEventId) u.searchParams.set('lastEventId', lastEventId);
    const es = new ES(u.toString(), { withCredentials: opts.withCredentials });
    const probe = new AbortController();
    /** @type {Array<[string, (e: MessageEvent) => void]>} */
    const listeners = EVENTS.map((name) => [name, (e) => sink.event(name, e.data, e.lastEventId)]);
    for (const [name, fn] of listeners) es.addEventListener(name, /** @type {EventListener} */ (fn));
    const stop = () => {
      for (const [name, fn] of listeners) es.removeEventListener(name, /** @type {EventListener} */ (fn));
      es.onerror = null;
      es.close();
    };
    es.onerror = () => {
      // CONNECTING: a drop; the browser retries by itself in `retry:` ms, with Last-Event-ID.
      if (es.readyState === ES.CONNECTING) return sink.failure({ code: 'network', reason: REASONS.lost, retrying: true });
      // CLOSED: an HTTP error status or a wrong content type; the browser will not retry.
      stop();
      diagnose(u.toString()).then((f) => sink.failure(f));
      return undefined;
    };
    /** @param {string} url @returns {Promise<Failure>} */
    async function diagnose(url) {
      if (!doFetch) return { code: 'network', reason: REASONS.network };
      const timeout = setTimeout(() => probe.abort(), opts.probeTimeoutMs);
      try {
        const res = await doFetch(url, {
          credentials: opts.withCredentials ? 'include' : 'same-origin',
          headers: { Accept: 'text/event-stream' },
          cache: 'no-store',
          signal: probe.signal,
        });
        probe.abort(); // never read a (possibly endless) body
        return classify(res) ?? { code: 'network', reason: REASONS.lost };
      } catch {
        return { code: 'network', reason: REASONS.network };
      } finally {
        clearTimeout(timeout);
      }
    }
    return {
      close() {
        probe.abort();
        stop();
      },
    };
  };
}

/**
 * A streaming `fetch`: any headers (an `Authorization: Bearer` token), `Last-Event-ID` as a
 * header, the status read directly. It never retries by itself.
 * @param {typeof fetch} doFetch
 * @param {{ withCredentials: boolean, headers?: ConnectOptions['headers'] }} opts
 * @returns {Transport}
 */
function fetchTransport(doFetch, opts) {
  return (target, lastEventId, sink) => {
    const ctrl = new AbortController();
    (async () => {
      const extra = typeof opts.headers === 'function' ? await opts.headers() : opts.headers;
      /** @type {Record<string, string>} */
      const headers = { ...extra, Accept: 'text/event-stream' };
      if (lastEventId) headers['Last-Event-ID'] = lastEventId;
      const res = await doFetch(target, {
        headers,
        credentials: opts.withCredentials ? 'include' : 'same-origin',
        cache: 'no-store',
        signal: ctrl.signal,
      });
      const bad = classify(res) ?? (res.body ? null : { code: 'not_a_stream', reason: REASONS.not_a_stream });
      if (bad || !res.body) {
        ctrl.abort();
        return sink.failure(bad ?? { code: 'not_a_stream', reason: REASONS.not_a_stream });
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      const feed = sseParser(sink.event);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        feed(decoder.decode(value, { stream: true }));
      }
      return sink.failure({ code: 'network', reason: REASONS.lost });
    })().catch(() => {
      if (!ctrl.signal.aborted) sink.failure({ code: 'network', reason: REASONS.network });
    });
    return { close: () => ctrl.abort() };
  };
}

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
