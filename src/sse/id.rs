//! The form of event ids: a resume position, written into every `id:` line and parsed back from
//! `Last-Event-ID`.

/// A resume position carried in every `id:` line: `<history>.<horizon>[-<log id>]`.
///
/// `horizon` is a PostgreSQL transaction id H such that every event of every transaction with
/// xid < H has already been sent on this stream (or was committed before the stream started, so
/// the app's first fetch saw it). `history` is `pgsse.history()` of the database that handed H
/// out (8 hex digits): a failover or restore starts a new history and may hand the same xids out
/// again, so a position of another history is never trusted. `log_id`, when present, is the
/// `pgsse.events.id` of the event, which makes ids unique and lets clients recognise a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId {
    pub history: History,
    pub horizon: u64,
    pub log_id: Option<i64>,
}

/// The history part of a position: `pgsse.history()`, 8 hex digits, or `Unknown` for an id of
/// a gateway version before histories (`<horizon>[-<log id>]`), which can belong to any history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum History {
    Known(u32),
    Unknown,
}

impl History {
    /// Parses `pgsse.history()`'s 8 lowercase hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        hex.then(|| u32::from_str_radix(s, 16).ok().map(History::Known)).flatten()
    }
}

/// Why a `Last-Event-ID` could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEventId {
    #[error("Last-Event-ID is empty")]
    Empty,
    #[error("Last-Event-ID is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("Last-Event-ID is not of the form <history>.<horizon> or <history>.<horizon>-<event id>")]
    Malformed,
    #[error("Last-Event-ID horizon 0 is not a position")]
    Zero,
}

/// Longest id we accept: a history, two u64s, a dot and a dash, with room to spare.
const MAX_EVENT_ID_LEN: usize = 64;

impl EventId {
    pub fn horizon(history: u32, horizon: u64) -> Self {
        Self { history: History::Known(history), horizon, log_id: None }
    }

    pub fn event(history: u32, horizon: u64, log_id: i64) -> Self {
        Self { history: History::Known(history), horizon, log_id: Some(log_id) }
    }

    /// Parses what an `EventSource` sends back in `Last-Event-ID`.
    pub fn parse(s: &str) -> Result<Self, BadEventId> {
        let s = s.trim();
        if s.is_empty() {
            return Err(BadEventId::Empty);
        }
        if s.len() > MAX_EVENT_ID_LEN {
            return Err(BadEventId::TooLong { max: MAX_EVENT_ID_LEN });
        }
        let (history, rest) = match s.split_once('.') {
            Some((h, rest)) => (History::parse(h).ok_or(BadEventId::Malformed)?, rest),
            None => (History::Unknown, s),
        };
        let (h, log) = match rest.split_once('-') {
            Some((h, l)) => (h, Some(l)),
            None => (rest, None),
        };
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(h) || log.is_some_and(|l| !digits(l)) {
            return Err(BadEventId::Malformed);
        }
        let horizon: u64 = h.parse().map_err(|_| BadEventId::Malformed)?;
        let log_id = match log {
            Some(l) => Some(l.parse::<i64>().map_err(|_| BadEventId::Malformed)?),
            None => None,
        };
        if horizon == 0 {
            return Err(BadEventId::Zero);
        }
        Ok(Self { history, horizon, log_id })
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let History::Known(h) = self.history {
            write!(f, "{h:08x}.")?;
        }
        match self.log_id {
            Some(l) => write!(f, "{}-{}", self.horizon, l),
            None => write!(f, "{}", self.horizon),
        }
    }
}
