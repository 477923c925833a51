// Type-level only (tsc checks it, the app never imports it): a real tRPC 11 client of a router with
// the seed app's procedures, returning the app's own NotificationWithMetadata through superjson,
// fits `trpcNotificationsApi` as it is: no cast, no wrapper.
import { initTRPC } from '@trpc/server';
import { createTRPCClient, httpBatchLink } from '@trpc/client';
import superjson from 'superjson';
import { trpcNotificationsApi, type NotificationsApi } from 'pgsse-client/react';
import { fromRow, type NotificationWithMetadata } from './api';

const t = initTRPC.create({ transformer: superjson });
const byId = (input: unknown) => input as { id: string };
const rows: NotificationWithMetadata[] = [];

const appRouter = t.router({
  notifications: t.router({
    list: t.procedure.query((): NotificationWithMetadata[] => rows),
    getUnreadCount: t.procedure.query(() => rows.filter((n) => !n.read).length),
    markAsRead: t.procedure.input(byId).mutation(({ input }) => ({ id: input.id })),
    markAllAsRead: t.procedure.mutation(() => ({ count: rows.length })),
    delete: t.procedure.input(byId).mutation(({ input }) => ({ id: input.id })),
    deleteAllRead: t.procedure.mutation(() => ({ count: 0 })),
  }),
});
type AppRouter = typeof appRouter;

export function apiFromTrpc(url: string): NotificationsApi<NotificationWithMetadata> {
  const client = createTRPCClient<AppRouter>({ links: [httpBatchLink({ url, transformer: superjson })] });
  return trpcNotificationsApi(client, { fromRow });
}
