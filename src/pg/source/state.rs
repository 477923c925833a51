//! What the rest of the gateway sees of the source: its position and whether it is ready.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What the rest of the gateway can see of the source. Shared with HTTP handlers and metrics.
#[derive(Debug, Default)]
pub struct SourceState {
    pub(super) horizon: AtomicU64,
    /// `pgsse.history()` of the database the horizon belongs to, with bit 32 set once known.
    history: AtomicU64,
    pub(super) ready: AtomicBool,
}

/// Where the gateway stands: every event below `horizon` of history `history` was dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub history: u32,
    pub horizon: u64,
}

impl SourceState {
    /// The current position, or `None` before the first marker of the current history arrived.
    /// Read history first: the source clears the horizon before it changes the history, so a
    /// reader never pairs a new history with an old horizon.
    pub fn position(&self) -> Option<Position> {
        let history = self.history.load(Ordering::Acquire);
        let horizon = self.horizon.load(Ordering::Acquire);
        (history != 0 && horizon != 0).then_some(Position { history: history as u32, horizon })
    }

    /// True while the LISTEN connection is up, caught up and has seen its marker come back.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(super) fn horizon(&self) -> Option<u64> {
        self.position().map(|p| p.horizon)
    }

    pub(super) fn history(&self) -> Option<u32> {
        let h = self.history.load(Ordering::Acquire);
        (h != 0).then_some(h as u32)
    }

    /// A new history: no position of the old one is valid any more.
    pub(super) fn set_history(&self, history: u32) {
        self.horizon.store(0, Ordering::Release);
        self.history.store((1 << 32) | u64::from(history), Ordering::Release);
    }
}
