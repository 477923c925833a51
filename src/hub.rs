//! Hub: routes each encoded event to every open stream of its user, without ever waiting on one.
//!
//! Each stream owns a small queue bounded in bytes. Publishing appends the shared `Bytes` (encoded
//! once per event) to each matching queue and wakes the stream's task; a queue that would exceed
//! its bound is closed instead, so a client that stops reading is dropped alone and everyone else
//! keeps their latency. Locks are held only for these appends, never across a socket write.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};

/// Default bound on bytes queued for one stream before it is closed as too slow.
pub const DEFAULT_QUEUE_BYTES: usize = 1024 * 1024;

/// One encoded event on its way to a stream. `log_id` is the `pgsse.events.id` (0 for events
/// that are not in the log, such as heartbeats) so a resuming stream can skip what replay sent.
#[derive(Debug, Clone)]
pub struct Item {
    pub log_id: i64,
    pub bytes: Bytes,
}

/// Why a stream ended from the hub's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client did not read fast enough and its queue overflowed.
    SlowClient,
    /// The gateway is shutting down or draining.
    Shutdown,
    /// The stream's credential is no longer valid.
    AuthExpired,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    bytes: usize,
    waker: Option<Waker>,
    closed: Option<CloseReason>,
}

/// The hub's side of one stream.
pub struct Conn {
    id: u64,
    user: Arc<str>,
    queue: Mutex<Queue>,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue inconsistent (every mutation is a
        // single push/pop), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends, or closes the queue if `limit` would be exceeded. Returns false if closed.
    fn push(&self, item: &Item, limit: usize) -> bool {
        let mut q = self.lock();
        if q.closed.is_some() {
            return false;
        }
        if q.bytes + item.bytes.len() > limit && !q.items.is_empty() {
            q.items.clear();
            q.bytes = 0;
            q.closed = Some(CloseReason::SlowClient);
        } else {
            q.bytes += item.bytes.len();
            q.items.push_back(item.clone());
        }
        let open = q.closed.is_none();
        if let Some(w) = q.waker.take() {
            w.wake();
        }
        open
    }

    fn close(&self, reason: CloseReason) {
        let mut q = self.lock();
        if q.closed.is_none() {
            q.closed = Some(reason);
        }
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }
}

/// Counters the hub keeps (read by metrics and tests).
#[derive(Debug, Default)]
pub struct HubStats {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    pub delivered: AtomicU64,
    pub slow_client_closes: AtomicU64,
}

/// Routes events to streams. Cheap to share: wrap in an `Arc`.
pub struct Hub {
    users: Mutex<HashMap<Arc<str>, Vec<Arc<Conn>>>>,
    next_id: AtomicU64,
    queue_limit: usize,
    pub stats: HubStats,
}

impl Hub {
    pub fn new(queue_limit: usize) -> Self {
        Self {
            users: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            queue_limit: queue_limit.max(1),
            stats: HubStats::default(),
        }
    }

    fn users(&self) -> MutexGuard<'_, HashMap<Arc<str>, Vec<Arc<Conn>>>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a stream for `user`. Events published after this call reach it; dropping the
    /// returned `Subscription` removes it at once.
    pub fn subscribe(self: &Arc<Self>, user: Arc<str>) -> Subscription {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user: user.clone(),
            queue: Mutex::new(Queue::default()),
        });
        self.users().entry(user).or_default().push(conn.clone());
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        Subscription { hub: self.clone(), conn }
    }

    /// Sends to every stream of `user`, or to every stream when `user` is `None`.
    /// Returns how many streams it was queued for.
    pub fn publish(&self, user: Option<&str>, item: &Item) -> usize {
        let users = self.users();
        let mut n = 0;
        let mut deliver = |conns: &Vec<Arc<Conn>>| {
            for c in conns {
                if c.push(item, self.queue_limit) {
                    n += 1;
                }
            }
        };
        match user {
            Some(u) => {
                if let Some(conns) = users.get(u) {
                    deliver(conns);
                }
            }
            None => users.values().for_each(&mut deliver),
        }
        self.stats.delivered.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Closes every stream (shutdown), or only `user`'s streams.
    pub fn close_all(&self, user: Option<&str>, reason: CloseReason) {
        let users = self.users();
        match user {
            Some(u) => users.get(u).into_iter().flatten().for_each(|c| c.close(reason)),
            None => users.values().flatten().for_each(|c| c.close(reason)),
        }
    }

    /// Open streams right now.
    pub fn connection_count(&self) -> usize {
        self.users().values().map(Vec::len).sum()
    }

    /// Open streams of one user.
    pub fn user_connection_count(&self, user: &str) -> usize {
        self.users().get(user).map_or(0, Vec::len)
    }

    fn remove(&self, conn: &Arc<Conn>) {
        let mut users = self.users();
        if let Some(conns) = users.get_mut(&conn.user) {
            conns.retain(|c| c.id != conn.id);
            if conns.is_empty() {
                users.remove(&conn.user);
            }
        }
        drop(users);
        self.stats.closed.fetch_add(1, Ordering::Relaxed);
        if conn.lock().closed == Some(CloseReason::SlowClient) {
            self.stats.slow_client_closes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A stream's membership in the hub; the stream's task polls it for bytes to write.
pub struct Subscription {
    hub: Arc<Hub>,
    conn: Arc<Conn>,
}

/// What `Subscription::poll_next` yields.
#[derive(Debug)]
pub enum Next {
    /// Bytes to write (possibly several events coalesced into one write).
    Data(Bytes),
    /// The hub closed this stream.
    Closed(CloseReason),
}

impl Subscription {
    pub fn id(&self) -> u64 {
        self.conn.id
    }

    pub fn user(&self) -> &Arc<str> {
        &self.conn.user
    }

    /// Closes this stream from outside the hub (e.g. its token expired).
    pub fn close(&self, reason: CloseReason) {
        self.conn.close(reason);
    }

    /// Takes everything queued, skipping items whose `log_id` `skip` says were already sent.
    pub fn poll_next(&self, cx: &mut Context<'_>, mut skip: impl FnMut(i64) -> bool) -> Poll<Next> {
        let mut q = self.conn.lock();
        let mut first: Option<Bytes> = None;
        let mut more: Option<BytesMut> = None;
        while let Some(item) = q.items.pop_front() {
            q.bytes -= item.bytes.len();
            if item.log_id != 0 && skip(item.log_id) {
                continue;
            }
            match (&first, &mut more) {
                (None, _) => first = Some(item.bytes),
                (Some(f), None) => {
                    let mut m = BytesMut::with_capacity(f.len() + item.bytes.len() + q.bytes);
                    m.extend_from_slice(f);
                    m.extend_from_slice(&item.bytes);
                    more = Some(m);
                }
                (Some(_), Some(m)) => m.extend_from_slice(&item.bytes),
            }
        }
        if let Some(m) = more {
            return Poll::Ready(Next::Data(m.freeze()));
        }
        if let Some(f) = first {
            return Poll::Ready(Next::Data(f));
        }
        if let Some(reason) = q.closed {
            return Poll::Ready(Next::Closed(reason));
        }
        match &q.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => q.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn item(log_id: i64, s: &str) -> Item {
        Item { log_id, bytes: Bytes::copy_from_slice(s.as_bytes()) }
    }

    fn next(sub: &Subscription) -> Poll<Next> {
        sub.poll_next(&mut Context::from_waker(Waker::noop()), |_| false)
    }

    fn data(p: Poll<Next>) -> String {
        match p {
            Poll::Ready(Next::Data(b)) => String::from_utf8(b.to_vec()).expect("utf8"),
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[test]
    fn routes_by_user_and_broadcasts() {
        let hub = Arc::new(Hub::new(1024));
        let a1 = hub.subscribe("a".into());
        let a2 = hub.subscribe("a".into());
        let b = hub.subscribe("b".into());
        assert_eq!(hub.publish(Some("a"), &item(1, "x")), 2);
        assert_eq!(hub.publish(Some("nobody"), &item(2, "y")), 0);
        assert_eq!(hub.publish(None, &item(3, "z")), 3);
        assert_eq!(data(next(&a1)), "xz");
        assert_eq!(data(next(&a2)), "xz");
        assert_eq!(data(next(&b)), "z");
        assert!(next(&b).is_pending());
    }

    #[test]
    fn drop_unsubscribes_at_once() {
        let hub = Arc::new(Hub::new(1024));
        let a = hub.subscribe("a".into());
        let a2 = hub.subscribe("a".into());
        assert_eq!(hub.connection_count(), 2);
        drop(a);
        assert_eq!(hub.user_connection_count("a"), 1);
        drop(a2);
        assert_eq!(hub.connection_count(), 0);
        assert_eq!(hub.stats.closed.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn overflow_closes_only_the_slow_stream() {
        let hub = Arc::new(Hub::new(10));
        let slow = hub.subscribe("a".into());
        let fast = hub.subscribe("a".into());
        for i in 0..5 {
            hub.publish(Some("a"), &item(i + 1, "abcd"));
            let _ = data(next(&fast));
        }
        assert!(matches!(next(&slow), Poll::Ready(Next::Closed(CloseReason::SlowClient))));
        assert!(next(&fast).is_pending());
        drop(slow);
        assert_eq!(hub.stats.slow_client_closes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn one_item_larger_than_the_limit_still_goes_to_an_empty_queue() {
        let hub = Arc::new(Hub::new(4));
        let s = hub.subscribe("a".into());
        hub.publish(Some("a"), &item(1, "0123456789"));
        assert_eq!(data(next(&s)), "0123456789");
    }

    #[test]
    fn skip_filters_replayed_ids() {
        let hub = Arc::new(Hub::new(1024));
        let s = hub.subscribe("a".into());
        hub.publish(Some("a"), &item(1, "a"));
        hub.publish(Some("a"), &item(2, "b"));
        hub.publish(Some("a"), &item(0, "h"));
        let p = s.poll_next(&mut Context::from_waker(Waker::noop()), |id| id == 1);
        assert_eq!(data(p), "bh");
    }

    #[test]
    fn close_all_ends_streams_after_queued_data() {
        let hub = Arc::new(Hub::new(1024));
        let s = hub.subscribe("a".into());
        hub.publish(Some("a"), &item(1, "last"));
        hub.close_all(None, CloseReason::Shutdown);
        assert_eq!(data(next(&s)), "last");
        assert!(matches!(next(&s), Poll::Ready(Next::Closed(CloseReason::Shutdown))));
    }
}
