//! The workloads, run the same way against every system: idle memory growth, broadcast
//! fan-out, per-user latency, ingest ceiling; and, for pgsse, 100k streams over replicas, the
//! allocator/THP/logging variants and a heaptrack profile.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::Kind;
use crate::fleet::{check_connected, Fleet};
use crate::procs::{self, Postgres};
use crate::publish::Publisher;
use crate::systems::{Env, PgsseOpts, System};

/// Sizes of one run (`--quick` shrinks them for the smoke test).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub mem_steps: Vec<u64>,
    pub bcast_sizes: Vec<u64>,
    pub bcasts: u32,
    /// (connections, events/s), at 2 connections per user.
    pub latency: Vec<(u64, u64)>,
    pub latency_secs: f64,
    pub ingest_conns: u64,
    pub ingest_rates: Vec<u64>,
    pub ingest_secs: f64,
    pub big: u64,
    pub replicas: usize,
    pub idle_secs: u64,
    pub variants: bool,
    pub heaptrack_conns: u64,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            mem_steps: vec![2000, 5000, 10000, 18000],
            bcast_sizes: vec![18000, 10000],
            bcasts: 10,
            latency: vec![(10000, 1000), (2000, 500)],
            // 30 s: every window holds exactly one 30 s heartbeat burst, as in production.
            latency_secs: 30.0,
            ingest_conns: 2000,
            ingest_rates: vec![1000, 2000, 3000, 4000, 6000, 8000],
            ingest_secs: 5.0,
            big: 100_000,
            replicas: 6,
            idle_secs: 60,
            variants: true,
            heaptrack_conns: 2000,
        }
    }

    /// Only the latency workload at `conns` streams and `rate` events/s, a full 30 s window.
    pub fn latency_only(conns: u64, rate: u64) -> Plan {
        let latency = vec![(conns, rate)];
        Plan { mem_steps: vec![conns], bcast_sizes: vec![], latency, latency_secs: 30.0, ..Plan::quick(conns) }
    }

    /// Only the idle-memory steps of a full run.
    pub fn memory_only() -> Plan {
        let full = Plan::full();
        Plan { mem_steps: full.mem_steps, bcast_sizes: vec![], latency: vec![], ..Plan::quick(full.big) }
    }

    pub fn quick(conns: u64) -> Plan {
        Plan {
            mem_steps: vec![conns / 4, conns],
            bcast_sizes: vec![conns],
            bcasts: 3,
            latency: vec![(conns, 200)],
            latency_secs: 2.0,
            ingest_conns: 0,
            ingest_rates: vec![],
            ingest_secs: 0.0,
            big: 0,
            replicas: 1,
            idle_secs: 0,
            variants: false,
            heaptrack_conns: 0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemPoint {
    pub conns: u64,
    pub rss_kib: u64,
    pub per_conn_kib: f64,
    pub connect_secs: f64,
    pub connect_rate: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Bcast {
    pub conns: u64,
    pub times_ms: Vec<f64>,
    pub median_ms: f64,
    pub max_ms: f64,
    pub incomplete: u32,
    /// Server CPU per delivery, and what one core does at that cost.
    pub cpu_us_per_delivery: f64,
    pub deliveries_per_core_sec: f64,
    /// Share of that CPU spent in the kernel (system time).
    pub kernel_share: f64,
    /// Busy time of the load-generator core (clients, their kernel receive work, the
    /// orchestrator) per delivery: when it nears the time per delivery, the clients bound the
    /// time to last delivery, not the server.
    #[serde(default)]
    pub load_core_us_per_delivery: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Lat {
    pub conns: u64,
    pub users: u64,
    pub target_rate: u64,
    pub achieved_rate: f64,
    pub sent: u64,
    pub publish_errors: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub misrouted: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub behind_ms: f64,
    /// The publish call's own round trip (SQL: INSERT + trigger + commit), the part no gateway
    /// can shorten.
    #[serde(default)]
    pub call_p50_ms: f64,
    #[serde(default)]
    pub call_p99_ms: f64,
    pub server_cpu_pct: f64,
    pub pg_cpu_pct: f64,
    pub loadgen_cpu_pct: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SystemResult {
    pub system: String,
    pub rss0_kib: u64,
    pub memory: Vec<MemPoint>,
    pub broadcasts: Vec<Bcast>,
    pub latency: Vec<Lat>,
    pub ingest: Vec<Lat>,
    pub ingest_stop: String,
    pub dropped: u64,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Big {
    pub conns: u64,
    pub replicas: usize,
    pub connect_secs: f64,
    pub rss0_kib: Vec<u64>,
    pub rss_kib: Vec<u64>,
    pub per_conn_kib: f64,
    pub idle_secs: u64,
    pub idle_cpu_pct: f64,
    pub heartbeats: u64,
    pub loadgen_idle_cpu_pct: f64,
    pub broadcast: Bcast,
    pub latency: Lat,
    pub dropped: u64,
    pub workers: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Variant {
    pub label: String,
    pub conns: u64,
    pub rss0_kib: u64,
    pub rss_kib: u64,
    pub per_conn_kib: f64,
}

pub struct Ctx {
    pub env: Env,
    pub pg: Postgres,
    pub fleet: Fleet,
    pub plan: Plan,
    pub hz: f64,
    pub stage: u32,
    /// Where nchan listens while it runs (its publisher posts there).
    pub nchan: Option<std::net::SocketAddr>,
}

impl Ctx {
    fn next_stage(&mut self) -> u32 {
        self.stage += 1;
        self.stage
    }

    pub async fn publisher(&self, kind: Kind, lanes: usize) -> anyhow::Result<Publisher> {
        match kind {
            Kind::Nchan => {
                Ok(Publisher::Http { addr: self.nchan.unwrap_or_else(|| ([127, 0, 0, 1], 0).into()), lanes })
            }
            _ => Publisher::sql(&self.env.db_url, lanes).await,
        }
    }
}

/// Waits until the server is idle again (under 5% of a core over 500 ms, at most 15 s), so
/// that work left over from opening or closing streams does not land in the next measurement.
pub async fn quiesce(ctx: &Ctx, sys: &System) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t0 = sys.cpu_ticks();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let busy = (sys.cpu_ticks() - t0) as f64 / ctx.hz / 0.5;
        if busy < 0.05 || Instant::now() > deadline {
            return;
        }
    }
}

pub async fn start(ctx: &mut Ctx, kind: Kind, opts: &PgsseOpts, label: &str) -> anyhow::Result<System> {
    let sys = match kind {
        Kind::Pgsse => System::pgsse(&ctx.env, opts, label).await?,
        Kind::Node => System::node(&ctx.env).await?,
        Kind::Nchan => System::nchan(&ctx.env).await?,
    };
    if kind == Kind::Nchan {
        ctx.nchan = Some(sys.addr);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(sys)
}

/// Every workload against one system, started fresh.
pub async fn system(ctx: &mut Ctx, kind: Kind) -> anyhow::Result<SystemResult> {
    let opts = PgsseOpts { replicas: 1, ..PgsseOpts::default() };
    let sys = start(ctx, kind, &opts, "main").await?;
    let mut r = SystemResult { system: kind.name().into(), rss0_kib: sys.rss_kib(), ..SystemResult::default() };
    let steps = ctx.plan.mem_steps.clone();
    for n in steps {
        let before = ctx.fleet.open;
        let c = ctx.fleet.grow(kind, sys.addr, n, 2).await?;
        check_connected(&c, &format!("{} at {n}", kind.name()))?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = sys.rss_kib();
        r.memory.push(MemPoint {
            conns: n,
            rss_kib: rss,
            per_conn_kib: rss.saturating_sub(r.rss0_kib) as f64 / n as f64,
            connect_secs: c.secs,
            connect_rate: (n - before) as f64 / c.secs.max(1e-9),
        });
        eprintln!(
            "  {}: {n} streams, RSS {} KiB ({:.2} KiB/stream)",
            kind.name(),
            rss,
            r.memory.last().map_or(0.0, |m| m.per_conn_kib)
        );
    }
    let publisher = ctx.publisher(kind, 8).await?;
    for n in ctx.plan.bcast_sizes.clone() {
        ctx.fleet.shrink(n).await?;
        quiesce(ctx, &sys).await;
        let b = broadcasts(ctx, &sys, &publisher, n).await?;
        eprintln!("  {}: broadcast to {n}: median {:.1} ms", kind.name(), b.median_ms);
        r.broadcasts.push(b);
    }
    for (n, rate) in ctx.plan.latency.clone() {
        ctx.fleet.shrink(n).await?;
        quiesce(ctx, &sys).await;
        let l = latency(ctx, &sys, &publisher, n, 2, rate, ctx.plan.latency_secs).await?;
        eprintln!("  {}: {n} streams at {rate}/s: p99 {:.2} ms, lost {}", kind.name(), l.p99_ms, l.lost);
        r.latency.push(l);
    }
    ctx.fleet.shrink(0).await?;
    if ctx.plan.ingest_conns > 0 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = ctx.plan.ingest_conns;
        check_connected(&ctx.fleet.grow(kind, sys.addr, n, 1).await?, "ingest streams")?;
        quiesce(ctx, &sys).await;
        let fast = ctx.publisher(kind, 32).await?;
        let base = r.latency.last().map_or(1.0, |l| l.p99_ms).max(1.0);
        r.ingest_stop = "all rates sustained".into();
        for rate in ctx.plan.ingest_rates.clone() {
            let l = latency(ctx, &sys, &fast, n, 1, rate, ctx.plan.ingest_secs).await?;
            eprintln!(
                "  {}: ingest {rate}/s -> {:.0}/s, p99 {:.2} ms, server {:.0}% pg {:.0}%",
                kind.name(),
                l.achieved_rate,
                l.p99_ms,
                l.server_cpu_pct,
                l.pg_cpu_pct
            );
            let stop = if l.achieved_rate < 0.95 * rate as f64 {
                Some(format!("publisher could not sustain {rate}/s (reached {:.0}/s)", l.achieved_rate))
            } else if l.lost > 0 {
                Some(format!("{} events lost at {rate}/s", l.lost))
            } else if l.p99_ms > (10.0 * base).max(50.0) {
                Some(format!("p99 {:.1} ms at {rate}/s", l.p99_ms))
            } else {
                None
            };
            r.ingest.push(l);
            if let Some(s) = stop {
                r.ingest_stop = s;
                break;
            }
        }
        ctx.fleet.shrink(0).await?;
    }
    r.dropped = ctx.fleet.stats().await?.0.dropped;
    sys.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(r)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Per-user events at `rate` for `secs` to `conns` streams (`per_user` streams per user).
pub async fn latency(
    ctx: &mut Ctx,
    sys: &System,
    publisher: &Publisher,
    conns: u64,
    per_user: u64,
    rate: u64,
    secs: f64,
) -> anyhow::Result<Lat> {
    let stage = ctx.next_stage();
    ctx.fleet.stage(stage).await?;
    let users = conns / per_user;
    let (s0, p0, l0, t0) = (sys.cpu_ticks(), ctx.pg.cpu_ticks(), ctx.fleet.cpu_ticks().await?, Instant::now());
    let sent = publisher.run(stage, rate, secs, users).await;
    let (s1, p1, l1, el) = (sys.cpu_ticks(), ctx.pg.cpu_ticks(), ctx.fleet.cpu_ticks().await?, t0.elapsed());
    let expected = sent.sent * per_user;
    let stats = ctx.fleet.settle(expected, Duration::from_secs(2), Duration::from_secs(20)).await?;
    let mut lat = stats.lat_us;
    lat.sort_unstable();
    let mut calls = sent.call_us.clone();
    calls.sort_unstable();
    let pct = |t: u64| 100.0 * t as f64 / ctx.hz / el.as_secs_f64();
    Ok(Lat {
        conns,
        users,
        target_rate: rate,
        achieved_rate: sent.rate(),
        sent: sent.sent,
        publish_errors: sent.errors,
        expected,
        received: stats.events,
        lost: expected.saturating_sub(stats.events),
        duplicates: stats.events.saturating_sub(expected),
        misrouted: stats.misrouted,
        p50_ms: percentile(&lat, 50.0),
        p90_ms: percentile(&lat, 90.0),
        p99_ms: percentile(&lat, 99.0),
        p999_ms: percentile(&lat, 99.9),
        max_ms: lat.last().map_or(0.0, |m| *m as f64 / 1000.0),
        behind_ms: sent.behind_ms,
        call_p50_ms: percentile(&calls, 50.0),
        call_p99_ms: percentile(&calls, 99.0),
        server_cpu_pct: pct(s1 - s0),
        pg_cpu_pct: pct(p1 - p0),
        loadgen_cpu_pct: pct(l1 - l0),
    })
    .inspect(|l: &Lat| {
        if let Some(e) = sent.first_error.as_ref() {
            eprintln!("  publish errors ({}): {e}", l.publish_errors);
        }
    })
}

/// `ctx.plan.bcasts` broadcasts, one at a time, each timed until its last delivery.
pub async fn broadcasts(ctx: &mut Ctx, sys: &System, publisher: &Publisher, conns: u64) -> anyhow::Result<Bcast> {
    let stage = ctx.next_stage();
    ctx.fleet.stage(stage).await?;
    let mut b = Bcast { conns, ..Bcast::default() };
    let ticks0 = sys.cpu_ticks();
    let sys0 = sys.sys_ticks();
    let load0 = procs::cpu_busy_ticks(procs::LOAD_CPU);
    for seq in 0..ctx.plan.bcasts {
        let ts = publisher.broadcast(stage, seq).await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = ctx.fleet.bcast().await?;
            let (n, last) = s.bcast.get(&seq).copied().unwrap_or((0, 0));
            if n as u64 >= conns || Instant::now() > deadline {
                if (n as u64) < conns {
                    b.incomplete += 1;
                }
                b.times_ms.push(last.saturating_sub(ts) as f64 / 1000.0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let ticks = sys.cpu_ticks() - ticks0;
    let load_ticks = procs::cpu_busy_ticks(procs::LOAD_CPU).saturating_sub(load0);
    b.kernel_share = (sys.sys_ticks() - sys0) as f64 / (ticks as f64).max(1.0);
    let mut sorted = b.times_ms.clone();
    sorted.sort_by(f64::total_cmp);
    b.median_ms = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    b.max_ms = sorted.last().copied().unwrap_or(0.0);
    let deliveries = conns as f64 * ctx.plan.bcasts as f64;
    b.cpu_us_per_delivery = ticks as f64 / ctx.hz * 1e6 / deliveries;
    b.load_core_us_per_delivery = load_ticks as f64 / ctx.hz * 1e6 / deliveries;
    if b.cpu_us_per_delivery > 0.0 {
        b.deliveries_per_core_sec = 1e6 / b.cpu_us_per_delivery;
    }
    Ok(b)
}

/// pgsse at `plan.big` streams over `plan.replicas` processes sharing one port.
pub async fn big(ctx: &mut Ctx) -> anyhow::Result<Big> {
    let plan = ctx.plan.clone();
    // The default 30 s heartbeat: the idle window sees two heartbeats on every stream.
    let opts = PgsseOpts { replicas: plan.replicas, ..PgsseOpts::default() };
    let sys = start(ctx, Kind::Pgsse, &opts, "big").await?;
    let mut r = Big {
        conns: plan.big,
        replicas: plan.replicas,
        rss0_kib: sys.rss_each(),
        workers: ctx.fleet.workers(),
        ..Big::default()
    };
    let c = ctx.fleet.grow(Kind::Pgsse, sys.addr, plan.big, 2).await?;
    check_connected(&c, "100k streams")?;
    r.connect_secs = c.secs;
    quiesce(ctx, &sys).await;
    r.rss_kib = sys.rss_each();
    r.per_conn_kib =
        (r.rss_kib.iter().sum::<u64>().saturating_sub(r.rss0_kib.iter().sum::<u64>())) as f64 / plan.big as f64;
    eprintln!("  pgsse x{}: {} streams in {:.1} s, {:.2} KiB/stream", plan.replicas, plan.big, c.secs, r.per_conn_kib);
    let stage = ctx.next_stage();
    ctx.fleet.stage(stage).await?;
    let (t0, l0) = (sys.cpu_ticks(), ctx.fleet.cpu_ticks().await?);
    tokio::time::sleep(Duration::from_secs(plan.idle_secs)).await;
    let (t1, l1) = (sys.cpu_ticks(), ctx.fleet.cpu_ticks().await?);
    r.idle_secs = plan.idle_secs;
    r.idle_cpu_pct = 100.0 * (t1 - t0) as f64 / ctx.hz / plan.idle_secs as f64;
    r.loadgen_idle_cpu_pct = 100.0 * (l1 - l0) as f64 / ctx.hz / plan.idle_secs as f64;
    r.heartbeats = ctx.fleet.stats().await?.0.heartbeats;
    eprintln!("  idle {} s: gateways {:.2}% of a core, {} heartbeats", plan.idle_secs, r.idle_cpu_pct, r.heartbeats);
    let publisher = ctx.publisher(Kind::Pgsse, 8).await?;
    r.broadcast = broadcasts(ctx, &sys, &publisher, plan.big).await?;
    eprintln!("  broadcast to {}: median {:.1} ms", plan.big, r.broadcast.median_ms);
    quiesce(ctx, &sys).await;
    r.latency = latency(ctx, &sys, &publisher, plan.big, 2, 1000, plan.latency_secs).await?;
    r.dropped = ctx.fleet.stats().await?.0.dropped;
    ctx.fleet.shrink(0).await?;
    sys.stop().await;
    Ok(r)
}
