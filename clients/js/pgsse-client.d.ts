// Types for pgsse-client.js (an ES module with no build step).

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
  /** EventSource implementation (tests, polyfills). Default: the global one. */
  EventSource?: typeof EventSource;
  /** fetch implementation for the diagnostic probe. Default: the global one. */
  fetch?: typeof fetch;
}

export interface Connection {
  readonly status: ConnectionStatus;
  readonly info: ConnectionInfo;
  readonly lastEventId: string | null;
  /** Counters, for debugging and tests. */
  readonly stats: { eventSources: number; connects: number; resumes: number; duplicates: number };
  /** Drop the current attempt and connect again now (e.g. after signing in). */
  reconnect(): void;
  /** Closes the stream for good: no EventSource, timer or listener is left behind. */
  close(): void;
}

export const DEFAULT_OPTIONS: Readonly<Required<Omit<ConnectOptions, 'EventSource' | 'fetch' | 'lastEventId'>>>;

export function connectNotifications<Row = NotificationRow>(
  url: string | URL | (() => string | URL | Promise<string | URL>),
  handlers?: Handlers<Row>,
  options?: ConnectOptions,
): Connection;

/** Reconnect delay for a 1-based attempt: 1s, 2s, 4s ... capped, with jitter. */
export function backoffDelay(
  attempt: number,
  options?: { minDelayMs?: number; maxDelayMs?: number; jitter?: number },
  random?: () => number,
): number;

/** The log id of an event id `<history>.<horizon>-<logid>` (or a legacy `<horizon>-<logid>`), or null. */
export function logIdOf(id: string | null | undefined): string | null;
