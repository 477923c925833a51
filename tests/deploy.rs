//! The files in `deploy/` against the real binary, since no Docker engine, cluster or systemd runs
//! here: every `--flag` and `PGSSE_*` variable they mention exists in `pgsse ... --help`; every
//! YAML file parses; the configuration each deployment hands pgsse (Dockerfile ENV, compose
//! environment, the Kubernetes container's env and Secret, the systemd environment file) passes
//! pgsse's own validation; and the numbers that must fit together do (stop grace periods vs.
//! drain + shutdown, nginx's read timeout vs. the heartbeat, file limits vs. max connections).
//! `tests/nginx.rs` runs the nginx files for real.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgsse::config::parse_duration;
use serde_norway::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every file under deploy/, as (path relative to the repository, text).
fn deploy_files() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> =
            std::fs::read_dir(dir).expect("read deploy/").map(|e| e.expect("dir entry").path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&root().join("deploy"), &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root()).expect("under the repository").display().to_string();
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {rel}: {e}"));
            (rel, text)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What the binary accepts
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Flag {
    takes_value: bool,
    env: Option<String>,
}

/// The long flags `pgsse <sub> --help` lists, with whether they take a value and their env var.
fn help_flags(sub: &[&str]) -> BTreeMap<String, Flag> {
    let out = Command::new(env!("CARGO_BIN_EXE_pgsse")).args(sub).arg("--help").output().expect("run pgsse --help");
    assert!(out.status.success(), "pgsse {sub:?} --help: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        // Flag lines: `  -h, --help`, `      --listen <LISTEN>`; descriptions are indented further.
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let spec = match trimmed.as_bytes() {
            [b'-', c, b',', b' ', ..] if *c != b'-' => &trimmed[4..],
            _ => trimmed,
        };
        if let Some(long) = spec.strip_prefix("--").filter(|_| (1..=6).contains(&indent)) {
            let name: String = long.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            if !name.is_empty() {
                let takes_value = long[name.len()..].trim_start().starts_with('<');
                flags.insert(name.clone(), Flag { takes_value, env: None });
                current = Some(name);
            }
        }
        if let (Some(name), Some(i)) = (&current, line.find("[env: ")) {
            let env: String = line[i + 6..].chars().take_while(|c| *c != '=' && *c != ']').collect();
            if let Some(f) = flags.get_mut(name) {
                f.env = Some(env);
            }
        }
    }
    assert!(flags.len() >= 2, "could not read flags from pgsse {sub:?} --help:\n{text}");
    flags
}

struct Cli {
    serve: BTreeMap<String, Flag>,
    /// Flags of `pgsse` itself that every subcommand accepts (`--log-format`).
    global: BTreeMap<String, Flag>,
    /// Long flags of every subcommand deploy/ uses: serve, sql install, token.
    all: BTreeSet<String>,
    /// Env vars of serve and sql install.
    envs: BTreeSet<String>,
}

fn cli() -> Cli {
    let serve = help_flags(&["serve"]);
    let global: BTreeMap<String, Flag> =
        help_flags(&[]).into_iter().filter(|(name, f)| f.takes_value && name != "help").collect();
    let install = help_flags(&["sql", "install"]);
    let token = help_flags(&["token"]);
    let all = serve.keys().chain(install.keys()).chain(token.keys()).cloned().collect();
    let envs = serve.values().chain(install.values()).filter_map(|f| f.env.clone()).collect();
    Cli { serve, global, all, envs }
}

/// Flags of other tools that deploy/ mentions (in Dockerfile instructions, commands in comments).
const OTHER_TOOLS_FLAGS: &[(&str, &str)] = &[
    ("--mount", "Dockerfile RUN"),
    ("--from", "Dockerfile COPY"),
    ("--release", "cargo build"),
    ("--locked", "cargo build"),
    ("--bin", "cargo build"),
    ("--interval", "Dockerfile HEALTHCHECK"),
    ("--timeout", "Dockerfile HEALTHCHECK"),
    ("--start-period", "Dockerfile HEALTHCHECK"),
    ("--rm", "docker run"),
    ("--build", "docker compose up"),
    ("--from-literal", "kubectl create secret"),
    ("--now", "systemctl enable"),
];

/// `--long-flag` tokens in `text` (not `---`, not inside words).
fn flag_tokens(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = text[i..].find("--") {
        let at = i + off;
        let name: String = text[at + 2..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        let starts_word = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'-');
        if starts_word && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            out.push(format!("--{}", name.trim_end_matches('-')));
        }
        i = at + 2 + name.len();
    }
    out
}

/// `PGSSE_NAME` tokens in `text`.
fn env_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("PGSSE_") {
        let name: String =
            rest[at + 6..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
        if !name.is_empty() {
            out.push(format!("PGSSE_{name}"));
        }
        rest = &rest[at + 6..];
    }
    out
}

/// Metrics on all interfaces are reachable by whatever reaches the host: deploy/ does it only
/// where a loopback address cannot work, and says so in a comment just above.
#[test]
fn metrics_bind_to_all_interfaces_only_with_a_reason() {
    let mut silent = Vec::new();
    for (file, text) in deploy_files() {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let binds = ["METRICS_LISTEN", "metrics-listen"].iter().any(|k| line.contains(k))
                && !line.trim_start().starts_with('#');
            let all = line.contains("0.0.0.0:") || lines.get(i + 1).is_some_and(|l| l.contains("value: 0.0.0.0:"));
            let says_why = lines[i.saturating_sub(8)..i].iter().any(|l| {
                let comment = l.trim_start().starts_with('#');
                comment && l.contains("0.0.0.0") && l.contains("because")
            });
            if binds && all && !says_why {
                silent.push(format!("{file}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(silent.is_empty(), "metrics on 0.0.0.0 without a comment saying why:\n  {}", silent.join("\n  "));
}

#[test]
fn every_flag_and_env_var_in_deploy_exists() {
    let cli = cli();
    let mut missing = Vec::new();
    for (file, text) in deploy_files() {
        for flag in flag_tokens(&text) {
            let known = cli.all.contains(flag.trim_start_matches('-'));
            let other = OTHER_TOOLS_FLAGS.iter().any(|(f, _)| *f == flag);
            if !known && !other && flag != "--help" {
                missing.push(format!("{file}: {flag} is not a pgsse flag (pgsse serve --help)"));
            }
        }
        for env in env_tokens(&text) {
            if !cli.envs.contains(&env) {
                missing.push(format!("{file}: {env} is not a pgsse serve variable (pgsse serve --help)"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(missing.is_empty(), "deploy/ mentions what pgsse does not have:\n  {}", missing.join("\n  "));
}

#[test]
fn every_yaml_file_parses() {
    let mut n = 0;
    for (file, text) in deploy_files() {
        if !(file.ends_with(".yml") || file.ends_with(".yaml")) {
            continue;
        }
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(v.is_mapping(), "{file}: a document is not a mapping");
            n += 1;
        }
    }
    assert!(n >= 4, "expected compose + Kubernetes documents, parsed {n}");
}

// ---------------------------------------------------------------------------------------------
// The configuration each deployment hands pgsse
// ---------------------------------------------------------------------------------------------

/// `pgsse serve` arguments from an environment (lowest priority first; later values win) and
/// command-line arguments after `serve` (which win over the environment, as in clap).
fn serve_argv(cli: &Cli, env: &BTreeMap<String, String>, args: &[String]) -> Vec<String> {
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in env {
        let (name, _) = cli
            .serve
            .iter()
            .find(|(_, f)| f.env.as_deref() == Some(k.as_str()))
            .unwrap_or_else(|| panic!("{k} is not a pgsse serve variable"));
        values.insert(name.clone(), v.clone());
    }
    let mut it = args.iter();
    assert_eq!(it.next().map(String::as_str), Some("serve"), "the command runs `pgsse serve`: {args:?}");
    while let Some(a) = it.next() {
        let a = a.strip_prefix("--").unwrap_or_else(|| panic!("unexpected argument {a:?}"));
        let (name, value) = match a.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None if cli.serve.get(a).is_some_and(|f| f.takes_value) => {
                (a.to_string(), it.next().unwrap_or_else(|| panic!("--{a} needs a value")).clone())
            }
            None => (a.to_string(), "true".to_string()),
        };
        values.insert(name, value);
    }
    let mut argv = Vec::new();
    for (name, value) in values {
        if cli.global.contains_key(&name) {
            // Parsed before the subcommand (not by `Config`); the only one is --log-format.
            assert!(["text", "json"].contains(&value.as_str()), "--{name} {value:?}: not text or json");
            continue;
        }
        let flag = cli.serve.get(&name).unwrap_or_else(|| panic!("--{name} is not a pgsse serve flag"));
        if flag.takes_value {
            argv.push(format!("--{name}"));
            argv.push(value);
        } else if !matches!(value.to_ascii_lowercase().as_str(), "" | "0" | "false" | "no" | "off" | "n" | "f") {
            argv.push(format!("--{name}"));
        }
    }
    argv
}

fn validate(what: &str, cli: &Cli, env: &BTreeMap<String, String>, args: &[String]) -> pgsse::Config {
    let argv = serve_argv(cli, env, args);
    pgsse::Config::from_argv(&argv).unwrap_or_else(|e| panic!("{what}: pgsse rejects its configuration:\n{e}"))
}

/// `KEY=VALUE` lines (comments and blank lines skipped; optional quotes removed).
fn env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// The Dockerfile's instructions of the last stage (the image), continuation lines joined.
fn dockerfile_runtime() -> Vec<(String, String)> {
    let text = read("deploy/Dockerfile");
    let mut joined = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || (l.is_empty() && cur.is_empty()) {
            continue;
        }
        match l.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(l);
                joined.push(std::mem::take(&mut cur));
            }
        }
    }
    let instructions: Vec<(String, String)> = joined
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (i, rest) = l.split_once(' ').unwrap_or((l, ""));
            (i.to_ascii_uppercase(), rest.trim().to_string())
        })
        .collect();
    let last_from = instructions.iter().rposition(|(i, _)| i == "FROM").expect("a FROM");
    instructions[last_from..].to_vec()
}

/// The image's `ENV` defaults.
fn image_env() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (i, rest) in dockerfile_runtime() {
        if i == "ENV" {
            for pair in rest.split_whitespace() {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("ENV {pair}: use KEY=VALUE"));
                env.insert(k.to_string(), v.to_string());
            }
        }
    }
    env
}

fn yaml_docs(rel: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(&read(rel))
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect()
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Compose's `${VAR:?message}` / `${VAR:-default}` interpolation, with a stand-in for required values.
fn compose_interpolate(s: &str) -> String {
    let Some(start) = s.find("${") else { return s.to_string() };
    let end = s[start..].find('}').map(|e| start + e).unwrap_or_else(|| panic!("unclosed ${{ in {s:?}"));
    let inner = &s[start + 2..end];
    let value = match (inner.split_once(":-"), inner.split_once(":?")) {
        (Some((_, default)), _) => default.to_string(),
        (None, Some(_)) => "required-value-set-by-the-operator-0123456789".to_string(),
        (None, None) => String::new(),
    };
    format!("{}{}{}", &s[..start], value, compose_interpolate(&s[end + 1..]))
}

fn nginx_read_timeout() -> Duration {
    let loc = read("deploy/nginx/pgsse-location.conf");
    let line = loc
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("proxy_read_timeout "))
        .expect("proxy_read_timeout in pgsse-location.conf");
    let v = line.trim_start_matches("proxy_read_timeout").trim().trim_end_matches(';');
    parse_duration(v).unwrap_or_else(|| panic!("proxy_read_timeout {v}"))
}

fn nginx_upstream_addr() -> String {
    let up = read("deploy/nginx/pgsse-upstream.conf");
    let line = up.lines().map(str::trim).find(|l| l.starts_with("server ")).expect("server in upstream pgsse");
    line.trim_start_matches("server ").trim_end_matches(';').trim().to_string()
}

/// What every deployment's configuration must satisfy; `stop_grace` is how long the platform
/// waits after SIGTERM before SIGKILL.
fn check_timing(what: &str, config: &pgsse::Config, stop_grace: Duration) {
    let needed = config.drain_period + config.shutdown_timeout;
    assert!(
        stop_grace > needed,
        "{what}: the stop grace period {stop_grace:?} must be longer than --drain-period + --shutdown-timeout ({needed:?})"
    );
    let read_timeout = nginx_read_timeout();
    assert!(
        read_timeout >= config.heartbeat_interval * 3,
        "{what}: nginx proxy_read_timeout {read_timeout:?} is not comfortably above --heartbeat-interval {:?}",
        config.heartbeat_interval
    );
}

#[test]
fn the_image_runs_pgsse_serve_as_non_root_and_builds_from_what_it_copies() {
    let cli = cli();
    let stage = dockerfile_runtime();
    let get = |name: &str| stage.iter().filter(|(i, _)| i == name).map(|(_, r)| r.clone()).collect::<Vec<_>>();
    assert_eq!(get("ENTRYPOINT"), [r#"["pgsse"]"#]);
    assert_eq!(get("CMD"), [r#"["serve"]"#]);
    let user = get("USER");
    assert!(
        user.len() == 1 && !["root", "0", "0:0"].contains(&user[0].as_str()) && !user[0].starts_with("0:"),
        "the image runs as a non-root user: {user:?}"
    );
    let mut env = image_env();
    env.insert("PGSSE_DATABASE_URL".into(), "postgres://pgsse@db/app".into());
    env.insert("PGSSE_JWT_SECRET".into(), "0123456789abcdef0123456789abcdef".into());
    let config = validate("Dockerfile ENV", &cli, &env, &["serve".to_string()]);
    let exposed = get("EXPOSE").join(" ");
    assert!(exposed.split_whitespace().any(|p| p == config.listen.port().to_string()), "EXPOSE {exposed}");
    if let Some(m) = config.metrics_listen {
        assert!(exposed.split_whitespace().any(|p| p == m.port().to_string()), "EXPOSE {exposed}");
    }

    // The build stage copies what `cargo build` reads: every COPY source exists, and every file
    // the non-test code embeds lies under a copied path.
    let text = read("deploy/Dockerfile");
    let copied: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter(|r| !r.starts_with("--from"))
        .flat_map(|r| {
            let parts: Vec<&str> = r.split_whitespace().collect();
            parts[..parts.len() - 1].iter().map(|s| s.trim_end_matches('/').to_string()).collect::<Vec<_>>()
        })
        .collect();
    for src in &copied {
        assert!(root().join(src).exists(), "Dockerfile copies {src}, which does not exist");
    }
    for required in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(copied.iter().any(|c| c == required), "Dockerfile must copy {required}");
    }
    assert!(!root().join("build.rs").exists() || copied.iter().any(|c| c == "build.rs"), "copy build.rs");
    let mut sources = Vec::new();
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                sources.push(p);
            }
        }
    }
    let ignore = read("deploy/Dockerfile.dockerignore");
    for file in sources {
        let code = std::fs::read_to_string(&file).expect("read source");
        for mac in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in code.match_indices(mac) {
                let rel = &code[at + mac.len()..];
                let rel = &rel[..rel.find('"').expect("closing quote")];
                let target = file.parent().expect("dir").join(rel);
                let target = std::fs::canonicalize(&target).unwrap_or(target);
                let target = target.strip_prefix(root()).map(Path::to_path_buf).unwrap_or(target);
                let target = target.display().to_string();
                if target.starts_with("tests/") {
                    continue; // test fixtures, embedded only by #[cfg(test)] code
                }
                let top = target.split('/').next().unwrap_or("");
                assert!(
                    copied.iter().any(|c| target == *c || target.starts_with(&format!("{c}/"))),
                    "{} embeds {target}, which deploy/Dockerfile does not copy",
                    file.strip_prefix(root()).unwrap_or(&file).display()
                );
                assert!(ignore.contains(&format!("!{top}")), "Dockerfile.dockerignore must let {top} through");
            }
        }
    }
}

#[test]
fn compose_configuration_is_valid() {
    let cli = cli();
    let docs = yaml_docs("deploy/docker-compose.yml");
    let services = &docs[0]["services"];
    let install = &services["pgsse-install"];
    assert_eq!(str_list(&install["command"]), ["sql", "install", "--apply"]);
    assert!(install["environment"]["PGSSE_DATABASE_URL"].is_string());
    let pgsse = &services["pgsse"];
    let mut env = image_env();
    for (k, v) in pgsse["environment"].as_mapping().expect("pgsse environment map") {
        let k = k.as_str().expect("env name").to_string();
        env.insert(k, compose_interpolate(&scalar(v).unwrap_or_default()));
    }
    let config = validate("docker-compose.yml pgsse", &cli, &env, &str_list(&pgsse["command"]));
    let grace = pgsse["stop_grace_period"].as_str().and_then(parse_duration).expect("pgsse stop_grace_period");
    check_timing("docker-compose.yml", &config, grace);
    // nginx shares the network namespace, so the example config's upstream address must be pgsse's.
    assert_eq!(pgsse["network_mode"], services["nginx"]["network_mode"]);
    assert_eq!(config.listen.to_string(), nginx_upstream_addr());
    let volumes = str_list(&services["nginx"]["volumes"]);
    assert!(volumes.iter().any(|v| v.starts_with("./nginx/example.conf:/etc/nginx/nginx.conf")), "{volumes:?}");
    for v in &volumes {
        let src = v.split(':').next().unwrap_or("");
        if src.starts_with("./nginx") {
            assert!(root().join("deploy").join(src).exists(), "compose mounts {src}, which does not exist");
        }
    }
    let build = &install["build"];
    let dockerfile = build["dockerfile"].as_str().expect("build.dockerfile");
    let context = root().join("deploy").join(build["context"].as_str().expect("build.context"));
    assert!(context.join(dockerfile).is_file(), "compose builds {dockerfile} from {}", context.display());
}

#[test]
fn kubernetes_sidecar_is_valid() {
    let cli = cli();
    let secret = yaml_docs("deploy/kubernetes/secret.example.yaml").remove(0);
    let deployment = yaml_docs("deploy/kubernetes/deployment.yaml").remove(0);
    let service = yaml_docs("deploy/kubernetes/service.yaml").remove(0);
    assert_eq!(deployment["kind"], "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");
    assert!(containers.len() >= 2, "pgsse runs next to the app");
    let c = containers.iter().find(|c| c["name"] == "pgsse").expect("a container named pgsse");

    let mut env = image_env();
    for from in c["envFrom"].as_sequence().expect("envFrom") {
        let name = &from["secretRef"]["name"];
        assert_eq!(name, &secret["metadata"]["name"], "envFrom names the Secret of secret.example.yaml");
        for (k, v) in secret["stringData"].as_mapping().expect("stringData") {
            env.insert(k.as_str().expect("key").to_string(), scalar(v).unwrap_or_default());
        }
    }
    for e in c["env"].as_sequence().expect("env") {
        let name = e["name"].as_str().expect("env name").to_string();
        let value = scalar(&e["value"]).unwrap_or_else(|| panic!("{name}: give a value (secrets go in the Secret)"));
        env.insert(name, value);
    }
    let config = validate("kubernetes/deployment.yaml pgsse", &cli, &env, &str_list(&c["args"]));
    let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
    check_timing("kubernetes/deployment.yaml", &config, Duration::from_secs(grace));

    let port_of = |name: &str| {
        c["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| &p["containerPort"])
            .cloned()
    };
    assert_eq!(port_of("sse").and_then(|p| p.as_u64()), Some(u64::from(config.listen.port())));
    let metrics = config.metrics_listen.expect("metrics enabled");
    assert_eq!(port_of("metrics").and_then(|p| p.as_u64()), Some(u64::from(metrics.port())));
    assert!(config.listen.ip().is_unspecified(), "the pod's nginx reaches pgsse on the pod IP");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "sse");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "sse");
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert!(c["resources"]["requests"].is_mapping() && c["resources"]["limits"].is_mapping());

    let selector = &service["spec"]["selector"];
    for (k, v) in selector.as_mapping().expect("selector") {
        assert_eq!(&deployment["spec"]["template"]["metadata"]["labels"][k.as_str().expect("key")], v);
    }
    let target_ports: Vec<_> =
        service["spec"]["ports"].as_sequence().expect("ports").iter().map(|p| &p["targetPort"]).collect();
    assert!(target_ports.iter().any(|p| *p == "sse"), "the Service exposes pgsse's port");
}

#[test]
fn systemd_unit_is_valid_and_sandboxed() {
    let cli = cli();
    let unit = read("deploy/systemd/pgsse.service");
    let directives: Vec<(String, String)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let get = |k: &str| directives.iter().filter(|(d, _)| d == k).map(|(_, v)| v.clone()).collect::<Vec<_>>();
    let one = |k: &str| get(k).into_iter().next().unwrap_or_else(|| panic!("pgsse.service sets no {k}"));
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(one(k), v, "{k}");
    }
    assert_eq!(
        one("EnvironmentFile"),
        "/etc/pgsse/pgsse.env",
        "the unit reads deploy/systemd/pgsse.env's install path"
    );
    let mut env = env_file(&read("deploy/systemd/pgsse.env"));
    for e in get("Environment") {
        env.extend(env_file(&e));
    }
    let exec = one("ExecStart");
    let mut words = exec.split_whitespace().map(str::to_string);
    assert!(words.next().is_some_and(|w| w.ends_with("/pgsse")), "ExecStart runs pgsse: {exec}");
    let args: Vec<String> = words.collect();
    let config = validate("systemd pgsse.service + pgsse.env", &cli, &env, &args);
    let stop = parse_duration(&one("TimeoutStopSec")).expect("TimeoutStopSec is a duration");
    check_timing("systemd/pgsse.service", &config, stop);
    let nofile: usize = one("LimitNOFILE").parse().expect("LimitNOFILE is a number");
    assert!(config.max_connections > 0, "set --max-connections below LimitNOFILE");
    assert!(
        nofile >= config.max_connections + 1024,
        "LimitNOFILE {nofile} must exceed --max-connections {} with room for the rest",
        config.max_connections
    );
    assert_eq!(config.listen.to_string(), nginx_upstream_addr(), "nginx's upstream is the unit's --listen");

    // systemd's own checks (Debian's systemd package; ./scripts/test installs it when missing).
    let probe = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze not found: run ./scripts/test, which installs Debian's systemd package");
    assert!(probe.status.success());
    let dir = std::env::temp_dir().join(format!("pgsse-systemd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let copy = dir.join("pgsse.service");
    std::fs::write(&copy, unit.replace(&exec, &format!("{} serve", env!("CARGO_BIN_EXE_pgsse")))).expect("write");
    let verify = Command::new("systemd-analyze").arg("verify").arg(&copy).output().expect("systemd-analyze verify");
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze security");
    let _ = std::fs::remove_dir_all(&dir);
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && complaints.trim().is_empty(), "systemd-analyze verify:\n{complaints}");
    let report = String::from_utf8_lossy(&security.stdout);
    let level: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for pgsse.service:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}{}", String::from_utf8_lossy(&security.stderr)));
    assert!(level <= 2.0, "systemd-analyze security rates the unit {level} (was 1.4):\n{report}");
}

#[test]
fn token_scanners_find_what_they_should() {
    assert_eq!(
        flag_tokens("a --drain-period 10s, `--trust-proxy`; ---\nx--y --Z -t"),
        ["--drain-period", "--trust-proxy"]
    );
    assert_eq!(env_tokens("PGSSE_LISTEN=1 ${PGSSE_JWT_SECRET:?x} PGSSE_<FLAG>"), ["PGSSE_LISTEN", "PGSSE_JWT_SECRET"]);
    assert_eq!(compose_interpolate("a${X:-b}c${Y:?m}"), "abcrequired-value-set-by-the-operator-0123456789");
}
