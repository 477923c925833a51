// The types of pgsse-client.js (the JS file refers to them in JSDoc; `tsc` checks it against them
// and generates its declarations).

/** A row of the watched table, as the triggers send it (`to_jsonb(row)`; column names as in SQL). */
export interface NotificationRow {
  id: number | string;
  [column: string]: unknown;
}

/** The type of a row's `id`. */
export type IdOf<Row> = Row extends { id: infer I } ? I : number | string;

/** `data` of `event: notification`, by `type`. */
export type NotificationEvent<Row = NotificationRow> =
  | { type: 'created'; notification: Row }
  | { type: 'read'; notificationId: IdOf<Row> }
  | { type: 'updated'; notification: Row }
  | { type: 'deleted'; notificationId: IdOf<Row> };

/** `data` of `event: connected`. */
export interface ConnectedInfo {
  userId: string;
  connectionId: number;
  /** True when the stream resumed from the last event id (nothing was missed). */
  resumed: boolean;
  /** Events replayed on resume. */
  replayed: number;
  heartbeatMs: number;
}

/** `data` of `event: reset`: the missed events cannot be replayed; refetch. */
export interface ResetInfo {
  reason: string;
  message: string;
}

export type ConnectionStatus = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** Why the stream is not open, when it is not. */
export type FailureCode =
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'not_a_stream'
  | 'unavailable'
  | 'network'
  | 'auth_expired'
  | 'stale'
  | 'bad_url';

export interface ConnectionInfo {
  status: ConnectionStatus;
  /** Human-readable reason while not open, e.g. "Not signed in, or the session expired (HTTP 401)". */
  reason: string | null;
  code: FailureCode | null;
  /**
   * True when the stream cannot be had for now (401/403/404, not an event stream, or several
   * failures in a row): refetch on an interval and on focus until it is back.
   */
  degraded: boolean;
  /** Consecutive failed attempts. */
  attempt: number;
  /** Delay before the next attempt, while reconnecting. */
  retryInMs: number | null;
  /** The position to resume from. */
  lastEventId: string | null;
}

export interface Handlers<Row = NotificationRow> {
  /**
   * The app should refetch its lists: on a fresh connection (`connected` with `resumed: false`)
   * and on `reset`. Between two resyncs, the other handlers' patches keep the cache exact.
   */
  onResync?: (reason: 'connected' | 'reset') => void;
  onCreated?: (notification: Row) => void;
  onRead?: (id: IdOf<Row>) => void;
  onUpdated?: (notification: Row) => void;
  onDeleted?: (id: IdOf<Row>) => void;
  /** Every (deduplicated) `notification` event, with its SSE id. */
  onNotification?: (event: NotificationEvent<Row>, id: string) => void;
  onConnected?: (info: ConnectedInfo) => void;
  onReset?: (info: ResetInfo) => void;
  onHeartbeat?: (data: { timestamp: number }) => void;
  /**
   * The credentials expired. Refresh them here (e.g. renew the cookie); the client reconnects once
   * the returned promise settles.
   */
  onAuthExpired?: (data: unknown) => void | Promise<unknown>;
  onStatus?: (status: ConnectionStatus, info: ConnectionInfo) => void;
}

export interface ConnectOptions {
  /** Passed to EventSource (and the diagnostic fetch): send cookies cross-origin. Default false. */
  withCredentials?: boolean;
  /** First reconnect delay. Default 1000. */
  minDelayMs?: number;
  /** Largest reconnect delay. Default 30000. */
  maxDelayMs?: number;
  /** Random spread of each delay, as a fraction. Default 0.2. */
  jitter?: number;
  /** Consecutive failures after which `degraded` is set. Default 3. */
  degradeAfter?: number;
  /** Bound on the diagnostic fetch. Default 5000. */
  probeTimeoutMs?: number;
  /** How many recent event log ids are remembered to drop duplicates. Default 1000. */
  dedupeWindow?: number;
  /** Resume from this position (e.g. kept in sessionStorage) on the first connection. */
  lastEventId?: string | null;
  /**
   * How the stream is read. `eventsource` (default): the browser's `EventSource`, which sends
   * cookies (and a token in the URL) but no headers. `fetch`: a streaming `fetch`, for apps that
   * authenticate with an `Authorization` header (see `headers`). Resume, backoff, dedupe, status
   * and the watchdog are the same code for both.
   */
  transport?: 'eventsource' | 'fetch';
  /**
   * Headers for the `fetch` transport, e.g. `() => ({ Authorization: `Bearer ${token()}` })`;
   * called before every connection (it may return a promise), so a refreshed token is used.
   */
  headers?: Record<string, string> | (() => Record<string, string> | Promise<Record<string, string>>);
  /**
   * The watchdog: when nothing (heartbeats included) arrived for `watchdogFactor` x the
   * gateway's `heartbeatMs` (from `connected`), the connection is taken for dead (a half-open
   * socket after sleep, a proxy that dropped it silently) and replaced, resuming. 0 disables.
   * Default 2.
   */
  watchdogFactor?: number;
  /** Aborting it closes the connection for good, like `close()`. */
  signal?: AbortSignal;
  /** EventSource implementation (tests, polyfills). Default: the global one. */
  EventSource?: typeof EventSource;
  /** fetch implementation (the `fetch` transport and the diagnostic probe). Default: the global one. */
  fetch?: typeof fetch;
}

export interface ConnectionStats {
  /** Connections attempted, with either transport. */
  opened: number;
  /** Of those, `EventSource`s created. */
  eventSources: number;
  /** `connected` events received. */
  connects: number;
  /** Of those, resumed ones. */
  resumes: number;
  /** Events dropped as already seen. */
  duplicates: number;
  /** Connections the watchdog found silent and replaced. */
  stale: number;
}

export interface Connection {
  readonly status: ConnectionStatus;
  readonly info: ConnectionInfo;
  readonly lastEventId: string | null;
  /** Counters, for debugging and tests. */
  readonly stats: ConnectionStats;
  /** Drop the current attempt and connect again now (e.g. after signing in). */
  reconnect(): void;
  /** Takes the connection for dead now if nothing arrived for the watchdog's limit (the client
   * does this itself on `visibilitychange` and `online`). */
  check(): void;
  /** Closes the stream for good: no EventSource, timer or listener is left behind. */
  close(): void;
}
