//! Node configuration: defaults that run one node out of the box, then a TOML
//! file, then `KEYFED_*` environment variables, then flags.
use serde::{Deserialize, Serialize};

pub use crate::webhooks::WebhookConfig;
pub use keyfed_engine::config::{
    DenialConfig, EngineConfig, LifecycleConfig, NeighborConfig, PeerConfig, PeerRole,
    StationConfig, UsageHistoryConfig,
};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub node_id: String,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Key files dropped here are imported at start (r12); never written to.
    pub key_dir: Option<PathBuf>,
    /// Hex Ed25519 public keys of the vendors whose keys this node accepts.
    pub trusted_vendor_keys: Vec<String>,
    /// Files each holding one hex vendor public key (e.g. written by
    /// `keyfed-gus --pubkey-file`); read at start and added to
    /// `trusted_vendor_keys` by [`NodeConfig::load_vendor_key_files`].
    pub trusted_vendor_key_files: Vec<PathBuf>,
    /// URL of the vendor upstream (GUS), e.g. http://127.0.0.1:7600.
    pub upstream: Option<String>,
    pub parent: Option<PeerConfig>,
    /// Node ids allowed to link as children.
    pub children: Vec<String>,
    pub neighbors: Vec<NeighborConfig>,
    /// Federation protocol spoken on links; 1 has no automatic renewal (r08).
    pub protocol_version: u32,
    /// r01: run the renewal task on a schedule.
    pub update_license_keys: bool,
    pub renewal_interval_secs: i64,
    /// r11: how often neighbors waiting for seats are re-checked.
    pub seat_poll_secs: i64,
    /// b01: default lending period of seats donated to a neighbor.
    pub donation_days: i64,
    /// r08: days after a renewal before the administrator is told which
    /// child still holds the old key.
    pub old_key_notice_days: i64,
    /// b05: how often usage is rolled up to the node a key came from.
    pub usage_report_secs: i64,
    /// t01: how often the node sends its usage report to the upstream (it
    /// also sends whenever a report is due).
    pub telemetry_interval_secs: i64,
    /// t01: how soon a failed usage report is tried again.
    pub telemetry_retry_secs: i64,
    /// Real-time period of the scheduler loop; rules use the injected clock.
    pub tick_millis: u64,
    pub hook: Option<HookConfig>,
    /// Signed JSON POSTs of notifications (issue 12, `crate::webhooks`).
    pub webhooks: Vec<WebhookConfig>,
    /// Lets Admin.AdvanceClock move a manual clock (demos, smoke tests).
    pub debug_clock: bool,
    /// Seconds between link reconnect attempts grow up to this.
    pub max_backoff_millis: u64,
    /// Expiry, grace and seat warnings (e02, e03, b04).
    pub lifecycle: LifecycleConfig,
    /// Station leases, retirement and commands (o02, o03, b03).
    pub stations: StationConfig,
    /// The bounded log of refusals (issue 12): `[denials] keep = N`.
    pub denials: DenialConfig,
    /// The store's page cache, in MiB.
    pub store_cache_mb: u64,
    /// Mutual TLS for the port and every outgoing connection; none: plaintext.
    pub tls: Option<TlsConfig>,
    /// Bearer tokens for the Admin service. None configured: Admin answers
    /// loopback callers only (or anyone, with `insecure_open_admin`).
    pub admin_tokens: Vec<AdminToken>,
    pub insecure_open_admin: bool,
    /// b06: serve Prometheus metrics at `http://<this>/metrics`; off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the JSON/HTTP API at `http(s)://<this>/api/v1` (docs/api.md),
    /// with the Admin service's tokens, roles and audit; off when unset.
    pub api_listen: Option<SocketAddr>,
    /// Log lines as `text` (default) or `json` (one object per line).
    pub log_format: LogFormat,
    /// `[usage_history] interval = "5m"`: how often usage is sampled (issue 12).
    pub usage_history: UsageHistoryConfig,
    /// `[peer_consoles]`: node id → the URL of that peer's console, linked
    /// from this node's federation tree.
    pub peer_consoles: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("log format {s:?} is not one of text, json")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HookConfig {
    /// Executable run after every notification ("key auto-renewal" hook, r09).
    pub path: PathBuf,
    pub timeout_secs: u64,
    /// Also write the key file to a temporary path given in KEYFED_KEY_FILE.
    pub with_key_file: bool,
}

impl Default for HookConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            timeout_secs: 10,
            with_key_file: false,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: "main".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7601)),
            data_dir: PathBuf::from("./keyfed-data"),
            key_dir: None,
            trusted_vendor_keys: Vec::new(),
            trusted_vendor_key_files: Vec::new(),
            upstream: None,
            parent: None,
            children: Vec::new(),
            neighbors: Vec::new(),
            protocol_version: keyfed_core::PROTOCOL_VERSION,
            update_license_keys: false,
            renewal_interval_secs: 3600,
            seat_poll_secs: 60,
            donation_days: 30,
            old_key_notice_days: 30,
            usage_report_secs: 60,
            telemetry_interval_secs: 86_400,
            telemetry_retry_secs: 3_600,
            tick_millis: 1000,
            hook: None,
            webhooks: Vec::new(),
            debug_clock: false,
            max_backoff_millis: 5000,
            lifecycle: LifecycleConfig::default(),
            stations: StationConfig::default(),
            denials: DenialConfig::default(),
            store_cache_mb: 64,
            tls: None,
            admin_tokens: Vec::new(),
            insecure_open_admin: false,
            metrics_listen: None,
            api_listen: None,
            log_format: LogFormat::Text,
            usage_history: UsageHistoryConfig::default(),
            peer_consoles: std::collections::BTreeMap::new(),
        }
    }
}

impl NodeConfig {
    /// The one place configuration is layered: defaults, then the TOML
    /// file (`--config` / `KEYFED_CONFIG`), then `KEYFED_*` environment
    /// variables, then flags; vendor key files are read last. Errors name
    /// the file or variable that was wrong.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: &ConfigFlags,
    ) -> Result<Self, String> {
        let mut cfg = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    format!(
                        "reading the config file {} (--config or KEYFED_CONFIG): {e}",
                        p.display()
                    )
                })?;
                Self::from_toml(&text)
                    .map_err(|e| format!("the config file {}: {e}", p.display()))?
            }
            None => Self::default(),
        };
        cfg.apply_env(env)?;
        flags.apply(&mut cfg);
        cfg.load_vendor_key_files()?;
        Ok(cfg)
    }

    /// Reads a TOML file; unknown fields are refused so typos do not pass silently.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let cfg: Self = toml::from_str(text).map_err(|e| format!("config: {e}"))?;
        keyfed_store::check_keep(cfg.denials.keep).map_err(|e| format!("config: {e}"))?;
        Ok(cfg)
    }

    /// Overrides from `KEYFED_*` environment variables.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(v) = get("KEYFED_NODE_ID") {
            self.node_id = v;
        }
        if let Some(v) = get("KEYFED_LISTEN") {
            self.listen = v.parse().map_err(|e| format!("KEYFED_LISTEN={v:?}: {e}"))?;
        }
        if let Some(v) = get("KEYFED_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = get("KEYFED_UPSTREAM") {
            self.upstream = Some(v);
        }
        if let Some(v) = get("KEYFED_METRICS_LISTEN") {
            self.metrics_listen = Some(
                v.parse()
                    .map_err(|e| format!("KEYFED_METRICS_LISTEN={v:?}: {e}"))?,
            );
        }
        if let Some(v) = get("KEYFED_API_LISTEN") {
            self.api_listen = Some(
                v.parse()
                    .map_err(|e| format!("KEYFED_API_LISTEN={v:?}: {e}"))?,
            );
        }
        if let Some(v) = get("KEYFED_LOG_FORMAT") {
            self.log_format = v.parse().map_err(|e| format!("KEYFED_LOG_FORMAT: {e}"))?;
        }
        if let Some(v) = get("KEYFED_TRUSTED_VENDOR_KEYS") {
            self.trusted_vendor_keys = v
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = get("KEYFED_TRUSTED_VENDOR_KEY_FILES") {
            self.trusted_vendor_key_files = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        apply_tls_env(self, &get);
        apply_admin_env(self, &get);
        Ok(())
    }

    /// Reads every `trusted_vendor_key_files` entry (one hex Ed25519 public
    /// key, surrounding whitespace ignored) into `trusted_vendor_keys`.
    /// A missing, empty or malformed file is an error: a node that silently
    /// trusted no vendor would refuse every key later, far from the cause.
    pub fn load_vendor_key_files(&mut self) -> Result<(), String> {
        for path in &self.trusted_vendor_key_files {
            let text = std::fs::read_to_string(path)
                .map_err(|e| {
                    format!(
                        "reading the trusted vendor key file {} (trusted_vendor_key_files or KEYFED_TRUSTED_VENDOR_KEY_FILES): {e}",
                        path.display()
                    )
                })?;
            let key = text.trim();
            let ok = key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(format!(
                    "trusted vendor key file {}: expected one hex Ed25519 public key (64 hex digits), found {:?}",
                    path.display(),
                    key.chars().take(80).collect::<String>()
                ));
            }
            if !self.trusted_vendor_keys.iter().any(|k| k == key) {
                self.trusted_vendor_keys.push(key.to_owned());
            }
        }
        Ok(())
    }

    /// What the engine needs of this config.
    #[must_use]
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            node_id: self.node_id.clone(),
            trusted_vendor_keys: self.trusted_vendor_keys.clone(),
            has_upstream: self.upstream.is_some(),
            parent: self.parent.clone(),
            children: self.children.clone(),
            neighbors: self.neighbors.clone(),
            protocol_version: self.protocol_version,
            update_license_keys: self.update_license_keys,
            renewal_interval_secs: self.renewal_interval_secs,
            seat_poll_secs: self.seat_poll_secs,
            usage_report_secs: self.usage_report_secs,
            donation_days: self.donation_days,
            old_key_notice_days: self.old_key_notice_days,
            telemetry_interval_secs: self.telemetry_interval_secs,
            telemetry_retry_secs: self.telemetry_retry_secs,
            lifecycle: self.lifecycle.clone(),
            stations: self.stations.clone(),
            denials: self.denials.clone(),
            usage_history: self.usage_history,
        }
    }

    pub fn key_dir(&self) -> PathBuf {
        self.key_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys"))
    }

    pub fn neighbor(&self, id: &str) -> Option<&NeighborConfig> {
        self.neighbors.iter().find(|n| n.node_id == id)
    }

    /// The role a peer has from this node's point of view (the engine's rule).
    #[must_use]
    pub fn role_of(&self, id: &str) -> Option<PeerRole> {
        self.engine_config().role_of(id)
    }

    /// Every configured peer with its role (the engine's list).
    #[must_use]
    pub fn peers(&self) -> Vec<(String, PeerRole)> {
        self.engine_config().peers()
    }

    /// Peers this node dials: its parent and neighbors with an address.
    pub fn dialed_peers(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .parent
            .iter()
            .map(|p| (p.node_id.clone(), p.address.clone()))
            .collect();
        v.extend(
            self.neighbors
                .iter()
                .filter_map(|n| n.address.clone().map(|a| (n.node_id.clone(), a))),
        );
        v
    }
}

/// What `keyfed serve` flags set: the last layer of [`NodeConfig::load`].
#[derive(Debug, Clone, Default)]
pub struct ConfigFlags {
    pub node_id: Option<String>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub upstream: Option<String>,
    /// Added to `trusted_vendor_keys`.
    pub trust: Vec<String>,
    /// Only turns the manual clock on.
    pub debug_clock: bool,
    pub metrics_listen: Option<SocketAddr>,
    pub api_listen: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
}

impl ConfigFlags {
    fn apply(&self, cfg: &mut NodeConfig) {
        if let Some(v) = &self.node_id {
            cfg.node_id.clone_from(v);
        }
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        if let Some(v) = &self.data_dir {
            cfg.data_dir.clone_from(v);
        }
        if let Some(v) = &self.upstream {
            cfg.upstream = Some(v.clone());
        }
        cfg.trusted_vendor_keys.extend(self.trust.iter().cloned());
        cfg.debug_clock |= self.debug_clock;
        if let Some(v) = self.metrics_listen {
            cfg.metrics_listen = Some(v);
        }
        if let Some(v) = self.api_listen {
            cfg.api_listen = Some(v);
        }
        if let Some(v) = self.log_format {
            cfg.log_format = v;
        }
    }
}

// ---- [tls] and [[admin_tokens]] ---------------------------------------------

/// `[tls]` in the node config. With it, the port speaks TLS only and every
/// outgoing connection uses TLS with this certificate as client identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM of the federation CA: peers' and clients' certificates must chain to it.
    pub ca: PathBuf,
    /// PEM certificate of this node (CN/SAN = its node id).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The default of `admin_client_cert` and `station_client_cert`:
    /// true (default) = "required", false = "optional".
    pub require_client_cert: bool,
    /// Whether the Admin service demands a client certificate from the CA.
    /// "optional": token-only administration over server-only TLS.
    pub admin_client_cert: Option<ClientCert>,
    /// Whether the Station service demands one. Federation.Link always does.
    pub station_client_cert: Option<ClientCert>,
    /// Client certificate names that may use the Admin service as
    /// administrators without a token.
    pub admin_names: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            require_client_cert: true,
            admin_client_cert: None,
            station_client_cert: None,
            admin_names: Vec::new(),
        }
    }
}

/// A service's client-certificate policy. The handshake asks every caller
/// for a certificate but lets one without it in; each service then checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientCert {
    Required,
    Optional,
}

impl TlsConfig {
    fn default_policy(&self) -> ClientCert {
        if self.require_client_cert {
            ClientCert::Required
        } else {
            ClientCert::Optional
        }
    }
    #[must_use]
    pub fn admin_policy(&self) -> ClientCert {
        self.admin_client_cert.unwrap_or(self.default_policy())
    }
    #[must_use]
    pub fn station_policy(&self) -> ClientCert {
        self.station_client_cert.unwrap_or(self.default_policy())
    }
}

/// `KEYFED_TLS_CA`, `KEYFED_TLS_CERT`, `KEYFED_TLS_KEY` (all three) turn TLS on.
fn apply_tls_env(cfg: &mut NodeConfig, get: &impl Fn(&str) -> Option<String>) {
    if let (Some(ca), Some(cert), Some(key)) = (
        get("KEYFED_TLS_CA"),
        get("KEYFED_TLS_CERT"),
        get("KEYFED_TLS_KEY"),
    ) {
        let t = cfg.tls.get_or_insert_with(TlsConfig::default);
        t.ca = ca.into();
        t.cert = cert.into();
        t.key = key.into();
    }
    // the compose federation's console logs in with a token alone
    if let (Some(t), Some(v)) = (cfg.tls.as_mut(), get("KEYFED_TLS_ADMIN_CLIENT_CERT")) {
        t.admin_client_cert = match v.as_str() {
            "required" => Some(ClientCert::Required),
            "optional" => Some(ClientCert::Optional),
            other => {
                tracing::warn!(value = %other, "KEYFED_TLS_ADMIN_CLIENT_CERT is neither required nor optional: ignored");
                t.admin_client_cert
            }
        };
    }
    // comma separated: the compose federation names its administrator here
    if let (Some(t), Some(names)) = (cfg.tls.as_mut(), get("KEYFED_TLS_ADMIN_NAMES")) {
        t.admin_names = names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Admin,
    /// May read everything; every mutating RPC is refused.
    #[default]
    ReadOnly,
}

/// `[[admin_tokens]]`: a named bearer token. Prefer `token_sha256`
/// (`keyfed pki hash-token`) so the config file holds no secret.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminToken {
    pub name: String,
    pub token: Option<String>,
    pub token_sha256: Option<String>,
    pub role: Role,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// `KEYFED_ADMIN_TOKEN` adds one admin token named "env" (containers).
fn apply_admin_env(cfg: &mut NodeConfig, get: &impl Fn(&str) -> Option<String>) {
    if let Some(t) = get("KEYFED_ADMIN_TOKEN").filter(|t| !t.is_empty()) {
        cfg.admin_tokens.push(AdminToken {
            name: "env".into(),
            token: Some(t),
            token_sha256: None,
            role: Role::Admin,
        });
    }
    if let Some(v) = get("KEYFED_INSECURE_OPEN_ADMIN") {
        cfg.insecure_open_admin = matches!(v.as_str(), "1" | "true" | "yes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "node_id = \"from-file\"\ndata_dir = \"/file\"\nupstream = \"http://file\"\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "KEYFED_DATA_DIR" => Some("/env".to_owned()),
            "KEYFED_UPSTREAM" => Some("http://env".to_owned()),
            "KEYFED_API_LISTEN" => Some("127.0.0.1:7700".to_owned()),
            _ => None,
        };
        let flags = ConfigFlags {
            upstream: Some("http://flag".into()),
            api_listen: Some("127.0.0.1:7701".parse().unwrap()),
            ..ConfigFlags::default()
        };
        let c = NodeConfig::load(Some(&file), env, &flags).unwrap();
        assert_eq!(c.node_id, "from-file", "the file beats the default");
        assert_eq!(c.data_dir, PathBuf::from("/env"), "env beats the file");
        assert_eq!(
            c.upstream.as_deref(),
            Some("http://flag"),
            "a flag beats env"
        );
        assert_eq!(
            c.api_listen,
            Some("127.0.0.1:7701".parse().unwrap()),
            "--api-listen beats KEYFED_API_LISTEN"
        );
        assert_eq!(
            c.listen,
            NodeConfig::default().listen,
            "defaults fill the rest"
        );
        let err =
            NodeConfig::load(Some(&dir.path().join("missing.toml")), |_| None, &flags).unwrap_err();
        assert!(
            err.contains("missing.toml") && err.contains("KEYFED_CONFIG"),
            "{err}"
        );
    }

    #[test]
    fn defaults_run_without_a_file_and_unknown_fields_are_refused() {
        let c = NodeConfig::from_toml("").unwrap();
        assert_eq!(c.node_id, "main");
        let err = NodeConfig::from_toml("nod_id = \"x\"").unwrap_err();
        assert!(err.contains("nod_id"), "{err}");
        let c = NodeConfig::from_toml(
            "node_id = \"child\"\n[parent]\nnode_id = \"main\"\naddress = \"http://x\"",
        )
        .unwrap();
        assert_eq!(c.role_of("main"), Some(PeerRole::Parent));
    }

    #[test]
    fn vendor_key_files_are_read_once_and_bad_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("vendor.pub");
        let key = "ab".repeat(32);
        std::fs::write(&good, format!("{key}\n")).unwrap();
        let bad = dir.path().join("bad.pub");
        std::fs::write(&bad, "not a key").unwrap();
        let mut c = NodeConfig::default();
        c.apply_env(|k| {
            (k == "KEYFED_TRUSTED_VENDOR_KEY_FILES")
                .then(|| format!("{}, {}", good.display(), good.display()))
        })
        .unwrap();
        assert_eq!(c.trusted_vendor_key_files.len(), 2);
        c.load_vendor_key_files().unwrap();
        assert_eq!(c.trusted_vendor_keys, vec![key]);
        c.trusted_vendor_key_files = vec![bad];
        assert!(c.load_vendor_key_files().unwrap_err().contains("bad.pub"));
        c.trusted_vendor_key_files = vec![dir.path().join("missing.pub")];
        assert!(c
            .load_vendor_key_files()
            .unwrap_err()
            .contains("missing.pub"));
    }

    #[test]
    fn b06_log_format_and_metrics_listen_come_from_toml_and_env() {
        let c = NodeConfig::from_toml("log_format = \"json\"\nmetrics_listen = \"127.0.0.1:9601\"")
            .unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9601".parse().unwrap()));
        assert_eq!(NodeConfig::default().log_format, LogFormat::Text);
        assert_eq!(NodeConfig::default().metrics_listen, None);
        let err = NodeConfig::from_toml("log_format = \"xml\"").unwrap_err();
        assert!(err.contains("log_format") || err.contains("xml"), "{err}");
        let mut c = NodeConfig::default();
        c.apply_env(|k| match k {
            "KEYFED_LOG_FORMAT" => Some("json".into()),
            "KEYFED_METRICS_LISTEN" => Some("0.0.0.0:9100".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9100".parse().unwrap()));
        let err = c
            .apply_env(|k| (k == "KEYFED_LOG_FORMAT").then(|| "yaml".into()))
            .unwrap_err();
        assert!(err.contains("yaml") && err.contains("text, json"), "{err}");
    }

    #[test]
    fn the_usage_history_interval_is_checked_with_what_it_may_be() {
        let c = NodeConfig::from_toml("[usage_history]\ninterval = \"15m\"").unwrap();
        assert_eq!(
            c.engine_config().usage_history.interval.interval(),
            chrono::Duration::minutes(15)
        );
        assert_eq!(
            NodeConfig::default().usage_history.interval.interval(),
            chrono::Duration::minutes(5)
        );
        let err = NodeConfig::from_toml("[usage_history]\ninterval = \"7m\"").unwrap_err();
        assert!(
            err.contains("usage_history") && err.contains("divide an hour"),
            "{err}"
        );
    }
}
