//! The NOTIFY payload protocol: signed JSON messages on pgsse's secret channel (`sql/install.sql`).
//!
//! Every payload is `<64 hex HMAC-SHA256><json>`. Any role that can connect may NOTIFY, so an
//! unsigned or malformed payload is refused here, before it can reach a browser or move the
//! horizon; what is signed but stale (re-sent) is the source's business.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::session::SessionKey;

/// `[id, user_id, event, data]`, data kept as the JSON text Postgres wrote.
pub type InlineEvent<'a> = (i64, Option<String>, String, &'a RawValue);

/// One decoded payload.
pub enum Message<'a> {
    /// A horizon marker: every transaction below `horizon` has been announced before it.
    Marker { horizon: u64, history: u32, gateway: Option<String>, seq: Option<u64> },
    /// One statement's events, inline.
    Events { tx: u64, events: Vec<InlineEvent<'a>> },
    /// One statement's events, too large to inline: the log id range to read back.
    Reference { tx: u64, lo: i64, hi: i64 },
    /// Session changes: `(sha256 of the token as hex, new expiry in unix ms or None if gone)`.
    Sessions { tx: u64, changes: Vec<(String, Option<i64>)> },
    /// Several transactions' `Events` or `Reference`s in one NOTIFY (the relay's), in the order to
    /// handle them.
    Batch(Vec<Message<'a>>),
}

/// Why a payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("no valid signature (sent by something other than pgsse's SQL)")]
    Unsigned,
    #[error("not a pgsse payload: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("a marker whose horizon {0:?} is not a transaction id")]
    BadMarker(String),
    #[error("a marker without a valid history (\"h\"): run `pgsse sql install` to upgrade the SQL")]
    NoHistory,
    #[error("no valid \"t\" (transaction id)")]
    NoTx,
    #[error("neither events (\"e\"), a reference (\"r\") nor session changes (\"s\")")]
    Empty,
    #[error("a batch (\"b\") must hold one or more events or references, and nothing else")]
    BadBatch,
}

#[derive(Deserialize)]
struct Raw<'a> {
    m: Option<String>,
    h: Option<String>,
    g: Option<String>,
    n: Option<u64>,
    t: Option<String>,
    #[serde(borrow)]
    e: Option<Vec<InlineEvent<'a>>>,
    r: Option<(i64, i64)>,
    s: Option<Vec<(String, Option<i64>)>>,
    #[serde(borrow)]
    b: Option<Vec<Raw<'a>>>,
}

/// Checks signatures with the key from `pgsse.secret`.
pub struct Verifier {
    key: ring::hmac::Key,
}

impl Verifier {
    pub fn new(key: &[u8]) -> Self {
        Self { key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key) }
    }

    /// Verifies and decodes one payload.
    pub fn decode<'p>(&self, payload: &'p str) -> Result<Message<'p>, PayloadError> {
        let json = self.verified(payload).ok_or(PayloadError::Unsigned)?;
        let p: Raw = serde_json::from_str(json)?;
        if let Some(m) = p.m {
            let horizon = m.parse::<u64>().map_err(|_| PayloadError::BadMarker(m))?;
            let history = p.h.as_deref().and_then(parse_history).ok_or(PayloadError::NoHistory)?;
            return Ok(Message::Marker { horizon, history, gateway: p.g, seq: p.n });
        }
        if let Some(items) = p.b {
            let items = items
                .into_iter()
                .map(|i| match i.m.is_some() || i.b.is_some() || i.s.is_some() {
                    true => Err(PayloadError::BadBatch),
                    false => Self::of_tx(i),
                })
                .collect::<Result<Vec<_>, _>>()?;
            return if items.is_empty() { Err(PayloadError::BadBatch) } else { Ok(Message::Batch(items)) };
        }
        Self::of_tx(p)
    }

    /// A transaction's events, reference or session changes.
    fn of_tx(p: Raw) -> Result<Message, PayloadError> {
        let tx = p.t.as_deref().and_then(|t| t.parse::<u64>().ok()).ok_or(PayloadError::NoTx)?;
        match (p.e, p.r, p.s) {
            (Some(events), _, _) => Ok(Message::Events { tx, events }),
            (None, Some((lo, hi)), _) => Ok(Message::Reference { tx, lo, hi }),
            (None, None, Some(changes)) => Ok(Message::Sessions { tx, changes }),
            (None, None, None) => Err(PayloadError::Empty),
        }
    }

    /// Splits `<64 hex HMAC><json>` and checks the HMAC; `None` if absent or wrong.
    fn verified<'p>(&self, payload: &'p str) -> Option<&'p str> {
        let (mac, json) = (payload.get(..64)?, payload.get(64..)?);
        let tag: [u8; 32] = decode_hex(mac)?;
        ring::hmac::verify(&self.key, json.as_bytes(), &tag).ok().map(|()| json)
    }
}

/// `pgsse.history()`: 8 lowercase hex digits.
pub fn parse_history(s: &str) -> Option<u32> {
    match crate::sse::History::parse(s)? {
        crate::sse::History::Known(h) => Some(h),
        crate::sse::History::Unknown => None,
    }
}

/// A session key sent as 64 hex characters.
pub fn decode_key(hex: &str) -> Option<SessionKey> {
    decode_hex(hex)
}

/// Exactly `2 * N` hex digits into `N` bytes.
fn decode_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn sign(json: &str) -> String {
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY), json.as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}{json}")
    }

    #[test]
    fn decodes_every_kind() {
        let v = Verifier::new(KEY);
        let m = sign(r#"{"m":"42","h":"0a1b2c3d","g":"gw","n":7}"#);
        assert!(matches!(v.decode(&m), Ok(Message::Marker { horizon: 42, history: 0x0a1b2c3d, seq: Some(7), .. })));
        let e = sign(r#"{"t":"9","e":[[1,"alice","notification",{"a":1}],[2,null,"x",null]]}"#);
        match v.decode(&e) {
            Ok(Message::Events { tx: 9, events }) => {
                assert_eq!(events.len(), 2);
                assert_eq!(events[0].3.get(), r#"{"a":1}"#);
                assert_eq!(events[1].1, None);
            }
            _ => panic!("not events"),
        }
        assert!(matches!(v.decode(&sign(r#"{"t":"9","r":[3,5]}"#)), Ok(Message::Reference { tx: 9, lo: 3, hi: 5 })));
        let s = sign(r#"{"t":"10","s":[["ab",null],["cd",5]]}"#);
        assert!(matches!(v.decode(&s), Ok(Message::Sessions { tx: 10, changes }) if changes.len() == 2));
        let b = sign(r#"{"b":[{"t":"11","e":[[4,"bob","notification",{}]]},{"t":"12","r":[5,90]}]}"#);
        match v.decode(&b) {
            Ok(Message::Batch(items)) => {
                assert!(matches!(
                    &items[..],
                    [Message::Events { tx: 11, .. }, Message::Reference { tx: 12, lo: 5, hi: 90 }]
                ))
            }
            _ => panic!("not a batch"),
        }
    }

    #[test]
    fn refuses_what_pgsse_did_not_sign_or_cannot_use() {
        let v = Verifier::new(KEY);
        let good = sign(r#"{"t":"9","r":[3,5]}"#);
        let mut tampered = good.clone();
        tampered.replace_range(good.len() - 2..good.len() - 1, "6");
        let other = Verifier::new(b"another key");
        for bad in [r#"{"t":"9","r":[3,5]}"#, "", "zz", &tampered, &good[1..]] {
            assert!(matches!(v.decode(bad), Err(PayloadError::Unsigned)), "{bad}");
        }
        assert!(matches!(other.decode(&good), Err(PayloadError::Unsigned)));
        assert!(matches!(v.decode(&sign("not json")), Err(PayloadError::NotJson(_))));
        assert!(matches!(v.decode(&sign(r#"{"m":"x","h":"0a1b2c3d"}"#)), Err(PayloadError::BadMarker(_))));
        assert!(matches!(v.decode(&sign(r#"{"m":"5"}"#)), Err(PayloadError::NoHistory)));
        assert!(matches!(v.decode(&sign(r#"{"m":"5","h":"0A1B2C3D"}"#)), Err(PayloadError::NoHistory)));
        assert!(matches!(v.decode(&sign(r#"{"e":[]}"#)), Err(PayloadError::NoTx)));
        assert!(matches!(v.decode(&sign(r#"{"t":"-1","e":[]}"#)), Err(PayloadError::NoTx)));
        assert!(matches!(v.decode(&sign(r#"{"t":"1"}"#)), Err(PayloadError::Empty)));
        for batch in [
            r#"{"b":[]}"#,
            r#"{"b":[{"m":"5","h":"0a1b2c3d"}]}"#,
            r#"{"b":[{"t":"1","s":[["ab",null]]}]}"#,
            r#"{"b":[{"b":[{"t":"1","r":[1,2]}]}]}"#,
        ] {
            assert!(matches!(v.decode(&sign(batch)), Err(PayloadError::BadBatch)), "{batch}");
        }
        assert!(matches!(
            v.decode(&sign(r#"{"b":[{"t":"1","r":[1,2]},{"t":"x","r":[1,2]}]}"#)),
            Err(PayloadError::NoTx)
        ));
    }

    #[test]
    fn session_keys_are_exactly_64_hex_digits() {
        assert_eq!(decode_key(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(decode_key(&"ab".repeat(33)), None);
        assert_eq!(decode_key(&"ab".repeat(31)), None);
        assert_eq!(decode_key(&"zz".repeat(32)), None);
    }
}
