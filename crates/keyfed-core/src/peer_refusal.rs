//! Refusing what a rogue or confused peer sends (r13, b06): which deliveries
//! a parent, child or neighbor may send, for a key of which origin, and why not.
//!
//! Seats flow down and to neighbors that accept them, never up; only the
//! parent sends commands; only a key's origin withdraws it; a key older than
//! one of its license already seen here is a rollback.
use serde::{Deserialize, Serialize};

/// What a peer is to this node, from its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerRole {
    Parent,
    Child,
    Neighbor,
}

/// Where this node got a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyOrigin {
    /// From the vendor key file or an auto-renewal (r02).
    Upstream,
    /// From the parent or a neighbor with this node id.
    Peer(String),
}

impl KeyOrigin {
    #[must_use]
    pub fn is_peer(&self, peer: &str) -> bool {
        matches!(self, Self::Peer(p) if p == peer)
    }
}

/// The deliveries of the federation link, named as the outbox names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryKind {
    SeatGrant,
    GrantWithdrawn,
    KeyRenewed,
    UsageRollup,
    KeyOffer,
    Command,
    StationClaim,
}

impl DeliveryKind {
    pub const ALL: [DeliveryKind; 7] = [
        Self::SeatGrant,
        Self::GrantWithdrawn,
        Self::KeyRenewed,
        Self::UsageRollup,
        Self::KeyOffer,
        Self::Command,
        Self::StationClaim,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SeatGrant => "seat-grant",
            Self::GrantWithdrawn => "grant-withdrawn",
            Self::KeyRenewed => "key-renewed",
            Self::UsageRollup => "usage-rollup",
            Self::KeyOffer => "key-offer",
            Self::Command => "command",
            Self::StationClaim => "station-claim",
        }
    }

    /// Grants, offers and renewals carry a key file.
    #[must_use]
    pub fn carries_key(self) -> bool {
        matches!(self, Self::SeatGrant | Self::KeyOffer | Self::KeyRenewed)
    }

    /// Grants and renewals hand over seats (an offer does not).
    #[must_use]
    pub fn hands_seats(self) -> bool {
        matches!(self, Self::SeatGrant | Self::KeyRenewed)
    }
}

/// What the receiving node does with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Refused: notify `peer-message-refused` with this reason; change nothing.
    Refuse(String),
    /// Dropped silently (e.g. a withdrawal by a peer that is not the origin).
    Ignore,
}

/// The peer as this node's config knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStanding {
    /// `None`: not a configured peer.
    pub role: Option<PeerRole>,
    /// A neighbor's `allow_receive` in this node's config.
    pub allow_receive: bool,
}

/// The key a grant, offer or renewal carries (already verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarriedKey<'a> {
    pub id: &'a str,
    pub license: &'a str,
    pub serial: u64,
}

/// What this node has of that key and license, read in the transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyHere {
    /// The carried key id is stored here, with this origin.
    pub stored_from: Option<KeyOrigin>,
    /// Highest serial of the license seen here (kept or held), if any.
    pub highest_serial: Option<u64>,
    /// A renewal: the id and license of the old key it names, if that key is here.
    pub renewed_old: Option<(String, String)>,
}

/// The role matrix: may a peer in `role` send `kind` at all? Deliveries
/// without a key (withdrawals, rollups, claims) are judged by their content
/// (origin, grants) instead, so the matrix lets them through.
#[must_use]
pub fn role_allows(role: Option<PeerRole>, kind: DeliveryKind, allow_receive: bool) -> bool {
    match (role, kind) {
        (_, DeliveryKind::Command) => role == Some(PeerRole::Parent),
        (None | Some(PeerRole::Child), k) => !k.carries_key(),
        (Some(PeerRole::Neighbor), k) => !k.hands_seats() || allow_receive,
        (Some(PeerRole::Parent), _) => true,
    }
}

/// Why a key-bearing delivery from `peer` is refused, if it is: the role
/// matrix, then rollback, then a renewal naming a key of another license,
/// then a grant or offer of a key held here from elsewhere.
#[must_use]
pub fn key_delivery(
    peer: &str,
    standing: PeerStanding,
    kind: DeliveryKind,
    key: CarriedKey<'_>,
    here: &KeyHere,
) -> Verdict {
    if let Some(why) = role_refusal(peer, standing, kind, key.id) {
        return Verdict::Refuse(why);
    }
    if here.stored_from.is_none() {
        if let Some(seen) = here.highest_serial.filter(|s| *s > key.serial) {
            return Verdict::Refuse(format!(
                "{peer} sent a {}: key {} is serial {} of license {}, older than serial {seen} this node already had (perhaps deleted since): refused as a rollback",
                kind.as_str(), key.id, key.serial, key.license
            ));
        }
    }
    if kind == DeliveryKind::KeyRenewed {
        if let Some((old_id, old_license)) =
            here.renewed_old.as_ref().filter(|(_, l)| l != key.license)
        {
            return Verdict::Refuse(format!(
                "{peer} sent key {} of license {} as the renewal of key {old_id} of license {old_license}; refused",
                key.id, key.license
            ));
        }
    }
    match (&here.stored_from, kind) {
        (Some(from), DeliveryKind::SeatGrant | DeliveryKind::KeyOffer) if !from.is_peer(peer) => {
            Verdict::Refuse(format!(
                "{peer} sent key {}, which this node already holds from elsewhere; ignored",
                key.id
            ))
        }
        _ => Verdict::Accept,
    }
}

fn role_refusal(peer: &str, s: PeerStanding, kind: DeliveryKind, id: &str) -> Option<String> {
    if role_allows(s.role, kind, s.allow_receive) {
        return None;
    }
    let what = kind.as_str();
    Some(match s.role {
        Some(PeerRole::Child) => {
            format!("child {peer} tried to grant seats upward ({what} of key {id}); refused")
        }
        Some(PeerRole::Neighbor) => format!(
            "neighbor {peer} lent seats ({what} of key {id}) but allow_receive is off; refused"
        ),
        _ => format!(
            "{peer} is not a configured peer of this node; its {what} of key {id} was refused"
        ),
    })
}

/// o03: only the parent's administrator sends commands.
#[must_use]
pub fn command(peer: &str, role: Option<PeerRole>, command: &str) -> Verdict {
    if role_allows(role, DeliveryKind::Command, false) {
        Verdict::Accept
    } else {
        Verdict::Refuse(format!(
            "{peer} is not this node's parent; its command {command:?} was refused"
        ))
    }
}

/// Only the peer a key came from may withdraw it; anything else is ignored.
#[must_use]
pub fn withdrawal(peer: &str, key_origin: Option<&KeyOrigin>) -> Verdict {
    match key_origin {
        Some(o) if o.is_peer(peer) => Verdict::Accept,
        _ => Verdict::Ignore,
    }
}

/// b05: a usage line is taken only for a key this node granted the peer,
/// within the grant, or for the old id of a key whose renewal it granted.
#[must_use]
pub fn usage_line_accepted(line_seats: u32, granted: Option<u32>, renewal_granted: bool) -> bool {
    match granted {
        Some(seats) => line_seats <= seats,
        None => renewal_granted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: CarriedKey<'static> = CarriedKey {
        id: "k2",
        license: "l1",
        serial: 2,
    };

    fn standing(role: Option<PeerRole>, allow_receive: bool) -> PeerStanding {
        PeerStanding {
            role,
            allow_receive,
        }
    }

    fn refused(v: &Verdict) -> &str {
        match v {
            Verdict::Refuse(why) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn r13_child_cannot_grant_seats_upward() {
        for kind in [
            DeliveryKind::SeatGrant,
            DeliveryKind::KeyOffer,
            DeliveryKind::KeyRenewed,
        ] {
            let v = key_delivery(
                "kid",
                standing(Some(PeerRole::Child), true),
                kind,
                KEY,
                &KeyHere::default(),
            );
            assert!(
                refused(&v).starts_with("child kid tried to grant seats upward"),
                "{v:?}"
            );
        }
    }

    #[test]
    fn b01_neighbor_lends_only_where_allow_receive_is_on_but_may_offer() {
        let off = standing(Some(PeerRole::Neighbor), false);
        let v = key_delivery("nb", off, DeliveryKind::SeatGrant, KEY, &KeyHere::default());
        assert!(refused(&v).contains("allow_receive is off"));
        assert_eq!(
            key_delivery("nb", off, DeliveryKind::KeyOffer, KEY, &KeyHere::default()),
            Verdict::Accept
        );
        let on = standing(Some(PeerRole::Neighbor), true);
        assert_eq!(
            key_delivery("nb", on, DeliveryKind::KeyRenewed, KEY, &KeyHere::default()),
            Verdict::Accept
        );
    }

    #[test]
    fn r13_unknown_peer_is_refused_and_only_the_parent_commands() {
        let v = key_delivery(
            "x",
            standing(None, true),
            DeliveryKind::SeatGrant,
            KEY,
            &KeyHere::default(),
        );
        assert!(refused(&v).contains("not a configured peer"));
        assert_eq!(
            command("main", Some(PeerRole::Parent), "scan"),
            Verdict::Accept
        );
        for role in [None, Some(PeerRole::Child), Some(PeerRole::Neighbor)] {
            assert!(refused(&command("p", role, "scan")).contains("not this node's parent"));
        }
    }

    #[test]
    fn r13_rollback_to_an_older_serial_is_refused() {
        let here = KeyHere {
            highest_serial: Some(3),
            ..KeyHere::default()
        };
        let parent = standing(Some(PeerRole::Parent), false);
        let v = key_delivery("main", parent, DeliveryKind::SeatGrant, KEY, &here);
        assert!(refused(&v).contains("refused as a rollback"));
        // the same key already stored here is a re-grant, not a rollback
        let stored = KeyHere {
            stored_from: Some(KeyOrigin::Peer("main".into())),
            ..here
        };
        assert_eq!(
            key_delivery("main", parent, DeliveryKind::SeatGrant, KEY, &stored),
            Verdict::Accept
        );
    }

    #[test]
    fn r06_renewal_of_a_key_of_another_license_is_refused() {
        let here = KeyHere {
            renewed_old: Some(("k1".into(), "l9".into())),
            ..KeyHere::default()
        };
        let v = key_delivery(
            "main",
            standing(Some(PeerRole::Parent), false),
            DeliveryKind::KeyRenewed,
            KEY,
            &here,
        );
        assert!(refused(&v).contains("as the renewal of key k1 of license l9"));
    }

    #[test]
    fn r02_key_held_from_elsewhere_is_not_taken_from_a_peer() {
        let here = KeyHere {
            stored_from: Some(KeyOrigin::Upstream),
            ..KeyHere::default()
        };
        let v = key_delivery(
            "main",
            standing(Some(PeerRole::Parent), false),
            DeliveryKind::SeatGrant,
            KEY,
            &here,
        );
        assert!(refused(&v).contains("already holds from elsewhere"));
    }

    #[test]
    fn r13_only_the_origin_withdraws_and_usage_stays_within_grants() {
        let origin = KeyOrigin::Peer("main".into());
        assert_eq!(withdrawal("main", Some(&origin)), Verdict::Accept);
        assert_eq!(withdrawal("nb", Some(&origin)), Verdict::Ignore);
        assert_eq!(
            withdrawal("main", Some(&KeyOrigin::Upstream)),
            Verdict::Ignore
        );
        assert_eq!(withdrawal("main", None), Verdict::Ignore);
        assert!(usage_line_accepted(3, Some(3), false));
        assert!(!usage_line_accepted(4, Some(3), false));
        assert!(usage_line_accepted(4, None, true));
        assert!(!usage_line_accepted(1, None, false));
    }

    #[test]
    fn r13_role_matrix_lets_seats_flow_down_and_sideways_only() {
        for kind in DeliveryKind::ALL {
            assert!(role_allows(Some(PeerRole::Parent), kind, false), "{kind:?}");
            assert_eq!(
                role_allows(Some(PeerRole::Child), kind, true),
                !kind.carries_key() && kind != DeliveryKind::Command
            );
            assert_eq!(
                role_allows(Some(PeerRole::Neighbor), kind, false),
                !kind.hands_seats() && kind != DeliveryKind::Command
            );
        }
    }
}
