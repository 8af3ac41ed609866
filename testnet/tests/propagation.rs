//! Gossip in a federation with more caisses on one address than gossipsub's
//! default colocation threshold (10): sixteen real node processes on
//! 127.0.0.1, as a testnet or a host serving several caisses has them. With
//! gossipsub's default IP-colocation penalty every node scored every peer
//! below the graylist threshold and dropped all gossip, so changes crossed
//! the federation only through the 10-second catalog exchange (federation-30
//! measured p50 27 s). An accreditation must reach every node in seconds.

use std::process::Command;

#[test]
fn an_accreditation_reaches_sixteen_colocated_nodes_within_two_seconds() {
    let out = Command::new(env!("CARGO_BIN_EXE_caisse-testnet"))
        .args(["propagation", "--nodes", "16", "--rounds", "4"])
        .output()
        .expect("run caisse-testnet propagation");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "... 60 observations, p50 12.3 ms, p99 45.6 ms, max 50.1 ms"
    let max: f64 = number_after(&text, "max ", " ms");
    assert!(text.contains("60 observations"), "{text}");
    assert!(
        max < 2000.0,
        "an accreditation took {max} ms to reach a node: {text}"
    );
    // "documents updated: 55 from the changes gossiped with their heads, 9 by sync"
    let from_gossip: u64 = number_after(&text, "documents updated: ", " ");
    assert!(
        from_gossip > 0,
        "no replica took a new version from gossiped changes: {text}"
    );
}

/// The number printed in `text` between `before` and the next `after`.
fn number_after<T: std::str::FromStr>(text: &str, before: &str, after: &str) -> T {
    text.split(before)
        .nth(1)
        .and_then(|t| t.split(after).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number after {before:?} in {text:?}"))
}
