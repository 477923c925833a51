//! What the source already handled at or above the horizon, so nothing is sent or read twice.

use std::collections::{BTreeMap, HashSet};

/// Bound on what is remembered. Only a transaction held open for a very long time at a very high
/// event rate reaches it; past it, the oldest are forgotten (a catch-up may then resend; clients
/// dedupe by event id).
const MAX_REMEMBERED: usize = 1_000_000;

/// What the source dispatched (or read back) for transactions at or above the horizon: forgotten
/// as the horizon passes them, since nothing below it can legitimately arrive again.
#[derive(Default)]
pub(super) struct Seen {
    ids: HashSet<i64>,
    refs: HashSet<(u64, i64, i64)>,
    sessions: HashSet<(u64, u64)>,
    by_tx: BTreeMap<u64, TxSeen>,
    len: usize,
}

#[derive(Default)]
struct TxSeen {
    ids: Vec<i64>,
    refs: Vec<(i64, i64)>,
    sessions: Vec<u64>,
}

impl Seen {
    pub(super) fn contains(&self, id: i64) -> bool {
        self.ids.contains(&id)
    }

    pub(super) fn insert(&mut self, tx: u64, id: i64) {
        if self.ids.insert(id) {
            self.by_tx.entry(tx).or_default().ids.push(id);
            self.grew();
        }
    }

    /// False if this reference was read already.
    pub(super) fn insert_ref(&mut self, tx: u64, lo: i64, hi: i64) -> bool {
        let new = self.refs.insert((tx, lo, hi));
        if new {
            self.by_tx.entry(tx).or_default().refs.push((lo, hi));
            self.grew();
        }
        new
    }

    /// False if this very payload of session changes was applied already.
    pub(super) fn insert_sessions(&mut self, tx: u64, payload: &str) -> bool {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let digest = BuildHasherDefault::<DefaultHasher>::default().hash_one(payload);
        let new = self.sessions.insert((tx, digest));
        if new {
            self.by_tx.entry(tx).or_default().sessions.push(digest);
            self.grew();
        }
        new
    }

    fn grew(&mut self) {
        self.len += 1;
        if self.len > MAX_REMEMBERED {
            if let Some((tx, seen)) = self.by_tx.pop_first() {
                self.forget(tx, seen);
            }
        }
    }

    pub(super) fn forget_below(&mut self, horizon: u64) {
        let keep = self.by_tx.split_off(&horizon);
        for (tx, seen) in std::mem::replace(&mut self.by_tx, keep) {
            self.forget(tx, seen);
        }
    }

    fn forget(&mut self, tx: u64, seen: TxSeen) {
        self.len -= seen.ids.len() + seen.refs.len() + seen.sessions.len();
        seen.ids.iter().for_each(|id| {
            self.ids.remove(id);
        });
        seen.refs.into_iter().for_each(|(lo, hi)| {
            self.refs.remove(&(tx, lo, hi));
        });
        seen.sessions.into_iter().for_each(|d| {
            self.sessions.remove(&(tx, d));
        });
    }

    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }
}
