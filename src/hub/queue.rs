//! One stream's queue in the hub: what waits for its writer, and what the writer already has.

use std::collections::HashSet;
use std::task::Waker;
use std::time::Instant;

use super::{CloseReason, Item};

#[derive(Default)]
pub(super) struct Queue {
    /// Only ever appended to and emptied whole, so a `Vec` (smaller than a `VecDeque`).
    pub(super) items: Vec<Item>,
    pub(super) bytes: usize,
    pub(super) waker: Option<Waker>,
    pub(super) closed: Option<CloseReason>,
    /// Since when something has been waiting for the writer (queued bytes, or the log while
    /// behind) without it taking anything; `None` while it is up to date.
    pub(super) waiting_since: Option<Instant>,
    /// Over its bound: live events are not queued; the writer reads them from the log.
    pub(super) behind: bool,
    /// Every log event with `tx` below this was handed to the writer (the horizon its last take
    /// was told): where a catch-up starts.
    pub(super) taken_below: u64,
    /// Log events handed to the writer at or above `taken_below`: (tx, highest log id), so a
    /// catch-up does not send them twice (a transaction's events arrive in log id order).
    pub(super) taken_above: Vec<(u64, i64)>,
    /// Live copies to drop because a replay or a catch-up already sent them. Only resumed and
    /// caught-up streams have any, so it is boxed: an idle stream pays one pointer.
    pub(super) sent: Option<Box<Sent>>,
}

/// Log events a stream's writer already has, so their live copies are dropped.
pub(super) struct Sent {
    /// Every event with `tx` below this.
    pub(super) below: u64,
    /// These log ids (each dropped once).
    ids: HashSet<i64>,
}

impl Queue {
    /// Whether the writer already has this log event (so it is neither queued nor counted).
    pub(super) fn delivered(&mut self, item: &Item) -> bool {
        if item.log_id == Item::RESYNC {
            // A new history: what this stream resumed from says nothing about its events.
            self.sent = None;
            return false;
        }
        match &mut self.sent {
            Some(sent) if item.log_id != 0 => {
                item.tx < sent.below || (!sent.ids.is_empty() && sent.ids.remove(&item.log_id))
            }
            _ => false,
        }
    }

    /// Live copies to drop from now on: below `below`, or in `ids`.
    pub(super) fn set_sent(&mut self, below: u64, ids: HashSet<i64>) {
        self.sent = (below > 0 || !ids.is_empty()).then(|| Box::new(Sent { below, ids }));
    }

    pub(super) fn clear(&mut self) {
        self.items = Vec::new();
        self.bytes = 0;
    }

    pub(super) fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}
