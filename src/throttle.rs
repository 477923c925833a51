//! Repeated warnings, rate-limited: the first is logged, then one line per interval with the count suppressed.
//!
//! A warning that one event can cause (an unsigned NOTIFY, a failed accept, a refused stream) is
//! a log flood an outsider or a fault can start: 100,000 forged NOTIFYs made 100,000 lines.
//! Exact counts are in the metrics; the log says that it happens, and how often.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One kind of repeated warning. A `static` per call site: [`warn_throttled!`] makes one.
#[derive(Debug)]
pub struct Throttle {
    interval_ms: u64,
    /// Milliseconds since [`epoch`] before which nothing more of this kind is logged.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new(interval: Duration) -> Self {
        Self { interval_ms: interval.as_millis() as u64, next_ms: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(n)` when this occurrence is to be logged, `n` being how many were suppressed since
    /// the last line; `None` (counted) otherwise. Never blocks: a lost race counts as suppressed.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(epoch().elapsed().as_millis() as u64)
    }

    fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Relaxed);
        let due = now_ms >= next
            && self.next_ms.compare_exchange(next, now_ms.saturating_add(self.interval_ms), Relaxed, Relaxed).is_ok();
        if due {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

/// The process's reference instant for every throttle.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `tracing::warn!`, at most once per [`crate::defaults::DEFAULT_LOG_REPEAT_INTERVAL`] for this call site;
/// a logged line after suppressed ones has a `suppressed` field with their number.
#[macro_export]
macro_rules! warn_throttled {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::throttle::Throttle = $crate::throttle::Throttle::new($crate::defaults::DEFAULT_LOG_REPEAT_INTERVAL);
        match THROTTLE.allow() {
            Some(0) => tracing::warn!($($arg)+),
            Some(suppressed) => tracing::warn!(suppressed, $($arg)+),
            None => {}
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_is_logged_then_one_per_interval_with_the_count() {
        let t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.allow_at(5), Some(0));
        assert_eq!((0..999).filter_map(|i| t.allow_at(6 + i)).count(), 0);
        assert_eq!(t.allow_at(10_004), None, "the interval is not over");
        assert_eq!(t.allow_at(10_005), Some(1000));
        assert_eq!(t.allow_at(30_000), Some(0), "a quiet interval logs the next one at once");
    }
}
