//! The SIGKILL workload of `tests/tests/killing.rs` for as many cycles as
//! asked: a main, its child and a neighbor as `keyfed serve` processes, main
//! and child killed at random moments while seats change, then every
//! acknowledged grant and r13 checked. Prints a table; exit code 1 on any
//! problem (each one printed, with the seed to run it again).
//!
//!   cargo build -p keyfed-node --bin keyfed && cargo run -p keyfed-tests --bin kill-loop -- --cycles 1000 --seed 7
use keyfed_tests::kill_loop::{self, KillPlan};

fn usage() -> ! {
    eprintln!("usage: kill-loop [--cycles N] [--seed S] [--verbose]");
    std::process::exit(2)
}

fn value<T: std::str::FromStr>(args: &mut impl Iterator<Item = String>) -> T {
    args.next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| usage())
}

fn main() {
    let mut plan = KillPlan {
        cycles: 200,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
        verbose: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cycles" => plan.cycles = value(&mut args),
            "--seed" => plan.seed = value(&mut args),
            "--verbose" => plan.verbose = true,
            _ => usage(),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    eprintln!("kill-loop: {} cycles, seed {}", plan.cycles, plan.seed);
    let report = runtime.block_on(kill_loop::run(plan));
    println!("{}", report.table());
    for r in &report.unlicensed_reasons {
        println!("unlicensed: {r}");
    }
    if report.problems.is_empty() {
        return;
    }
    for p in &report.problems {
        println!("problem: {p}");
    }
    for (node, log) in &report.logs {
        println!("--- end of {node}'s log\n{log}");
    }
    println!(
        "run again: kill-loop --cycles {} --seed {}",
        report.cycles, report.seed
    );
    std::process::exit(1);
}
