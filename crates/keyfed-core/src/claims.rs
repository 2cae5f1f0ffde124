//! One machine, one seat across nodes (b02): a station's seat of a key that
//! came from a peer is arbitrated by the key's origin, which records claims.
//!
//! Decision (defect 8). Today a node that gets a key from a peer grants a
//! station a *counted* seat at once and sends a claim to the origin; the
//! seat is taken back if the origin answers "duplicate", so a station that
//! reaches two neighbors holds two counted seats for a round trip, and for
//! as long as the origin is unreachable. Here:
//! * a node that is the key's origin (upstream key) arbitrates itself: the
//!   seat is counted at once unless a peer already claimed the fingerprint;
//! * any other node gives a **provisional lease** and sends a claim: the
//!   lease reserves one of the node's own free seats (so the node never
//!   hands out more than it holds, r13) but is not a grant: it is not in the
//!   ledger, not in usage rollups (b05), and lasts only
//!   [`ClaimPolicy::provisional_lease`] (default 15 minutes), so the station
//!   contacts again soon;
//! * the origin answers every claim: `Confirmed` turns the provisional lease
//!   into a counted grant, `Duplicate` ends it. So a station never holds
//!   two counted seats at all, and a second provisional one at most one
//!   round trip plus one short lease;
//! * while the origin is unreachable the claim stays pending and the
//!   station keeps getting provisional leases, each short, until the claim
//!   has been pending for [`ClaimPolicy::pending_limit`] (default 30 days,
//!   like a station's own offline validity, o02); then it is refused until
//!   the origin answers. Stations with confirmed seats are not affected.
//!
//! The wire needs one addition for this: the origin's positive answer (a
//! `StationClaim` with `duplicate = false` and `holder` set to the claimant).
use crate::peer_refusal::KeyOrigin;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimPolicy {
    /// How long a seat not yet confirmed by the key's origin is valid.
    pub provisional_lease: Duration,
    /// How long a claim may stay unanswered before new stations are refused.
    pub pending_limit: Duration,
}

impl Default for ClaimPolicy {
    fn default() -> Self {
        Self {
            provisional_lease: Duration::minutes(15),
            pending_limit: Duration::days(30),
        }
    }
}

/// This node's own claim to the key's origin for one fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnClaim {
    None,
    Pending { since: DateTime<Utc> },
    Confirmed,
    Duplicate { holder: String },
}

/// What the node where a station asks for a seat knows, in the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatAsk<'a> {
    pub fingerprint: &'a str,
    pub key_id: &'a str,
    pub origin: &'a KeyOrigin,
    /// A peer below this node claimed this fingerprint for the license.
    pub claimed_by_peer: Option<&'a str>,
    pub own_claim: &'a OwnClaim,
    /// Seats held minus counted grants minus live provisional leases.
    pub free: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StationSeat {
    /// Grant a counted seat now.
    Counted,
    /// A provisional lease until `until`; send a claim to `claim_to` if set
    /// (not set while a claim is already pending: the outbox retries it).
    Provisional {
        until: DateTime<Utc>,
        claim_to: Option<String>,
    },
    Refused(String),
}

/// b02: a seat for a station that holds none of this key here yet.
#[must_use]
pub fn station_seat(ask: &SeatAsk<'_>, policy: ClaimPolicy, now: DateTime<Utc>) -> StationSeat {
    let (fp, id) = (ask.fingerprint, ask.key_id);
    if let Some(peer) = ask.claimed_by_peer {
        return StationSeat::Refused(format!(
            "{fp} already holds a seat of {id} through {peer} (b02)"
        ));
    }
    if let OwnClaim::Duplicate { holder } = ask.own_claim {
        return StationSeat::Refused(format!(
            "station {fp} already holds a seat of {id} through {holder}: one machine, one seat (b02)"
        ));
    }
    if ask.free == 0 {
        return StationSeat::Refused(format!("{id} has no free seat"));
    }
    let KeyOrigin::Peer(origin) = ask.origin else {
        return StationSeat::Counted;
    };
    let until = now + policy.provisional_lease;
    match ask.own_claim {
        OwnClaim::Confirmed => StationSeat::Counted,
        OwnClaim::Pending { since } if now - *since >= policy.pending_limit => StationSeat::Refused(format!(
            "the origin of {id}, {origin}, has not confirmed {fp}'s seat since {since}; it is refused until {origin} answers (b02)"
        )),
        OwnClaim::Pending { .. } => StationSeat::Provisional { until, claim_to: None },
        OwnClaim::None | OwnClaim::Duplicate { .. } => StationSeat::Provisional {
            until,
            claim_to: Some(origin.clone()),
        },
    }
}

/// A claim that arrived from `peer` (one of its stations took a seat, or gave it back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimArrival<'a> {
    pub peer: &'a str,
    pub fingerprint: &'a str,
    pub released: bool,
}

/// What the receiving node knows of the claimed license, in the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRegistry<'a> {
    pub this_node: &'a str,
    pub key_id: &'a str,
    pub origin: &'a KeyOrigin,
    /// This node granted `peer` seats of the key.
    pub peer_was_granted: bool,
    /// The fingerprint holds a station seat (counted) of the key here.
    pub local_station_grant: bool,
    /// The peer recorded as holding the fingerprint's claim, if any.
    pub claimed_by: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimVerdict {
    /// `peer-message-refused` with this reason.
    Refuse(String),
    /// Answer `peer` that `holder` already holds the seat; notify
    /// `duplicate-station`.
    Duplicate { holder: String },
    /// Record the claim for `peer`; this node is the origin: confirm now.
    RecordAndConfirm,
    /// Record the claim for `peer` and forward it to `origin`, whose
    /// answer is passed down.
    RecordAndForward { origin: String },
    /// `peer` gave the seat back: forget its claim, forward to `origin` if set.
    Forget { origin: Option<String> },
    /// A release for a claim `peer` does not hold: nothing to do.
    Ignore,
}

/// b02 at a node that granted seats of the key to `peer`: is the station a
/// second seat? Mirrors today's check (a grant here, or a claim by another
/// peer, is a duplicate); a repeated claim by the same peer is recorded again.
#[must_use]
pub fn arbitrate(c: ClaimArrival<'_>, reg: &ClaimRegistry<'_>) -> ClaimVerdict {
    let origin = match reg.origin {
        KeyOrigin::Peer(o) => Some(o.clone()),
        KeyOrigin::Upstream => None,
    };
    if !reg.peer_was_granted {
        return ClaimVerdict::Refuse(format!(
            "{} claims a station seat of {} but was never granted seats of it; refused",
            c.peer, reg.key_id
        ));
    }
    if c.released {
        return if reg.claimed_by == Some(c.peer) {
            ClaimVerdict::Forget { origin }
        } else {
            ClaimVerdict::Ignore
        };
    }
    let here = reg.local_station_grant.then(|| reg.this_node.to_owned());
    let elsewhere = reg.claimed_by.filter(|p| *p != c.peer).map(str::to_owned);
    if let Some(holder) = here.or(elsewhere) {
        return ClaimVerdict::Duplicate { holder };
    }
    match origin {
        None => ClaimVerdict::RecordAndConfirm,
        Some(origin) => ClaimVerdict::RecordAndForward { origin },
    }
}

/// The origin's answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimAnswer {
    Confirmed,
    Duplicate { holder: String },
}

/// What the fingerprint holds of the key here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalHold {
    Nothing,
    Provisional,
    Counted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerStep {
    Refuse(String),
    /// The claim was forwarded for a node below: pass the answer to `to`.
    /// A duplicate also removes the recorded claim.
    PassDown {
        to: String,
        forget_claim: bool,
    },
    /// Turn the provisional lease into a counted grant; own claim confirmed.
    Confirm,
    /// End the seat here (provisional or counted), remember where it is held
    /// (`elsewhere`), notify `duplicate-station`.
    GiveBack {
        holder: String,
    },
    /// Record the answer (own claim) and do nothing else.
    Note,
}

/// b02: an answer from `peer` about one fingerprint. Only the key's origin
/// answers claims; an answer for a claim forwarded from below goes down.
#[must_use]
pub fn on_answer(
    peer: &str,
    origin: &KeyOrigin,
    forwarded_for: Option<&str>,
    local: LocalHold,
    answer: &ClaimAnswer,
) -> AnswerStep {
    if !origin.is_peer(peer) {
        return AnswerStep::Refuse(format!(
            "{peer} answered a station claim for a key it did not give us; ignored"
        ));
    }
    if let Some(below) = forwarded_for {
        return AnswerStep::PassDown {
            to: below.to_owned(),
            forget_claim: matches!(answer, ClaimAnswer::Duplicate { .. }),
        };
    }
    match (answer, local) {
        (ClaimAnswer::Duplicate { holder }, LocalHold::Provisional | LocalHold::Counted) => {
            AnswerStep::GiveBack {
                holder: holder.clone(),
            }
        }
        (ClaimAnswer::Confirmed, LocalHold::Provisional) => AnswerStep::Confirm,
        _ => AnswerStep::Note,
    }
}

/// The provisional leases of a key after a renewal took its objects over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CarriedLeases {
    /// The new key's leases: its own and the old key's it had room for.
    pub leases: BTreeMap<String, DateTime<Utc>>,
    /// Fingerprints whose lease ended: the new key had no free seat left.
    pub ended: Vec<String>,
}

/// r07 with b02: a provisional lease is an object of the old key like a
/// grant. The renewal that moves the grants moves the live leases too, so
/// the origin's answer (which arrives for the license's current key)
/// finds the lease it settles, and the seat stays reserved on the new key.
/// `free` is the new key's room once the grants moved: held minus counted
/// grants minus its own live leases. A fingerprint leased on both keys
/// keeps one lease (the later end) and needs no room; a lease without room
/// ends, like an object the new key has no seat for (r11): the station's
/// next contact decides. Leases are carried soonest-ending first (they are
/// the ones whose claims were sent first), then by fingerprint.
#[must_use]
pub fn carry_leases(
    old: &BTreeMap<String, DateTime<Utc>>,
    new: &BTreeMap<String, DateTime<Utc>>,
    free: u32,
    now: DateTime<Utc>,
) -> CarriedLeases {
    let mut out = CarriedLeases {
        leases: new
            .iter()
            .filter(|(_, u)| **u > now)
            .map(|(f, u)| (f.clone(), *u))
            .collect(),
        ended: Vec::new(),
    };
    let mut live: Vec<(&String, &DateTime<Utc>)> = old.iter().filter(|(_, u)| **u > now).collect();
    live.sort_by_key(|(f, u)| (**u, (*f).clone()));
    let mut room = free;
    for (fp, until) in live {
        if let Some(have) = out.leases.get_mut(fp) {
            *have = (*have).max(*until);
        } else if room > 0 {
            room -= 1;
            out.leases.insert(fp.clone(), *until);
        } else {
            out.ended.push(fp.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests;
