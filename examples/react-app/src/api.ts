// The app's side: its notification type and a tRPC-shaped client. A real app passes its tRPC
// client to `trpcNotificationsApi`; this example has no tRPC server, so the same procedures are
// written over the demo's REST API (`pgsse demo` serves it under /demo/api/).
import { camelCaseRow, trpcNotificationsApi, type NotificationRow } from 'pgsse-client/react';

/** The app's notification, as its API returns it: a string id, a `Date`, a union of types. */
export interface NotificationWithMetadata {
  id: string;
  userId: string;
  type: 'info' | 'success' | 'warning' | 'error';
  title: string;
  message: string;
  read: boolean;
  metadata: Record<string, unknown> | null;
  createdAt: Date;
}

// Once for the whole app: `useNotifications()` then returns NotificationWithMetadata[].
declare module 'pgsse-client/react' {
  interface Register {
    notification: NotificationWithMetadata;
  }
}

const TYPES = ['info', 'success', 'warning', 'error'] as const;

/** A row of the table (the API's JSON or the stream's) as the app's type. */
export function fromRow(row: NotificationRow): NotificationWithMetadata {
  const r = camelCaseRow<Record<string, unknown>>(row);
  const type = TYPES.find((t) => t === r.type) ?? 'info';
  return {
    id: String(row.id),
    userId: String(r.userId ?? ''),
    type,
    title: String(r.title ?? ''),
    message: String(r.message ?? ''),
    read: Boolean(r.read),
    metadata: (r.metadata as Record<string, unknown> | null) ?? null,
    createdAt: r.createdAt instanceof Date ? r.createdAt : new Date(String(r.createdAt)),
  };
}

async function call<T>(method: string, path: string): Promise<T> {
  const res = await fetch(`/demo/api/${path}`, { method, credentials: 'same-origin' });
  if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status}`);
  return (await res.json()) as T;
}

/** Shaped like `createTRPCClient<AppRouter>(...)` for the seed app's `notifications` router. */
export const trpc = {
  notifications: {
    list: { query: async () => (await call<NotificationRow[]>('GET', 'notifications')).map(fromRow) },
    getUnreadCount: { query: async () => (await call<{ count: number }>('GET', 'unread-count')).count },
    markAsRead: { mutate: (input: { id: string }) => call('POST', `notifications/${input.id}/read`) },
    markAllAsRead: { mutate: () => call('POST', 'notifications/read-all') },
    delete: { mutate: (input: { id: string }) => call('DELETE', `notifications/${input.id}`) },
    deleteAllRead: { mutate: () => call('POST', 'notifications/delete-read') },
  },
};

/** `patch` applies events to the cache; `refetch` refetches once per batch of events instead
 * (for rows with computed or joined fields). The page picks it with `?live=refetch`. */
export const notificationsApi = (liveUpdates: 'patch' | 'refetch' = 'patch') =>
  trpcNotificationsApi(trpc, { fromRow, liveUpdates });

/** The demo signs a browser in with a cookie; an app would already have its session. */
export async function signIn(user = 'alice'): Promise<void> {
  const me = await call<{ user: string | null }>('GET', 'me');
  if (!me.user) await call('POST', `login?user=${user}`);
}
