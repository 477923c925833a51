//! Relay mode with `--relay-quiet-interval`: a quiet relay polls instead of sleeping, so no
//! writer ever NOTIFYs in relay mode, not even the first after a pause. By default the first
//! writer wakes a sleeping relay with a NOTIFY, and PostgreSQL refuses to prepare (two-phase
//! commit) a transaction that has NOTIFYed.

mod common;

use std::time::Duration;

use common::gateway::{metric, Gateway};
use common::relay::{open, set_mode};
use common::sql::Listener;
use common::{connect, describe_pg_error, free_port, title};

const PREPARE: &str = "BEGIN; INSERT INTO notifications (user_id, title) VALUES ('quiet', 'prepared'); \
                       PREPARE TRANSACTION 'pgsse_quiet'";

/// Rounds and probes the relay of the gateway whose metrics are at `metrics` has run so far.
async fn polls(metrics: &str) -> (u64, u64) {
    (metric(metrics, "pgsse_relay_rounds_total").await, metric(metrics, "pgsse_relay_probes_total").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_relay_that_polls_lets_the_first_writer_after_a_pause_prepare() {
    let pg = common::PgCluster::start_with("max_prepared_transactions = 5");
    let db = pg.create_database("app");
    common::gateway::install(&db).await;
    assert_eq!(set_mode(&db, "relay").await, "relay");
    let c = connect(&db).await;

    // By default the quiet relay sleeps, and the first writer after the pause wakes it.
    let metrics = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&db, &["--metrics-listen", &metrics]).await;
    let asleep =
        common::wait_until(Duration::from_secs(10), || async { metric(&metrics, "pgsse_relay_asleep").await == 1 })
            .await;
    assert!(asleep, "the quiet relay never fell asleep");
    let refused = c.batch_execute(PREPARE).await.expect_err("PREPARE TRANSACTION after waking the relay");
    assert!(describe_pg_error(&refused).contains("NOTIFY"), "{}", describe_pg_error(&refused));
    c.batch_execute("ROLLBACK").await.expect("rollback");
    gw.stop().await;

    let metrics = format!("127.0.0.1:{}", free_port());
    // The longest quiet interval: the one that could put off the lease's renewal (every 400 ms).
    let gw = Gateway::start(&db, &["--metrics-listen", &metrics, "--relay-quiet-interval", "400ms"]).await;
    let wake_channel = format!("{}_wake", common::gateway::channel(&db).await);
    let mut wake = Listener::on(&db, wake_channel).await;
    let mut s = open(&gw.addr, "quiet").await;
    let leading =
        common::wait_until(Duration::from_secs(10), || async { metric(&metrics, "pgsse_relay_leader").await == 1 })
            .await;
    assert!(leading, "the gateway never took the relay's lease");
    // Quiet for longer than a second: a relay that sleeps would be asleep by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (rounds, probes) = polls(&metrics).await;
    // Meanwhile the lease (1 s) is renewed every 400 ms: never less than about 600 ms of it left.
    let mut least_left = f64::MAX;
    let sampling = std::time::Instant::now();
    while sampling.elapsed() < Duration::from_secs(3) {
        let left: f64 = c
            .query_one("SELECT extract(epoch FROM relay_until - clock_timestamp())::float8 * 1000 FROM pgsse.meta", &[])
            .await
            .expect("the relay's lease")
            .get(0);
        least_left = least_left.min(left);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rounds, probes) = (polls(&metrics).await.0 - rounds, polls(&metrics).await.1 - probes);
    assert_eq!(metric(&metrics, "pgsse_relay_asleep").await, 0, "a relay told to poll never sleeps");
    eprintln!("least of the lease left: {least_left:.0} ms; {rounds} rounds, {probes} probes in 3 s");
    assert!(least_left > 400.0, "the lease ran down to {least_left:.0} ms before the quiet relay renewed it");
    // About 8 rounds and next to no probes, against about 300 probes at the 10 ms interval it
    // keeps while writers write.
    assert!(rounds + probes <= 30, "a quiet relay polls every 400 ms: {rounds} rounds and {probes} probes in 3 s");

    c.batch_execute(PREPARE).await.expect("PREPARE TRANSACTION in relay mode, the relay quiet");
    let committed = std::time::Instant::now();
    c.batch_execute("COMMIT PREPARED 'pgsse_quiet'").await.expect("COMMIT PREPARED");
    let ev = s.next_named("notification", Duration::from_secs(5)).await.expect("the prepared row, relayed");
    eprintln!("relayed {:.1} ms after COMMIT PREPARED began", committed.elapsed().as_secs_f64() * 1000.0);
    assert_eq!(title(&ev), "prepared");
    assert!(wake.drain().await.is_empty(), "a writer sent a wake-up");
    assert_eq!(metric(&metrics, "pgsse_relay_wakeups_total").await, 0);
    gw.stop().await;
}
