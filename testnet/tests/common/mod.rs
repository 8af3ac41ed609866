//! What the testnet's integration tests share.

/// Whether `stderr` says this machine lacks the mechanism a test needs
/// (`marker` is the testnet's own message for it). Outside CI the test says
/// SKIPPED and stops; in CI (`CI` set) a missing mechanism is a failure, so
/// a test never passes there without running.
pub fn unavailable_here(stderr: &str, marker: &str, what: &str) -> bool {
    if !stderr.contains(marker) {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run {what}: {stderr}"
    );
    eprintln!("SKIPPED (not in CI): {stderr}");
    true
}
