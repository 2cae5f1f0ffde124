//! The invariants, as functions over the nodes' stores. `seat_conservation`
//! is the definition of `tests/src/conservation.rs` (r13, b02) taken over
//! live in-memory stores instead of stopped sled directories; the others
//! are the simulation's own: durability across a crash, rollback and
//! convergence (r06, r07) at quiescence.
use keyfed_store::{ObjectKind, Origin, Store, StoreDump, StoreError};
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

/// r13 and b02 over `stores` (node id -> store), as `tests/src/conservation.rs`
/// defines them: per node `ledger` and `over-held` always; across nodes
/// `grant-vs-held` only where the sender's outbox to that peer is empty and
/// `fingerprint` only where no holder has anything queued.
pub fn seat_conservation(
    stores: &BTreeMap<String, Store>,
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
                        // in flight either way: a grant on its way, or the
                        // peer's refusal giving the seats back (deviation
                        // from tests/src/conservation.rs, see docs/faults.md)
                        if !s.outbox(&g.object)?.is_empty() || !peer.outbox(node)?.is_empty() {
                            continue;
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
            // r07: a node keeps a renewed key while its own objects take the
            // renewal (its sender already took the grant back); convergence
            // requires it gone at quiescence (deviation, see docs/faults.md)
            if k.superseded_by.is_some() {
                continue;
            }
            if k.held == 0 || !sender.outbox(node)?.is_empty() || !s.outbox(from)?.is_empty() {
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

/// Meta entries written outside a transaction and never acknowledged (link
/// state, schedule marks, rollup fingerprints): a crash may lose them.
fn unacknowledged_meta(key: &[u8]) -> bool {
    [&b"peer:"[..], b"last_", b"rollup:"]
        .iter()
        .any(|p| key.starts_with(p))
}

/// Everything an acknowledged command may have written.
#[must_use]
pub fn acknowledged_state(dump: &StoreDump) -> StoreDump {
    dump.iter()
        .map(|(tree, entries)| {
            let kept = entries
                .iter()
                .filter(|(k, _)| *tree != "meta" || !unacknowledged_meta(k))
                .cloned()
                .collect();
            (*tree, kept)
        })
        .collect()
}

/// "Nothing acknowledged is lost": the store a node restarts on holds every
/// acknowledged write the live node had. Names the first difference.
pub fn durability(live: &Store, restarted: &Store) -> Result<Option<String>, StoreError> {
    let a = acknowledged_state(&live.dump()?);
    let b = acknowledged_state(&restarted.dump()?);
    for (tree, entries) in &a {
        let other = &b[tree];
        if entries != other {
            let lost: Vec<String> = entries
                .iter()
                .filter(|e| !other.contains(e))
                .take(3)
                .map(|(k, _)| String::from_utf8_lossy(k).replace('\0', "/"))
                .collect();
            return Ok(Some(format!(
                "tree `{tree}`: {} acknowledged entries before the crash, {} after; lost or changed: {}",
                entries.len(),
                other.len(),
                lost.join(", ")
            )));
        }
    }
    Ok(None)
}

/// What the rollback check remembers per node: the highest serial seen of
/// each license, and which key ids it held.
#[derive(Debug, Default, Clone)]
pub struct SerialMemory {
    highest: BTreeMap<String, u64>,
    seen: std::collections::BTreeSet<String>,
}

/// Never an older serial after a newer one: a key that appears on a node
/// has a serial at least the highest it saw of that license, and the
/// highest serial a store remembers never goes down (not even across a
/// crash or a delete).
pub fn rollback(
    node: &str,
    store: &Store,
    mem: &mut SerialMemory,
) -> Result<Option<String>, StoreError> {
    let keys = store.keys()?;
    let mut problem = None;
    for k in &keys {
        let top = mem.highest.get(&k.key.license).copied().unwrap_or(0);
        if !mem.seen.contains(&k.key.id) && k.key.serial < top && problem.is_none() {
            problem = Some(format!(
                "{node} took key {} serial {} of license {} after it had serial {top}",
                k.key.id, k.key.serial, k.key.license
            ));
        }
    }
    for k in &keys {
        mem.seen.insert(k.key.id.clone());
        let top = mem.highest.entry(k.key.license.clone()).or_insert(0);
        *top = (*top).max(k.key.serial);
    }
    for (license, top) in &mem.highest {
        let remembered = store.license_serial(license)?.unwrap_or(0);
        if remembered < *top && problem.is_none() {
            problem = Some(format!(
                "{node} remembers serial {remembered} of license {license}, but held serial {top}"
            ));
        }
    }
    Ok(problem)
}

/// r06/r07 at quiescence: no node still holds a superseded key (every
/// object moved, so it is retired), and every key a node holds from a peer
/// is one that peer still holds current (not superseded or retired there).
pub fn convergence(stores: &BTreeMap<String, Store>) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for (node, s) in stores {
        for k in s.keys()? {
            if let Some(new) = &k.superseded_by {
                let holders: Vec<String> = s
                    .grants_of_key(&k.key.id)?
                    .into_iter()
                    .map(|g| g.object)
                    .collect();
                out.push(format!(
                    "{node} still holds {} superseded by {new} (objects on it: [{}])",
                    k.key.id,
                    holders.join(", ")
                ));
            }
            if let (Origin::Peer(from), true) = (&k.origin, k.held > 0) {
                let Some(sender) = stores.get(from) else {
                    continue;
                };
                match sender.key(&k.key.id)? {
                    None => out.push(format!(
                        "{node} holds {} from {from}, which no longer has it (retired or withdrawn there)",
                        k.key.id
                    )),
                    Some(t) if t.superseded_by.is_some() => out.push(format!(
                        "{node} holds {} from {from}, which renewed it as {}",
                        k.key.id,
                        t.superseded_by.unwrap_or_default()
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    Ok(out)
}
