//! The wall clock in unix time: the one form expiries, timestamps and session lookups compare.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the unix epoch (0 for a clock set before it).
pub(crate) fn unix_now() -> u64 {
    unix_secs(SystemTime::now())
}

/// Milliseconds since the unix epoch (0 for a clock set before it).
pub(crate) fn unix_now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// `t` in unix seconds (0 before the epoch).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
