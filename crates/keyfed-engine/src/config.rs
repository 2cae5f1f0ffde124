//! The engine's configuration: who this node is, its peers, and the policies
//! of its rules. The node's own config (`keyfed_node::NodeConfig`) carries
//! these fields too and builds an [`EngineConfig`] from them.
use serde::{Deserialize, Serialize};

/// What the state machine needs to know; nothing about ports, TLS or logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    pub node_id: String,
    /// Hex Ed25519 public keys of the vendors whose keys this node accepts.
    pub trusted_vendor_keys: Vec<String>,
    /// Whether a vendor upstream is configured (telemetry mode, r03).
    pub has_upstream: bool,
    pub parent: Option<PeerConfig>,
    pub children: Vec<String>,
    pub neighbors: Vec<NeighborConfig>,
    pub protocol_version: u32,
    /// r01: run the renewal task on a schedule, every `renewal_interval_secs`.
    pub update_license_keys: bool,
    pub renewal_interval_secs: i64,
    /// r11: how often neighbors waiting for seats are re-checked.
    pub seat_poll_secs: i64,
    /// b05: how often usage is rolled up even when nothing changed.
    pub usage_report_secs: i64,
    /// b01: default lending period of seats donated to a neighbor.
    pub donation_days: i64,
    /// r08: after this many days the administrator is told which child
    /// still holds a key that was renewed (it never came back).
    pub old_key_notice_days: i64,
    /// t01: how often the node sends its usage report to the upstream.
    pub telemetry_interval_secs: i64,
    /// t01: how soon a failed usage report is tried again.
    pub telemetry_retry_secs: i64,
    pub lifecycle: LifecycleConfig,
    pub stations: StationConfig,
    /// Issue 12: the bounded log of refused connections and assignments.
    pub denials: DenialConfig,
    /// Issue 12: how often usage samples are taken for the history.
    pub usage_history: UsageHistoryConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            node_id: "main".into(),
            trusted_vendor_keys: Vec::new(),
            has_upstream: false,
            parent: None,
            children: Vec::new(),
            neighbors: Vec::new(),
            protocol_version: keyfed_core::PROTOCOL_VERSION,
            update_license_keys: false,
            renewal_interval_secs: 3600,
            seat_poll_secs: 60,
            usage_report_secs: 60,
            donation_days: 30,
            old_key_notice_days: 30,
            telemetry_interval_secs: 86_400,
            telemetry_retry_secs: 3_600,
            lifecycle: LifecycleConfig::default(),
            stations: StationConfig::default(),
            denials: DenialConfig::default(),
            usage_history: UsageHistoryConfig::default(),
        }
    }
}

impl EngineConfig {
    #[must_use]
    pub fn neighbor(&self, id: &str) -> Option<&NeighborConfig> {
        self.neighbors.iter().find(|n| n.node_id == id)
    }

    /// The role a peer has from this node's point of view.
    #[must_use]
    pub fn role_of(&self, id: &str) -> Option<PeerRole> {
        if self.parent.as_ref().is_some_and(|p| p.node_id == id) {
            Some(PeerRole::Parent)
        } else if self.children.iter().any(|c| c == id) {
            Some(PeerRole::Child)
        } else if self.neighbor(id).is_some() {
            Some(PeerRole::Neighbor)
        } else {
            None
        }
    }

    /// Every configured peer with its role.
    #[must_use]
    pub fn peers(&self) -> Vec<(String, PeerRole)> {
        let mut v: Vec<(String, PeerRole)> = self
            .parent
            .iter()
            .map(|p| (p.node_id.clone(), PeerRole::Parent))
            .collect();
        v.extend(self.children.iter().map(|c| (c.clone(), PeerRole::Child)));
        v.extend(
            self.neighbors
                .iter()
                .map(|n| (n.node_id.clone(), PeerRole::Neighbor)),
        );
        v
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    pub grace_term_days: i64,
    pub grace_subscription_days: i64,
    /// e02: the first expiry warning comes this many days before.
    pub warn_days: i64,
    /// b04: warn when fewer seats than this are free ...
    pub low_seat_count: u32,
    /// ... or less than this percentage.
    pub low_seat_percent: u32,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        let g = keyfed_core::lifecycle::GracePolicy::default();
        let l = keyfed_core::entitlement::LowSeatPolicy::default();
        Self {
            grace_term_days: g.term_days,
            grace_subscription_days: g.subscription_days,
            warn_days: g.warn_days,
            low_seat_count: l.min_free,
            low_seat_percent: l.min_free_percent,
        }
    }
}

impl LifecycleConfig {
    #[must_use]
    pub fn grace(&self) -> keyfed_core::lifecycle::GracePolicy {
        keyfed_core::lifecycle::GracePolicy {
            term_days: self.grace_term_days,
            subscription_days: self.grace_subscription_days,
            other_days: 0,
            warn_days: self.warn_days,
        }
    }

    #[must_use]
    pub fn low_seats(&self) -> keyfed_core::entitlement::LowSeatPolicy {
        keyfed_core::entitlement::LowSeatPolicy {
            min_free: self.low_seat_count,
            min_free_percent: self.low_seat_percent,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StationConfig {
    /// o02: a lease stays valid this long without contact.
    pub offline_validity_days: i64,
    /// b03: a station silent this long gives its seat back.
    pub retire_after_days: i64,
    /// o03: undelivered commands are dropped after this long.
    pub command_keep_days: i64,
    /// o05: settings every station gets (free text, e.g. TOML or JSON);
    /// changed at run time with `keyfedctl settings set`.
    pub settings: String,
}

impl Default for StationConfig {
    fn default() -> Self {
        Self {
            offline_validity_days: 30,
            retire_after_days: 90,
            command_keep_days: 30,
            settings: String::new(),
        }
    }
}

impl StationConfig {
    #[must_use]
    pub fn policy(&self) -> keyfed_core::station::StationPolicy {
        keyfed_core::station::StationPolicy {
            offline_validity: chrono::Duration::days(self.offline_validity_days),
            retire_after: chrono::Duration::days(self.retire_after_days),
        }
    }
}

/// `[denials]`: how many refusals the node keeps (the oldest go first).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DenialConfig {
    pub keep: u64,
}

impl Default for DenialConfig {
    fn default() -> Self {
        Self { keep: 100_000 }
    }
}

/// `[usage_history]`: the sample interval (`interval = "5m"`); the tiers
/// and how long each is kept are fixed (`keyfed_core::usage_history`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct UsageHistoryConfig {
    pub interval: keyfed_core::usage_history::Tiers,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub node_id: String,
    pub address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct NeighborConfig {
    pub node_id: String,
    /// Set on the side that dials; the other side leaves it empty.
    pub address: Option<String>,
    /// b01: may this node lend seats to the neighbor?
    pub allow_send: bool,
    /// b01: may the neighbor lend seats to this node?
    pub allow_receive: bool,
}

impl Default for NeighborConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            address: None,
            allow_send: true,
            allow_receive: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    Parent,
    Child,
    Neighbor,
}

impl PeerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parent => "parent",
            Self::Child => "child",
            Self::Neighbor => "neighbor",
        }
    }
}
