//! r13 seat conservation over a whole stopped cluster: every node's store is
//! opened after the node stopped and the ledgers are compared with each other.
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
//! (every delivery was acked, [`keyfed_store::Store::outbox`]); a fingerprint
//! held on two nodes counts only when neither has anything queued for any
//! peer. The per-node parts always hold: each state change is one transaction.
use keyfed_store::{ObjectKind, Origin, Store, StoreError};
use std::collections::BTreeMap;
use std::path::PathBuf;

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

/// Checks `nodes` (node id, store directory), all stopped. Stores that do
/// not exist (a node that never started) are skipped.
pub fn check_seat_conservation(
    nodes: &[(String, PathBuf)],
) -> Result<Vec<SeatViolation>, StoreError> {
    let mut stores = BTreeMap::new();
    for (id, dir) in nodes {
        if dir.exists() {
            stores.insert(id.clone(), Store::open(dir)?);
        }
    }
    let mut out = Vec::new();
    let v = |rule, node: &str, key_id: &str, detail: String| SeatViolation {
        rule,
        node: node.to_owned(),
        key_id: key_id.to_owned(),
        detail,
    };
    // (license, fingerprint) -> [(node, key)]
    let mut stations: BTreeMap<(String, String), Vec<(String, String)>> = BTreeMap::new();
    let mut busy: BTreeMap<String, bool> = BTreeMap::new();
    for (node, s) in &stores {
        let mut queued = false;
        for peer in stores.keys().filter(|p| *p != node) {
            queued |= !s.outbox(peer)?.is_empty();
        }
        busy.insert(node.clone(), queued);
    }
    for (node, s) in &stores {
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
                        if !s.outbox(&g.object)?.is_empty() {
                            continue; // in flight
                        }
                        let theirs = peer.key(id)?;
                        match theirs {
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
    // the other way: a key held with seats from a peer has a grant there
    for (node, s) in &stores {
        for k in s.keys()? {
            let Origin::Peer(from) = &k.origin else {
                continue;
            };
            let Some(sender) = stores.get(from) else {
                continue;
            };
            if k.held == 0 || !sender.outbox(node)?.is_empty() {
                continue; // an offer (r08) carries no seats; or in flight
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
