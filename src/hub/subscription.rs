//! A stream's side of the hub: what its writer takes, how it falls behind and rejoins, cuts.

use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::{CloseReason, Conn, Hub, Item, Queue};
use crate::auth::session::SessionKey;

/// A stream's membership in the hub; the stream's task polls it for bytes to write.
pub struct Subscription {
    pub(super) hub: Arc<Hub>,
    pub(super) conn: Arc<Conn>,
    pub(super) expires_at: Option<u64>,
    pub(super) session: Option<SessionKey>,
}

/// What `Subscription::poll_next` yields.
#[derive(Debug)]
pub enum Next {
    /// Bytes to write (possibly several events coalesced into one write).
    Data(Bytes),
    /// The hub closed this stream.
    Closed(CloseReason),
    /// The queue went over its bound and stopped queueing: read the log from horizon `from`
    /// (every event below it was handed to the writer), skipping `taken` (tx, highest log id
    /// handed), then `rejoin`.
    Behind { from: u64, taken: Vec<(u64, i64)> },
}

impl Subscription {
    pub fn id(&self) -> u64 {
        self.conn.id
    }

    pub fn user(&self) -> &Arc<str> {
        &self.conn.user
    }

    /// Queues what a stream starts with (`retry:`, `connected`, a replay or `reset`) ahead of any
    /// live event, counted like them. Every log event below `taken_below` is owed to the client
    /// no more (the position it starts from); live copies below `below` or in `replayed` are
    /// dropped, here and as they come.
    pub fn start(&self, preamble: Vec<Item>, taken_below: u64, below: u64, replayed: HashSet<i64>) {
        let mut q = self.conn.lock();
        q.taken_below = taken_below;
        q.set_sent(below, replayed);
        let live = std::mem::take(&mut q.items);
        q.bytes = 0;
        let behind = q.behind;
        // Behind already: the catch-up reads the replay's events again, from `taken_below`.
        for item in preamble.into_iter().filter(|i| !behind || i.log_id == 0) {
            q.bytes += item.bytes.len();
            q.items.push(item);
        }
        for item in live {
            if !q.delivered(&item) {
                q.bytes += item.bytes.len();
                q.items.push(item);
            }
        }
        q.waiting_since.get_or_insert_with(Instant::now);
        q.wake();
    }

    /// Takes everything queued. `horizon` is the source's position read *before* this call:
    /// every log event below it was queued before, so is handed over now or was earlier.
    pub fn poll_next(&self, cx: &mut Context<'_>, horizon: u64) -> Poll<Next> {
        let mut q = self.conn.lock();
        if let Some(reason) = q.closed.filter(|r| r.is_cut()) {
            return Poll::Ready(Next::Closed(reason));
        }
        if !q.items.is_empty() {
            let q = &mut *q;
            q.bytes = 0;
            q.waiting_since = None;
            if q.behind {
                // Only notices are queued while behind; events below `horizon` were dropped.
                return Poll::Ready(Next::Data(coalesce(&mut q.items)));
            }
            q.taken_below = q.taken_below.max(horizon);
            let below = q.taken_below;
            q.taken_above.retain(|(tx, _)| *tx >= below);
            for item in q.items.iter().filter(|i| i.log_id > 0 && i.tx >= below) {
                match q.taken_above.iter_mut().find(|(tx, _)| *tx == item.tx) {
                    Some(t) => t.1 = t.1.max(item.log_id),
                    None => q.taken_above.push((item.tx, item.log_id)),
                }
            }
            return Poll::Ready(Next::Data(coalesce(&mut q.items)));
        }
        if let Some(reason) = q.closed {
            return Poll::Ready(Next::Closed(reason));
        }
        if q.behind {
            let taken = std::mem::take(&mut q.taken_above);
            return Poll::Ready(Next::Behind { from: q.taken_below, taken });
        }
        Self::register(&mut q, cx);
        Poll::Pending
    }

    /// How the hub closed this stream, if it did.
    pub fn closed(&self) -> Option<CloseReason> {
        self.conn.lock().closed
    }

    /// The writer took a page of a catch-up: the client is draining.
    pub fn progress(&self) {
        self.conn.lock().waiting_since = Some(Instant::now());
    }

    /// Ends a catch-up's paging: live events are queued again, those below `from` dropped (the
    /// catch-up sent them). Then the writer reads the log's tail and `settle`s.
    pub fn rejoin(&self, from: u64) {
        let mut q = self.conn.lock();
        q.behind = false;
        q.set_sent(from, HashSet::new());
    }

    /// Stops queueing live events (the catch-up reads them from the log).
    pub fn fall_behind(&self) {
        let mut q = self.conn.lock();
        q.clear();
        q.behind = true;
    }

    /// After `rejoin`, the tail read from the log was sent: its live copies are dropped (queued
    /// or to come). False if the queue went over its bound again meanwhile: catch up again.
    pub fn settle(&self, from: u64, sent: &[(u64, i64)]) -> bool {
        let mut q = self.conn.lock();
        if q.behind {
            return false;
        }
        let below = q.sent.as_ref().map_or(0, |s| s.below);
        q.set_sent(below, sent.iter().map(|(_, id)| *id).collect());
        let live = std::mem::take(&mut q.items);
        q.bytes = 0;
        for item in live {
            if !q.delivered(&item) {
                q.bytes += item.bytes.len();
                q.items.push(item);
            }
        }
        q.taken_below = from;
        q.taken_above.clear();
        for (tx, id) in sent {
            match q.taken_above.iter_mut().find(|(t, _)| t == tx) {
                Some(t) => t.1 = t.1.max(*id),
                None => q.taken_above.push((*tx, *id)),
            }
        }
        q.waiting_since = Some(Instant::now());
        true
    }

    /// Cuts the stream (see `CloseReason::is_cut`).
    pub fn cut(&self, reason: CloseReason) {
        self.conn.cut(reason);
    }

    /// Ready once the hub closed this stream (cut, or closed with its last bytes queued); polled
    /// while a write to the client is pending, so that write is not awaited forever.
    pub fn poll_cut(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let mut q = self.conn.lock();
        if let Some(reason) = q.closed {
            return Poll::Ready(reason);
        }
        Self::register(&mut q, cx);
        Poll::Pending
    }

    fn register(q: &mut Queue, cx: &mut Context<'_>) {
        match &q.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => q.waker = Some(cx.waker().clone()),
        }
    }
}

/// One write's bytes: the items' bytes, copied into one buffer only when there are several.
/// Empties the queue into one buffer. The queue keeps its allocation: taking the `Vec` whole
/// would make the next event's push allocate, and its writer free, once per event and stream.
fn coalesce(items: &mut Vec<Item>) -> Bytes {
    if items.len() == 1 {
        return items.pop().map(|i| i.bytes).unwrap_or_default();
    }
    let mut all = BytesMut::with_capacity(items.iter().map(|i| i.bytes.len()).sum());
    items.drain(..).for_each(|i| all.extend_from_slice(&i.bytes));
    all.freeze()
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.conn, self.expires_at, self.session);
    }
}
