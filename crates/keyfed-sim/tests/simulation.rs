//! The simulation as a test suite: 200 seeds hold every invariant (r06,
//! r07, r13, b02, rollback, durability), every fault kind fires, runs are
//! deterministic, and each invariant catches a bug planted to break it.
use keyfed_sim::{run_seed, run_seeds, Plant, SimConfig, Summary, FAULTS};
use keyfed_store::{Store, StoreError};

const SEEDS: u64 = 200;

#[test]
fn r13_r06_r07_b02_two_hundred_seeds_hold_every_invariant() {
    let started = std::time::Instant::now();
    let reports = run_seeds(0, SEEDS, &SimConfig::default(), 8);
    let s = Summary::of(&reports);
    println!(
        "keyfed-sim: {} in {:.1} s",
        s.line(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        s.failures.is_empty(),
        "invariants broken (replay: keyfed-sim --seed N --trace): {:?}",
        s.failures
    );
    for kind in FAULTS {
        assert!(
            s.faults[kind] > 0,
            "fault kind {kind} never fired in {SEEDS} seeds"
        );
    }
    assert!(
        s.faults["crash-before-ack"] > 0,
        "no crash fell between a commit and its acknowledgement"
    );
    assert!(s.checks["durability"] > 0 && s.checks["convergence"] > 0);
}

/// Seeds 644, 2420, … (before the fix): a one-day loan held up on a cut
/// link arrived lapsed; the borrower dropped it while the lender counted it
/// until its own tick. Now the borrower gives it back on arrival.
#[test]
fn r13_b01_seed_644_a_loan_that_arrives_lapsed_is_given_back() {
    let cfg = SimConfig {
        trace: true,
        ..SimConfig::default()
    };
    let r = run_seed(644, &cfg);
    assert!(r.violation.is_none(), "{:?}", r.violation);
    let arrived = r
        .trace
        .iter()
        .position(|l| l.contains("n1 delivery from r seq 1 seat-grant"))
        .expect("the held-up loan reaches n1");
    assert!(
        r.trace[arrived..]
            .iter()
            .any(|l| l.contains("r delivery from n1") && l.contains("grant-withdrawn")),
        "n1 gives the lapsed loan back to r"
    );
}

#[test]
fn same_seed_same_trace_and_stores() {
    let cfg = SimConfig {
        trace: true,
        ..SimConfig::default()
    };
    for seed in [3, 17] {
        let a = run_seed(seed, &cfg);
        let b = run_seed(seed, &cfg);
        assert_eq!(a.trace, b.trace, "seed {seed} replays step by step");
        assert_eq!(a.digest, b.digest, "seed {seed}: same trace and stores");
    }
    assert_ne!(run_seed(3, &cfg).digest, run_seed(4, &cfg).digest);
}

#[test]
fn r13_crash_model_an_unsynced_write_is_gone_after_a_crash() {
    let store = Store::in_memory();
    store
        .transact(|tx| tx.put_meta::<StoreError>("synced", "1"))
        .unwrap();
    store.flush().unwrap();
    store
        .transact(|tx| tx.put_meta::<StoreError>("unsynced", "1"))
        .unwrap();
    assert!(store.meta("unsynced").unwrap().is_some(), "committed");
    let restarted = store.crash().unwrap();
    assert_eq!(restarted.meta("synced").unwrap().as_deref(), Some("1"));
    assert_eq!(
        restarted.meta("unsynced").unwrap(),
        None,
        "lost in the crash"
    );
}

/// The first seed (of `within`) on which `plant` is caught, and by what.
fn caught(plant: Plant, within: u64) -> Option<(u64, &'static str, String)> {
    let cfg = SimConfig {
        plant,
        ..SimConfig::default()
    };
    (0..within).find_map(|seed| {
        run_seed(seed, &cfg)
            .violation
            .map(|v| (seed, v.invariant, v.detail))
    })
}

fn assert_caught(plant: Plant, invariant: &str, within: u64) {
    let found = caught(plant, within);
    println!("{plant:?}: {found:?}");
    let (seed, inv, detail) =
        found.unwrap_or_else(|| panic!("{plant:?} was not caught within {within} seeds"));
    assert_eq!(inv, invariant, "{plant:?} on seed {seed}: {detail}");
}

#[test]
fn planted_ack_before_sync_breaks_durability() {
    assert_caught(Plant::AckBeforeSync, "durability", 20);
}

#[test]
fn planted_stale_replay_under_a_fresh_seq_breaks_conservation() {
    assert_caught(Plant::StaleReplay, "conservation", 60);
}

#[test]
fn planted_corrupt_grant_breaks_conservation() {
    assert_caught(Plant::CorruptGrant, "conservation", 20);
}

#[test]
fn planted_forgotten_serials_break_rollback() {
    assert_caught(Plant::ForgetSerials, "rollback", 20);
}

/// The defect the simulation found (seed 309 before the fix): a renewal
/// older than an activation key's serial was stored. Now refused.
#[test]
fn older_serial_upstream_is_refused_by_the_engine() {
    let found = caught(Plant::OlderSerial, 60);
    assert!(found.is_none(), "{found:?}");
}

#[test]
fn planted_stalled_renewal_breaks_convergence() {
    assert_caught(Plant::StallRenewal, "convergence", 60);
}

#[test]
fn planted_unclaimed_seat_breaks_one_seat_per_fingerprint() {
    assert_caught(Plant::UnclaimedSeat, "one-seat", 60);
}
