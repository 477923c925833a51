//! Results: JSON for machines (the smoke test reads it) and Markdown tables for BENCHMARKS.md,
//! written between the `results:begin` / `results:end` markers so the prose around them stays.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::workloads::{Big, Lat, Plan, SystemResult, Variant};

pub const BEGIN: &str = "<!-- results:begin (written by pgsse-bench; do not edit by hand) -->";
pub const END: &str = "<!-- results:end -->";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub date: String,
    pub nproc: String,
    pub cpu: String,
    pub kernel: String,
    pub memory: String,
    pub thp: String,
    /// The loopback's RPS CPU mask during the run ("0": receive work on the sender's core).
    #[serde(default)]
    pub loopback_rps: String,
    pub versions: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub command: String,
    pub machine: Machine,
    pub plan: Option<Plan>,
    pub systems: Vec<SystemResult>,
    pub errors: Vec<String>,
    pub big: Option<Big>,
    pub variants: Vec<Variant>,
    pub heaptrack: Option<String>,
    pub no_heartbeat: Option<Lat>,
    pub total_secs: f64,
}

fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn machine(pg_bin_version: String, loopback_rps: String) -> Machine {
    Machine {
        date: sh("date -u '+%Y-%m-%d %H:%M UTC'"),
        nproc: sh("nproc --all"),
        cpu: sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-"),
        kernel: sh("uname -sr"),
        memory: sh("free -g | awk '/Mem:/ {print $2 \" GiB\"}'"),
        thp: sh("cat /sys/kernel/mm/transparent_hugepage/enabled"),
        loopback_rps,
        versions: vec![
            ("PostgreSQL".into(), pg_bin_version),
            ("node".into(), sh("node --version")),
            ("nginx".into(), sh("nginx -v 2>&1 | cut -d/ -f2")),
            ("libnginx-mod-nchan".into(), sh("dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null")),
            ("rustc".into(), sh("rustc --version")),
        ],
    }
}

fn find<'a>(r: &'a Results, name: &str) -> Option<&'a SystemResult> {
    r.systems.iter().find(|s| s.system == name)
}

fn cell(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

fn mem_at(s: &SystemResult, n: u64) -> Option<String> {
    s.memory.iter().find(|m| m.conns == n).map(|m| format!("{:.1} KiB", m.per_conn_kib))
}

fn lat_at(s: &SystemResult, n: u64) -> Option<&Lat> {
    s.latency.iter().find(|l| l.conns == n)
}

fn rps_words(mask: &str) -> String {
    match mask {
        "" | "unknown" => "loopback RPS not recorded".into(),
        "0" => "loopback receive work on the sending core (RPS off)".into(),
        m => format!("loopback receive work steered to CPU mask {m} (RPS)"),
    }
}

pub fn markdown(r: &Results) -> String {
    let mut o = String::new();
    let m = &r.machine;
    let _ = writeln!(
        o,
        "Measured {} on {} × {} ({} cores), {}, {} RAM, THP `{}`, {}.",
        m.date,
        m.nproc,
        m.cpu.trim(),
        m.nproc,
        m.kernel,
        m.memory,
        m.thp,
        rps_words(&m.loopback_rps)
    );
    let versions: Vec<String> = m.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(o, "Versions: {}. Whole run: {:.0} s.\n", versions.join(", "), r.total_secs);
    let _ = writeln!(o, "Command: `{}`\n", r.command);
    for e in &r.errors {
        let _ = writeln!(o, "**Error:** {e}\n");
    }
    let names = ["node", "nchan", "pgsse"];
    let _ = writeln!(o, "### Summary\n\n| metric | Node baseline | nchan | pgsse |\n|---|---|---|---|");
    let row = |label: &str, f: &dyn Fn(&SystemResult) -> Option<String>| {
        let cells: Vec<String> = names.iter().map(|n| cell(find(r, n).and_then(f))).collect();
        format!("| {label} | {} |\n", cells.join(" | "))
    };
    o += &row("RSS per idle stream, 10k streams", &|s| mem_at(s, 10000));
    o += &row("RSS per idle stream, 18k streams", &|s| mem_at(s, 18000));
    o += &row("publish -> client p99, 2k streams, 500 ev/s", &|s| {
        lat_at(s, 2000).map(|l| format!("{:.2} ms", l.p99_ms))
    });
    o += &row("publish -> client p99, 10k streams, 1000 ev/s", &|s| {
        lat_at(s, 10000).map(|l| format!("{:.2} ms", l.p99_ms))
    });
    o += &row("broadcast to 10k, time to last delivery (median)", &|s| {
        s.broadcasts.iter().find(|b| b.conns == 10000).map(|b| format!("{:.1} ms", b.median_ms))
    });
    o += &row("broadcast to 18k, time to last delivery (median)", &|s| {
        s.broadcasts.iter().find(|b| b.conns == 18000).map(|b| format!("{:.1} ms", b.median_ms))
    });
    o += &row("lost / misrouted / dropped (all runs)", &|s| {
        let lost: u64 = s.latency.iter().chain(&s.ingest).map(|l| l.lost).sum();
        let mis: u64 = s.latency.iter().chain(&s.ingest).map(|l| l.misrouted).sum();
        Some(format!("{lost} / {mis} / {}", s.dropped))
    });
    if let Some(b) = &r.big {
        let _ = writeln!(
            o,
            "| {} streams held over {} pgsse processes | - | - | yes: {:.2} KiB/stream, idle CPU {:.2}% of one core with 30 s heartbeats |",
            b.conns, b.replicas, b.per_conn_kib, b.idle_cpu_pct
        );
    }
    o += "\npublish = SQL INSERT (autocommit) into the watched table for pgsse and Node; HTTP POST to nchan (no database).\n";

    let _ = writeln!(o, "\n### Idle memory (VmRSS growth / streams) and connect rate\n");
    o += "| system | streams | RSS | KiB per stream | connect rate (streams/s) |\n|---|---|---|---|---|\n";
    for s in &r.systems {
        let _ = writeln!(o, "| {} | 0 | {:.1} MiB | | |", s.system, s.rss0_kib as f64 / 1024.0);
        for p in &s.memory {
            let _ = writeln!(
                o,
                "| {} | {} | {:.1} MiB | {:.2} | {:.0} |",
                s.system,
                p.conns,
                p.rss_kib as f64 / 1024.0,
                p.per_conn_kib,
                p.connect_rate
            );
        }
    }

    let _ = writeln!(o, "\n### Publish -> client latency (2 streams per user)\n");
    o += LAT_HEAD;
    for s in &r.systems {
        for l in &s.latency {
            o += &lat_row(&s.system, l);
        }
    }
    if let Some(l) = &r.no_heartbeat {
        o += &lat_row("pgsse, heartbeat 1h", l);
    }
    o += "\nTimes in ms. Each window is 30 s and so holds one heartbeat to every stream (pgsse: spread over \
          the interval; Node: one burst) / one nchan ping; the last row is pgsse with heartbeats pushed out of \
          the window. \"publish call\" is the publisher's own round trip (pgsse, Node: the INSERT with its \
          trigger and commit; nchan: the POST), which the event cannot beat.\n";
    let _ = writeln!(
        o,
        "\n### Broadcast fan-out (one event to every stream; {} runs each)\n",
        r.plan.as_ref().map_or(0, |p| p.bcasts)
    );
    o += "| system | streams | median to last delivery | max | server CPU per delivery | of which kernel | deliveries/s per core | load core busy per delivery |\n|---|---|---|---|---|---|---|---|\n";
    for s in &r.systems {
        for b in &s.broadcasts {
            let _ = writeln!(
                o,
                "| {} | {} | {:.1} ms | {:.1} ms{} | {:.2} µs | {:.0}% | {:.0} | {:.2} µs |",
                s.system,
                b.conns,
                b.median_ms,
                b.max_ms,
                if b.incomplete > 0 { format!(" ({} incomplete)", b.incomplete) } else { String::new() },
                b.cpu_us_per_delivery,
                100.0 * b.kernel_share,
                b.deliveries_per_core_sec,
                b.load_core_us_per_delivery
            );
        }
    }
    let _ = writeln!(o, "\n### Ingest ceiling (1 stream per user, rising publish rate)\n");
    o += LAT_HEAD;
    for s in &r.systems {
        for l in &s.ingest {
            o += &lat_row(&s.system, l);
        }
    }
    for s in r.systems.iter().filter(|s| !s.ingest.is_empty()) {
        let _ = writeln!(o, "\n{}: stopped because: {}.", s.system, s.ingest_stop);
    }
    if let Some(b) = &r.big {
        let _ = writeln!(
            o,
            "\n### {} streams over {} pgsse processes (SO_REUSEPORT), {} load processes\n",
            b.conns, b.replicas, b.workers
        );
        let _ = writeln!(
            o,
            "- connected in {:.1} s ({:.0} streams/s)",
            b.connect_secs,
            b.conns as f64 / b.connect_secs.max(1e-9)
        );
        let _ = writeln!(
            o,
            "- RSS per process at 0: {:?} KiB; at {}: {:?} KiB; {:.2} KiB per stream",
            b.rss0_kib, b.conns, b.rss_kib, b.per_conn_kib
        );
        let _ = writeln!(
            o,
            "- idle {} s with the default 30 s heartbeats: gateways used {:.2}% of one core in total ({} heartbeats received; load generators {:.1}%)",
            b.idle_secs, b.idle_cpu_pct, b.heartbeats, b.loadgen_idle_cpu_pct
        );
        let _ = writeln!(
            o,
            "- broadcast to all {}: median {:.1} ms, max {:.1} ms to the last delivery ({} incomplete); {:.2} µs CPU per delivery, {:.0}% of it in the kernel",
            b.conns,
            b.broadcast.median_ms,
            b.broadcast.max_ms,
            b.broadcast.incomplete,
            b.broadcast.cpu_us_per_delivery,
            100.0 * b.broadcast.kernel_share
        );
        o += &format!("\n{LAT_HEAD}");
        o += &lat_row("pgsse x6", &b.latency);
        let _ = writeln!(o, "\nstreams dropped during the 100k run: {}", b.dropped);
    }
    if !r.variants.is_empty() {
        let _ = writeln!(o, "\n### pgsse idle memory by allocator, THP and log level\n");
        o += "| variant | streams | RSS at 0 | RSS | KiB per stream |\n|---|---|---|---|---|\n";
        for v in &r.variants {
            let _ = writeln!(
                o,
                "| {} | {} | {:.1} MiB | {:.1} MiB | {:.2} |",
                v.label,
                v.conns,
                v.rss0_kib as f64 / 1024.0,
                v.rss_kib as f64 / 1024.0,
                v.per_conn_kib
            );
        }
    }
    if let Some(h) = &r.heaptrack {
        let _ = writeln!(
            o,
            "\n### heaptrack: pgsse's heap at its peak ({} idle streams)\n",
            r.plan.as_ref().map_or(0, |p| p.heaptrack_conns)
        );
        o += "heaptrack's units are decimal (K = 10^3, M = 10^6 bytes); frames are the first non-allocator ones.\n\n";
        o += "```text\n";
        o += &trim_heaptrack(h);
        o += "\n```\n";
    }
    o
}

const LAT_HEAD: &str = "| system | streams | users | target ev/s | achieved | sent | lost | misrouted | p50 | p90 | p99 | p99.9 | max | publish call p50 / p99 | server CPU | postgres CPU | load gen CPU |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";

fn lat_row(name: &str, l: &Lat) -> String {
    format!(
        "| {name} | {} | {} | {} | {:.0} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {:.0}% | {:.0}% | {:.0}% |\n",
        l.conns,
        l.users,
        l.target_rate,
        l.achieved_rate,
        l.sent,
        l.lost,
        l.misrouted,
        l.p50_ms,
        l.p90_ms,
        l.p99_ms,
        l.p999_ms,
        l.max_ms,
        l.call_p50_ms,
        l.call_p99_ms,
        l.server_cpu_pct,
        l.pg_cpu_pct,
        l.loadgen_cpu_pct
    )
}

/// Keeps heaptrack's totals and, for each peak consumer, its size and first frames that are
/// not allocator plumbing.
fn trim_heaptrack(h: &str) -> String {
    let plumbing = ["alloc::", "_RNv", "RawVec", "raw_vec", "finish_grow", "__rust", "bytes::bytes_mut", "core::"];
    let mut out = Vec::new();
    let mut frames = 0;
    for line in h.lines() {
        let t = line.trim_start();
        if t.starts_with("total runtime") || t.starts_with("peak heap memory") || t.starts_with("peak RSS") {
            out.push(t.to_string());
        } else if t.contains(" consumed over ") || t.contains(" peak memory consumed over ") {
            out.push(t.to_string());
            frames = 0;
        } else if frames < 3 && !t.starts_with("at ") && !t.starts_with("in ") && !t.is_empty() {
            if out.is_empty() || plumbing.iter().any(|p| t.starts_with(p)) {
                continue;
            }
            let mut l = t.to_string();
            if l.len() > 110 {
                let mut cut = 107;
                while !l.is_char_boundary(cut) {
                    cut -= 1;
                }
                l.truncate(cut);
                l.push_str("...");
            }
            out.push(format!("    {l}"));
            frames += 1;
        }
    }
    out.join("\n")
}

/// Replaces the text between the markers in `path` (creating the file or markers as needed).
pub fn write_into(path: &Path, body: &str) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n\n{body}\n{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &old[..a], &old[b + END.len()..]),
        _ => format!("{old}\n## Results\n\n{block}\n"),
    };
    std::fs::write(path, new)
}
