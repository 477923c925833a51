import { useNotifications } from 'pgsse-client/react';
import { renders } from './renders';

/** The header's bell: the unread count and the newest title, from the shared queries. */
export function Bell() {
  renders.bell += 1;
  const { notifications, unreadCount, hasUnread, isLoading, markAllAsRead } = useNotifications();
  const newest = notifications[0];
  if (isLoading) return <span data-testid="bell-loading">…</span>;
  return (
    <span data-testid="bell" data-count={unreadCount}>
      🔔 <span className="badge" data-testid="bell-count">{unreadCount}</span>{' '}
      <span data-testid="bell-newest" data-age-ms={newest ? Date.now() - newest.createdAt.getTime() : ''}>
        {newest?.title ?? ''}
      </span>
      <button type="button" data-testid="mark-all" disabled={!hasUnread} onClick={() => markAllAsRead()}>
        Mark all read
      </button>
    </span>
  );
}
