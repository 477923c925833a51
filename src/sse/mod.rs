//! The wire vocabulary: every event the gateway sends, built here into `text/event-stream` bytes
//! once and shared by every connection that receives it, and the form of event ids ([`EventId`]).
//!
//! To add a gateway event: a variant of [`GatewayEvent`], its builder beside the others, a line
//! in the table in ARCHITECTURE.md (and in README.md's "Wire format" if clients see it).

mod id;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use rand::RngExt;

pub use id::{BadEventId, EventId, History};

/// Every event the gateway itself sends, each with its builder. Besides these, streams carry
/// the app's events under the app's names (`notification` in the demo, any name given to
/// `pgsse.publish`), built by [`encode`], and the `retry:` field ([`retry`], [`drain_retry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayEvent {
    /// First on every stream, carrying the `retry:` field in its own block ([`connected`]).
    Connected,
    /// Every `--heartbeat-interval` on every stream, stamped with the current position
    /// ([`heartbeat`]).
    Heartbeat,
    /// The client cannot be brought up to date by events and refetches ([`reset`]).
    Reset,
    /// The stream's credential is no longer valid; the stream closes right after
    /// ([`auth_expired`]).
    AuthExpired,
}

impl GatewayEvent {
    pub const ALL: [GatewayEvent; 4] = [Self::Connected, Self::Heartbeat, Self::Reset, Self::AuthExpired];

    /// The `event:` name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Heartbeat => "heartbeat",
            Self::Reset => "reset",
            Self::AuthExpired => "auth-expired",
        }
    }
}

/// `retry:` in the first block of each stream: the browser waits this long before reconnecting.
pub const DEFAULT_RETRY_MS: u64 = 1000;

/// `retry:` sent to each stream the drain closes, picked at random in this range so clients do
/// not all come back at once.
pub const DRAIN_RETRY_MS: Range<u64> = 1000..5000;

/// The `retry:` field as a block of its own (it dispatches nothing in a browser). Only the drain
/// sends it alone, as the stream's last bytes; the start of a stream carries it inside
/// `connected`, since some clients (Python's httpx-sse) surface a lone `retry:` block as an empty
/// message event.
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// The drain's `retry:`, just before it closes a stream: a random value in [`DRAIN_RETRY_MS`].
pub fn drain_retry() -> Bytes {
    retry(rand::rng().random_range(DRAIN_RETRY_MS))
}

/// `event: connected`, first on every stream, with `retry: DEFAULT_RETRY_MS` in the same block.
/// `id` is where the stream starts: the current position, or on a resume the position the client
/// came back with; `resumed` says whether it did, and `replayed` how many missed events follow.
pub fn connected(
    id: EventId,
    user_id: &str,
    connection_id: u64,
    resumed: bool,
    replayed: usize,
    heartbeat_ms: u64,
) -> Bytes {
    let data = serde_json::json!({
        "userId": user_id,
        "connectionId": connection_id,
        "resumed": resumed,
        "replayed": replayed,
        "heartbeatMs": heartbeat_ms,
    });
    let retry = format!("retry: {DEFAULT_RETRY_MS}\n");
    let event = encode(GatewayEvent::Connected.name(), Some(id), &data.to_string());
    let mut out = BytesMut::with_capacity(retry.len() + event.len());
    out.put_slice(retry.as_bytes());
    out.put_slice(&event);
    out.freeze()
}

/// `event: heartbeat`, encoded once per tick for every stream it goes to; `at` must be a
/// position every event below which was already queued on those streams.
pub fn heartbeat(at: EventId) -> Bytes {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    encode(GatewayEvent::Heartbeat.name(), Some(at), &format!("{{\"timestamp\":{ms}}}"))
}

/// `event: reset`: the client cannot be brought up to date by events; it refetches, and the
/// stream goes on from `id`.
pub fn reset(id: EventId, reason: &str, message: &str) -> Bytes {
    let data = serde_json::json!({"reason": reason, "message": message});
    encode(GatewayEvent::Reset.name(), Some(id), &data.to_string())
}

/// `event: auth-expired`, just before a stream is closed because its credential is no longer
/// valid (`token_expired`: its expiry passed, JWT or session; `session_revoked`): the client
/// reconnects with a fresh one. No `id:`, so the client's resume position is kept.
pub fn auth_expired(reason: &str) -> Bytes {
    let data = serde_json::json!({
        "reason": reason,
        "message": "the credential is no longer valid; reconnect with a fresh one",
    });
    encode(GatewayEvent::AuthExpired.name(), None, &data.to_string())
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
