//! SSE encoding: turns events into `text/event-stream` bytes, and owns the form of event ids.
//!
//! Every byte a client receives is built here, once per event, and shared by every connection
//! that receives it.

use bytes::{BufMut, Bytes, BytesMut};

/// Sent once at the start of each stream: the browser waits this long before reconnecting.
pub const DEFAULT_RETRY_MS: u64 = 1000;

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

/// `event: reset`: the client cannot be brought up to date by events; it refetches, and the
/// stream goes on from `id`.
pub fn reset(id: EventId, reason: &str, message: &str) -> Bytes {
    encode("reset", Some(id), &serde_json::json!({"reason": reason, "message": message}).to_string())
}

/// Encodes one event. `data` may contain any text: each of its lines (split at CRLF, CR or LF,
/// as the WHATWG parser does) becomes one `data:` line, so the client gets it back joined with
/// LF. Newlines and NUL are stripped from `event` (a single field line cannot hold them).
pub fn encode(event: &str, id: Option<EventId>, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(event.len() + data.len() + 48);
    if !event.is_empty() {
        out.put_slice(b"event: ");
        put_field_value(&mut out, event);
        out.put_u8(b'\n');
    }
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.to_string().as_bytes());
        out.put_u8(b'\n');
    }
    for line in split_lines(data) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// The `retry:` field, sent once at the start of a stream (alone, so it dispatches nothing).
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// The event a stream gets just before it is closed because its credential is no longer valid
/// (`token_expired`, `session_expired`, `session_revoked`): the client reconnects with a fresh one.
/// No `id:`, so the client's resume position is kept.
pub fn auth_expired(reason: &str) -> Bytes {
    let data = serde_json::json!({
        "reason": reason,
        "message": "the credential is no longer valid; reconnect with a fresh one",
    });
    encode("auth-expired", None, &data.to_string())
}

fn put_field_value(out: &mut BytesMut, value: &str) {
    for c in value.chars() {
        if c != '\r' && c != '\n' && c != '\0' {
            let mut buf = [0u8; 4];
            out.put_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
}

/// Splits at CRLF, lone CR and lone LF; always yields at least one (possibly empty) line.
fn split_lines(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reference parser following the WHATWG "interpret an event stream" steps, to check
    /// that whatever we encode decodes to the same values.
    fn parse(stream: &str) -> Vec<(String, String, Option<String>)> {
        let mut out = Vec::new();
        let (mut event, mut data, mut id) = (String::new(), String::new(), None);
        let normalized = stream.replace("\r\n", "\n").replace('\r', "\n");
        for line in normalized.split('\n') {
            if line.is_empty() {
                if !data.is_empty() {
                    data.pop();
                    out.push((std::mem::take(&mut event), std::mem::take(&mut data), id.clone()));
                }
                event.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => event = value.to_string(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" if !value.contains('\0') => id = Some(value.to_string()),
                _ => {}
            }
        }
        out
    }

    fn roundtrip(event: &str, data: &str) -> (String, String, Option<String>) {
        let bytes = encode(event, Some(EventId::event(0xabc, 42, 7)), data);
        let text = std::str::from_utf8(&bytes).expect("utf8");
        let mut events = parse(text);
        assert_eq!(events.len(), 1, "{text:?}");
        events.remove(0)
    }

    #[test]
    fn exact_wire_format() {
        let b =
            encode("notification", Some(EventId::event(0x0a1b2c3d, 9, 3)), r#"{"type":"read","notificationId":123}"#);
        assert_eq!(
            &b[..],
            b"event: notification\nid: 0a1b2c3d.9-3\ndata: {\"type\":\"read\",\"notificationId\":123}\n\n"
        );
        assert_eq!(&retry(1000)[..], b"retry: 1000\n\n");
    }

    #[test]
    fn multi_line_data_is_split_and_rejoined_with_lf() {
        let (_, data, _) = roundtrip("x", "a\nb\r\nc\rd");
        assert_eq!(data, "a\nb\nc\nd");
        let b = encode("x", None, "a\r\nb");
        assert_eq!(&b[..], b"event: x\ndata: a\ndata: b\n\n");
    }

    #[test]
    fn trailing_and_empty_lines_survive() {
        assert_eq!(roundtrip("x", "").1, "");
        assert_eq!(roundtrip("x", "a\n").1, "a\n");
        assert_eq!(roundtrip("x", "\n\n").1, "\n\n");
    }

    #[test]
    fn unicode_and_colons_survive() {
        let data = r#"{"title":"héllo ✓ 𝄞 — : data: id: x","m":"\u0000 escaped"}"#;
        let (event, got, id) = roundtrip("notification", data);
        assert_eq!(event, "notification");
        assert_eq!(got, data);
        assert_eq!(id.as_deref(), Some("00000abc.42-7"));
    }

    #[test]
    fn event_name_cannot_inject_fields() {
        let b = encode("a\nid: 0\r\ndata: evil\0", None, "ok");
        let events = parse(std::str::from_utf8(&b).expect("utf8"));
        assert_eq!(events, vec![("aid: 0data: evil".to_string(), "ok".to_string(), None)]);
    }

    #[test]
    fn ids_never_contain_nul_or_newlines() {
        for id in [EventId::horizon(0, 1), EventId::event(u32::MAX, u64::MAX, i64::MAX), EventId::event(7, 5, 0)] {
            let s = id.to_string();
            assert!(!s.contains(['\0', '\r', '\n']));
            assert_eq!(EventId::parse(&s), Ok(id));
        }
    }

    #[test]
    fn last_event_id_parsing_rejects_garbage() {
        assert_eq!(EventId::parse(" 0000004d.77-3 "), Ok(EventId::event(0x4d, 77, 3)));
        assert_eq!(EventId::parse("ffffffff.77"), Ok(EventId::horizon(u32::MAX, 77)));
        // Ids of gateways before histories: a position of an unknown history.
        let legacy = EventId::parse("77-3").expect("legacy id");
        assert_eq!((legacy.history, legacy.horizon, legacy.log_id), (History::Unknown, 77, Some(3)));
        assert_eq!(EventId::parse(""), Err(BadEventId::Empty));
        assert_eq!(EventId::parse("0"), Err(BadEventId::Zero));
        for bad in [
            "abc",
            "-1",
            "1-",
            "1--2",
            "1-2-3",
            "+5",
            "1.5",
            "99999999999999999999999",
            "ñ",
            "0000004D.77",
            "4d.77",
            "0000004d.",
            "0000004d.-1",
            "0000004d.0000004d.7",
            "g000004d.7",
        ] {
            assert_eq!(EventId::parse(bad), Err(BadEventId::Malformed), "{bad}");
        }
        assert_eq!(EventId::parse(&"9".repeat(65)), Err(BadEventId::TooLong { max: 64 }));
    }
}
