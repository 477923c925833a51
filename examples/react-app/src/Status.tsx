import { useNotificationSSE } from 'pgsse-client/react';

/** The connection's status, for the header. */
export function Status() {
  const { status, info, degraded } = useNotificationSSE();
  return (
    <span data-testid="status" data-status={status} data-degraded={String(degraded)} title={info?.reason ?? ''}>
      {status}
    </span>
  );
}
