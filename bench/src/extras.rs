//! pgsse-only extras: latency without the heartbeat burst, idle memory under other allocators,
//! THP and log levels, and a heaptrack profile of the heap at 2k idle streams.

use std::time::Duration;

use crate::client::Kind;
use crate::fleet::check_connected;
use crate::systems::PgsseOpts;
use crate::workloads::{latency, quiesce, start, Ctx, Lat, Variant};

/// pgsse at `conns` streams and `rate` events/s with heartbeats pushed out of the window
/// (`--heartbeat-interval 1h`): what the per-user path costs without the heartbeat burst.
pub async fn without_heartbeats(ctx: &mut Ctx, conns: u64, rate: u64) -> anyhow::Result<Lat> {
    let opts = PgsseOpts { replicas: 1, heartbeat: Some("1h".into()), ..PgsseOpts::default() };
    let sys = start(ctx, Kind::Pgsse, &opts, "quiet").await?;
    check_connected(&ctx.fleet.grow(Kind::Pgsse, sys.addr, conns, 2).await?, "streams without heartbeats")?;
    quiesce(ctx, &sys).await;
    let publisher = ctx.publisher(Kind::Pgsse, 8).await?;
    let secs = ctx.plan.latency_secs;
    let l = latency(ctx, &sys, &publisher, conns, 2, rate, secs).await?;
    eprintln!("  pgsse without heartbeats, {conns} streams at {rate}/s: p99 {:.2} ms", l.p99_ms);
    ctx.fleet.shrink(0).await?;
    sys.stop().await;
    Ok(l)
}

/// pgsse's idle memory at 10k streams under other allocators / THP / log levels.
pub async fn variants(ctx: &mut Ctx, conns: u64) -> anyhow::Result<Vec<Variant>> {
    let lib = |n: &str| format!("/usr/lib/x86_64-linux-gnu/{n}");
    let mut list: Vec<(String, Vec<(String, String)>)> = vec![
        ("default (glibc malloc, RUST_LOG=info)".into(), vec![]),
        (
            "RUST_LOG=warn (no per-connection span)".into(),
            vec![("RUST_LOG".into(), "warn,pgsse::pg::source=info".into())],
        ),
        (
            "glibc.malloc.hugetlb=1 (THP via madvise)".into(),
            vec![("GLIBC_TUNABLES".into(), "glibc.malloc.hugetlb=1".into())],
        ),
        ("MALLOC_ARENA_MAX=1".into(), vec![("MALLOC_ARENA_MAX".into(), "1".into())]),
    ];
    for (name, so) in [("jemalloc", "libjemalloc.so.2"), ("mimalloc", "libmimalloc.so.2")] {
        if std::path::Path::new(&lib(so)).exists() {
            list.push((format!("{name} (LD_PRELOAD)"), vec![("LD_PRELOAD".into(), lib(so))]));
        }
    }
    let mut out = Vec::new();
    for (i, (label, env)) in list.into_iter().enumerate() {
        let opts = PgsseOpts { replicas: 1, env: env.clone(), ..PgsseOpts::default() };
        let sys = start(ctx, Kind::Pgsse, &opts, &format!("variant{i}")).await?;
        let rss0 = sys.rss_kib();
        check_connected(&ctx.fleet.grow(Kind::Pgsse, sys.addr, conns, 2).await?, &label)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = sys.rss_kib();
        let v =
            Variant { label, conns, rss0_kib: rss0, rss_kib: rss, per_conn_kib: (rss - rss0) as f64 / conns as f64 };
        eprintln!("  variant {}: {:.2} KiB/stream", v.label, v.per_conn_kib);
        out.push(v);
        ctx.fleet.shrink(0).await?;
        sys.stop().await;
    }
    Ok(out)
}

/// pgsse under heaptrack with `conns` idle streams; returns heaptrack_print's summary.
pub async fn heaptrack(ctx: &mut Ctx, conns: u64) -> anyhow::Result<String> {
    let out = ctx.env.dir.join("heaptrack.pgsse");
    let opts = PgsseOpts {
        replicas: 1,
        wrapper: vec!["heaptrack".into(), "-o".into(), out.to_string_lossy().into()],
        ..PgsseOpts::default()
    };
    let sys = start(ctx, Kind::Pgsse, &opts, "heaptrack").await?;
    check_connected(&ctx.fleet.grow(Kind::Pgsse, sys.addr, conns, 2).await?, "heaptrack streams")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    sys.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ctx.fleet.shrink(0).await?;
    let file = std::fs::read_dir(&ctx.env.dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("heaptrack.pgsse")))
        .ok_or_else(|| anyhow::anyhow!("heaptrack wrote no file"))?;
    let kept = ctx.env.keep_dir.join("pgsse-bench-heaptrack.zst");
    let _ = std::fs::copy(&file, &kept);
    let o = std::process::Command::new("heaptrack_print")
        .arg("-f")
        .arg(&file)
        .args(["--print-peaks", "1", "--print-allocators", "0", "--print-temporary", "0", "--print-leaks", "0"])
        .args(["--peak-limit", "14", "--sub-peak-limit", "3"])
        .output()?;
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}
