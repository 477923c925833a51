//! The NOTIFY payload protocol: signed JSON messages on pgsse's secret channel (`sql/install.sql`).
//!
//! Every payload is `<64 hex HMAC-SHA256><json>`. Any role that can connect may NOTIFY, so an
//! unsigned or malformed payload is refused here, before it can reach a browser or move the
//! horizon; what is signed but stale (re-sent) is the source's business. The relay's payloads are
//! also made here ([`Encoder`]), as `pgsse.relay()` makes them in SQL.

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

/// Checks (and for the relay, makes) signatures with the key from `pgsse.secret`.
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

    /// `<64 hex HMAC><json>`.
    pub fn sign(&self, json: &str) -> String {
        let tag = ring::hmac::sign(&self.key, json.as_bytes());
        let mut out = String::with_capacity(64 + json.len());
        for b in tag.as_ref() {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        out.push_str(json);
        out
    }

    /// Splits `<64 hex HMAC><json>` and checks the HMAC; `None` if absent or wrong.
    fn verified<'p>(&self, payload: &'p str) -> Option<&'p str> {
        let (mac, json) = (payload.get(..64)?, payload.get(64..)?);
        let tag: [u8; 32] = decode_hex(mac)?;
        ring::hmac::verify(&self.key, json.as_bytes(), &tag).ok().map(|()| json)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The longest JSON of a payload: NOTIFY refuses 8000 bytes, and `pgsse._payload` keeps the whole
/// signed payload within 7900.
pub const MAX_JSON: usize = 7900 - 64;

/// Of a transaction with more rows than this, the payload is a reference (`pgsse._payload`).
pub const MAX_INLINE_ROWS: usize = 64;

/// One row of `pgsse.relay_rows()`: a transaction's rows come together, in id order; of a
/// transaction of more than [`MAX_INLINE_ROWS`] rows, only the first 65, the last of which carries
/// `n` and `last`.
pub struct LogRow<'a> {
    pub tx: &'a str,
    pub id: i64,
    pub user_id: Option<&'a str>,
    pub event: &'a str,
    pub data: Option<&'a str>,
    /// The transaction's row count and largest id, on its 65th row.
    pub n: Option<i64>,
    pub last: Option<i64>,
}

/// The relay's payloads for one round, as `pgsse.relay()` makes them in SQL: one JSON body per
/// transaction (its events inline, or a reference when they do not fit), several transactions to
/// a NOTIFY (`{"b":[...]}`) while they fit, in the order of the transactions' last rows.
#[derive(Default)]
pub struct Encoder {
    /// `(last id, body)` of each transaction read so far.
    bodies: Vec<(i64, String)>,
    /// The transaction being read.
    open: Option<Open>,
    pub transactions: usize,
    pub events: u64,
}

struct Open {
    tx: String,
    rows: usize,
    lo: i64,
    last: i64,
    /// Set on the 65th row: the transaction's row count.
    big: Option<i64>,
    /// `{"t":"<tx>","e":[` and the entries so far.
    body: String,
}

impl Encoder {
    /// Adds one row: a transaction's rows must come together, in id order.
    pub fn push(&mut self, row: &LogRow) {
        if self.open.as_ref().is_some_and(|o| o.tx != row.tx) {
            self.close();
        }
        let o = self.open.get_or_insert_with(|| {
            let mut body = String::with_capacity(512);
            body.push_str(r#"{"t":""#);
            body.push_str(row.tx);
            body.push_str(r#"","e":["#);
            Open { tx: row.tx.to_owned(), rows: 0, lo: row.id, last: row.id, big: None, body }
        });
        o.rows += 1;
        o.last = row.last.unwrap_or(row.id);
        if let Some(n) = row.n {
            o.big = Some(n);
        }
        // Past what can go inline, the entries are of no use.
        if o.rows <= MAX_INLINE_ROWS && o.body.len() <= MAX_JSON {
            let b = &mut o.body;
            b.push_str(if o.rows > 1 { ",[" } else { "[" });
            b.push_str(itoa::Buffer::new().format(row.id));
            b.push(',');
            match row.user_id {
                Some(u) => push_json_string(b, u),
                None => b.push_str("null"),
            }
            b.push(',');
            push_json_string(b, row.event);
            b.push(',');
            b.push_str(row.data.unwrap_or("null"));
            b.push(']');
        }
    }

    fn close(&mut self) {
        let Some(mut o) = self.open.take() else { return };
        let n = o.big.unwrap_or(o.rows as i64);
        self.transactions += 1;
        self.events += n.max(0) as u64;
        let inline = o.big.is_none() && o.rows <= MAX_INLINE_ROWS && o.body.len() + 2 <= MAX_JSON;
        if inline {
            o.body.push_str("]}");
        } else {
            o.body.truncate(r#"{"t":"","#.len() + o.tx.len());
            o.body.push_str(r#""r":["#);
            o.body.push_str(itoa::Buffer::new().format(o.lo));
            o.body.push(',');
            o.body.push_str(itoa::Buffer::new().format(o.last));
            o.body.push_str("]}");
        }
        self.bodies.push((o.last, o.body));
    }

    /// The round's NOTIFY payloads, in the order to send them, signed (then `transactions` and
    /// `events` count the whole round).
    pub fn finish(&mut self, key: &Verifier) -> Vec<String> {
        self.close();
        let mut bodies = std::mem::take(&mut self.bodies);
        bodies.sort_by_key(|(last, _)| *last);
        let mut out = Vec::new();
        // The bodies of the next payload, and their length.
        let mut batch: Vec<String> = Vec::new();
        let mut len = 0;
        let mut flush = |batch: &mut Vec<String>, len: usize| {
            let json = match batch.len() {
                0 => return,
                1 => batch.swap_remove(0),
                k => {
                    let mut json = String::with_capacity(len + k + 8);
                    json.push_str(r#"{"b":["#);
                    for (i, b) in batch.drain(..).enumerate() {
                        if i > 0 {
                            json.push(',');
                        }
                        json.push_str(&b);
                    }
                    json.push_str("]}");
                    json
                }
            };
            out.push(key.sign(&json));
        };
        for (_, body) in bodies {
            // 8 bytes of {"b":[...]} and the commas.
            if !batch.is_empty() && len + body.len() + batch.len() + 8 > MAX_JSON {
                flush(&mut batch, len);
                len = 0;
            }
            len += body.len();
            batch.push(body);
        }
        flush(&mut batch, len);
        out
    }
}

/// `s` as a JSON string.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        if esc.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        } else {
            out.push_str(esc);
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out.push('"');
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
    fn signs_as_the_sql_does_and_verifies_its_own() {
        let v = Verifier::new(KEY);
        let json = r#"{"t":"9","r":[3,5]}"#;
        assert_eq!(v.sign(json), sign(json));
        assert!(matches!(v.decode(&v.sign(json)), Ok(Message::Reference { tx: 9, lo: 3, hi: 5 })));
    }

    fn row<'a>(tx: &'a str, id: i64, user: Option<&'a str>, data: &'a str) -> LogRow<'a> {
        LogRow { tx, id, user_id: user, event: "notification", data: Some(data), n: None, last: None }
    }

    /// Each payload's transactions: (tx, event ids) of inline ones, (tx, lo, hi) as ids of references.
    fn decoded(v: &Verifier, payloads: &[String]) -> Vec<(u64, Vec<i64>)> {
        let mut out = Vec::new();
        for p in payloads {
            assert!(p.len() <= 7900, "a payload of {} bytes", p.len());
            let items = match v.decode(p).expect("decodes") {
                Message::Batch(items) => items,
                one => vec![one],
            };
            for m in items {
                out.push(match m {
                    Message::Events { tx, events } => (tx, events.iter().map(|e| e.0).collect()),
                    Message::Reference { tx, lo, hi } => (tx, vec![-lo, -hi]),
                    _ => panic!("not a relay payload"),
                });
            }
        }
        out
    }

    #[test]
    fn the_relay_batches_transactions_in_the_order_of_their_last_rows() {
        let v = Verifier::new(KEY);
        let mut enc = Encoder::default();
        for r in [
            row("9", 5, Some("alice"), r#"{"a":1}"#),
            row("9", 10, Some("alice"), r#"{"a":2}"#),
            row("10", 7, None, "{}"),
            row("11", 8, Some("quote\"back\\slash\u{1}\u{e9}\u{1f600}\n\t"), "[1]"),
        ] {
            enc.push(&r);
        }
        let payloads = enc.finish(&v);
        assert_eq!((payloads.len(), enc.transactions, enc.events), (1, 3, 4));
        assert_eq!(decoded(&v, &payloads), vec![(10, vec![7]), (11, vec![8]), (9, vec![5, 10])]);
        let Ok(Message::Batch(items)) = v.decode(&payloads[0]) else { panic!("a batch") };
        let Message::Events { events, .. } = &items[1] else { panic!("events") };
        assert_eq!(
            (events[0].1.as_deref(), events[0].3.get()),
            (Some("quote\"back\\slash\u{1}\u{e9}\u{1f600}\n\t"), "[1]")
        );
        let Message::Events { events, .. } = &items[0] else { panic!("events") };
        assert_eq!(events[0].1, None, "a broadcast");
    }

    #[test]
    fn large_transactions_go_by_reference_and_batches_stay_under_notifys_limit() {
        let v = Verifier::new(KEY);
        let mut enc = Encoder::default();
        // More than 64 rows: the first 65 come, the 65th with the count and the largest id.
        for id in 1..=65 {
            let mut r = row("100", id, Some("u"), "{}");
            if id == 65 {
                (r.n, r.last) = (Some(1000), Some(5000));
            }
            enc.push(&r);
        }
        // 64 rows whose events do not fit one payload.
        let big = format!(r#"{{"x":"{}"}}"#, "y".repeat(200));
        for id in 6000..6064 {
            enc.push(&row("101", id, Some("u"), &big));
        }
        // Many small transactions: several payloads.
        let small = format!(r#"{{"x":"{}"}}"#, "z".repeat(300));
        let txs: Vec<String> = (0..100).map(|i| (200 + i).to_string()).collect();
        for (i, tx) in txs.iter().enumerate() {
            enc.push(&row(tx, 7000 + i as i64, Some("u"), &small));
        }
        let payloads = enc.finish(&v);
        assert_eq!((enc.transactions, enc.events), (102, 1000 + 64 + 100));
        assert!(payloads.len() > 3, "{} payloads", payloads.len());
        let got = decoded(&v, &payloads);
        assert_eq!(got[0], (100, vec![-1, -5000]));
        assert_eq!(got[1], (101, vec![-6000, -6063]));
        let rest: Vec<(u64, Vec<i64>)> = (0..100).map(|i| (200 + i as u64, vec![7000 + i])).collect();
        assert_eq!(got[2..], rest[..]);
    }

    #[test]
    fn session_keys_are_exactly_64_hex_digits() {
        assert_eq!(decode_key(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(decode_key(&"ab".repeat(33)), None);
        assert_eq!(decode_key(&"ab".repeat(31)), None);
        assert_eq!(decode_key(&"zz".repeat(32)), None);
    }
}
