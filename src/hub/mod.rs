//! Hub: routes each encoded event to every open stream of its user, without ever waiting on one.
//!
//! Each stream owns a queue bounded in bytes. Publishing appends the shared `Bytes` (encoded once
//! per event) to each matching queue and wakes the stream's task. A queue that would exceed its
//! bound stops queueing instead: it is emptied and marked *behind*, and the stream's task reads
//! what it missed back from the log, page by page, as fast as its client takes it (`http/body.rs`),
//! then rejoins. A stream is cut only when its client does not drain: bytes waiting longer than
//! `Limits::stall` without the writer taking any. Locks are held only for these appends, never
//! across a socket write or a query.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

/// How a stream's connection task is told to cut it at once (hyper-written streams, whose writes
/// the hub cannot watch), and how that task cuts the stream it serves.
#[derive(Default)]
pub struct Abort {
    notify: Notify,
    conn: Mutex<Option<Weak<Conn>>>,
}

impl Abort {
    /// Resolves once the hub closed or cut the stream.
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Cuts the stream this connection serves, unless it was already cut.
    pub fn cut(&self, reason: CloseReason) {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(conn) = conn.and_then(|w| w.upgrade()) {
            conn.cut(reason);
        }
    }
}

use crate::auth::session::SessionKey;
use crate::metrics::Metrics;

/// One encoded event on its way to a stream. `log_id` and `tx` are the event's
/// `pgsse.events.id` and transaction (0 for what is not in the log, such as heartbeats), so a
/// resuming stream can skip what its replay or its earlier connection already delivered.
#[derive(Debug, Clone)]
pub struct Item {
    pub log_id: i64,
    pub tx: u64,
    pub bytes: Bytes,
}

impl Item {
    /// `log_id` of a history reset (log ids are positive): a stream that resumed forgets what it
    /// skipped, since positions of the old history say nothing about the new one.
    pub const RESYNC: i64 = -1;

    /// Something that is not a log event (heartbeat, notice, `retry:`): never skipped.
    pub fn notice(bytes: Bytes) -> Self {
        Self { log_id: 0, tx: 0, bytes }
    }

    /// The `reset` every stream gets when the database's history changed.
    pub fn resync(bytes: Bytes) -> Self {
        Self { log_id: Self::RESYNC, tx: 0, bytes }
    }
}

/// Why a stream ended from the hub's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Cut: the client took none of its bytes for `Limits::stall`.
    SlowClient,
    /// The gateway is shutting down or draining.
    Shutdown,
    /// The stream's credential is no longer valid.
    AuthExpired,
    /// Cut: the stream fell behind and could not read its missed events back from the log (the
    /// client resumes, and the resume replays or resets).
    CatchUpFailed,
    /// Cut: the client kept sending bytes on its open stream.
    Upload,
    /// Cut: the gateway closed the stream but the client did not take its last bytes in time.
    NotReading,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::SlowClient => "slow_client",
            CloseReason::Shutdown => "shutdown",
            CloseReason::AuthExpired => "auth_expired",
            CloseReason::CatchUpFailed => "catch_up_failed",
            CloseReason::Upload => "upload",
            CloseReason::NotReading => "not_reading_at_close",
        }
    }

    /// What the log line of a cut says.
    fn message(self) -> &'static str {
        match self {
            CloseReason::SlowClient => "the client took none of its bytes within --slow-client-timeout",
            CloseReason::CatchUpFailed => "the stream fell behind and its missed events could not be read back",
            CloseReason::Upload => "the client kept sending bytes on its open stream",
            CloseReason::NotReading => "the gateway closed the stream and the client did not take its last bytes",
            CloseReason::Shutdown | CloseReason::AuthExpired => "closed",
        }
    }

    /// The stream was cut (dropped without a graceful end), not closed.
    pub fn is_cut(self) -> bool {
        !matches!(self, CloseReason::Shutdown | CloseReason::AuthExpired)
    }
}

/// Why `Hub::subscribe` refused a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `--max-connections` streams are open.
    Gateway,
    /// `--max-connections-per-user` streams of this user are open.
    User,
}

/// Limits checked atomically with registration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes queued for one stream before it stops queueing and catches up from the log.
    pub queue_bytes: usize,
    /// How long bytes may wait without the stream's writer taking any before it is cut.
    pub stall: Duration,
    pub max_connections: usize,
    pub max_per_user: usize,
    /// Heartbeat slices: streams are kept in this many groups (by stream id) so one heartbeat
    /// tick touches only its group.
    pub heartbeat_slices: usize,
}

/// The hub's side of one stream.
pub struct Conn {
    id: u64,
    user: Arc<str>,
    queue: Mutex<Queue>,
    /// Fired when the connection must be cut at once (its client stopped reading, so a graceful
    /// end would never be written). Streams written by their own task watch the queue instead
    /// (`Subscription::poll_cut`) and pass `None`.
    abort: Option<Arc<Abort>>,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue inconsistent (every mutation is a
        // single push/pop), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends (unless the writer already has it); over `limits.queue_bytes` the queue is emptied
    /// and goes behind instead. A stream whose bytes waited longer than `limits.stall` is cut.
    /// Returns false if the stream is closed.
    fn push(&self, item: &Item, limits: &Limits, now: Instant) -> bool {
        let mut q = self.lock();
        if q.closed.is_some() {
            return false;
        }
        if q.waiting_since.is_some_and(|t| now.saturating_duration_since(t) > limits.stall) {
            drop(q);
            self.cut(CloseReason::SlowClient);
            return false;
        }
        if q.delivered(item) {
            return true;
        }
        if q.behind {
            if item.log_id == Item::RESYNC {
                // Positions of the old history cannot be caught up from: the client resumes and
                // gets the history's `reset`.
                drop(q);
                self.cut(CloseReason::CatchUpFailed);
                return false;
            }
            // The catch-up reads it from the log; until the writer takes a page, it waits.
            q.waiting_since.get_or_insert(now);
            return true;
        }
        if q.bytes + item.bytes.len() > limits.queue_bytes && !q.items.is_empty() {
            q.clear();
            q.behind = true;
        } else {
            q.bytes += item.bytes.len();
            q.items.push(item.clone());
        }
        q.waiting_since.get_or_insert(now);
        q.wake();
        true
    }

    /// Queues `last` (beyond the byte bound, unless behind) and closes: the stream ends after
    /// writing it, or is cut if its client does not take it (`Subscription::poll_cut`).
    pub fn finish(&self, last: &Item, reason: CloseReason) {
        {
            let mut q = self.lock();
            if q.closed.is_none() && !q.behind {
                q.bytes += last.bytes.len();
                q.items.push(last.clone());
            }
        }
        self.close(reason);
    }

    fn close(&self, reason: CloseReason) {
        let mut q = self.lock();
        if q.closed.is_none() {
            q.closed = Some(reason);
            if let Some(abort) = &self.abort {
                abort.notify.notify_one();
            }
        }
        q.wake();
    }

    /// Ends the stream at once: whatever is queued is dropped, the writer gives up.
    fn cut(&self, reason: CloseReason) {
        let mut q = self.lock();
        if q.closed.is_some_and(CloseReason::is_cut) {
            return;
        }
        q.clear();
        q.closed = Some(reason);
        if let Some(abort) = &self.abort {
            abort.notify.notify_one();
        }
        q.wake();
    }
}

/// Every open stream, by user and by heartbeat slice, under one lock.
struct Streams {
    by_user: HashMap<Arc<str>, Vec<Arc<Conn>>>,
    slices: Vec<Vec<Arc<Conn>>>,
}

impl Streams {
    fn slice(&mut self, id: u64) -> &mut Vec<Arc<Conn>> {
        let n = self.slices.len() as u64;
        &mut self.slices[(id % n) as usize]
    }
}

/// Routes events to streams. Cheap to share: wrap in an `Arc`.
pub struct Hub {
    streams: Mutex<Streams>,
    /// Streams to close when their credential expires: (unix seconds, stream id) -> stream.
    expiries: Mutex<BTreeMap<(u64, u64), Weak<Conn>>>,
    /// Streams opened with a session cookie, by session, so revoking a session closes them.
    sessions: Mutex<HashMap<SessionKey, Vec<Weak<Conn>>>>,
    count: AtomicUsize,
    next_id: AtomicU64,
    limits: Limits,
    pub metrics: Metrics,
}

impl Hub {
    pub fn new(limits: Limits, metrics: Metrics) -> Self {
        Self {
            streams: Mutex::new(Streams {
                by_user: HashMap::new(),
                slices: (0..limits.heartbeat_slices.max(1)).map(|_| Vec::new()).collect(),
            }),
            expiries: Mutex::new(BTreeMap::new()),
            sessions: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            limits: Limits { queue_bytes: limits.queue_bytes.max(1), ..limits },
            metrics,
        }
    }

    fn streams(&self) -> MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a stream for `user`, unless a connection limit is reached. Events published
    /// after this call reach it; dropping the returned `Subscription` removes it at once.
    /// `expires_at` (unix seconds) closes it with `auth_expired` then; `abort` is fired when the
    /// hub closes or cuts it (for connections whose writes the hub cannot watch).
    pub fn subscribe(
        self: &Arc<Self>,
        user: Arc<str>,
        expires_at: Option<u64>,
        session: Option<SessionKey>,
        abort: Option<Arc<Abort>>,
    ) -> Result<Subscription, Full> {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user: user.clone(),
            queue: Mutex::new(Queue::default()),
            abort,
        });
        {
            let mut streams = self.streams();
            if self.limits.max_connections > 0 && self.count.load(Ordering::Relaxed) >= self.limits.max_connections {
                return Err(Full::Gateway);
            }
            let conns = streams.by_user.entry(user).or_default();
            if self.limits.max_per_user > 0 && conns.len() >= self.limits.max_per_user {
                return Err(Full::User);
            }
            conns.push(conn.clone());
            streams.slice(conn.id).push(conn.clone());
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(exp) = expires_at {
            self.expiries().insert((exp, conn.id), Arc::downgrade(&conn));
        }
        if let Some(abort) = &conn.abort {
            *abort.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(&conn));
        }
        if let Some(key) = session {
            self.sessions().entry(key).or_default().push(Arc::downgrade(&conn));
        }
        self.metrics.connections_opened.inc();
        self.metrics.connections_open.inc();
        Ok(Subscription { hub: self.clone(), conn, expires_at, session })
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<SessionKey, Vec<Weak<Conn>>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes every stream of a revoked session, after queueing `notice` on it.
    pub fn revoke_session(&self, key: &SessionKey, notice: &Item) -> usize {
        let conns = self.sessions().remove(key).unwrap_or_default();
        let mut n = 0;
        for conn in conns.iter().filter_map(Weak::upgrade) {
            conn.finish(notice, CloseReason::AuthExpired);
            n += 1;
        }
        n
    }

    fn expiries(&self) -> MutexGuard<'_, BTreeMap<(u64, u64), Weak<Conn>>> {
        self.expiries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes every stream whose credential expired at or before `now` (unix seconds), after
    /// queueing `notice` on it. Returns how many were closed.
    pub fn expire(&self, now: u64, notice: &Item) -> usize {
        let due = {
            let mut exp = self.expiries();
            let later = exp.split_off(&(now.saturating_add(1), 0));
            std::mem::replace(&mut *exp, later)
        };
        let mut n = 0;
        for conn in due.into_values().filter_map(|w| w.upgrade()) {
            conn.finish(notice, CloseReason::AuthExpired);
            n += 1;
        }
        n
    }

    /// The earliest pending credential expiry (unix seconds), if any.
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiries().keys().next().map(|(t, _)| *t)
    }

    /// Every open stream, for draining.
    pub fn snapshot(&self) -> Vec<Weak<Conn>> {
        self.streams().by_user.values().flatten().map(Arc::downgrade).collect()
    }

    /// Sends to every stream of `user`, or to every stream when `user` is `None`.
    /// Returns how many streams it was queued for.
    pub fn publish(&self, user: Option<&str>, item: &Item) -> usize {
        let streams = self.streams();
        match user {
            Some(u) => self.deliver(streams.by_user.get(u).into_iter().flatten(), item),
            None => self.deliver(streams.by_user.values().flatten(), item),
        }
    }

    /// How many heartbeat slices the streams are kept in.
    pub fn slices(&self) -> usize {
        self.streams().slices.len()
    }

    /// Sends to the streams of one heartbeat slice (`slice` modulo `slices()`): a heartbeat goes
    /// to one slice per tick, so its cost is spread over the interval instead of landing at once.
    pub fn publish_slice(&self, slice: usize, item: &Item) -> usize {
        let streams = self.streams();
        self.deliver(streams.slices[slice % streams.slices.len()].iter(), item)
    }

    fn deliver<'a>(&self, conns: impl Iterator<Item = &'a Arc<Conn>>, item: &Item) -> usize {
        let now = Instant::now();
        let n = conns.filter(|c| c.push(item, &self.limits, now)).count();
        self.metrics.events_delivered.inc_by(n as u64);
        n
    }

    /// Closes every stream (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        self.streams().by_user.values().flatten().for_each(|c| c.close(reason));
    }

    /// Open streams right now.
    pub fn connection_count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn remove(&self, conn: &Arc<Conn>, expires_at: Option<u64>, session: Option<SessionKey>) {
        let mut streams = self.streams();
        if let Some(conns) = streams.by_user.get_mut(&conn.user) {
            let before = conns.len();
            conns.retain(|c| c.id != conn.id);
            if conns.len() < before {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            if conns.is_empty() {
                streams.by_user.remove(&conn.user);
            }
        }
        streams.slice(conn.id).retain(|c| c.id != conn.id);
        drop(streams);
        if let Some(exp) = expires_at {
            self.expiries().remove(&(exp, conn.id));
        }
        if let Some(key) = session {
            let mut sessions = self.sessions();
            if let Some(list) = sessions.get_mut(&key) {
                list.retain(|w| w.upgrade().is_some_and(|c| c.id != conn.id));
                if list.is_empty() {
                    sessions.remove(&key);
                }
            }
        }
        let closed = conn.lock().closed;
        if let Some(cut) = closed.filter(|r| r.is_cut()) {
            if cut == CloseReason::SlowClient {
                self.metrics.slow_client_disconnects.inc();
            }
            self.metrics.stream_cut(cut.as_str());
            tracing::info!(reason = cut.as_str(), "stream cut: {}", cut.message());
        }
        self.metrics.connection_closed(closed.map_or("client", CloseReason::as_str));
        self.metrics.connections_open.dec();
    }
}

mod queue;
mod subscription;
use queue::Queue;
pub use subscription::{Next, Subscription};

#[cfg(test)]
mod tests;
