//! Logs: no ANSI colour codes unless stderr is a terminal, and none with NO_COLOR set.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `pgsse serve` against a database nobody listens on (it logs, retries, never needs one),
/// lets it log for a moment, stops it, and returns what it wrote.
fn serve_output(through_terminal: bool, no_color: bool) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(1);
    let exe = env!("CARGO_BIN_EXE_pgsse");
    let args = [
        "serve",
        "--database-url",
        &format!("postgres://nobody@127.0.0.1:{port}/none"),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--jwt-secret",
        "s3cret-s3cret-s3cret-s3cret-s3cret",
    ];
    let mut cmd = if through_terminal {
        // `script` runs the command on a pseudo-terminal and copies what it writes to stdout.
        let line = std::iter::once(exe).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
        let mut c = Command::new("script");
        c.args(["-qefc", &format!("{line} 2>&1"), "/dev/null"]);
        c
    } else {
        let mut c = Command::new(exe);
        c.args(args);
        c
    };
    cmd.env("RUST_LOG", "info").env_remove("NO_COLOR").stdin(Stdio::null());
    if no_color {
        cmd.env("NO_COLOR", "1");
    }
    let out_file = tempfile_path();
    let file = std::fs::File::create(&out_file).expect("create log file");
    let child_err = file.try_clone().expect("clone log file");
    let mut child = cmd.stdout(file).stderr(child_err).spawn().expect("spawn pgsse");
    let started = Instant::now();
    let mut text = String::new();
    while started.elapsed() < Duration::from_secs(20) {
        text = std::fs::read_to_string(&out_file).unwrap_or_default();
        if text.contains("reconnecting") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
    let _ = std::fs::remove_file(&out_file);
    assert!(text.contains("pgsse serving"), "no log line from pgsse serve:\n{text}");
    text
}

fn tempfile_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("pgsse-logs-{}-{}", std::process::id(), rand_suffix()))
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

#[test]
fn no_ansi_codes_when_stderr_is_a_pipe_or_file() {
    let text = serve_output(false, false);
    assert!(!text.contains('\u{1b}'), "ANSI escape codes in logs written to a file:\n{text:?}");
}

#[test]
fn colours_on_a_terminal_unless_no_color() {
    let text = serve_output(true, false);
    assert!(text.contains('\u{1b}'), "a terminal gets coloured logs:\n{text:?}");
    let text = serve_output(true, true);
    assert!(!text.contains('\u{1b}'), "NO_COLOR=1 must turn colours off:\n{text:?}");
}
