//! A database that goes silent is noticed: the gateway reaches PostgreSQL through a proxy that
//! stops forwarding on its open connections without closing them (no RST, no FIN: a failover to a
//! new address, a dead NAT entry, a hung server), while new connections still get through. A row
//! committed meanwhile must still reach the open stream, `/readyz` must say not ready while the
//! gateway cannot hear the database, and a resume must work again (the pool's connections were
//! black-holed too).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::gateway::{notifications_db, readyz, request, try_stream, wait_ready, Gateway};
use common::proxy::Proxy;
use common::{insert, shared_cluster, title, SseClient};

/// Generous: with `--db-timeout 1s` the row arrives in about two seconds.
const LIMIT: Duration = Duration::from_secs(15);

/// Resumes from `last` until the gateway answers 200 (a 503 is a normal answer while it cannot
/// reach the database); returns the stream and how many attempts were refused.
async fn resume(addr: &str, last: &str) -> (SseClient, usize) {
    let deadline = Instant::now() + LIMIT;
    let mut refused = 0;
    loop {
        let c = try_stream(addr, "alice", Some(last)).await.expect("connect to the gateway");
        if c.status == 200 {
            return (c, refused);
        }
        assert_eq!(c.status, 503, "{c:?}");
        refused += 1;
        assert!(Instant::now() < deadline, "no resume succeeded within {LIMIT:?} ({refused} refused)");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Titles of the `notification` events that follow `connected`, until `want` is among them.
async fn replayed_until(s: &mut SseClient, want: &str) -> Vec<String> {
    let mut titles = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while !titles.iter().any(|t| t == want) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(e) = s.next_named("notification", left).await else { break };
        titles.push(title(&e));
    }
    titles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_database_is_noticed_and_caught_up() {
    let db = notifications_db().await;
    let cluster = shared_cluster();
    let proxy = Proxy::start(format!("{}:{}", cluster.host, cluster.port).parse().expect("cluster address")).await;
    let via = proxy.url(&db, cluster.port);
    // One pooled connection, so the resume after the silence meets the black-holed one.
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let gw = Gateway::start(&via, &["--db-timeout", "1s", "--db-pool-size", "1", "--metrics-listen", &metrics]).await;

    let mut live = gw.stream("alice", &[]).await;
    insert(&db, "alice", "before").await;
    let before = live.next_named("notification", LIMIT).await.expect("the row committed before the silence");
    assert_eq!(title(&before), "before");
    let last = before.id.clone().expect("row events carry an id");
    // A resume now puts a connection in the pool, which the silence then swallows.
    let (mut warm, _) = resume(&gw.addr, &last).await;
    assert!(warm.next_named("connected", LIMIT).await.is_some());

    proxy.blackhole();
    let silenced = Instant::now();
    let not_ready_at = Arc::new(Mutex::new(None::<Duration>));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = tokio::spawn({
        let (addr, not_ready_at, stop) = (gw.addr.clone(), not_ready_at.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some((503, _)) = readyz(&addr).await {
                    not_ready_at.lock().expect("lock").get_or_insert(silenced.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    // Committed directly, not through the proxy.
    insert(&db, "alice", "during the silence").await;
    let row = live.next_named("notification", LIMIT).await;
    let arrived = silenced.elapsed();
    assert_eq!(
        row.as_ref().map(title).as_deref(),
        Some("during the silence"),
        "the row committed during the silence did not reach the open stream within {LIMIT:?}"
    );
    assert!(wait_ready(&gw.addr, LIMIT).await, "/readyz did not say ready again within {LIMIT:?}");
    let ready_again = silenced.elapsed();
    stop.store(true, Ordering::Relaxed);
    poller.await.expect("readyz poller");
    let not_ready_at = *not_ready_at.lock().expect("lock");
    let not_ready_at = not_ready_at.expect("/readyz never said 503 while the gateway could not hear the database");

    let (mut resumed, refused) = resume(&gw.addr, &last).await;
    let resumed_at = silenced.elapsed();
    let titles = replayed_until(&mut resumed, "during the silence").await;
    assert!(titles.iter().any(|t| t == "during the silence"), "the resume did not replay the row: {titles:?}");
    let (_, _, text) = request(&metrics, "GET", "/metrics", &[]).await;
    for conn in ["listen|marker", "pool"] {
        let counted = text.lines().any(|l| {
            l.starts_with("pgsse_db_timeouts_total{conn=\"")
                && conn.split('|').any(|c| l.contains(&format!("\"{c}\"")))
                && !l.ends_with(" 0")
        });
        assert!(counted, "no deadline expiry counted on {conn}:\n{text}");
    }
    eprintln!(
        "silence: /readyz 503 after {not_ready_at:?}, row on the open stream after {arrived:?}, ready again after \
         {ready_again:?}, resume served after {resumed_at:?} ({refused} refused)"
    );
    gw.stop().await;
}
