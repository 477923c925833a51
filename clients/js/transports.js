// How pgsse-client opens one connection: the native EventSource, or a streaming fetch. A transport
// reports what arrived and how the connection failed; the protocol (resume, dedupe, backoff,
// status, the watchdog) is pgsse-client.js's, the same for both.

/** @typedef {import('./types.js').ConnectOptions} ConnectOptions */
/** @typedef {import('./types.js').FailureCode} FailureCode */
/** @typedef {{ code: FailureCode, reason: string, retrying?: boolean }} Failure */
/** @typedef {{ event(type: string, data: string, id: string): void, failure(f: Failure): void }} Sink */
/** @typedef {(target: string, lastEventId: string | null, sink: Sink) => { close(): void }} Transport */

/** The events of the gateway's protocol (the `EventSource` transport listens to these). */
const EVENTS = ['connected', 'notification', 'heartbeat', 'reset', 'auth-expired'];

export const REASONS = {
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
export function eventSourceTransport(ES, doFetch, opts) {
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
export function fetchTransport(doFetch, opts) {
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
