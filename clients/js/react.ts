// pgsse-client/react: one live stream per page, shared by every component, over TanStack Query 5.
//
//   <QueryClientProvider client={queryClient}>
//     <PgsseProvider api={trpcNotificationsApi(trpcClient)}>   // once, near the root
//       <App />                                                // any component: useNotifications()
//     </PgsseProvider>
//   </QueryClientProvider>
//
// The provider owns the one connection and the adapter; the hooks only read the shared queries
// and the connection's status. Events are applied to the query cache in batches (one statement
// that marks 1,000 rows read settles in one render), never one refetch per event.
import { createContext, createElement, useContext, useEffect, useMemo, useRef, useState } from 'react';
import type { MutableRefObject, ReactNode } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import type { QueryClient, QueryKey } from '@tanstack/react-query';
import { connectNotifications } from './pgsse-client.js';
import type { Connection, ConnectionInfo, ConnectionStatus, ConnectOptions, NotificationRow } from './types.js';

export type { Connection, ConnectionInfo, ConnectionStatus, ConnectOptions, NotificationRow } from './types.js';

/** An id as the app's API or the stream carries it; compared by its string form. */
export type NotificationId = string | number;

/** What the hooks need of a notification. */
export interface BaseNotification {
  id: NotificationId;
  read: boolean;
}

/**
 * Declare the app's notification type once, and `useNotifications()` returns it with no argument:
 *
 *   declare module 'pgsse-client/react' {
 *     interface Register { notification: NotificationWithMetadata }
 *   }
 */
export interface Register {}

/** The registered notification type, or a camelCased row. */
export type RegisteredNotification = Register extends { notification: infer N extends BaseNotification }
  ? N
  : BaseNotification & Record<string, unknown>;

/** What the provider needs from the app's API. `trpcNotificationsApi` builds one from a tRPC client. */
export interface NotificationsApi<N extends BaseNotification = RegisteredNotification> {
  list: () => Promise<N[]>;
  unreadCount: () => Promise<number>;
  markAsRead: (id: N['id']) => Promise<unknown>;
  markAllAsRead: () => Promise<unknown>;
  deleteNotification: (id: N['id']) => Promise<unknown>;
  deleteAllRead: () => Promise<unknown>;
  /** A stream row (the table's columns as named in SQL) as the API's type. Default: `camelCaseRow`. */
  fromRow?: (row: NotificationRow) => N;
  /** Query keys; the defaults are @trpc/react-query's, so `trpc.notifications.list.useQuery()` shares the cache. */
  listKey?: QueryKey;
  unreadCountKey?: QueryKey;
  /**
   * `patch` (default): each batch of events edits the cached list and count. `refetch`: each
   * batch refetches them instead (once per batch), for rows with computed or joined fields the
   * stream cannot carry.
   */
  liveUpdates?: 'patch' | 'refetch';
}

export interface PgsseProviderProps<N extends BaseNotification = RegisteredNotification> {
  api: NotificationsApi<N>;
  /** The gateway's stream (same origin, through the app's proxy), or a function returning it. */
  streamUrl?: string | URL | (() => string | URL | Promise<string | URL>);
  /** Passed to `connectNotifications`: `transport: 'fetch'` and `headers` for a bearer token, etc. */
  options?: ConnectOptions;
  /** False while signed out: no queries, no stream. Default true. */
  enabled?: boolean;
  /** Polling period while the stream cannot be had (`degraded`). Default 30000. */
  pollIntervalMs?: number;
  /** Events arriving within this many ms are applied together. Default 30. */
  batchMs?: number;
  /** How long the first fetch waits for the stream to open (so it cannot miss a change). Default 3000. */
  firstFetchWaitMs?: number;
  children?: ReactNode;
}

/** What `useNotifications()` returns: the seed app's interface, unchanged. */
export interface UseNotificationsResult<N extends BaseNotification = RegisteredNotification> {
  notifications: N[];
  unreadCount: number;
  hasUnread: boolean;
  isLoading: boolean;
  markAsRead: (id: N['id']) => void;
  markAllAsRead: () => void;
  deleteNotification: (id: N['id']) => void;
  deleteAllRead: () => void;
  refetch: () => Promise<void>;
}

/** What `useNotificationSSE()` returns, for a status indicator. */
export interface UseNotificationSSEResult {
  status: ConnectionStatus;
  /** Why it is not open (`reason`, `code`), whether the hook polls (`degraded`), the position. */
  info: ConnectionInfo | null;
  /** True while events arrive live. */
  isLive: boolean;
  /** True while the stream cannot be had and the queries poll instead. */
  degraded: boolean;
  /** Drop the connection and open a new one now (e.g. after signing in). */
  reconnect: () => void;
}

const DEFAULT_LIST_KEY: QueryKey = [['notifications', 'list'], { type: 'query' }];
const DEFAULT_COUNT_KEY: QueryKey = [['notifications', 'getUnreadCount'], { type: 'query' }];

/** `created_at` -> `createdAt`. */
export function camelCase(key: string): string {
  return key.replace(/_+([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

const ISO_DATE = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?$/;

/**
 * A stream row with camelCase keys and its timestamps as `Date`s (as tRPC with superjson returns
 * them). `dates`: the (camelCase) keys to revive; default every key ending in `At` or `Date` whose
 * value is an ISO timestamp.
 */
export function camelCaseRow<N = Record<string, unknown>>(row: NotificationRow, options: { dates?: string[] } = {}): N {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(row)) {
    const key = camelCase(k);
    const isDate = options.dates ? options.dates.includes(key) : /(At|Date)$/.test(key);
    out[key] = isDate && typeof v === 'string' && ISO_DATE.test(v) ? new Date(v) : v;
  }
  return out as N;
}

/** The procedures of a tRPC client (vanilla `createTRPCClient`, or `useUtils().client`) the adapter calls. */
export interface TrpcNotificationsClient<N> {
  notifications: {
    list: { query: (input?: any) => Promise<N[]> };
    getUnreadCount: { query: (input?: any) => Promise<number> };
    markAsRead: { mutate: (input: { id: any }) => Promise<unknown> };
    markAllAsRead: { mutate: (input?: any) => Promise<unknown> };
    delete: { mutate: (input: { id: any }) => Promise<unknown> };
    deleteAllRead: { mutate: (input?: any) => Promise<unknown> };
  };
}

/**
 * The adapter for a tRPC router with the seed app's procedures (`notifications.list`,
 * `getUnreadCount`, `markAsRead({id})`, `markAllAsRead`, `delete({id})`, `deleteAllRead`). The
 * notification type is the router's, inferred from `list`. Stream rows go through `fromRow`
 * (default: `camelCaseRow`, reviving `...At` timestamps as `Date`s like superjson).
 */
export function trpcNotificationsApi<N extends BaseNotification>(
  client: TrpcNotificationsClient<N>,
  options: { fromRow?: (row: NotificationRow) => N; liveUpdates?: 'patch' | 'refetch' } = {},
): NotificationsApi<N> {
  const n = client.notifications;
  return {
    list: () => n.list.query(),
    unreadCount: () => n.getUnreadCount.query(),
    markAsRead: (id) => n.markAsRead.mutate({ id }),
    markAllAsRead: () => n.markAllAsRead.mutate(),
    deleteNotification: (id) => n.delete.mutate({ id }),
    deleteAllRead: () => n.deleteAllRead.mutate(),
    fromRow: options.fromRow ?? ((row) => camelCaseRow<N>(row)),
    listKey: DEFAULT_LIST_KEY,
    unreadCountKey: DEFAULT_COUNT_KEY,
    liveUpdates: options.liveUpdates ?? 'patch',
  };
}

/** One change from the stream, queued until the batch is applied. */
type Change = { kind: 'upsert'; row: NotificationRow; created: boolean } | { kind: 'read' | 'deleted'; id: NotificationId };

interface Shared {
  api: NotificationsApi<BaseNotification>;
  enabled: boolean;
  /** The stream opened at least once, or we gave up waiting: the queries may fetch. */
  ready: boolean;
  info: ConnectionInfo | null;
  pollIntervalMs: number;
  connection: MutableRefObject<Connection | null>;
}

const Context = createContext<Shared | null>(null);

const keyOf = (id: NotificationId) => String(id);

/**
 * Applies a batch of changes to the cached list and unread count, in one update each. Returns
 * false when it cannot (no list cached yet): the caller refetches instead.
 */
function applyChanges(qc: QueryClient, api: NotificationsApi<BaseNotification>, changes: Change[]): boolean {
  const listKey = api.listKey ?? DEFAULT_LIST_KEY;
  const countKey = api.unreadCountKey ?? DEFAULT_COUNT_KEY;
  const rows = qc.getQueryData<BaseNotification[]>(listKey);
  if (!rows) return false;
  const fromRow = api.fromRow ?? ((row: NotificationRow) => camelCaseRow<BaseNotification>(row));
  const known = new Map(rows.map((r) => [keyOf(r.id), r]));
  const fresh = new Map<string, BaseNotification>(); // created in this batch, oldest first
  const get = (k: string) => fresh.get(k) ?? known.get(k);
  const set = (k: string, n: BaseNotification) => (fresh.has(k) ? fresh : known).set(k, n);
  let delta = 0;
  let countUnknown = false;
  for (const c of changes) {
    if (c.kind === 'upsert') {
      const n = fromRow(c.row);
      const k = keyOf(n.id);
      const old = get(k);
      if (old) {
        set(k, n);
        if (old.read !== n.read) delta += n.read ? -1 : 1;
      } else if (c.created) {
        fresh.set(k, n);
        if (!n.read) delta += 1;
      } else {
        countUnknown = true; // an update of a row beyond the cached page
      }
    } else {
      const k = keyOf(c.id);
      const old = get(k);
      if (!old) countUnknown = true;
      else if (c.kind === 'deleted') {
        fresh.delete(k);
        known.delete(k);
        if (!old.read) delta -= 1;
      } else if (!old.read) {
        set(k, { ...old, read: true });
        delta -= 1;
      }
    }
  }
  qc.setQueryData(listKey, [...[...fresh.values()].reverse(), ...known.values()]);
  if (countUnknown) void qc.invalidateQueries({ queryKey: countKey, exact: true });
  else if (delta !== 0) qc.setQueryData<number>(countKey, (n) => (n === undefined ? n : Math.max(0, n + delta)));
  return true;
}

/**
 * Owns the page's one stream and the API adapter; mount it once, inside `QueryClientProvider`.
 */
export function PgsseProvider<N extends BaseNotification = RegisteredNotification>(props: PgsseProviderProps<N>) {
  const {
    api,
    streamUrl = '/api/notifications/stream',
    options,
    enabled = true,
    pollIntervalMs = 30_000,
    batchMs = 30,
    firstFetchWaitMs = 3000,
    children,
  } = props;
  const qc = useQueryClient();
  const [info, setInfo] = useState<ConnectionInfo | null>(null);
  const [ready, setReady] = useState(false);
  const connection = useRef<Connection | null>(null);
  const apiRef = useRef(api as unknown as NotificationsApi<BaseNotification>);
  apiRef.current = api as unknown as NotificationsApi<BaseNotification>;
  const optionsRef = useRef(options);
  optionsRef.current = options;

  useEffect(() => {
    if (!enabled) return undefined;
    let queue: Change[] = [];
    let flushTimer: ReturnType<typeof setTimeout> | null = null;
    let isReady = false;
    const keys = () => [apiRef.current.listKey ?? DEFAULT_LIST_KEY, apiRef.current.unreadCountKey ?? DEFAULT_COUNT_KEY];
    const refetchAll = () => {
      for (const queryKey of keys()) void qc.invalidateQueries({ queryKey, exact: true });
    };
    const becomeReady = () => {
      if (isReady) return false;
      isReady = true;
      setReady(true);
      return true;
    };
    const flush = () => {
      flushTimer = null;
      const changes = queue;
      queue = [];
      if (!isReady || changes.length === 0) return; // the first fetch, still to come, includes them
      if (apiRef.current.liveUpdates === 'refetch' || !applyChanges(qc, apiRef.current, changes)) refetchAll();
    };
    const enqueue = (c: Change) => {
      queue.push(c);
      flushTimer ??= setTimeout(flush, batchMs);
    };
    const waitTimer = setTimeout(becomeReady, firstFetchWaitMs);
    const conn = connectNotifications(
      streamUrl,
      {
        // A fresh connection or a reset: the cache may be stale. The first time, the queries start
        // now (the stream is open, so nothing between the fetch and the stream is lost).
        onResync: () => {
          queue = [];
          if (!becomeReady()) refetchAll();
        },
        onConnected: () => {
          becomeReady();
        },
        onStatus: (_s, i) => {
          setInfo(i);
          if (i.degraded) becomeReady();
        },
        onCreated: (row) => enqueue({ kind: 'upsert', row, created: true }),
        onUpdated: (row) => enqueue({ kind: 'upsert', row, created: false }),
        onRead: (id) => enqueue({ kind: 'read', id }),
        onDeleted: (id) => enqueue({ kind: 'deleted', id }),
      },
      optionsRef.current,
    );
    connection.current = conn;
    return () => {
      clearTimeout(waitTimer);
      if (flushTimer) clearTimeout(flushTimer);
      conn.close();
      connection.current = null;
      setReady(false);
      setInfo(null);
    };
    // The stream is reopened only when what identifies it changes.
  }, [enabled, streamUrl, qc, batchMs, firstFetchWaitMs]);

  const value = useMemo<Shared>(
    () => ({ api: apiRef.current, enabled, ready, info, pollIntervalMs, connection }),
    [enabled, ready, info, pollIntervalMs, api],
  );
  return createElement(Context.Provider, { value }, children);
}

function useShared(hook: string): Shared {
  const shared = useContext(Context);
  if (!shared) throw new Error(`pgsse-client/react: ${hook}() must be used inside <PgsseProvider>`);
  return shared;
}

/**
 * The notifications of the signed-in user, kept live by the provider's stream. Any number of
 * components may call it: they share one stream and one set of queries.
 */
export function useNotifications<N extends BaseNotification = RegisteredNotification>(): UseNotificationsResult<N> {
  const { api, enabled, ready, info, pollIntervalMs, connection } = useShared('useNotifications');
  const qc = useQueryClient();
  const listKey = api.listKey ?? DEFAULT_LIST_KEY;
  const countKey = api.unreadCountKey ?? DEFAULT_COUNT_KEY;
  const degraded = enabled && (info?.degraded ?? false);
  const live = enabled && info?.status === 'open';
  const queryOptions = {
    enabled: enabled && ready,
    // While live the events keep the cache exact: no refetch on mount, focus or interval (the
    // watchdog notices a dead connection). While degraded, poll until the stream is back.
    staleTime: live ? Infinity : 0,
    refetchInterval: degraded ? pollIntervalMs : (false as const),
    refetchOnWindowFocus: degraded,
  };
  const list = useQuery({ queryKey: listKey, queryFn: () => api.list(), ...queryOptions });
  const count = useQuery({ queryKey: countKey, queryFn: () => api.unreadCount(), ...queryOptions });

  // While live, a mutation's own events update the cache; otherwise refetch after it.
  const onSuccess = async () => {
    if (connection.current?.status === 'open') return;
    await Promise.all([
      qc.invalidateQueries({ queryKey: listKey, exact: true }),
      qc.invalidateQueries({ queryKey: countKey, exact: true }),
    ]);
  };
  const markAsRead = useMutation({ mutationFn: (id: NotificationId) => api.markAsRead(id), onSuccess });
  const markAllAsRead = useMutation({ mutationFn: () => api.markAllAsRead(), onSuccess });
  const deleteOne = useMutation({ mutationFn: (id: NotificationId) => api.deleteNotification(id), onSuccess });
  const deleteAllRead = useMutation({ mutationFn: () => api.deleteAllRead(), onSuccess });

  const unreadCount = count.data ?? 0;
  return {
    notifications: (list.data ?? []) as N[],
    unreadCount,
    hasUnread: unreadCount > 0,
    isLoading: enabled && ((list.data === undefined && !list.isError) || (count.data === undefined && !count.isError)),
    markAsRead: (id) => markAsRead.mutate(id),
    markAllAsRead: () => markAllAsRead.mutate(),
    deleteNotification: (id) => deleteOne.mutate(id),
    deleteAllRead: () => deleteAllRead.mutate(),
    refetch: async () => {
      await Promise.all([list.refetch(), count.refetch()]);
    },
  };
}

/** The provider's connection status, for an indicator: `{ status, info, isLive, degraded, reconnect }`. */
export function useNotificationSSE(): UseNotificationSSEResult {
  const { enabled, info, connection } = useShared('useNotificationSSE');
  const status: ConnectionStatus = enabled ? (info?.status ?? 'connecting') : 'closed';
  return {
    status,
    info,
    isLive: status === 'open',
    degraded: enabled && (info?.degraded ?? false),
    reconnect: () => connection.current?.reconnect(),
  };
}
