//! Unit tests of the hub.
use super::*;
use std::collections::HashSet;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

const STALL: Duration = Duration::from_secs(3600);

fn item(log_id: i64, s: &str) -> Item {
    Item { log_id, tx: 0, bytes: Bytes::copy_from_slice(s.as_bytes()) }
}

fn hub(queue_bytes: usize) -> Arc<Hub> {
    sliced(queue_bytes, 1)
}

fn sliced(queue_bytes: usize, heartbeat_slices: usize) -> Arc<Hub> {
    let limits = Limits { queue_bytes, stall: STALL, max_connections: 0, max_per_user: 0, heartbeat_slices };
    Arc::new(Hub::new(limits, Metrics::default()))
}

fn sub(hub: &Arc<Hub>, user: &str) -> Subscription {
    hub.subscribe(user.into(), None, None, None).expect("room")
}

fn next(sub: &Subscription) -> Poll<Next> {
    sub.poll_next(&mut Context::from_waker(Waker::noop()), 0)
}

fn data(p: Poll<Next>) -> String {
    match p {
        Poll::Ready(Next::Data(b)) => String::from_utf8(b.to_vec()).expect("utf8"),
        other => panic!("expected data, got {other:?}"),
    }
}

#[test]
fn routes_by_user_and_broadcasts() {
    let hub = hub(1024);
    let a1 = sub(&hub, "a");
    let a2 = sub(&hub, "a");
    let b = sub(&hub, "b");
    assert_eq!(hub.publish(Some("a"), &item(1, "x")), 2);
    assert_eq!(hub.publish(Some("nobody"), &item(2, "y")), 0);
    assert_eq!(hub.publish(None, &item(3, "z")), 3);
    assert_eq!(data(next(&a1)), "xz");
    assert_eq!(data(next(&a2)), "xz");
    assert_eq!(data(next(&b)), "z");
    assert!(next(&b).is_pending());
}

#[test]
fn drop_unsubscribes_at_once() {
    let hub = hub(1024);
    let a = sub(&hub, "a");
    let a2 = sub(&hub, "a");
    assert_eq!(hub.connection_count(), 2);
    drop(a);
    assert_eq!(hub.connection_count(), 1);
    drop(a2);
    assert_eq!(hub.connection_count(), 0);
    assert!(hub.metrics.encode().contains("pgsse_connections_closed_total{reason=\"client\"} 2"));
}

#[test]
fn overflow_stops_queueing_instead_of_cutting() {
    let hub = hub(10);
    let slow = sub(&hub, "a");
    let fast = sub(&hub, "a");
    for i in 0..5 {
        hub.publish(Some("a"), &Item { log_id: i + 1, tx: 7, bytes: Bytes::from_static(b"abcd") });
        let _ = data(next(&fast));
    }
    match next(&slow) {
        Poll::Ready(Next::Behind { from: 0, taken }) => assert!(taken.is_empty()),
        other => panic!("expected behind, got {other:?}"),
    }
    assert_eq!(slow.conn.lock().bytes, 0, "what it held is freed");
    assert!(next(&fast).is_pending());
    assert_eq!(hub.publish(Some("a"), &item(9, "abcd")), 2, "a stream behind is still open");
    drop(slow);
    assert_eq!(hub.metrics.slow_client_disconnects.get(), 0);
}

#[test]
fn a_stream_whose_bytes_wait_past_the_deadline_is_cut() {
    let limits = Limits {
        queue_bytes: 1 << 20,
        stall: Duration::ZERO,
        max_connections: 0,
        max_per_user: 0,
        heartbeat_slices: 1,
    };
    let hub = Arc::new(Hub::new(limits, Metrics::default()));
    let stuck = sub(&hub, "a");
    let reader = sub(&hub, "a");
    hub.publish(Some("a"), &item(1, "x"));
    let _ = data(next(&reader));
    std::thread::sleep(Duration::from_millis(2));
    assert_eq!(hub.publish(Some("a"), &item(2, "y")), 1, "only the reader still takes events");
    assert!(matches!(next(&stuck), Poll::Ready(Next::Closed(CloseReason::SlowClient))));
    assert_eq!(data(next(&reader)), "y");
    drop(stuck);
    let text = hub.metrics.encode();
    assert!(text.contains("pgsse_streams_cut_total{reason=\"slow_client\"} 1"), "{text}");
}

#[test]
fn live_copies_of_replayed_events_are_never_queued() {
    let hub = hub(1024);
    let s = sub(&hub, "a");
    hub.publish(Some("a"), &Item { log_id: 5, tx: 90, bytes: Bytes::from_static(b"old") });
    hub.publish(Some("a"), &Item { log_id: 6, tx: 100, bytes: Bytes::from_static(b"dup") });
    s.start(vec![item(0, "c"), Item { log_id: 6, tx: 100, bytes: Bytes::from_static(b"r") }], 100, 100, [6, 8].into());
    hub.publish(Some("a"), &Item { log_id: 8, tx: 101, bytes: Bytes::from_static(b"dup") });
    hub.publish(Some("a"), &Item { log_id: 4, tx: 80, bytes: Bytes::from_static(b"old") });
    assert_eq!(s.conn.lock().bytes, 2, "only the preamble is counted");
    hub.publish(Some("a"), &Item { log_id: 7, tx: 100, bytes: Bytes::from_static(b"new") });
    assert_eq!(data(next(&s)), "crnew");
}

#[test]
fn a_catch_up_starts_where_the_writer_stopped_taking() {
    let hub = hub(8);
    let s = sub(&hub, "a");
    s.start(vec![], 50, 0, HashSet::new());
    hub.publish(Some("a"), &Item { log_id: 1, tx: 60, bytes: Bytes::from_static(b"aa") });
    hub.publish(Some("a"), &Item { log_id: 2, tx: 61, bytes: Bytes::from_static(b"bb") });
    // The writer takes both; the horizon it read before was 61.
    assert_eq!(
        s.poll_next(&mut Context::from_waker(Waker::noop()), 61).map(|n| matches!(n, Next::Data(_))),
        Poll::Ready(true)
    );
    for i in 3..8 {
        hub.publish(Some("a"), &Item { log_id: i, tx: 62, bytes: Bytes::from_static(b"cccc") });
    }
    match next(&s) {
        Poll::Ready(Next::Behind { from, taken }) => assert_eq!((from, taken), (61, vec![(61, 2)])),
        other => panic!("expected behind, got {other:?}"),
    }
}

#[test]
fn one_item_larger_than_the_limit_still_goes_to_an_empty_queue() {
    let hub = hub(4);
    let s = sub(&hub, "a");
    hub.publish(Some("a"), &item(1, "0123456789"));
    assert_eq!(data(next(&s)), "0123456789");
}

#[test]
fn close_all_ends_streams_after_queued_data() {
    let hub = hub(1024);
    let s = sub(&hub, "a");
    hub.publish(Some("a"), &item(1, "last"));
    hub.close_all(CloseReason::Shutdown);
    assert_eq!(data(next(&s)), "last");
    assert!(matches!(next(&s), Poll::Ready(Next::Closed(CloseReason::Shutdown))));
}

#[test]
fn limits_are_enforced_at_registration() {
    let hub = Arc::new(Hub::new(
        Limits { queue_bytes: 64, stall: STALL, max_connections: 3, max_per_user: 2, heartbeat_slices: 1 },
        Metrics::default(),
    ));
    let _a1 = sub(&hub, "a");
    let a2 = sub(&hub, "a");
    assert_eq!(hub.subscribe("a".into(), None, None, None).err(), Some(Full::User));
    let _b = sub(&hub, "b");
    assert_eq!(hub.subscribe("c".into(), None, None, None).err(), Some(Full::Gateway));
    drop(a2);
    assert!(hub.subscribe("c".into(), None, None, None).is_ok());
}

#[test]
fn expired_streams_get_the_notice_then_close() {
    let hub = hub(1024);
    let s = hub.subscribe("a".into(), Some(100), None, None).expect("room");
    let keep = hub.subscribe("a".into(), Some(200), None, None).expect("room");
    assert_eq!(hub.next_expiry(), Some(100));
    assert_eq!(hub.expire(99, &item(0, "bye")), 0);
    assert_eq!(hub.expire(150, &item(0, "bye")), 1);
    assert_eq!(data(next(&s)), "bye");
    assert!(matches!(next(&s), Poll::Ready(Next::Closed(CloseReason::AuthExpired))));
    assert!(next(&keep).is_pending());
    drop(keep);
    assert_eq!(hub.next_expiry(), None, "a dropped stream leaves the expiry queue");
}

fn stalling(stall: Duration) -> Arc<Hub> {
    let limits = Limits { queue_bytes: 1 << 20, stall, max_connections: 0, max_per_user: 0, heartbeat_slices: 1 };
    Arc::new(Hub::new(limits, Metrics::default()))
}

#[test]
fn a_cut_fires_the_abort_signal() {
    let hub = stalling(Duration::ZERO);
    let abort = Arc::new(Abort::default());
    let _s = hub.subscribe("a".into(), None, None, Some(abort.clone())).expect("room");
    hub.publish(Some("a"), &item(1, "abcd"));
    std::thread::sleep(Duration::from_millis(2));
    hub.publish(Some("a"), &item(2, "abcd"));
    let fired = abort.notify.notified();
    tokio::pin!(fired);
    assert!(fired.as_mut().enable(), "a permit was stored for the connection task");
}

#[test]
fn poll_cut_wakes_a_blocked_writer_when_its_stream_expires() {
    struct Flag(std::sync::atomic::AtomicBool);
    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let hub = hub(4);
    let s = hub.subscribe("a".into(), Some(100), None, None).expect("room");
    let flag = Arc::new(Flag(false.into()));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    hub.publish(Some("a"), &item(1, "abcd"));
    assert!(s.poll_cut(&mut cx).is_pending(), "a full queue alone is not a cut");
    hub.publish(Some("a"), &item(2, "abcd"));
    assert!(s.poll_cut(&mut cx).is_pending(), "nor is a queue over its bound");
    assert_eq!(hub.expire(100, &item(0, "bye")), 1);
    assert!(flag.0.load(Ordering::SeqCst), "the expiry woke the pending writer");
    assert_eq!(s.poll_cut(&mut cx), Poll::Ready(CloseReason::AuthExpired));
}

#[test]
fn revoking_a_session_closes_only_its_streams() {
    let hub = hub(1024);
    let s1 = hub.subscribe("a".into(), None, Some([1; 32]), None).expect("room");
    let s2 = hub.subscribe("a".into(), None, Some([2; 32]), None).expect("room");
    assert_eq!(hub.revoke_session(&[1; 32], &item(0, "bye")), 1);
    assert_eq!(data(next(&s1)), "bye");
    assert!(matches!(next(&s1), Poll::Ready(Next::Closed(CloseReason::AuthExpired))));
    assert!(next(&s2).is_pending());
    drop(s2);
    assert_eq!(hub.revoke_session(&[2; 32], &item(0, "bye")), 0, "a closed stream left the index");
}

#[test]
fn slices_cover_every_stream_exactly_once() {
    let hub = sliced(1 << 20, 8);
    assert_eq!(hub.slices(), 8);
    let mut subs: Vec<_> = (0..50).map(|i| sub(&hub, &format!("u{}", i % 7))).collect();
    let total: usize = (0..8).map(|k| hub.publish_slice(k, &item(0, "hb"))).sum();
    assert_eq!(total, subs.len());
    for s in &subs {
        assert_eq!(data(next(s)), "hb", "one heartbeat per stream per round");
        assert!(next(s).is_pending());
    }
    subs.truncate(10);
    let total: usize = (0..8).map(|k| hub.publish_slice(k, &item(0, "hb"))).sum();
    assert_eq!(total, 10, "closed streams left their slices");
    assert_eq!(sliced(16, 0).slices(), 1, "zero slices means one");
}

#[test]
fn a_shutdown_is_not_a_cut() {
    let hub = hub(1024);
    let s = sub(&hub, "a");
    hub.close_all(CloseReason::Shutdown);
    let closed = s.poll_cut(&mut Context::from_waker(Waker::noop()));
    assert_eq!(closed, Poll::Ready(CloseReason::Shutdown));
    assert!(!CloseReason::Shutdown.is_cut(), "pending writes get a grace to finish");
}

#[test]
#[cfg(target_pointer_width = "64")]
fn an_open_stream_hub_side_costs_little() {
    // One `Conn` per open stream for its whole life. What only resumed or caught-up streams
    // need (`Queue::sent`) is boxed, so an idle stream carries one pointer for it.
    let size = std::mem::size_of::<Conn>();
    assert!(size <= 152, "the hub's side of a stream grew to {size} bytes");
}
