//! The encoder checked against a reference WHATWG parser, the exact bytes of every gateway
//! event, and `Last-Event-ID` parsing.

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
    let b = encode("notification", Some(EventId::event(0x0a1b2c3d, 9, 3)), r#"{"type":"read","notificationId":123}"#);
    assert_eq!(&b[..], b"event: notification\nid: 0a1b2c3d.9-3\ndata: {\"type\":\"read\",\"notificationId\":123}\n\n");
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

#[test]
fn gateway_events_exact_wire_format() {
    let id = EventId::horizon(0x0a1b2c3d, 9);
    assert_eq!(
        &connected(id, "alice", 7, true, 2, 30000)[..],
        b"retry: 1000\nevent: connected\nid: 0a1b2c3d.9\n\
          data: {\"connectionId\":7,\"heartbeatMs\":30000,\"replayed\":2,\"resumed\":true,\"userId\":\"alice\"}\n\n"
    );
    assert_eq!(
        &reset(id, "too_old", "refetch")[..],
        b"event: reset\nid: 0a1b2c3d.9\ndata: {\"message\":\"refetch\",\"reason\":\"too_old\"}\n\n"
    );
    assert_eq!(
        &auth_expired("token_expired")[..],
        b"event: auth-expired\ndata: {\"message\":\"the credential is no longer valid; reconnect with a fresh one\",\
          \"reason\":\"token_expired\"}\n\n"
    );
    let beat = heartbeat(id);
    let text = std::str::from_utf8(&beat).expect("utf8");
    let ms = text
        .strip_prefix("event: heartbeat\nid: 0a1b2c3d.9\ndata: {\"timestamp\":")
        .and_then(|t| t.strip_suffix("}\n\n"))
        .unwrap_or_else(|| panic!("{text:?}"));
    assert!(ms.parse::<u64>().is_ok_and(|ms| ms > 1_600_000_000_000), "{text:?}");
}

#[test]
fn every_gateway_event_has_its_name_on_the_wire() {
    let id = EventId::horizon(1, 2);
    let built = [connected(id, "u", 1, false, 0, 1), heartbeat(id), reset(id, "r", "m"), auth_expired("r")];
    for (event, bytes) in GatewayEvent::ALL.into_iter().zip(built) {
        let events = parse(std::str::from_utf8(&bytes).expect("utf8"));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, event.name());
    }
}

#[test]
fn retry_fields_dispatch_nothing() {
    assert_eq!(&retry(DEFAULT_RETRY_MS)[..], b"retry: 1000\n\n");
    for _ in 0..100 {
        let bytes = drain_retry();
        let text = std::str::from_utf8(&bytes).expect("utf8");
        assert!(parse(text).is_empty(), "{text:?}");
        let ms =
            text.strip_prefix("retry: ").and_then(|t| t.strip_suffix("\n\n")).unwrap_or_else(|| panic!("{text:?}"));
        assert!(ms.parse::<u64>().is_ok_and(|ms| DRAIN_RETRY_MS.contains(&ms)), "{text:?}");
    }
}
