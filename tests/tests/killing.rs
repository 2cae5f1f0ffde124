//! Real processes, real signals (r13, b02): a main, its child and a neighbor
//! run as `keyfed serve` processes; main and child are SIGKILLed at random
//! moments while a workload changes seats, and started again on the same
//! data. See `keyfed_tests::kill_loop` for the workload and the checks, and
//! `cargo run -p keyfed-tests --bin kill-loop -- --cycles 1000` for a long run.
use keyfed_tests::kill_loop::{self, KillPlan};

/// KEYFED_KILL_SEED picks another seed (the report names the one used).
fn seed() -> u64 {
    std::env::var("KEYFED_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(13)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_seats_conserved_across_sigkill_of_main_and_child() {
    let report = kill_loop::run(KillPlan {
        cycles: 30,
        seed: seed(),
        verbose: false,
    })
    .await;
    eprintln!("{}", report.table());
    for (node, log) in &report.logs {
        eprintln!("--- end of {node}'s log\n{log}");
    }
    assert!(
        report.kills.values().sum::<usize>() >= 30,
        "at least one SIGKILL per cycle"
    );
    assert!(
        report.acknowledged > 100 && report.renewals > 0,
        "the workload ran: {} acknowledged, {} renewals",
        report.acknowledged,
        report.renewals
    );
    assert!(
        report.problems.is_empty(),
        "seed {}: {} problem(s):\n{}",
        report.seed,
        report.problems.len(),
        report.problems.join("\n")
    );
}
