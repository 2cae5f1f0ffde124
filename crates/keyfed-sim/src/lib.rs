//! A deterministic simulation of a keyfed federation ("Faults as a test
//! suite"). Many [`keyfed_engine::Engine`]s run in one process on
//! in-memory stores; one seeded [`rng::Rng`] draws the workload (keys added,
//! renewed compatibly and store-only, activated and deleted upstream; seats
//! assigned and unassigned to stations, children and neighbors, lent with
//! expiry; stations attaching and releasing on several nodes with one
//! fingerprint) and the faults (deliveries and acks delayed, dropped,
//! duplicated and reordered; links cut and healed; clocks skewed; nodes
//! crashed, also between applying a delivery and acking it, and restarted
//! from what their store synced). After every step and at quiescence the
//! invariants of [`check`] are checked.
//!
//! Why at the engine API rather than turmoil under tonic: the engine is the
//! sans-I/O state machine (`Engine::execute(Command)` with `now` in every
//! command, outboxes in the store), so the simulation needs no sockets, no
//! HTTP/2 and no TLS, and every message is a value it can hold back, copy,
//! reorder or drop. One seeded RNG then decides everything, so a seed
//! replays exactly (nothing depends on scheduling: each command is awaited
//! before the next). And a crash is the store's own crash model,
//! [`keyfed_store::Store::crash`], which keeps exactly what was flushed —
//! something turmoil cannot give a sled database. What this leaves out is
//! the shell (`keyfed-node`'s link loop and gRPC conversion); its Hello and
//! ack handling is modelled here as `federation.rs` does it.
pub mod check;
pub mod rng;
pub mod upstream;
pub mod world;

pub use world::{run_seed, run_seeds, Plant, Report, SimConfig, Violation, FAULTS, INVARIANTS};

/// Sums reports into one line per fault kind and invariant.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub seeds: u64,
    pub steps: u64,
    pub faults: std::collections::BTreeMap<&'static str, u64>,
    pub checks: std::collections::BTreeMap<&'static str, u64>,
    pub failures: Vec<(u64, Violation)>,
}

impl Summary {
    #[must_use]
    pub fn of(reports: &[Report]) -> Self {
        let mut s = Self::default();
        for r in reports {
            s.seeds += 1;
            s.steps += r.steps as u64;
            for (k, v) in &r.faults {
                *s.faults.entry(k).or_default() += v;
            }
            for (k, v) in &r.checks {
                *s.checks.entry(k).or_default() += v;
            }
            if let Some(v) = &r.violation {
                s.failures.push((r.seed, v.clone()));
            }
        }
        s
    }

    /// One line: seeds, steps, faults, checks, failures.
    #[must_use]
    pub fn line(&self) -> String {
        let faults: u64 = self.faults.values().sum();
        let checks: u64 = self.checks.values().sum();
        format!(
            "{} seeds, {} steps, {faults} faults injected, {checks} invariant checks, {} failures",
            self.seeds,
            self.steps,
            self.failures.len()
        )
    }

    /// The table the binary prints.
    #[must_use]
    pub fn table(&self, elapsed: std::time::Duration) -> String {
        use std::fmt::Write;
        let mut t = String::new();
        let _ = writeln!(t, "| what | count |\n|---|---:|");
        let _ = writeln!(t, "| seeds | {} |", self.seeds);
        let _ = writeln!(t, "| steps | {} |", self.steps);
        for (k, v) in &self.faults {
            let _ = writeln!(t, "| fault: {k} | {v} |");
        }
        for (k, v) in &self.checks {
            let _ = writeln!(t, "| check: {k} | {v} |");
        }
        let _ = writeln!(t, "| failures | {} |", self.failures.len());
        let _ = writeln!(t, "| time | {:.1} s |", elapsed.as_secs_f64());
        t
    }
}
