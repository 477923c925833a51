//! The chaos run, in commit and in relay mode: real gateway processes, a Postgres restart, a
//! SIGKILLed gateway (in relay mode the relaying replica), writers whose commit order differs from
//! id order, and 200 clients reconnecting at random, sometimes to the other replica. No event may be lost, misrouted, altered or reordered, and duplicates may come
//! only at a reconnect boundary. Its ground truth is `pgsse.events` after the run, cross-checked
//! against what the writers saw.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::chaos::*;
use common::gateway::{self, wait_ready, GatewayProcess};
use common::{connect, PgCluster};

const USERS: usize = 50;
const CLIENTS: usize = 200;
const WRITERS: usize = 16;
const LOAD: Duration = Duration::from_secs(22);
const PG_RESTART_AT: Duration = Duration::from_secs(7);
const PG_DOWN_FOR: Duration = Duration::from_secs(1);
const GATEWAY_KILL_AT: Duration = Duration::from_secs(14);
const GATEWAY_FLAGS: &[&str] = &["--heartbeat-interval", "1s"];

/// How the database announces commits during the run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Each writing statement NOTIFYs in the app's transaction; gateway A is the one SIGKILLed.
    Commit,
    /// `pgsse.set_notify_mode('relay')`: one replica relays the log; that replica is the one SIGKILLed.
    Relay,
}

/// The two runs share the machine's cores: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_no_event_is_lost_across_reconnects_restarts_and_replicas() {
    chaos(Mode::Commit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_in_relay_mode_with_the_relay_replica_sigkilled() {
    chaos(Mode::Relay).await;
}

/// A gateway replica of the run, with its own metrics listener (to find the relay leader).
async fn spawn_replica(db: &str, port: u16, metrics: &str) -> GatewayProcess {
    let mut flags = GATEWAY_FLAGS.to_vec();
    flags.extend(["--metrics-listen", metrics]);
    GatewayProcess::spawn_on(db, port, &flags).await
}

async fn chaos(mode: Mode) {
    let _one = ONE_AT_A_TIME.lock().await;
    let t0 = Instant::now();
    let stamp = move || format!("{:>6.2}s", t0.elapsed().as_secs_f64());
    let pg = Arc::new(PgCluster::start());
    let db = pg.create_database("app");
    gateway::install(&db).await;
    let name = if mode == Mode::Relay { "relay" } else { "commit" };
    assert_eq!(common::relay::set_mode(&db, name).await, name);

    let ports = [common::free_port(), common::free_port()];
    let metrics = ports.map(|_| format!("127.0.0.1:{}", common::free_port()));
    let mut gws = [None, None];
    for i in 0..2 {
        gws[i] = Some(spawn_replica(&db, ports[i], &metrics[i]).await);
    }
    let addrs = ports.map(|p| format!("127.0.0.1:{p}"));
    for a in &addrs {
        assert!(wait_ready(a, Duration::from_secs(30)).await, "gateway {a} never became ready");
    }
    eprintln!("[{}] {mode:?} mode, gateways A={} B={} ready", stamp(), addrs[0], addrs[1]);

    let users: Arc<Vec<String>> = Arc::new((0..USERS).map(|i| format!("chaos-user-{i}")).collect());
    let final_round = Arc::new(AtomicBool::new(false));
    let ctx = Arc::new(ClientCtx { addrs: addrs.clone(), final_round: final_round.clone() });
    let seed: u64 = rand::random();
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    eprintln!(
        "[{}] seed {seed}; t0 + {:.3}s is {:.3}s after the Unix epoch",
        stamp(),
        rel(t0, Instant::now()),
        wall.as_secs_f64()
    );
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let user = users[i % USERS].clone();
            tokio::spawn(sse_client(i, user, ctx.clone(), seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        })
        .collect();
    // Let most clients get their first `connected` before the load starts (not required: the
    // required set of each client starts at its own first `connected`).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let stop_writers = Arc::new(AtomicBool::new(false));
    let load_start = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(db.clone(), w, users.clone(), stop_writers.clone(), seed.wrapping_add(w as u64 * 7919)))
        })
        .collect();
    eprintln!("[{}] {WRITERS} writers and {CLIENTS} clients running", stamp());

    // Postgres restart.
    tokio::time::sleep_until((load_start + PG_RESTART_AT).into()).await;
    eprintln!("[{}] restarting Postgres", stamp());
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop()).await.expect("stop postgres");
    tokio::time::sleep(PG_DOWN_FOR).await;
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.start_again()).await.expect("start postgres");
    eprintln!("[{}] Postgres is back", stamp());

    // SIGKILL a gateway (in relay mode the relaying one) and start it again on the same port.
    tokio::time::sleep_until((load_start + GATEWAY_KILL_AT).into()).await;
    let victim = match mode {
        Mode::Commit => 0,
        Mode::Relay => common::relay::leader_of(&metrics, Duration::from_secs(5))
            .await
            .expect("exactly one replica reports pgsse_relay_leader 1"),
    };
    eprintln!("[{}] SIGKILL gateway {}", stamp(), ["A", "B"][victim]);
    gws[victim].take().expect("victim").kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    gws[victim] = Some(spawn_replica(&db, ports[victim], &metrics[victim]).await);
    assert!(
        wait_ready(&addrs[victim], Duration::from_secs(30)).await,
        "the gateway never became ready after the restart"
    );
    eprintln!("[{}] gateway {} is back", stamp(), ["A", "B"][victim]);

    tokio::time::sleep_until((load_start + LOAD).into()).await;
    stop_writers.store(true, Ordering::Release);
    let mut txs: Vec<TxRecord> = Vec::new();
    for w in writers {
        txs.extend(w.await.expect("writer task"));
    }
    eprintln!("[{}] writers stopped; final reconnect of every client", stamp());
    final_round.store(true, Ordering::Release);
    let mut reports = Vec::new();
    for c in clients {
        reports.push(c.await.expect("client task"));
    }
    eprintln!("[{}] clients drained", stamp());

    // ---- Ground truth: the committed log ----------------------------------------------------
    let c = connect(&db).await;
    let mut log: Vec<LogRow> = Vec::new();
    for r in c
        .query("SELECT id, tx::text, user_id, data::text FROM pgsse.events ORDER BY id", &[])
        .await
        .expect("read the log")
    {
        let data: String = r.get(3);
        let (kind, row, hash) = parse_change(&data).unwrap_or_else(|| panic!("unexpected log row data {data}"));
        let tx: String = r.get(1);
        log.push(LogRow { id: r.get(0), tx: tx.parse().expect("tx"), user: r.get(2), kind, row, hash });
    }
    drop(gws);

    // Cross-check against the writers: every committed transaction's event is in the log, exactly
    // once and as expected; nothing else is.
    let mut problems: Vec<String> = Vec::new();
    let by_tx: HashMap<u64, &TxRecord> = txs.iter().map(|t| (t.tx, t)).collect();
    assert_eq!(by_tx.len(), txs.len(), "transaction ids are unique");
    let mut log_by_tx: HashMap<u64, Vec<&LogRow>> = HashMap::new();
    for l in &log {
        log_by_tx.entry(l.tx).or_default().push(l);
    }
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for t in &txs {
        *outcomes.entry(format!("{:?}", t.outcome)).or_default() += 1;
        let rows = log_by_tx.get(&t.tx).map(Vec::as_slice).unwrap_or(&[]);
        match t.outcome {
            Outcome::Acked | Outcome::UnknownCommitted => {
                let ok = rows.len() == 1
                    && rows[0].kind == t.kind
                    && rows[0].row == t.row
                    && rows[0].user.as_deref() == Some(t.user.as_str());
                if !ok {
                    problems.push(format!(
                        "committed tx {} of writer {} ({:?} row {}) not logged as expected",
                        t.tx, t.writer, t.kind, t.row
                    ));
                }
            }
            Outcome::NotSent | Outcome::UnknownAborted => {
                if !rows.is_empty() {
                    problems.push(format!("tx {} ({:?}) is in the log", t.tx, t.outcome));
                }
            }
            Outcome::Unknown => problems.push(format!("tx {} outcome never resolved", t.tx)),
        }
    }
    for l in &log {
        if !by_tx.contains_key(&l.tx) {
            problems.push(format!("log row {} (tx {}) was written by no writer", l.id, l.tx));
        }
    }
    assert!(problems.is_empty(), "the log disagrees with the writers:\n{}", problems.join("\n"));

    // ---- Per client --------------------------------------------------------------------------
    let log_by_id: HashMap<i64, &LogRow> = log.iter().map(|l| (l.id, l)).collect();
    let mut log_by_user: HashMap<&str, Vec<&LogRow>> = HashMap::new();
    for l in &log {
        log_by_user.entry(l.user.as_deref().unwrap_or("")).or_default().push(l);
    }
    let (mut delivered, mut required, mut lost, mut dup_total, mut dup_in_replay, mut dup_bad) = (0, 0, 0, 0, 0, 0);
    let (mut misrouted, mut corrupted, mut order_bad, mut reconnects, mut cross, mut resets) = (0, 0, 0, 0, 0, 0);
    let (mut refused, mut unavailable, mut resumed_conns, mut replayed_total) = (0, 0, 0, 0u64);
    let mut failures: Vec<String> = Vec::new();
    for r in &reports {
        let fail = |failures: &mut Vec<String>, msg: String| {
            if failures.len() < 40 {
                failures.push(format!("client {} ({}): {msg}", r.idx, r.user));
            }
        };
        for a in &r.anomalies {
            fail(&mut failures, format!("anomaly: {a}"));
        }
        if !r.finished {
            fail(&mut failures, "did not finish its final drain".into());
        }
        let Some(first) = r.first_connected else {
            fail(&mut failures, "never connected".into());
            continue;
        };
        reconnects += r.conns.len().saturating_sub(1);
        cross += r.conns.iter().filter(|c| c.gateway != r.home).count();
        resumed_conns += r.conns.iter().filter(|c| c.resumed).count();
        replayed_total += r.conns.iter().map(|c| c.replayed).sum::<u64>();
        refused += r.refused;
        unavailable += r.unavailable;
        resets += r.resets.len();
        for x in &r.resets {
            fail(&mut failures, format!("reset: {x}"));
        }
        delivered += r.recv.len();
        let mut seen: HashSet<i64> = HashSet::new();
        let mut new_live_seen: HashSet<usize> = HashSet::new(); // connections that had a new live event
                                                                // Per notification row: the last (log id, kind) received, duplicates left out. The writer's
                                                                // order is the log id order (it commits each change before making the next).
        let mut last_of_row: HashMap<i64, (i64, Kind)> = HashMap::new();
        for e in &r.recv {
            match log_by_id.get(&e.log_id) {
                None => {
                    misrouted += 1;
                    fail(&mut failures, format!("received log id {} which is not in the log", e.log_id));
                    continue;
                }
                Some(l) => {
                    if l.user.as_deref() != Some(r.user.as_str()) {
                        misrouted += 1;
                        fail(&mut failures, format!("received log id {} of user {:?}", e.log_id, l.user));
                    }
                    if l.kind != e.kind || l.row != e.row || l.hash != e.hash {
                        corrupted += 1;
                        fail(&mut failures, format!("log id {}: data differs from the log", e.log_id));
                    }
                }
            }
            if !seen.insert(e.log_id) {
                dup_total += 1;
                let conn = &r.conns[e.conn];
                if e.replay && conn.resumed {
                    dup_in_replay += 1;
                } else if !conn.resumed || new_live_seen.contains(&e.conn) {
                    dup_bad += 1;
                    let earlier = r.recv.iter().find(|x| x.log_id == e.log_id).expect("first copy");
                    let tx = log_by_id[&e.log_id].tx;
                    fail(
                        &mut failures,
                        format!(
                            "duplicate log id {} (tx {tx}, commit sent at {:.3}s) not at a reconnect boundary: first on \
                             connection #{} at {:.3}s (replay {}), again on connection #{} at {:.3}s (replay {}); \
                             connections: {}",
                            e.log_id,
                            rel(t0, by_tx[&tx].commit_sent),
                            earlier.conn,
                            rel(t0, earlier.at),
                            earlier.replay,
                            e.conn,
                            rel(t0, e.at),
                            e.replay,
                            timeline(t0, r)
                        ),
                    );
                }
                continue;
            }
            if !e.replay {
                new_live_seen.insert(e.conn);
            }
            if let Some((prev, prev_kind)) = last_of_row.insert(e.row, (e.log_id, e.kind)) {
                if prev > e.log_id || prev_kind == Kind::Deleted || e.kind == Kind::Created {
                    order_bad += 1;
                    fail(
                        &mut failures,
                        format!(
                            "row {}: {:?} (log id {}) after {prev_kind:?} (log id {prev})",
                            e.row, e.kind, e.log_id
                        ),
                    );
                }
            }
        }
        for l in log_by_user.get(r.user.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
            let t = by_tx[&l.tx];
            if t.commit_sent > first {
                required += 1;
                if !seen.contains(&l.id) {
                    lost += 1;
                    fail(
                        &mut failures,
                        format!(
                            "LOST log id {} (tx {}, {:?} row {}, commit sent at {:.3}s); connections: {}",
                            l.id,
                            l.tx,
                            l.kind,
                            l.row,
                            rel(t0, t.commit_sent),
                            timeline(t0, r)
                        ),
                    );
                }
            }
        }
    }
    let large =
        txs.iter().filter(|t| t.large && matches!(t.outcome, Outcome::Acked | Outcome::UnknownCommitted)).count();
    eprintln!(
        "chaos figures ({mode:?} mode): committed events {} (large {large}), writer tx outcomes {outcomes:?}\n\
         \x20 delivered {delivered}, required {required}, lost {lost}, duplicates {dup_total} \
         (in replay {dup_in_replay}, after replay before new live {}, outside the boundary {dup_bad}), \
         misrouted {misrouted}, corrupted {corrupted}, order violations {order_bad}\n\
         \x20 reconnects {reconnects} (resumed {resumed_conns}, to the other gateway {cross}, events replayed {replayed_total}), \
         refused {refused}, 503 {unavailable}, resets {resets}; took {:.1}s",
        log.len(),
        dup_total - dup_in_replay - dup_bad,
        t0.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "chaos run failed:\n{}", failures.join("\n"));
    assert_eq!((lost, misrouted, corrupted, order_bad, dup_bad, resets), (0, 0, 0, 0, 0, 0));
    // The run really exercised what it claims to.
    assert!(log.len() > 200, "too little load to mean anything: {} events", log.len());
    assert!(large > 0, "no event went by reference");
    assert!(required > 500, "too few required deliveries: {required}");
    assert!(cross > 0 && resumed_conns > 0, "no resume happened");
    drop(pg);
}
