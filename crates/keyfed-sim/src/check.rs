//! The invariants, as functions over the nodes' stores. Seat conservation
//! (r13, b02) is the store's own definition ([`seat_conservation`]), which
//! the cluster harness checks too; here it also counts give-backs and a
//! holder's own r07 transition as in flight (see docs/faults.md), since the
//! simulation checks live stores after every step. The others are the
//! simulation's own: durability across a crash, rollback and convergence
//! (r06, r07) at quiescence.
pub use keyfed_store::conservation::{InFlight, SeatViolation};
use keyfed_store::{Origin, Store, StoreDump, StoreError};
use std::collections::BTreeMap;

/// The simulation's checks run mid-flight, after every step.
pub const SIM_IN_FLIGHT: InFlight = InFlight {
    give_backs: true,
    holder_superseded: true,
};

/// r13 and b02 over live stores, with the simulation's in-flight rules.
pub fn seat_conservation(
    stores: &BTreeMap<String, Store>,
) -> Result<Vec<SeatViolation>, StoreError> {
    keyfed_store::conservation::seat_conservation(stores, SIM_IN_FLIGHT)
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
