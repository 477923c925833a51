//! The README's quickstart, run as written (with a throwaway database, a free port and the
//! built binary standing in for `./target/release/pgsse`).

mod common;

use std::time::Duration;

/// The `sh` blocks of one README section, in order.
fn sh_blocks(readme: &str, section: &str) -> Vec<String> {
    let start = readme.find(section).unwrap_or_else(|| panic!("README has no {section:?}"));
    let rest = &readme[start + section.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].split("```sh\n").skip(1).filter_map(|b| b.split_once("```").map(|(code, _)| code.to_string())).collect()
}

#[tokio::test]
async fn the_quickstart_works_as_written() {
    let readme = std::fs::read_to_string(format!("{}/README.md", env!("CARGO_MANIFEST_DIR"))).expect("README");
    let blocks = sh_blocks(&readme, "## Quickstart against your own database");
    assert_eq!(blocks.len(), 4, "install, serve, watch, insert");
    let db = common::fresh_database();
    // The quickstart assumes the app's table exists.
    common::exec(&db, pgsse::pg::demo::CREATE_TABLE_SQL).await;
    let port = common::free_port();

    let adapt = |block: &str| -> String {
        block
            .lines()
            .filter(|l| !l.starts_with("cargo build"))
            .map(|l| {
                let l = l.replace("./target/release/pgsse", "\"$PGSSE_BIN\"").replace("8080", &port.to_string());
                if l.starts_with("export DATABASE_URL=") {
                    "export DATABASE_URL=\"$TEST_DATABASE_URL\"".to_string()
                } else if l.contains(" serve ") {
                    format!("{l} --listen 127.0.0.1:{port} --metrics-listen off > serve.log 2>&1 &\nSERVE=$!\nfor i in $(seq 100); do curl -sf http://127.0.0.1:{port}/readyz >/dev/null && break; sleep 0.1; done")
                } else if l.starts_with("curl -N") {
                    format!("{l} --max-time 6 > stream.txt 2>/dev/null &\nCURL=$!\nsleep 1")
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let script = format!(
        "set -eu\ncd \"$WORK\"\n{}\nwait $CURL || true\nkill $SERVE\ncat stream.txt\n",
        blocks.iter().map(|b| adapt(b)).collect::<Vec<_>>().join("\n")
    );
    let work = std::env::temp_dir().join(format!("pgsse-readme-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("PGSSE_BIN", env!("CARGO_BIN_EXE_pgsse"))
            .env("TEST_DATABASE_URL", &db)
            .env("WORK", &work)
            .output(),
    )
    .await
    .expect("quickstart finishes")
    .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        out.status.success(),
        "script failed:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("retry: 1000"), "{stdout}");
    assert!(stdout.contains("event: connected"), "{stdout}");
    assert!(stdout.contains("event: notification"), "{stdout}");
    assert!(stdout.contains("\"title\": \"Hello\""), "{stdout}");
}
