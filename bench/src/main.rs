//! `pgsse-bench`: holds many SSE streams against pgsse, an in-app Node server and nginx + nchan,
//! publishes through the real path (SQL INSERT into a watched table; HTTP POST for nchan) and
//! measures memory per stream, publish -> client latency, broadcast fan-out and ingest ceiling.
//!
//! `pgsse-bench all` runs everything (see benches/run.sh and BENCHMARKS.md); `pgsse-bench worker`
//! is one load-generator process, started by `all`.
#![forbid(unsafe_code)]

mod client;
mod extras;
mod fleet;
mod procs;
mod publish;
mod report;
mod systems;
mod worker;
mod workloads;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use client::Kind;

#[derive(Parser)]
#[command(name = "pgsse-bench", about = "Benchmark pgsse against nchan and an in-app Node SSE server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start PostgreSQL, run every workload against every system, write the results.
    All(AllArgs),
    /// A load-generator process (JSON commands on stdin); started by `all`.
    Worker,
    /// Re-render the Markdown of a saved `--json` result into a report file.
    Report {
        /// A results file written by `all --json`.
        json: PathBuf,
        /// The Markdown file whose results section is replaced.
        report: PathBuf,
    },
}

#[derive(clap::Args)]
struct AllArgs {
    /// Systems to benchmark, comma-separated: pgsse, node, nchan.
    #[arg(long, value_delimiter = ',', default_value = "pgsse,node,nchan")]
    systems: Vec<String>,
    /// Smoke run with this many streams (small sizes, no 100k / variants / heaptrack).
    #[arg(long)]
    quick: Option<u64>,
    /// Only the latency workload: `<streams>x<events per second>` (2 streams per user, 30 s), e.g.
    /// `2000x500`.
    #[arg(long, value_parser = parse_latency_only, conflicts_with = "quick")]
    latency_only: Option<(u64, u64)>,
    /// Only the idle-memory workload, at the full run's sizes (2k, 5k, 10k, 18k streams).
    #[arg(long, conflicts_with_all = ["quick", "latency_only"])]
    memory_only: bool,
    /// `pgsse.set_notify_mode()` before the run: `commit` or `relay` (default: what the install
    /// script leaves).
    #[arg(long)]
    notify_mode: Option<String>,
    /// Load-generator processes (each holds at most ~19k streams).
    #[arg(long, default_value_t = 7)]
    workers: usize,
    /// Do not pin servers to CPU 0 and load generators to CPU 1.
    #[arg(long)]
    no_pin: bool,
    /// Leave loopback receive processing where the kernel puts it (in the sender's system call,
    /// so on the server's core) instead of steering it to the load generators' core with RPS.
    #[arg(long)]
    no_rps: bool,
    /// The pgsse binary (default: next to this one).
    #[arg(long)]
    pgsse_bin: Option<PathBuf>,
    /// Repository root (for benches/node and benches/nchan).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Write the Markdown results into this file between the results markers.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write all results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Skip the 100k-streams run over several pgsse processes.
    #[arg(long)]
    skip_big: bool,
    /// Skip the allocator / THP / log-level memory variants and heaptrack.
    #[arg(long)]
    skip_variants: bool,
    /// The command line to record in the report.
    #[arg(long, default_value = "pgsse-bench all")]
    command: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Worker => worker::main(),
        Cmd::Report { json, report } => {
            let r: report::Results = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
            report::write_into(&report, &report::markdown(&r))?;
            Ok(())
        }
        Cmd::All(args) => {
            let _ = rlimit::increase_nofile_limit(u64::MAX);
            if !args.no_pin {
                // Before the runtime starts any thread: everything this process does (publishing,
                // commanding workers) runs on the load-generator core.
                let me = std::process::id().to_string();
                let cpu = procs::LOAD_CPU.to_string();
                let ok = std::process::Command::new("taskset").args(["-a", "-p", "-c", &cpu, &me]).output();
                anyhow::ensure!(ok.is_ok_and(|o| o.status.success()), "taskset failed (use --no-pin)");
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(all(args))
        }
    }
}

async fn all(args: AllArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = std::fs::canonicalize(&args.root).context("--root")?;
    let pgsse_bin = match &args.pgsse_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("pgsse"),
    };
    anyhow::ensure!(
        pgsse_bin.is_file(),
        "pgsse binary not found at {} (build it, or pass --pgsse-bin)",
        pgsse_bin.display()
    );
    let dir = procs::scratch_dir();
    let server_cpus = (!args.no_pin).then(|| procs::SERVER_CPU.to_string());
    let load_cpus = (!args.no_pin).then(|| procs::LOAD_CPU.to_string());
    let _rps = if args.no_pin || args.no_rps {
        None
    } else {
        procs::LoopbackRps::steer(procs::LOAD_CPU)
            .inspect_err(|e| {
                eprintln!("pgsse-bench: loopback receive processing stays on the sender's core ({e}); run as root")
            })
            .ok()
    };
    eprintln!("pgsse-bench: scratch dir {}", dir.display());
    let both = format!("{},{}", procs::SERVER_CPU, procs::LOAD_CPU);
    let pg = procs::Postgres::start(&dir.join("pg"), (!args.no_pin).then_some(both.as_str())).await?;
    let db_url = setup_db(&pg, &pgsse_bin).await?;
    if let Some(mode) = &args.notify_mode {
        let (c, conn) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        c.query_one("SELECT pgsse.set_notify_mode($1)", &[mode]).await.context("--notify-mode")?;
    }
    let pg_version = {
        let (c, conn) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        c.query_one("SHOW server_version", &[]).await?.get::<_, String>(0)
    };
    let env = systems::Env {
        pgsse_bin,
        node_dir: root.join("benches/node"),
        nchan_conf: systems::default_nchan_conf(&root),
        db_url,
        dir: dir.clone(),
        keep_dir: root.join("target"),
        server_cpus,
    };
    let plan = match (args.quick, args.latency_only) {
        (Some(n), _) => workloads::Plan::quick(n),
        (None, Some((conns, rate))) => workloads::Plan::latency_only(conns, rate),
        (None, None) if args.memory_only => workloads::Plan::memory_only(),
        (None, None) => workloads::Plan::full(),
    };
    let fleet = fleet::Fleet::spawn(args.workers, load_cpus.as_deref()).await?;
    let hz = procs::clock_ticks_per_sec();
    let mut ctx = workloads::Ctx { env, pg, fleet, plan: plan.clone(), hz, stage: 0, nchan: None };
    let mut results = report::Results { command: args.command.clone(), plan: Some(plan.clone()), ..Default::default() };
    results.machine = report::machine(pg_version, procs::LoopbackRps::current());

    for name in &args.systems {
        let kind = match name.as_str() {
            "pgsse" => Kind::Pgsse,
            "node" => Kind::Node,
            "nchan" => Kind::Nchan,
            other => anyhow::bail!("unknown system {other:?}"),
        };
        eprintln!("== {name}");
        match workloads::system(&mut ctx, kind).await {
            Ok(r) => results.systems.push(r),
            Err(e) => {
                eprintln!("  {name} failed: {e:#}");
                results.errors.push(format!("{name}: {e:#}"));
                let _ = ctx.fleet.shrink(0).await;
            }
        }
    }
    let with_pgsse = args.systems.iter().any(|s| s == "pgsse");
    if with_pgsse && plan.big > 0 && !args.skip_big {
        eprintln!("== pgsse, {} streams over {} processes", plan.big, plan.replicas);
        match workloads::big(&mut ctx).await {
            Ok(b) => results.big = Some(b),
            Err(e) => {
                eprintln!("  100k failed: {e:#}");
                results.errors.push(format!("100k: {e:#}"));
                let _ = ctx.fleet.shrink(0).await;
            }
        }
    }
    if with_pgsse && plan.variants && !args.skip_variants {
        eprintln!("== pgsse without heartbeats");
        match extras::without_heartbeats(&mut ctx, 10_000, 1000).await {
            Ok(l) => results.no_heartbeat = Some(l),
            Err(e) => results.errors.push(format!("without heartbeats: {e:#}")),
        }
        eprintln!("== pgsse memory variants");
        match extras::variants(&mut ctx, 10_000).await {
            Ok(v) => results.variants = v,
            Err(e) => results.errors.push(format!("variants: {e:#}")),
        }
        if plan.heaptrack_conns > 0 && which("heaptrack") {
            eprintln!("== pgsse under heaptrack");
            match extras::heaptrack(&mut ctx, plan.heaptrack_conns).await {
                Ok(h) => results.heaptrack = Some(h),
                Err(e) => results.errors.push(format!("heaptrack: {e:#}")),
            }
        }
    }
    results.total_secs = started.elapsed().as_secs_f64();
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&results)?)?;
    }
    let md = report::markdown(&results);
    if let Some(p) = &args.report {
        report::write_into(p, &md)?;
    }
    println!("{md}");
    let workloads::Ctx { pg, .. } = ctx;
    pg.proc.stop(std::time::Duration::from_secs(30)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `2000x500`: streams and events per second.
fn parse_latency_only(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{s:?} is not <streams>x<events per second>, e.g. 2000x500");
    let (conns, rate) = s.split_once('x').ok_or_else(bad)?;
    match (conns.parse(), rate.parse()) {
        (Ok(c), Ok(r)) if c >= 2 && r > 0 => Ok((c, r)),
        _ => Err(bad()),
    }
}

fn which(prog: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Creates database `bench`, installs pgsse's SQL the way a DBA would (`pgsse sql install
/// --apply`), and creates and watches the app's `notifications` table.
async fn setup_db(pg: &procs::Postgres, pgsse_bin: &std::path::Path) -> anyhow::Result<String> {
    let (c, conn) = tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    c.batch_execute("CREATE DATABASE bench").await?;
    let url = pg.url("bench");
    let out = std::process::Command::new(pgsse_bin)
        .args(["sql", "install", "--apply", "--database-url", &url])
        .output()
        .context("pgsse sql install")?;
    anyhow::ensure!(out.status.success(), "pgsse sql install failed: {}", String::from_utf8_lossy(&out.stderr));
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    // The table `pgsse demo` creates, watched the same way.
    c.batch_execute(pgsse::pg::demo::CREATE_TABLE_SQL).await?;
    c.batch_execute("SELECT pgsse.watch('notifications', 'user_id')").await?;
    Ok(url)
}
