/**
 * useNotifications: the seed app's notifications hook, fed by pgsse's live stream instead of
 * polling. Same return value as before (`notifications`, `unreadCount`, `hasUnread`, `isLoading`,
 * `markAsRead`, `markAllAsRead`, `deleteNotification`, `deleteAllRead`, `refetch`) plus
 * `connectionStatus` (and `connection`, the details: why it is not open, whether we poll).
 *
 * How it stays exact:
 * - The two TanStack queries (`notifications.list`, `notifications.getUnreadCount`) are fetched as
 *   before, but with no `refetchInterval` while the stream is open.
 * - On a fresh connection (`connected`, not resumed) and on `reset` the client calls `onResync`:
 *   both queries are invalidated, so whatever happened before the stream opened is picked up
 *   (the first fetch and the stream race; this closes the gap).
 * - Between two resyncs each event patches the cache: `created` prepends (an upsert: duplicates
 *   after a resume are harmless), `read`/`updated` replace, `deleted` removes, and the unread count
 *   moves with them. When a patch cannot know the count (the row is not in the cached page), the
 *   count is refetched instead of guessed.
 * - When the stream cannot be had (401/403/404, or failing repeatedly: `connection.degraded`), the
 *   queries fall back to polling every `pollIntervalMs` and refetching on window focus, until the
 *   stream is back. Mutations then invalidate the queries themselves; while the stream is open,
 *   their own events update the cache.
 *
 * Not built in CI: copy it into the app (and `clients/js/pgsse-client.js` beside it, or depend on
 * that folder as the `pgsse-client` package).
 */
import { useEffect, useRef, useState } from 'react';
import { useMutation, useQuery, useQueryClient, type QueryKey } from '@tanstack/react-query';
import {
  connectNotifications,
  type Connection,
  type ConnectionInfo,
  type ConnectionStatus,
  type NotificationRow,
} from '../../clients/js/pgsse-client.js';

/** The seed app's notification, as its tRPC router returns it. */
export interface Notification {
  id: number;
  userId: string;
  type: string;
  title: string;
  message: string;
  read: boolean;
  metadata: unknown;
  createdAt: string | Date;
}

type Id = number | string;

/** What the hook needs from the app's API; `trpcNotificationsApi` builds it from a tRPC client. */
export interface NotificationsApi<N extends { id: Id; read: boolean }> {
  list: { queryKey: QueryKey; queryFn: () => Promise<N[]> };
  unreadCount: { queryKey: QueryKey; queryFn: () => Promise<number> };
  markAsRead: (id: N['id']) => Promise<unknown>;
  markAllAsRead: () => Promise<unknown>;
  deleteNotification: (id: N['id']) => Promise<unknown>;
  deleteAllRead: () => Promise<unknown>;
  /** Stream rows carry the table's columns as named in SQL (`user_id`, `created_at`): map them. */
  fromRow: (row: NotificationRow) => N;
}

/** The procedures of a tRPC (vanilla) client the adapter calls. */
export interface TrpcNotificationsClient<N> {
  notifications: {
    list: { query: () => Promise<N[]> };
    getUnreadCount: { query: () => Promise<number> };
    markAsRead: { mutate: (input: { id: number }) => Promise<unknown> };
    markAllAsRead: { mutate: () => Promise<unknown> };
    delete: { mutate: (input: { id: number }) => Promise<unknown> };
    deleteAllRead: { mutate: () => Promise<unknown> };
  };
}

/** `user_id` / `created_at` rows -> the seed app's camelCase `Notification`. */
export function notificationFromRow(row: NotificationRow): Notification {
  return {
    id: Number(row.id),
    userId: String(row.user_id ?? ''),
    type: String(row.type ?? 'info'),
    title: String(row.title ?? ''),
    message: String(row.message ?? ''),
    read: Boolean(row.read),
    metadata: row.metadata ?? null,
    createdAt: String(row.created_at ?? ''),
  };
}

/**
 * The adapter for the seed app's tRPC router. Query keys follow @trpc/react-query's format, so
 * the hook shares its cache with any `trpc.notifications.list.useQuery()` elsewhere in the app.
 */
export function trpcNotificationsApi(client: TrpcNotificationsClient<Notification>): NotificationsApi<Notification> {
  return {
    list: { queryKey: [['notifications', 'list'], { type: 'query' }], queryFn: () => client.notifications.list.query() },
    unreadCount: {
      queryKey: [['notifications', 'getUnreadCount'], { type: 'query' }],
      queryFn: () => client.notifications.getUnreadCount.query(),
    },
    markAsRead: (id) => client.notifications.markAsRead.mutate({ id }),
    markAllAsRead: () => client.notifications.markAllAsRead.mutate(),
    deleteNotification: (id) => client.notifications.delete.mutate({ id }),
    deleteAllRead: () => client.notifications.deleteAllRead.mutate(),
    fromRow: notificationFromRow,
  };
}

export interface UseNotificationsOptions<N extends { id: Id; read: boolean }> {
  api: NotificationsApi<N>;
  /** The gateway's stream, same origin as the app (through its proxy). */
  streamUrl?: string;
  /** For a gateway on another origin (with --cors-origin): send cookies. */
  withCredentials?: boolean;
  /** Polling period while the stream cannot be had. */
  pollIntervalMs?: number;
  /** False while signed out: no queries, no stream. */
  enabled?: boolean;
}

export function useNotifications<N extends { id: Id; read: boolean } = Notification>({
  api,
  streamUrl = '/api/notifications/stream',
  withCredentials = false,
  pollIntervalMs = 30_000,
  enabled = true,
}: UseNotificationsOptions<N>) {
  const queryClient = useQueryClient();
  const [connection, setConnection] = useState<ConnectionInfo | null>(null);
  const connRef = useRef<Connection | null>(null);
  const apiRef = useRef(api);
  apiRef.current = api;

  const degraded = enabled && (connection?.degraded ?? false);
  const live = enabled && connection?.status === 'open';
  const queryOptions = {
    enabled,
    // No polling while live; while degraded, poll and refetch on focus until the stream is back.
    refetchInterval: degraded ? pollIntervalMs : (false as const),
    refetchOnWindowFocus: degraded,
  };
  const listQuery = useQuery({ queryKey: api.list.queryKey, queryFn: api.list.queryFn, ...queryOptions });
  const countQuery = useQuery({ queryKey: api.unreadCount.queryKey, queryFn: api.unreadCount.queryFn, ...queryOptions });

  useEffect(() => {
    if (!enabled) return undefined;
    const listKey = () => apiRef.current.list.queryKey;
    const countKey = () => apiRef.current.unreadCount.queryKey;
    const cached = () => queryClient.getQueryData<N[]>(listKey());
    const setList = (rows: N[]) => queryClient.setQueryData<N[]>(listKey(), rows);
    const moveCount = (delta: number) =>
      queryClient.setQueryData<number>(countKey(), (n) => (n === undefined ? n : Math.max(0, n + delta)));
    const refetchCount = () => void queryClient.invalidateQueries({ queryKey: countKey() });
    const resync = () => {
      void queryClient.invalidateQueries({ queryKey: listKey() });
      refetchCount();
    };

    const conn = connectNotifications(
      streamUrl,
      {
        onResync: resync,
        onStatus: (_status, info) => setConnection(info),
        onCreated: (row) => {
          const n = apiRef.current.fromRow(row);
          const rows = cached();
          if (!rows) return resync(); // the first fetch is still out; let it include this row
          const old = rows.find((x) => x.id === n.id);
          setList(old ? rows.map((x) => (x.id === n.id ? n : x)) : [n, ...rows]);
          if (!old && !n.read) moveCount(1);
          else if (old && old.read !== n.read) moveCount(n.read ? -1 : 1);
        },
        onRead: (id) => {
          const rows = cached();
          const old = rows?.find((x) => x.id === id);
          if (!rows || !old) return refetchCount();
          if (old.read) return undefined; // a duplicate after a resume
          setList(rows.map((x) => (x.id === id ? { ...x, read: true } : x)));
          moveCount(-1);
          return undefined;
        },
        onUpdated: (row) => {
          const n = apiRef.current.fromRow(row);
          const rows = cached();
          const old = rows?.find((x) => x.id === n.id);
          if (!rows || !old) return refetchCount(); // e.g. marked unread beyond the cached page
          setList(rows.map((x) => (x.id === n.id ? n : x)));
          if (old.read !== n.read) moveCount(n.read ? -1 : 1);
          return undefined;
        },
        onDeleted: (id) => {
          const rows = cached();
          const old = rows?.find((x) => x.id === id);
          if (!rows || !old) return refetchCount();
          setList(rows.filter((x) => x.id !== id));
          if (!old.read) moveCount(-1);
          return undefined;
        },
      },
      { withCredentials },
    );
    connRef.current = conn;
    return () => {
      conn.close();
      connRef.current = null;
    };
  }, [enabled, streamUrl, withCredentials, queryClient]);

  // While live, a mutation's own events update the cache; otherwise refetch after it.
  const afterMutation = async () => {
    if (connRef.current?.status === 'open') return;
    await Promise.all([
      queryClient.invalidateQueries({ queryKey: api.list.queryKey }),
      queryClient.invalidateQueries({ queryKey: api.unreadCount.queryKey }),
    ]);
  };
  const markAsRead = useMutation({ mutationFn: (id: N['id']) => api.markAsRead(id), onSuccess: afterMutation });
  const markAllAsRead = useMutation({ mutationFn: () => api.markAllAsRead(), onSuccess: afterMutation });
  const deleteNotification = useMutation({ mutationFn: (id: N['id']) => api.deleteNotification(id), onSuccess: afterMutation });
  const deleteAllRead = useMutation({ mutationFn: () => api.deleteAllRead(), onSuccess: afterMutation });

  const unreadCount = countQuery.data ?? 0;
  const connectionStatus: ConnectionStatus = enabled ? (connection?.status ?? 'connecting') : 'closed';
  return {
    notifications: listQuery.data ?? [],
    unreadCount,
    hasUnread: unreadCount > 0,
    isLoading: listQuery.isLoading || countQuery.isLoading,
    markAsRead: (id: N['id']) => markAsRead.mutate(id),
    markAllAsRead: () => markAllAsRead.mutate(),
    deleteNotification: (id: N['id']) => deleteNotification.mutate(id),
    deleteAllRead: () => deleteAllRead.mutate(),
    refetch: async () => {
      await Promise.all([listQuery.refetch(), countQuery.refetch()]);
    },
    connectionStatus,
    /** Why the stream is not open (`reason`), and whether the hook polls (`degraded`). */
    connection,
    /** True while events arrive live. */
    live,
  };
}
