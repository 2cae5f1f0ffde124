//! `keyfed-sim --seeds N [--first-seed S] [--jobs J] [--steps K]` runs many
//! seeds and prints a table; `keyfed-sim --seed N --trace` replays one seed
//! with its step trace.
use keyfed_sim::{run_seed, run_seeds, SimConfig, Summary};
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: keyfed-sim --seeds N [--first-seed S] [--jobs J] [--steps K]\n       keyfed-sim --seed N [--trace] [--steps K]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut seeds, mut first, mut one, mut trace) = (None, 0u64, None, false);
    let mut jobs = std::thread::available_parallelism().map_or(2, |n| n.get()) * 4;
    let mut cfg = SimConfig::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = || it.next().and_then(|v| v.parse::<u64>().ok());
        match a.as_str() {
            "--seeds" => seeds = num(),
            "--first-seed" => first = num().unwrap_or(0),
            "--seed" => one = num(),
            "--jobs" => jobs = num().map_or(jobs, |j| usize::try_from(j).unwrap_or(1)),
            "--steps" => cfg.steps = num().map_or(cfg.steps, |s| usize::try_from(s).unwrap_or(1)),
            "--trace" => trace = true,
            _ => return usage(),
        }
    }
    if let Some(seed) = one {
        cfg.trace = trace;
        let r = run_seed(seed, &cfg);
        for line in &r.trace {
            println!("{line}");
        }
        println!("digest {}", r.digest);
        return match r.violation {
            Some(v) => {
                println!(
                    "seed {seed} FAILED at step {}: [{}] {}",
                    v.step, v.invariant, v.detail
                );
                ExitCode::FAILURE
            }
            None => {
                println!("seed {seed}: {} steps, every invariant held", r.steps);
                ExitCode::SUCCESS
            }
        };
    }
    let Some(count) = seeds else { return usage() };
    let started = std::time::Instant::now();
    let reports = run_seeds(first, count, &cfg, jobs);
    let s = Summary::of(&reports);
    print!("{}", s.table(started.elapsed()));
    println!("{}", s.line());
    for (seed, v) in &s.failures {
        println!(
            "seed {seed} failed at step {}: [{}] {}\n  replay: keyfed-sim --seed {seed} --trace",
            v.step, v.invariant, v.detail
        );
    }
    if s.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
