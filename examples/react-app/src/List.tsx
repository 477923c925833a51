import { useNotifications } from 'pgsse-client/react';
import { renders } from './renders';

/** The page's list, from the same queries as the bell (no second stream, no second fetch). */
export function List() {
  renders.list += 1;
  const { notifications, isLoading, markAsRead, deleteNotification, deleteAllRead, refetch } = useNotifications();
  if (isLoading) return <p data-testid="list-loading">Loading…</p>;
  return (
    <section>
      <button type="button" data-testid="delete-read" onClick={() => deleteAllRead()}>
        Delete read
      </button>
      <button type="button" data-testid="refetch" onClick={() => void refetch()}>
        Refetch
      </button>
      <ul data-testid="list">
        {notifications.map((n) => (
          <li key={n.id} data-id={n.id} data-read={String(n.read)} data-type={n.type}>
            <span className="title">{n.title}</span> <time>{n.createdAt.toISOString()}</time>
            {!n.read && (
              <button type="button" data-action="read" onClick={() => markAsRead(n.id)}>
                Mark read
              </button>
            )}
            <button type="button" data-action="delete" onClick={() => deleteNotification(n.id)}>
              Delete
            </button>
          </li>
        ))}
      </ul>
    </section>
  );
}
