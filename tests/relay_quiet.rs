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
async fn polls(metrics: &str) -> u64 {
    metric(metrics, "pgsse_relay_probes_total").await + metric(metrics, "pgsse_relay_rounds_total").await
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
    let gw = Gateway::start(&db, &["--metrics-listen", &metrics, "--relay-quiet-interval", "100ms"]).await;
    let wake_channel = format!("{}_wake", common::gateway::channel(&db).await);
    let mut wake = Listener::on(&db, wake_channel).await;
    let mut s = open(&gw.addr, "quiet").await;
    let leading =
        common::wait_until(Duration::from_secs(10), || async { metric(&metrics, "pgsse_relay_leader").await == 1 })
            .await;
    assert!(leading, "the gateway never took the relay's lease");
    // Quiet for longer than a second: a relay that sleeps would be asleep by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = polls(&metrics).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let polled = polls(&metrics).await - before;
    assert_eq!(metric(&metrics, "pgsse_relay_asleep").await, 0, "a relay told to poll never sleeps");
    // About 10 at 100 ms, against about 100 at the 10 ms interval it polls at while writers write.
    assert!((3..=30).contains(&polled), "a quiet relay polls about every 100 ms: {polled} probes and rounds in 1 s");

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
