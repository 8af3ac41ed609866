//! The deterministic simulator in the default test run: hundreds of seeded
//! federations under faults, every invariant holding, and the same seed
//! giving the same trace.

use caisse_testnet::sim::{self, Faults, SimOptions, SimReport, Workload};

fn run(seed: u64, faults: &str) -> SimReport {
    sim::run(SimOptions::new(
        4,
        10,
        40,
        seed,
        Faults::profile(faults).expect("profile"),
    ))
}

/// The `disk` profile: chaos, plus a slow disk that sometimes stalls past
/// the time a host waits for a home, nodes that die right after a sync and
/// before their answer leaves, the Byzantine caisse passing other
/// caisses' signed settlement entries off as its own and signing two
/// versions of its document under one sequence (each honest caisse must
/// end on the same one), parliaments revoking their outlet's accreditation
/// and accrediting it again and ceasing to recognise the other caisses and
/// recognising them again, and members signing in (38 of
/// these 60 seeds failed before a retry of a forwarded sale stopped being
/// judged again: see `a_retry_after_a_revocation_sends_the_request_signed_first`
/// in the core).
#[test]
fn federations_on_slow_disks_hold_every_invariant() {
    let (mut after_sync, mut stalls, mut replayed, mut offline) = (0, 0, 0, 0);
    let (mut revoked, mut accredited_again) = (0, 0);
    let (mut equivocations, mut offered_other_side) = (0, 0);
    let (mut unrecognised, mut recognised_again, mut signins) = (0, 0, 0);
    for seed in 0..60 {
        let r = sound(seed, "disk");
        after_sync += r.crashes_after_sync;
        stalls += r.disk_stalls;
        replayed += r.replayed_entries;
        offline += r.acknowledged.2;
        revoked += r.revocations.0;
        accredited_again += r.revocations.1;
        equivocations += r.equivocations.0;
        offered_other_side += r.equivocations.1;
        unrecognised += r.recognition_changes.0;
        recognised_again += r.recognition_changes.1;
        signins += r.signins.0 + r.signins.1;
    }
    assert!(
        equivocations > 50 && offered_other_side > 50,
        "{equivocations} sequences signed twice, {offered_other_side} times the other side offered"
    );
    assert!(
        unrecognised > 50 && recognised_again > 50,
        "{unrecognised} parliaments stopped recognising, {recognised_again} recognised again"
    );
    assert!(signins > 500, "member sign-ins: {signins}");
    assert!(
        revoked > 100 && accredited_again > 100,
        "{revoked} outlet accreditations revoked, {accredited_again} outlets accredited again"
    );
    assert!(after_sync > 20, "crashes after a sync: {after_sync}");
    assert!(stalls > 20, "disk stalls: {stalls}");
    assert!(replayed > 50, "entries replayed: {replayed}");
    assert!(offline > 50, "sales accepted offline: {offline}");
}

/// Run one seed and fail with its violations, last steps and the command
/// that replays it.
fn sound(seed: u64, faults: &str) -> SimReport {
    let r = run(seed, faults);
    assert!(
        r.violations.is_empty(),
        "seed {seed} broke an invariant: {:#?}\nlast steps:\n{}\nreplay: cargo run -p caisse-testnet -- sim --caisses 4 --members 10 --days 40 --faults {faults} --seeds {seed}",
        r.violations,
        r.tail.join("\n")
    );
    r
}

#[test]
fn two_hundred_seeded_federations_hold_every_invariant() {
    let mut crashes = 0;
    let mut dropped = 0;
    let mut duplicated = 0;
    let mut partitions = 0;
    let mut cross = 0;
    let mut offline = 0;
    let mut retries = 0;
    let mut statements = 0;
    let mut pin_refusals = 0;
    let mut pin_resets = 0;
    let mut inflated = 0;
    let mut transfers = 0;
    for seed in 0..200 {
        let r = sound(seed, "chaos");
        crashes += r.crashes;
        dropped += r.dropped;
        duplicated += r.duplicated;
        partitions += r.partitions;
        cross += r.acknowledged.1;
        offline += r.acknowledged.2;
        retries += r.retries;
        statements += r.statements;
        pin_refusals += r.pin_refusals;
        pin_resets += r.pin_resets;
        inflated += r.inflated_statements;
        transfers += r.transfers_declared;
    }
    // The runs must exercise what they claim to.
    assert!(crashes > 100, "crashes: {crashes}");
    assert!(
        dropped > 1000 && duplicated > 100,
        "{dropped} dropped, {duplicated} duplicated"
    );
    assert!(partitions > 50, "partitions: {partitions}");
    assert!(
        cross > 1000 && offline > 100,
        "{cross} cross-caisse, {offline} offline"
    );
    assert!(retries > 100, "retries: {retries}");
    assert!(statements > 100, "statements: {statements}");
    assert!(
        pin_refusals > 1000 && pin_resets > 20,
        "{pin_refusals} sales refused for a PIN, {pin_resets} PINs reset"
    );
    assert!(inflated > 50, "statements claiming too much: {inflated}");
    assert!(transfers > 100, "transfers declared paid: {transfers}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = run(7, "chaos");
    let b = run(7, "chaos");
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.events, b.events);
    let c = run(8, "chaos");
    assert_ne!(a.trace_hash, c.trace_hash, "another seed, another run");
    let d = run(7, "wan");
    assert_ne!(
        a.trace_hash, d.trace_hash,
        "another fault profile, another run"
    );
}

/// Seeds that once failed, kept as regressions. 321: a till whose node was
/// down dropped its retry, leaving a sale the Byzantine caisse had debited
/// but forged the receipt of (a simulator bug: the till now retries). 0 and
/// 4: a debtor's dispute named other caisses' sales as unknown to it (a
/// creditor published one receipt list per month for all its debtors).
#[test]
fn seeds_that_once_failed() {
    for seed in [321u64, 0, 4] {
        let r = sim::run(SimOptions::new(
            4,
            12,
            45,
            seed,
            Faults::profile("chaos").expect("profile"),
        ));
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
    }
}

/// A failing federation shrinks to the smallest that still fails: here a
/// planted violation at day 9's midnight in federations of three caisses
/// or more shrinks from 5 caisses, 12 members and 45 days to 3, 1 and 6
/// (a run goes on 3 days past its last one to reach quiescence).
#[test]
fn a_failing_seed_shrinks() {
    let mut o = SimOptions::new(5, 12, 45, 11, Faults::profile("chaos").expect("profile"));
    o.canary_day = Some(9);
    let (small, r) = sim::shrink(&o, 40);
    assert_eq!(
        (small.caisses, small.members, small.days),
        (3, 1, 6),
        "{:?}",
        r.violations
    );
    assert!(r.violations.iter().any(|v| v == "canary"));
}

/// A shorter run with the same seed is a prefix of a longer one.
#[test]
fn fewer_days_replay_a_prefix() {
    let long = sim::run(SimOptions::new(
        4,
        10,
        20,
        5,
        Faults::profile("chaos").expect("profile"),
    ));
    let short = sim::run(SimOptions::new(
        4,
        10,
        10,
        5,
        Faults::profile("chaos").expect("profile"),
    ));
    assert!(long.events > short.events);
    assert!(long.violations.is_empty() && short.violations.is_empty());
    // Identical up to the short run's last day, whose end starts its quiescence.
    assert_eq!(long.midnight_hashes[..9], short.midnight_hashes[..9]);
    assert_ne!(long.midnight_hashes[9], short.midnight_hashes[9]);
}

/// `--workload`: a busy federation does several times the work of a
/// light one over the same days, and both hold every invariant.
#[test]
fn the_workload_option_sets_how_busy_the_caisses_are() {
    let at = |workload| {
        sim::run(SimOptions {
            workload,
            ..SimOptions::new(4, 10, 20, 3, Faults::profile("chaos").expect("profile"))
        })
    };
    let (light, busy) = (at(Workload::Light), at(Workload::Busy));
    assert!(light.violations.is_empty(), "{:?}", light.violations);
    assert!(busy.violations.is_empty(), "{:?}", busy.violations);
    assert!(
        busy.messages > 3 * light.messages,
        "busy: {} messages, light: {}",
        busy.messages,
        light.messages
    );
}
