//! The three servers under test, each started fresh, pinned to the server core: pgsse (one or
//! several processes sharing a port with --reuse-port), the Node baseline, and nginx + nchan.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::client::Kind;
use crate::procs::{self, Proc, Spawn};

pub const SECRET: &str = "pgsse-bench-secret-0123456789abcdef";

/// How to run the servers.
#[derive(Debug, Clone)]
pub struct Env {
    pub pgsse_bin: PathBuf,
    pub node_dir: PathBuf,
    pub nchan_conf: PathBuf,
    pub db_url: String,
    pub dir: PathBuf,
    /// Where files worth keeping after the run go (the heaptrack profile).
    pub keep_dir: PathBuf,
    /// `taskset -c` list for servers (None: no pinning).
    pub server_cpus: Option<String>,
}

/// Knobs of one pgsse start (the defaults are the gateway's production defaults).
#[derive(Debug, Clone, Default)]
pub struct PgsseOpts {
    pub replicas: usize,
    pub heartbeat: Option<String>,
    /// Extra environment, e.g. RUST_LOG, LD_PRELOAD, GLIBC_TUNABLES.
    pub env: Vec<(String, String)>,
    /// Program + args placed in front of pgsse (e.g. heaptrack).
    pub wrapper: Vec<String>,
}

pub struct System {
    pub kind: Kind,
    pub addr: SocketAddr,
    procs: Vec<Proc>,
    /// Processes whose RSS and CPU are the server's (nginx: the worker, not the master).
    pub measured: Vec<u32>,
}

impl System {
    pub async fn pgsse(env: &Env, opts: &PgsseOpts, label: &str) -> anyhow::Result<System> {
        let port = procs::free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut procs = Vec::new();
        for r in 0..opts.replicas.max(1) {
            let mut args: Vec<String> = opts.wrapper.clone();
            args.push(env.pgsse_bin.to_string_lossy().into());
            let serve = [
                "serve",
                "--database-url",
                &env.db_url,
                "--listen",
                &addr.to_string(),
                "--jwt-secret",
                SECRET,
                "--metrics-listen",
                "off",
                "--reuse-port",
                "--drain-period",
                "100ms",
                "--shutdown-timeout",
                "5s",
                "--max-connections",
                "0",
                "--heartbeat-interval",
                opts.heartbeat.as_deref().unwrap_or("30s"),
            ];
            args.extend(serve.iter().map(|s| s.to_string()));
            let program = args.remove(0);
            let mut envs = vec![("RUST_LOG".to_string(), "info".to_string())];
            envs.retain(|(k, _)| !opts.env.iter().any(|(k2, _)| k2 == k));
            envs.extend(opts.env.iter().cloned());
            let p = Spawn {
                name: "pgsse",
                program: &program,
                args,
                env: envs,
                log: env.dir.join(format!("pgsse-{label}-{r}.log")),
                cpus: env.server_cpus.as_deref(),
                as_user: None,
                cwd: Some(&env.dir),
            }
            .start()
            .await?;
            procs.push(p);
        }
        for p in &mut procs {
            p.wait_log("listening; ready", Duration::from_secs(60)).await?;
        }
        let measured = if opts.wrapper.is_empty() {
            procs.iter().map(|p| p.pid).collect()
        } else {
            procs.iter().flat_map(|p| procs::descendants(p.pid)).filter(|(_, c)| c == "pgsse").map(|(p, _)| p).collect()
        };
        Ok(System { kind: Kind::Pgsse, addr, procs, measured })
    }

    pub async fn node(env: &Env) -> anyhow::Result<System> {
        let port = procs::free_port()?;
        let script = env.node_dir.join("server.js");
        if !env.node_dir.join("node_modules/pg").is_dir() {
            bail!("{} has no node_modules: run `npm ci` there", env.node_dir.display());
        }
        let mut p = Spawn {
            name: "node",
            program: "node",
            args: vec![script.to_string_lossy().into()],
            env: vec![
                ("PORT".into(), port.to_string()),
                ("DATABASE_URL".into(), env.db_url.clone()),
                ("JWT_SECRET".into(), SECRET.into()),
                ("HEARTBEAT_MS".into(), "30000".into()),
            ],
            log: env.dir.join("node.log"),
            cpus: env.server_cpus.as_deref(),
            as_user: None,
            cwd: Some(&env.node_dir),
        }
        .start()
        .await?;
        p.wait_log("listening", Duration::from_secs(30)).await?;
        let pid = p.pid;
        Ok(System { kind: Kind::Node, addr: ([127, 0, 0, 1], port).into(), procs: vec![p], measured: vec![pid] })
    }

    pub async fn nchan(env: &Env) -> anyhow::Result<System> {
        let port = procs::free_port()?;
        let dir = env.dir.join("nginx");
        std::fs::create_dir_all(dir.join("logs"))?;
        let template =
            std::fs::read_to_string(&env.nchan_conf).with_context(|| format!("read {}", env.nchan_conf.display()))?;
        let conf = template.replace("@PORT@", &port.to_string()).replace("@DIR@", &dir.to_string_lossy());
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let p = Spawn {
            name: "nginx",
            program: "nginx",
            args: vec!["-p".into(), dir.to_string_lossy().into(), "-c".into(), conf_path.to_string_lossy().into()],
            env: vec![],
            log: dir.join("nginx.out"),
            cpus: env.server_cpus.as_deref(),
            as_user: None,
            cwd: Some(&dir),
        }
        .start()
        .await?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut tries = 0;
        let worker = loop {
            let workers: Vec<u32> = procs::descendants(p.pid).into_iter().map(|(pid, _)| pid).collect();
            if tokio::net::TcpStream::connect(addr).await.is_ok() && !workers.is_empty() {
                break *workers.last().unwrap_or(&p.pid);
            }
            tries += 1;
            if tries > 200 {
                bail!("nginx did not start: {}", procs::tail(&p.log_text(), 2000));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(System { kind: Kind::Nchan, addr, procs: vec![p], measured: vec![worker] })
    }

    /// Sum of VmRSS (KiB) of the measured processes.
    pub fn rss_kib(&self) -> u64 {
        self.measured.iter().filter_map(|p| procs::rss_kib(*p)).sum()
    }

    pub fn rss_each(&self) -> Vec<u64> {
        self.measured.iter().map(|p| procs::rss_kib(*p).unwrap_or(0)).collect()
    }

    pub fn cpu_ticks(&self) -> u64 {
        self.measured.iter().filter_map(|p| procs::cpu_ticks(*p)).sum()
    }

    pub fn sys_ticks(&self) -> u64 {
        self.measured.iter().filter_map(|p| procs::sys_ticks(*p)).sum()
    }

    pub async fn stop(self) {
        // Under a wrapper (heaptrack) pgsse itself gets the signal so it exits normally.
        if self.kind == Kind::Pgsse {
            for pid in &self.measured {
                procs::signal(*pid, "INT");
            }
        }
        for p in self.procs {
            p.stop(Duration::from_secs(60)).await;
        }
    }
}

/// The nchan configuration template shipped in benches/nchan.
pub fn default_nchan_conf(root: &Path) -> PathBuf {
    root.join("benches/nchan/nginx.conf.in")
}
