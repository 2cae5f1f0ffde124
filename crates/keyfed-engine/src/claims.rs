//! One machine, one seat across nodes (b02), by `keyfed_core::claims`.
//!
//! A node that got a key from a peer no longer counts a station's seat of it
//! before the key's origin agreed (defect 8). The station's first contact
//! sends a claim and takes a **provisional lease**: it reserves one of the
//! node's free seats (so the node never hands out more than it holds, r13)
//! but is no grant, so it is neither counted in the ledger nor in usage
//! rollups, and lasts `ClaimPolicy::provisional_lease` (15 minutes). While
//! the link to the origin is up, the contact waits for the origin's answer
//! (one round trip, at most [`CLAIM_WAIT`]) and is then answered as the
//! origin decided: `confirmed` turns the reservation into a counted seat,
//! `duplicate` ends it. While the origin is unreachable the station keeps
//! short provisional leases (the claim waits in the outbox) until the claim
//! has been pending for `ClaimPolicy::pending_limit` (30 days); then it is
//! refused until the origin answers. Stations with confirmed seats are not
//! affected. So a station that reaches two nodes never holds two counted
//! seats, and a second provisional one at most for one short lease.
//!
//! State kept in the store's meta: `own-claim:{license}:{fp}` (this node's
//! claim to the origin: pending or confirmed) and `provisional:{key}` (the
//! live provisional leases of a key, fingerprint -> until).
use crate::denials::Refusal;
use crate::engine::{Effects, Engine};
use crate::error::EngineError;
use chrono::{DateTime, Utc};
use keyfed_core::claims::{
    arbitrate, carry_leases, on_answer, AnswerStep, ClaimAnswer, ClaimArrival, ClaimRegistry,
    ClaimVerdict, LocalHold, OwnClaim,
};
use keyfed_core::denial::{DenialKind, DenialReason};
use keyfed_core::event::EventKind;
use keyfed_core::peer_refusal::KeyOrigin;
use keyfed_store::{ObjectKind, Origin, StoredKey, Tx};
use keyfed_wire::v1 as pb;
use std::collections::BTreeMap;

type Tr<T> = keyfed_store::TxResult<T, EngineError>;

/// How long a contact waits for the key's origin to answer its claim while
/// the link to it is up (real time: it is a network round trip).
pub const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn own_claim_meta(license: &str, fp: &str) -> String {
    format!("own-claim:{license}:{fp}")
}

fn provisional_meta(key_id: &str) -> String {
    format!("provisional:{key_id}")
}

pub(crate) fn origin_of(k: &StoredKey) -> KeyOrigin {
    match &k.origin {
        Origin::Upstream => KeyOrigin::Upstream,
        Origin::Peer(p) => KeyOrigin::Peer(p.clone()),
    }
}

/// This node's claim to the origin of `license` for `fp`.
pub(crate) fn own_claim(tx: &Tx<'_>, license: &str, fp: &str) -> Tr<OwnClaim> {
    Ok(tx
        .meta::<EngineError>(&own_claim_meta(license, fp))?
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(OwnClaim::None))
}

pub(crate) fn set_own_claim(tx: &Tx<'_>, license: &str, fp: &str, c: &OwnClaim) -> Tr<()> {
    let name = own_claim_meta(license, fp);
    match c {
        OwnClaim::None | OwnClaim::Duplicate { .. } => tx.remove_meta(&name),
        _ => tx.put_meta(&name, &serde_json::to_string(c).expect("claim serializes")),
    }
}

/// The live provisional leases of a key (expired ones dropped).
pub(crate) fn provisional(
    tx: &Tx<'_>,
    key_id: &str,
    now: DateTime<Utc>,
) -> Tr<BTreeMap<String, DateTime<Utc>>> {
    let mut m: BTreeMap<String, DateTime<Utc>> = tx
        .meta::<EngineError>(&provisional_meta(key_id))?
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    m.retain(|_, until| *until > now);
    Ok(m)
}

pub(crate) fn put_provisional(
    tx: &Tx<'_>,
    key_id: &str,
    m: &BTreeMap<String, DateTime<Utc>>,
) -> Tr<()> {
    let name = provisional_meta(key_id);
    if m.is_empty() {
        tx.remove_meta(&name)
    } else {
        tx.put_meta(&name, &serde_json::to_string(m).expect("leases serialize"))
    }
}

/// r07 with b02: the renewal that superseded `old_id` by `new` (its grants
/// moved already) carries the old key's live provisional leases over, as
/// far as `new` has room (`keyfed_core::claims::carry_leases`). Without
/// this the origin's answer, which settles the lease on the license's
/// current key, found none there and an acknowledged seat was lost.
pub(crate) fn carry_provisional(
    tx: &Tx<'_>,
    fx: &mut Effects,
    old_id: &str,
    new: &StoredKey,
    now: DateTime<Utc>,
) -> Tr<()> {
    let old = provisional(tx, old_id, now)?;
    if old.is_empty() {
        return Ok(());
    }
    let new_id = &new.key.id;
    let mine = provisional(tx, new_id, now)?;
    let taken = tx
        .used::<EngineError>(new_id)?
        .saturating_add(u32::try_from(mine.len()).unwrap_or(u32::MAX));
    let carried = carry_leases(&old, &mine, new.held.saturating_sub(taken), now);
    put_provisional(tx, old_id, &BTreeMap::new())?;
    put_provisional(tx, new_id, &carried.leases)?;
    for fp in &carried.ended {
        fx.notify(
            tx,
            now,
            EventKind::ObjectUnlicensed,
            new_id,
            format!("station {fp}'s provisional seat of {old_id} ended: {old_id} was renewed as {new_id}, which has no free seat for it; it gets one at a later contact once one is free (r11)"),
            &[("object", fp.clone()), ("old_key_id", old_id.to_owned())],
        )?;
    }
    Ok(())
}

/// The claim a node sends the origin of a key when one of its stations
/// takes (or gives back) a seat of it.
pub fn claim(k: &StoredKey, fingerprint: &str, released: bool) -> pb::delivery::Body {
    pb::delivery::Body::Claim(pb::StationClaim {
        key_id: k.key.id.clone(),
        fingerprint: fingerprint.to_owned(),
        released,
        license: k.key.license.clone(),
        ..Default::default()
    })
}

/// A station seat of `key_id` was given back: its origin forgets the
/// claim, and this node's own claim is over.
pub(crate) fn release_claim(
    tx: &Tx<'_>,
    fx: &mut Effects,
    key_id: &str,
    fingerprint: &str,
    now: DateTime<Utc>,
) -> Tr<()> {
    if let Some(k) = tx.key::<EngineError>(key_id)? {
        if let Some(origin) = k.origin.peer() {
            set_own_claim(tx, &k.key.license, fingerprint, &OwnClaim::None)?;
            fx.send(tx, origin, now, key_id, claim(&k, fingerprint, true))?;
        }
    }
    Ok(())
}

impl Engine {
    /// b02 across nodes: a peer says one of its stations took (or gave back)
    /// a seat of a license; or our origin answers a claim of ours.
    pub(crate) fn claim_tx(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        peer: &str,
        c: &pb::StationClaim,
        key: Option<&StoredKey>,
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let Some(k) = key else {
            return Ok(()); // the license is gone here: nothing to arbitrate
        };
        if c.duplicate || c.confirmed {
            return self.claim_answered(tx, fx, peer, c, k, now);
        }
        let (license, fp) = (c.license.as_str(), c.fingerprint.as_str());
        let origin = origin_of(k);
        let claimed_by = tx.claim::<EngineError>(license, fp)?;
        let local = tx
            .grant::<EngineError>(&k.key.id, fp)?
            .is_some_and(|g| g.kind == ObjectKind::Station);
        let reg = ClaimRegistry {
            this_node: self.id(),
            key_id: &k.key.id,
            origin: &origin,
            peer_was_granted: tx.grant::<EngineError>(&k.key.id, peer)?.is_some(),
            local_station_grant: local,
            claimed_by: claimed_by.as_deref(),
        };
        let arrival = ClaimArrival {
            peer,
            fingerprint: fp,
            released: c.released,
        };
        let id = &k.key.id;
        match arbitrate(arrival, &reg) {
            ClaimVerdict::Refuse(why) => {
                let r = Refusal::new(DenialReason::PeerNotGranted, id, why.clone());
                self.deny_tx(tx, DenialKind::Assignment, &format!("{peer}/{fp}"), &r, now)?;
                let details = [("peer", peer.to_owned())];
                fx.notify(tx, now, EventKind::PeerMessageRefused, id, why, &details)
            }
            ClaimVerdict::Ignore => Ok(()),
            ClaimVerdict::Forget { origin } => {
                tx.remove_claim::<EngineError>(license, fp)?;
                if let Some(up) = origin {
                    fx.send(tx, &up, now, id, claim(k, fp, true))?;
                }
                Ok(())
            }
            ClaimVerdict::Duplicate { holder } => {
                let answer = pb::StationClaim {
                    duplicate: true,
                    confirmed: false,
                    holder: holder.clone(),
                    ..c.clone()
                };
                fx.send(tx, peer, now, id, pb::delivery::Body::Claim(answer))?;
                let message = format!("station {fp} reached {peer} but already holds a seat of {id} through {holder}; {peer} gives its seat back (b02)");
                let r = Refusal::new(DenialReason::SeatHeldElsewhere, id, message.clone());
                self.deny_tx(tx, DenialKind::Assignment, &format!("{peer}/{fp}"), &r, now)?;
                fx.notify(
                    tx,
                    now,
                    EventKind::DuplicateStation,
                    id,
                    message,
                    &[("fingerprint", fp.to_owned()), ("holder", holder)],
                )
            }
            ClaimVerdict::RecordAndConfirm => {
                tx.put_claim(license, fp, peer)?;
                let answer = pb::StationClaim {
                    confirmed: true,
                    duplicate: false,
                    holder: peer.to_owned(),
                    ..c.clone()
                };
                fx.send(tx, peer, now, id, pb::delivery::Body::Claim(answer))?;
                Ok(())
            }
            ClaimVerdict::RecordAndForward { origin } => {
                tx.put_claim(license, fp, peer)?;
                fx.send(tx, &origin, now, id, claim(k, fp, false))?;
                Ok(())
            }
        }
    }

    /// b02: the origin answered a claim, ours or one forwarded for a node below.
    fn claim_answered(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        peer: &str,
        c: &pb::StationClaim,
        k: &StoredKey,
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let (license, fp, id) = (c.license.as_str(), c.fingerprint.as_str(), &k.key.id);
        let answer = if c.duplicate {
            ClaimAnswer::Duplicate {
                holder: c.holder.clone(),
            }
        } else {
            ClaimAnswer::Confirmed
        };
        let leases = provisional(tx, id, now)?;
        let local = if tx.grant::<EngineError>(id, fp)?.is_some() {
            LocalHold::Counted
        } else if leases.contains_key(fp) {
            LocalHold::Provisional
        } else {
            LocalHold::Nothing
        };
        let below = tx.claim::<EngineError>(license, fp)?;
        fx.claim_answers.insert(fp.to_owned());
        match on_answer(peer, &origin_of(k), below.as_deref(), local, &answer) {
            AnswerStep::Refuse(why) => fx.notify(
                tx,
                now,
                EventKind::PeerMessageRefused,
                id,
                why,
                &[("peer", peer.to_owned())],
            ),
            AnswerStep::PassDown { to, forget_claim } => {
                if forget_claim {
                    tx.remove_claim::<EngineError>(license, fp)?;
                }
                fx.send(tx, &to, now, id, pb::delivery::Body::Claim(c.clone()))?;
                Ok(())
            }
            AnswerStep::Confirm => self.confirm_provisional(tx, k, fp, leases, now),
            AnswerStep::GiveBack { holder } => self.give_back(tx, fx, k, fp, &holder, leases, now),
            AnswerStep::Note => match answer {
                ClaimAnswer::Confirmed => set_own_claim(tx, license, fp, &OwnClaim::Confirmed),
                ClaimAnswer::Duplicate { holder } => {
                    set_own_claim(tx, license, fp, &OwnClaim::None)?;
                    mark_elsewhere(tx, fp, &holder, id, now)
                }
            },
        }
    }

    /// The origin confirmed: the provisional lease becomes a counted seat.
    fn confirm_provisional(
        &self,
        tx: &Tx<'_>,
        k: &StoredKey,
        fp: &str,
        mut leases: BTreeMap<String, DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let id = &k.key.id;
        set_own_claim(tx, &k.key.license, fp, &OwnClaim::Confirmed)?;
        leases.remove(fp);
        put_provisional(tx, id, &leases)?;
        let used = tx.used::<EngineError>(id)?;
        if used >= k.held {
            return Ok(()); // reserved, so not expected; the next contact decides
        }
        let mut station = tx.station::<EngineError>(fp)?;
        let tenant = station
            .as_ref()
            .map(|s| s.tenant.clone())
            .filter(|t| t != k.owner())
            .unwrap_or_default();
        let mut g = crate::engine::new_grant(id, fp, ObjectKind::Station, 1, None, now);
        g.tenant = tenant;
        tx.put_grant(&g)?;
        crate::lifecycle::meter_tx(tx, k, used + 1, now)?;
        if let Some(s) = station.as_mut() {
            s.key_id = Some(id.clone());
            tx.put_station(s)?;
        }
        Ok(())
    }

    /// The origin says the station holds its seat elsewhere: the seat here
    /// ends, counted or provisional.
    #[allow(clippy::too_many_arguments)]
    fn give_back(
        &self,
        tx: &Tx<'_>,
        fx: &mut Effects,
        k: &StoredKey,
        fp: &str,
        holder: &str,
        mut leases: BTreeMap<String, DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Tr<()> {
        let id = &k.key.id;
        set_own_claim(tx, &k.key.license, fp, &OwnClaim::None)?;
        leases.remove(fp);
        put_provisional(tx, id, &leases)?;
        tx.remove_grant::<EngineError>(id, fp)?;
        crate::engine::retire_if_free(tx, fx, id, now)?;
        mark_elsewhere(tx, fp, holder, id, now)?;
        fx.notify(tx, now, EventKind::DuplicateStation, id, format!("station {fp} already holds a seat of {id} through {holder}: the seat it took here was given back (b02)"), &[("fingerprint", fp.to_owned()), ("holder", holder.to_owned())])
    }
}

/// b02: contacts of `fp` are refused here while another node holds its seat.
fn mark_elsewhere(tx: &Tx<'_>, fp: &str, holder: &str, key_id: &str, now: DateTime<Utc>) -> Tr<()> {
    if let Some(mut s) = tx.station::<EngineError>(fp)? {
        s.key_id = None;
        s.elsewhere = Some((holder.to_owned(), key_id.to_owned(), now));
        tx.put_station(&s)?;
    }
    Ok(())
}
