//! A stream that went over its queue bound reads what it missed back from the log, one page at a
//! time, as fast as its client takes it; then it rejoins the live queue.
//!
//! Why this is gap-free: `from` is a horizon below which every event was handed to the writer.
//! While live events are not queued, pages cover `from..until` with `until` a horizon read from
//! the source: every transaction below it has finished, so those rows are final and paging them
//! by log id misses nothing. To rejoin, the queue is reopened first (`rejoin`), then the tail
//! (`tx >= from`, no upper bound) is read in one snapshot: whatever committed before the
//! snapshot is in the tail, whatever is dispatched after the reopening is queued, and live copies
//! of the tail's rows are dropped (`settle`), exactly like a resume. A tail too large for one page
//! falls behind again and pages the next stable range. Events handed over before the queue went
//! behind (`taken`: per transaction, the highest log id) are not sent twice.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::shared::Shared;
use crate::defaults::DEFAULT_CATCH_UP_ROWS;
use crate::hub::Subscription;
use crate::pg::replay::{self, Page, Replay, Window};
use crate::pg::{PgError, StoredEvent};
use crate::sse::{self, EventId};

/// How long to wait for the horizon to move when the tail is too large and no stable range is
/// left to page (a transaction holds the horizon back).
const WAIT_FOR_HORIZON: Duration = Duration::from_millis(100);

type Read = Pin<Box<dyn Future<Output = Result<Replay, PgError>> + Send>>;

/// What one step of a catch-up produced.
pub(super) enum Step {
    /// A page to write; more to come.
    Data(Bytes),
    /// Rejoined the live queue, after writing these bytes (if any).
    Done(Option<Bytes>),
    /// The log could not be read (or the history changed): the stream is cut, the client resumes.
    Failed(String),
    /// The hub closed the stream meanwhile.
    Closed,
}

pub(super) struct CatchUp {
    history: u32,
    from: u64,
    /// The end of the stable range being paged, if any.
    until: Option<u64>,
    after: i64,
    taken: Vec<(u64, i64)>,
    /// The read in flight is the tail, after `rejoin`.
    tail: bool,
    /// A read was started.
    started: bool,
    read: Option<Read>,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl CatchUp {
    pub(super) fn new(history: u32, from: u64, taken: Vec<(u64, i64)>) -> Self {
        Self { history, from, until: None, after: 0, taken, tail: false, started: false, read: None, wait: None }
    }

    pub(super) fn poll_step(&mut self, cx: &mut Context<'_>, sub: &Subscription, shared: &Arc<Shared>) -> Poll<Step> {
        loop {
            if sub.closed().is_some() {
                return Poll::Ready(Step::Closed);
            }
            if let Some(wait) = &mut self.wait {
                ready!(wait.as_mut().poll(cx));
                self.wait = None;
            }
            if let Some(read) = &mut self.read {
                let got = ready!(read.as_mut().poll(cx));
                self.read = None;
                let page = match got {
                    Ok(Replay::Events(page)) => page,
                    Ok(Replay::Reset(reason)) => return Poll::Ready(Step::Failed(reason.as_str().into())),
                    Err(e) => return Poll::Ready(Step::Failed(e.to_string())),
                };
                if let Some(step) = self.on_page(page, sub, shared) {
                    return Poll::Ready(step);
                }
                continue;
            }
            let Some(at) = shared.source.position().filter(|p| p.history == self.history) else {
                return Poll::Ready(Step::Failed("the database's history changed".into()));
            };
            if self.until.is_none() && !std::mem::replace(&mut self.started, true) && at.horizon > self.from {
                // Live events went past the queue's bound: page what is final before trying the tail.
                self.until = Some(at.horizon);
            }
            let window = match self.until {
                Some(until) => Window { from: self.from, until: Some(until), after: self.after, rows: 0, bytes: 0 },
                None => {
                    sub.rejoin(self.from);
                    self.tail = true;
                    Window { from: self.from, until: None, after: 0, rows: 0, bytes: 0 }
                }
            };
            let window = Window { rows: DEFAULT_CATCH_UP_ROWS, bytes: shared.config.queue_bytes, ..window };
            let (shared, user) = (shared.clone(), sub.user().clone());
            let from = EventId::horizon(at.history, self.from);
            self.read = Some(Box::pin(async move {
                let limit = shared.config.replay_timeout;
                replay::replay(&shared.pool, &user, from, at.history, window, limit).await
            }));
        }
    }

    /// Handles a page; `None` to go on reading.
    fn on_page(&mut self, page: Page, sub: &Subscription, shared: &Shared) -> Option<Step> {
        if std::mem::take(&mut self.tail) {
            if !page.complete() {
                // Too much for one read: stop queueing again and page a stable range.
                sub.fall_behind();
                match shared.source.position().map(|p| p.horizon).filter(|h| *h > self.from) {
                    Some(h) => (self.until, self.after) = (Some(h), 0),
                    None => self.wait = Some(Box::pin(tokio::time::sleep(WAIT_FOR_HORIZON))),
                }
                return None;
            }
            let sent: Vec<(u64, i64)> = page.events.iter().map(|e| (e.tx, e.id)).chain(self.taken.clone()).collect();
            if !sub.settle(self.from, &sent) {
                // Over the bound again while reading: page from the same position.
                return None;
            }
            return Some(Step::Done(self.encode(&page.events)));
        }
        let Some(last) = page.events.last() else {
            // The stable range is done.
            if let Some(until) = self.until.take() {
                self.from = until;
                self.after = 0;
                self.taken.retain(|(tx, _)| *tx >= until);
            }
            return None;
        };
        self.after = last.id;
        sub.progress();
        self.encode(&page.events).map(Step::Data)
    }

    /// The events not handed over before, as one write, stamped with the position they were
    /// read from (a resume from there replays them).
    fn encode(&self, events: &[StoredEvent]) -> Option<Bytes> {
        let mut out = BytesMut::new();
        for ev in events {
            if self.taken.iter().any(|(tx, id)| *tx == ev.tx && ev.id <= *id) {
                continue;
            }
            let id = EventId::event(self.history, self.from, ev.id);
            out.extend_from_slice(&sse::encode(&ev.event, Some(id), &ev.data));
        }
        (!out.is_empty()).then(|| out.freeze())
    }
}
