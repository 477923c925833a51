//! The dependency tree stays off versions scanners flag: a floor per crate, and crates kept out.
//! The advisory audit itself needs the RustSec database from GitHub (README, "Security").

/// Every (name, version) in Cargo.lock.
fn locked() -> Vec<(String, Vec<u64>)> {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).expect("read Cargo.lock");
    let mut out = Vec::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            let version = v.trim_matches('"').split(['.', '-']).map_while(|p| p.parse().ok()).collect();
            out.push((n, version));
        }
    }
    out
}

#[test]
fn no_flagged_versions_and_no_second_crypto_library() {
    let locked = locked();
    assert!(locked.len() > 50, "could not read Cargo.lock");
    // jsonwebtoken < 10.3: CVE-2026-25537. rand < 0.9: the 0.8 line scanners flag (RUSTSEC-2026-0097).
    let floors: [(&str, &[u64]); 2] = [("jsonwebtoken", &[10, 3]), ("rand", &[0, 9])];
    for (name, version) in &locked {
        for (crate_name, floor) in floors {
            assert!(name != crate_name || version.as_slice() >= floor, "{name} {version:?} is below {floor:?}");
        }
        // rsa: RUSTSEC-2023-0071 (no fixed version); aws-lc: a second crypto library beside ring.
        assert!(!matches!(name.as_str(), "rsa" | "aws-lc-rs" | "aws-lc-sys"), "{name} is in the tree");
    }
    assert!(locked.iter().any(|(n, _)| n == "jsonwebtoken"));
}
