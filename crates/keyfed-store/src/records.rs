//! The values the store keeps. Each is written as one format-version byte
//! followed by JSON, so the schema can change without guessing.
use chrono::{DateTime, Utc};
use keyfed_core::entitlement::{Entitlement, Tenancy};
use keyfed_core::Key;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a node got a key from (r02).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// Added by the administrator from a vendor key file, or an auto-renewal.
    Upstream,
    /// Received from the parent or a neighbor with this node id.
    Peer(String),
}

impl Origin {
    #[must_use]
    pub fn peer(&self) -> Option<&str> {
        match self {
            Self::Upstream => None,
            Self::Peer(p) => Some(p),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub key: Key,
    /// The key file text exactly as verified.
    pub text: String,
    pub origin: Origin,
    pub added_at: DateTime<Utc>,
    /// Seats this node may hand out: the key's seats for an upstream key, the
    /// granted seats for a key from a peer (r13).
    pub held: u32,
    /// Set when a renewal of this key has been distributed; the key is retired
    /// once no object still holds it (r07).
    pub superseded_by: Option<String>,
    /// r08: when `superseded_by` was set, so the administrator can be told of
    /// a child that still holds this key long after; none in stores written
    /// before it was kept.
    #[serde(default)]
    pub superseded_at: Option<DateTime<Utc>>,
    /// Donated seats come back when this passes without renewal (b01).
    pub lent_until: Option<DateTime<Utc>>,
    /// False for a key received from a peer as a plain offer (r08): stored,
    /// never passed on.
    pub distributable: bool,
    /// Seats and end date after activations or a trial extension (e04, e05);
    /// none: what the key itself says.
    #[serde(default)]
    pub entitlement: Option<Entitlement>,
    /// e04: a trial is extended at most once.
    #[serde(default)]
    pub trial_extended: bool,
    /// e05: this key was activated on another key of its license and lives
    /// on as part of that key's entitlement.
    #[serde(default)]
    pub merged_into: Option<String>,
    /// e07: which tenants hold the key's seats.
    #[serde(default)]
    pub tenancy: Tenancy,
}

impl StoredKey {
    /// A key as it arrives, with nothing activated on it yet.
    #[must_use]
    pub fn new(key: Key, text: String, origin: Origin, added_at: DateTime<Utc>, held: u32) -> Self {
        Self {
            key,
            text,
            origin,
            added_at,
            held,
            superseded_by: None,
            superseded_at: None,
            lent_until: None,
            distributable: true,
            entitlement: None,
            trial_extended: false,
            merged_into: None,
            tenancy: Tenancy::default(),
        }
    }

    /// The seats and last day this key gives now (e04, e05).
    #[must_use]
    pub fn entitlement(&self) -> Entitlement {
        self.entitlement
            .unwrap_or_else(|| Entitlement::of(&self.key, self.added_at.date_naive()))
    }

    /// The tenant that owns the key (e07).
    #[must_use]
    pub fn owner(&self) -> &str {
        self.tenancy.owner_or(&self.key.customer)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectKind {
    Station,
    Server,
}

/// Seats of one key held by one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub key_id: String,
    pub object: String,
    pub kind: ObjectKind,
    pub seats: u32,
    pub granted_at: DateTime<Utc>,
    /// Neighbor donations only (b01).
    pub lent_until: Option<DateTime<Utc>>,
    /// b01: the lending period given at assign, in days, which every renewal
    /// of the donation uses; none in stores written before it was kept.
    #[serde(default)]
    pub lent_days: Option<u32>,
    /// Servers: the peer acked the delivery that carries this grant.
    pub delivered: bool,
    /// Stations: the tenant whose share the seat counts against (e07); empty
    /// for the key's owner.
    #[serde(default)]
    pub tenant: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub event: String,
    pub key_id: String,
    pub message: String,
    pub details: BTreeMap<String, String>,
}

/// One administrator action, kept in the audit trail (b06). Never holds a
/// secret or a whole key file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// The node's clock.
    pub at: DateTime<Utc>,
    /// Token name, `cert:NAME`, `node:ID`, `local`, or who was refused.
    pub actor: String,
    /// The Admin RPC, e.g. `AssignSeats`.
    pub action: String,
    pub detail: String,
    /// `ok` or the gRPC code name, e.g. `PERMISSION_DENIED`.
    pub outcome: String,
}

/// One message waiting in a peer's outbox until the peer acks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub seq: u64,
    pub message_id: String,
    /// Encoded wire message; the store does not look inside.
    pub body: Vec<u8>,
    pub queued_at: DateTime<Utc>,
    /// What it is about, for operators and for retirement tracking.
    pub key_id: String,
    pub what: String,
}

/// Sequence bookkeeping of one link, in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PeerCursor {
    /// Last sequence given to an entry in our outbox to this peer.
    pub last_queued: u64,
    /// Highest sequence the peer acked.
    pub acked: u64,
    /// Highest sequence of the peer's outbox we applied.
    pub applied: u64,
    /// The peer's store epoch at its last Hello (issue 15 §3): the other
    /// numbers are only true of that store. Empty: none seen yet (an older
    /// peer, or a cursor written before epochs).
    #[serde(default)]
    pub peer_epoch: String,
}

/// Usage of one key on one node of the subtree (b05).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageLine {
    pub node_id: String,
    pub key_id: String,
    pub seats: u32,
    pub used: u32,
    pub reported_at: DateTime<Utc>,
    /// The peer whose rollup carried it: its next rollup replaces them all.
    #[serde(default)]
    pub via: String,
}

/// An object waiting for seats of a key (r11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub key_id: String,
    pub object: String,
    pub kind: ObjectKind,
    pub seats: u32,
    pub since: DateTime<Utc>,
    pub lent_until: Option<DateTime<Utc>>,
    /// b01: the lending period of the grant it replaces (see [`Grant::lent_days`]).
    #[serde(default)]
    pub lent_days: Option<u32>,
    /// The key the object held before the renewal that left it waiting.
    pub replaces: Option<String>,
}

/// A station as the node knows it (b02, b03, o02, o05): one record per
/// fingerprint, kept when it retires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StationRecord {
    pub fingerprint: String,
    pub station_id: String,
    pub tenant: String,
    pub components: Vec<String>,
    /// The key it holds a seat of, if any.
    pub key_id: Option<String>,
    pub first_seen: DateTime<Utc>,
    pub last_contact: DateTime<Utc>,
    /// b03: set when the station gave its seat back for silence.
    pub retired_at: Option<DateTime<Utc>>,
    /// o05: the settings version it was last sent.
    pub settings_version: u64,
    pub reports: u64,
    /// b02: another node holds this fingerprint's seat of a key (node, key,
    /// since); contacts are refused for the offline-validity period.
    #[serde(default)]
    pub elsewhere: Option<(String, String, DateTime<Utc>)>,
}

/// One report a station sent (o01), kept once by its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StationReport {
    pub fingerprint: String,
    pub report_id: String,
    pub at: String,
    pub body: String,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandState {
    Pending,
    /// Children only: in the link's durable outbox, waiting for the ack.
    Sent {
        at: DateTime<Utc>,
    },
    Delivered {
        at: DateTime<Utc>,
    },
    /// o03: not delivered within the keep period.
    Dropped {
        at: DateTime<Utc>,
    },
}

impl CommandState {
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent { .. } => "sent",
            Self::Delivered { .. } => "delivered",
            Self::Dropped { .. } => "dropped",
        }
    }
}

/// A command an administrator queued for a station or a child (o03).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    pub object: String,
    pub kind: ObjectKind,
    pub command: String,
    pub queued_at: DateTime<Utc>,
    pub state: CommandState,
}

pub(crate) const FORMAT_VERSION: u8 = 1;

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    serde_json::to_writer(&mut out, value).expect("records always serialize");
    out
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    tree: &'static str,
    bytes: &[u8],
) -> Result<T, crate::StoreError> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => {
            serde_json::from_slice(rest).map_err(|e| crate::StoreError::Corrupt {
                tree,
                why: e.to_string(),
            })
        }
        Some((v, _)) => Err(crate::StoreError::Corrupt {
            tree,
            why: format!("unknown format version {v}"),
        }),
        None => Err(crate::StoreError::Corrupt {
            tree,
            why: "empty value".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_written_before_epochs_still_decodes() {
        let mut old = vec![FORMAT_VERSION];
        old.extend_from_slice(br#"{"last_queued":5,"acked":3,"applied":7}"#);
        let c: PeerCursor = decode("cursors", &old).unwrap();
        assert_eq!(
            c,
            PeerCursor {
                last_queued: 5,
                acked: 3,
                applied: 7,
                peer_epoch: String::new(),
            }
        );
        let again: PeerCursor = decode("cursors", &encode(&c)).unwrap();
        assert_eq!(again, c);
    }
}
