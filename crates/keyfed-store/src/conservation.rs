//! r13 seat conservation over a whole federation's stores, compared with
//! each other: the definition both the cluster harness (over stopped sled
//! stores) and the simulation (over live in-memory stores) check.
//!
//! What is checked, key by key:
//! - `ledger`: on every node, the used-seat counter of a key equals the sum of
//!   the seats of all its grants (stations, children, neighbors);
//! - `over-held`: on every node, the seats granted from a key do not exceed
//!   the seats the node holds of it (`StoredKey::held`: the key's seats after
//!   activations at its origin, what the sender granted everywhere else); at
//!   the root (origin upstream) that is "the federation's total never exceeds
//!   the key's seats", since a child's grants are counted in its parent's;
//! - `grant-vs-held`: what a node granted a peer equals what that peer holds
//!   of the key (`held`, which `receive_key_tx` sets to the granted seats),
//!   and a key a peer holds with seats from a node has a matching grant there;
//! - `fingerprint`: no fingerprint holds counted seats of one license on two
//!   nodes (or of two keys of one license on one node).
//!
//! Only after convergence: a test may shut down mid-flight. The cross-node
//! parts (`grant-vs-held`, `fingerprint`) are checked only where nothing is in
//! flight: a grant from P to C is compared only when P's outbox to C is empty
//! (every delivery was acked, [`Store::outbox`]); a fingerprint
//! held on two nodes counts only when neither has anything queued for any
//! peer. The per-node parts always hold: each state change is one transaction.
use crate::{ObjectKind, Origin, Store, StoreError};
use std::collections::BTreeMap;

/// One broken rule, with the numbers that break it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatViolation {
    pub rule: &'static str,
    pub node: String,
    pub key_id: String,
    pub detail: String,
}

impl std::fmt::Display for SeatViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] node {} key {}: {}",
            self.rule, self.node, self.key_id, self.detail
        )
    }
}

fn v(rule: &'static str, node: &str, key_id: &str, detail: String) -> SeatViolation {
    SeatViolation {
        rule,
        node: node.to_owned(),
        key_id: key_id.to_owned(),
        detail,
    }
}

/// What else counts as "in flight" besides a sender's queued deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InFlight {
    /// A peer's queued delivery back to the grantor (its refusal giving the
    /// seats back, a lapsed loan) means the grant is still settling.
    pub give_backs: bool,
    /// A key its holder has itself superseded is mid-r07: the holder keeps
    /// it for its own objects while its sender already moved on.
    pub holder_superseded: bool,
}

/// r13 and b02 over `stores` (node id -> store): per node `ledger` and
/// `over-held` always; across nodes `grant-vs-held` only where the sender's
/// outbox to that peer is empty (and whatever `in_flight` adds), and
/// `fingerprint` only where no holder has anything queued.
pub fn seat_conservation(
    stores: &BTreeMap<String, Store>,
    in_flight: InFlight,
) -> Result<Vec<SeatViolation>, StoreError> {
    let mut out = Vec::new();
    let mut stations: BTreeMap<(String, String), Vec<(String, String)>> = BTreeMap::new();
    let mut busy: BTreeMap<String, bool> = BTreeMap::new();
    for (node, s) in stores {
        let mut queued = false;
        for peer in stores.keys().filter(|p| *p != node) {
            queued |= !s.outbox(peer)?.is_empty();
        }
        busy.insert(node.clone(), queued);
    }
    for (node, s) in stores {
        for k in s.keys()? {
            let id = &k.key.id;
            let grants = s.grants_of_key(id)?;
            let sum: u32 = grants.iter().map(|g| g.seats).sum();
            let used = s.used(id)?;
            if used != sum {
                let list = grants
                    .iter()
                    .map(|g| format!("{}={}", g.object, g.seats))
                    .collect::<Vec<_>>()
                    .join(", ");
                out.push(v(
                    "ledger",
                    node,
                    id,
                    format!("used counter says {used}, its grants sum to {sum} ({list})"),
                ));
            }
            if sum > k.held {
                let whom = match &k.origin {
                    Origin::Upstream => format!("the key's {} seat(s)", k.held),
                    Origin::Peer(p) => format!("the {} seat(s) {p} granted", k.held),
                };
                out.push(v(
                    "over-held",
                    node,
                    id,
                    format!("{sum} seat(s) granted, more than {whom}"),
                ));
            }
            for g in &grants {
                match g.kind {
                    ObjectKind::Station => stations
                        .entry((k.key.license.clone(), g.object.clone()))
                        .or_default()
                        .push((node.clone(), id.clone())),
                    ObjectKind::Server => {
                        let Some(peer) = stores.get(&g.object) else {
                            continue;
                        };
                        if !s.outbox(&g.object)?.is_empty()
                            || (in_flight.give_backs && !peer.outbox(node)?.is_empty())
                        {
                            continue; // in flight
                        }
                        match peer.key(id)? {
                            Some(t) if t.origin == Origin::Peer(node.clone()) => {
                                if t.held != g.seats {
                                    out.push(v("grant-vs-held", node, id, format!("{node} granted {} {} seat(s) (acked), {} holds {}", g.object, g.seats, g.object, t.held)));
                                }
                            }
                            Some(t) => out.push(v("grant-vs-held", node, id, format!("{node} granted {} {} seat(s) (acked), but {} holds the key from {:?}", g.object, g.seats, g.object, t.origin))),
                            None => out.push(v("grant-vs-held", node, id, format!("{node} granted {} {} seat(s) (acked), but {} does not hold the key", g.object, g.seats, g.object))),
                        }
                    }
                }
            }
        }
    }
    for (node, s) in stores {
        for k in s.keys()? {
            let Origin::Peer(from) = &k.origin else {
                continue;
            };
            let Some(sender) = stores.get(from) else {
                continue;
            };
            if in_flight.holder_superseded && k.superseded_by.is_some() {
                continue;
            }
            // an offer (r08) carries no seats; or in flight
            if k.held == 0
                || !sender.outbox(node)?.is_empty()
                || (in_flight.give_backs && !s.outbox(from)?.is_empty())
            {
                continue;
            }
            if sender.grant(&k.key.id, node)?.is_none() {
                out.push(v(
                    "grant-vs-held",
                    node,
                    &k.key.id,
                    format!(
                        "{node} holds {} seat(s) from {from}, which has no grant of the key to {node} (all acked)",
                        k.held
                    ),
                ));
            }
        }
    }
    for ((license, fp), holders) in &stations {
        if holders.len() < 2 || holders.iter().any(|(n, _)| busy[n]) {
            continue;
        }
        let list = holders
            .iter()
            .map(|(n, k)| format!("{n}:{k}"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(v(
            "fingerprint",
            &holders[0].0,
            &holders[0].1,
            format!(
                "station {fp} holds {} counted seats of license {license}: {list}",
                holders.len()
            ),
        ));
    }
    Ok(out)
}
