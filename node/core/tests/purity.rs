//! The core stays deterministic: none of its normal dependencies does I/O,
//! reads a clock through an async runtime, or draws OS randomness.

use std::process::Command;

/// Crates that must never be a normal dependency of the core.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "libp2p",
    "axum",
    "hyper",
    "sled",
    "reqwest",
    "getrandom",
    "rand",
    "mio",
    "automerge",
];

#[test]
fn core_depends_on_no_io_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "caisse-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--locked",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&"caisse-protocol"),
        "the tree was read: {tree}"
    );
    let bad: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| {
            FORBIDDEN
                .iter()
                .any(|f| n == f || n.starts_with(&format!("{f}-")))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "caisse-core must stay free of I/O and OS randomness, but depends on {bad:?}"
    );
}

/// No source file of the core reads a clock, the OS or spawns anything.
#[test]
fn core_source_reads_no_clock_or_os() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let banned = [
        "SystemTime::now",
        "Instant::now",
        "std::thread",
        "std::fs",
        "std::net",
        "std::process",
        "std::env",
    ];
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("src is readable") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("source is text");
        for b in banned {
            if text.contains(b) {
                found.push(format!("{}: {b}", path.display()));
            }
        }
    }
    assert!(found.is_empty(), "I/O in the core: {found:?}");
}
