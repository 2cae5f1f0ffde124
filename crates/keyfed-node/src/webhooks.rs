//! Webhooks (issue 12): each `[[webhooks]]` entry gets the node's
//! notifications POSTed as signed JSON, in seq order, from a durable queue.
//! The queue is the notification log itself plus a per-hook cursor in the
//! store's meta tree (`webhook:<name>`), moved only after a 2xx answer, so
//! nothing is lost while the receiver is down or across a restart; a
//! delivery is at least once (a crash between the 2xx and the cursor write
//! sends it again, with the same delivery id). The rules (signature,
//! filter, backoff, URL checks) are `keyfed_core::webhook`; this module
//! resolves the config and keeps the state the console and `/metrics` show.
use keyfed_core::webhook::{self as rules, Backoff, EventFilter, Target};
use keyfed_proto::v1 as pb;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod delivery;

/// One `[[webhooks]]` entry. The secret comes from exactly one of
/// `secret`, `secret_file` (its content, trailing newline dropped) or
/// `secret_env` (the name of an environment variable).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the hook in the delivery id, metrics and the console, and keys
    /// its durable cursor; default `hook-` and 8 hex digits of the URL's SHA-256.
    pub name: Option<String>,
    pub url: String,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub secret_env: Option<String>,
    /// Event names (`keyfed_core::event`); empty: every event.
    pub events: Vec<String>,
    /// One attempt (connect, TLS, request, answer) may take this long.
    pub timeout_millis: u64,
    /// The wait after the first failed attempt; doubled per failure.
    pub initial_backoff_millis: u64,
    pub max_backoff_millis: u64,
    /// PEM CA certificates an https receiver is verified against; default:
    /// the system's bundle.
    pub ca_file: Option<PathBuf>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            name: None,
            url: String::new(),
            secret: None,
            secret_file: None,
            secret_env: None,
            events: Vec::new(),
            timeout_millis: 10_000,
            initial_backoff_millis: 1_000,
            max_backoff_millis: 300_000,
            ca_file: None,
        }
    }
}

// the secret never reaches a log line
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("secret_env", &self.secret_env)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// Where the system keeps its CA bundle (Debian/Ubuntu/Alpine, RHEL/Fedora, macOS/BSD).
const SYSTEM_CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// One configured hook, checked, with its secret and live state.
pub struct Hook {
    pub name: String,
    pub url: String,
    pub(crate) target: Target,
    pub(crate) filter: EventFilter,
    pub(crate) secret: Vec<u8>,
    pub(crate) timeout: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) tls: Option<tokio_rustls::TlsConnector>,
    pub(crate) state: Mutex<HookState>,
}

/// What the console shows of a hook; only the cursor is durable.
#[derive(Debug, Default, Clone)]
pub(crate) struct HookState {
    pub pending: u64,
    pub delivered: u64,
    pub delivered_seq: u64,
    pub failed_attempts: u64,
    pub last_delivery_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_error: String,
    pub next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every configured hook.
#[derive(Default)]
pub struct Webhooks {
    pub hooks: Vec<Arc<Hook>>,
}

impl Webhooks {
    /// Checks every entry; the first bad one stops the node from starting,
    /// with a message naming the hook and the setting.
    pub fn from_config(
        configured: &[WebhookConfig],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut hooks: Vec<Arc<Hook>> = Vec::new();
        for (i, w) in configured.iter().enumerate() {
            let hook =
                Hook::from_config(w, &env).map_err(|e| format!("[[webhooks]] #{}: {e}", i + 1))?;
            if let Some(other) = hooks.iter().find(|h| h.name == hook.name) {
                return Err(format!(
                    "[[webhooks]] #{}: the name {:?} is already used by the hook for {}; give each hook its own name",
                    i + 1,
                    hook.name,
                    other.url
                ));
            }
            hooks.push(Arc::new(hook));
        }
        Ok(Self { hooks })
    }

    /// One delivery task per hook, so a receiver that is down holds back
    /// only its own queue.
    /// Called before the node takes any request, so a hook seen for the
    /// first time starts exactly where the log stood then.
    /// A hook whose cursor cannot be read stays stopped and says why (in
    /// the log and `last_error`); the others run.
    pub fn start(node: &crate::Node, tasks: &TaskTracker, shutdown: &CancellationToken) {
        for hook in &node.webhooks.hooks {
            node.metrics.webhooks.show(&hook.name);
            let start = match delivery::Start::new(node, hook) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(webhook = %hook.name, error = %e, "webhook not started");
                    hook.state().last_error = e;
                    continue;
                }
            };
            let span = tracing::info_span!("webhook", node = %node.id(), webhook = %hook.name);
            tasks.spawn(tracing::Instrument::instrument(
                delivery::run(node.clone(), hook.clone(), start, shutdown.child_token()),
                span,
            ));
        }
    }

    /// `Admin.ListWebhooks`.
    #[must_use]
    pub fn list(&self) -> pb::WebhookList {
        pb::WebhookList {
            webhooks: self.hooks.iter().map(|h| h.info()).collect(),
        }
    }
}

impl Hook {
    fn from_config(
        w: &WebhookConfig,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let target = rules::parse_url(&w.url).map_err(|e| e.to_string())?;
        let name = w
            .name
            .clone()
            .unwrap_or_else(|| rules::default_name(&w.url));
        rules::validate_name(&name).map_err(|e| e.to_string())?;
        let secret = secret(&name, w, env)?;
        rules::validate_secret(&name, &secret).map_err(|e| e.to_string())?;
        let filter = EventFilter::parse(&w.events).map_err(|source| {
            rules::WebhookError::Event {
                name: name.clone(),
                source,
            }
            .to_string()
        })?;
        let backoff = Backoff::new(
            &name,
            Duration::from_millis(w.initial_backoff_millis),
            Duration::from_millis(w.max_backoff_millis),
        )
        .map_err(|e| e.to_string())?;
        if w.timeout_millis == 0 {
            return Err(format!("webhook {name:?}: timeout_millis must be above 0"));
        }
        let tls = if target.https {
            Some(tls_connector(&name, w.ca_file.as_deref())?)
        } else {
            if w.ca_file.is_some() {
                return Err(format!("webhook {name:?}: ca_file is set but the url is http://; use https:// or drop ca_file"));
            }
            None
        };
        Ok(Self {
            name,
            url: w.url.clone(),
            target,
            filter,
            secret,
            timeout: Duration::from_millis(w.timeout_millis),
            backoff,
            tls,
            state: Mutex::new(HookState::default()),
        })
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, HookState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[must_use]
    pub fn info(&self) -> pb::WebhookInfo {
        let s = self.state().clone();
        pb::WebhookInfo {
            url: self.url.clone(),
            events: self.filter.names(),
            pending: s.pending,
            delivered: s.delivered,
            failed_attempts: s.failed_attempts,
            last_delivery_at: keyfed_engine::time::opt_ts(s.last_delivery_at),
            last_error: s.last_error,
            next_attempt_at: keyfed_engine::time::opt_ts(s.next_attempt_at),
            name: self.name.clone(),
            delivered_seq: s.delivered_seq,
        }
    }
}

fn secret(
    name: &str,
    w: &WebhookConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<u8>, String> {
    let given = [
        w.secret.is_some(),
        w.secret_file.is_some(),
        w.secret_env.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(format!(
            "webhook {name:?}: set exactly one of secret, secret_file or secret_env"
        ));
    }
    if let Some(s) = &w.secret {
        return Ok(s.clone().into_bytes());
    }
    if let Some(p) = &w.secret_file {
        let text = std::fs::read_to_string(p)
            .map_err(|e| format!("webhook {name:?}: reading secret_file {}: {e}", p.display()))?;
        return Ok(text.trim_end_matches(['\r', '\n']).as_bytes().to_vec());
    }
    let var = w.secret_env.as_deref().unwrap_or_default();
    env(var).map(String::into_bytes).ok_or_else(|| {
        format!(
            "webhook {name:?}: secret_env names {var}, which is not set in the node's environment"
        )
    })
}

/// Receivers are verified against `ca_file`, else the system's CA bundle.
fn tls_connector(
    name: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let path = match ca_file {
        Some(p) => p.to_path_buf(),
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                format!("webhook {name:?}: an https url needs CA certificates; no system CA bundle was found, so set ca_file")
            })?,
    };
    let bad = |e: &dyn std::fmt::Display| {
        format!(
            "webhook {name:?}: the CA certificates in {}: {e}",
            path.display()
        )
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&path).map_err(|e| bad(&e))? {
        // a system bundle may hold a certificate rustls cannot use; skip it
        let _ = roots.add(c.map_err(|e| bad(&e))?);
    }
    if roots.is_empty() {
        return Err(bad(&"no usable certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cc = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cc)))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    webhook: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabel {
    webhook: String,
}

/// How an attempt ended, as the metric's `result` label says it.
pub(crate) const RESULTS: [&str; 4] = ["delivered", "rejected", "unreachable", "timeout"];

/// `keyfed_webhook_deliveries_total{webhook,result}` and
/// `keyfed_webhook_pending{webhook}`.
pub struct WebhookMetrics {
    deliveries: Family<DeliveryLabels, Counter>,
    pending: Family<HookLabel, Gauge>,
}

impl WebhookMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "keyfed_webhook_deliveries",
            "webhook delivery attempts by hook and result (delivered, rejected: a non-2xx answer, unreachable, timeout), since the node started",
            deliveries.clone(),
        );
        let pending = Family::<HookLabel, Gauge>::default();
        registry.register(
            "keyfed_webhook_pending",
            "notifications queued for a webhook and not yet delivered",
            pending.clone(),
        );
        Self {
            deliveries,
            pending,
        }
    }

    /// Every series of a hook shows from the start, at zero.
    fn show(&self, hook: &str) {
        for result in RESULTS {
            drop(self.deliveries.get_or_create(&DeliveryLabels {
                webhook: hook.to_owned(),
                result,
            }));
        }
        self.set_pending(hook, 0);
    }

    pub(crate) fn attempt(&self, hook: &str, result: &'static str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                webhook: hook.to_owned(),
                result,
            })
            .inc();
    }

    pub(crate) fn set_pending(&self, hook: &str, n: u64) {
        self.pending
            .get_or_create(&HookLabel {
                webhook: hook.to_owned(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // the root's re-export: a `crate::config` path here would read as an
    // import circle (config re-exports WebhookConfig from here)
    use crate::NodeConfig;

    fn cfg(toml: &str) -> NodeConfig {
        NodeConfig::from_toml(toml).expect("config parses")
    }

    fn env(var: &str) -> Option<String> {
        (var == "HOOK_SECRET").then(|| "from-the-environment-0123".to_owned())
    }

    #[test]
    fn webhooks_are_read_from_toml_with_secrets_from_file_or_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-a-file-0123456789\n").unwrap();
        let c = cfg(&format!(
            r#"
            [[webhooks]]
            url = "http://127.0.0.1:9/in"
            secret = "inline-secret-0123456789"
            events = ["key-added", "seats-low"]
            [[webhooks]]
            name = "pager"
            url = "http://127.0.0.1:9/pager"
            secret_file = "{}"
            [[webhooks]]
            name = "env"
            url = "http://127.0.0.1:9/env"
            secret_env = "HOOK_SECRET"
            "#,
            file.display()
        ));
        let w = Webhooks::from_config(&c.webhooks, env).unwrap();
        let names: Vec<_> = w.hooks.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names[1..], ["pager", "env"]);
        assert!(names[0].starts_with("hook-"));
        assert_eq!(w.hooks[0].secret, b"inline-secret-0123456789");
        assert_eq!(w.hooks[1].secret, b"from-a-file-0123456789");
        assert_eq!(w.hooks[2].secret, b"from-the-environment-0123");
        assert_eq!(w.list().webhooks[0].events, ["key-added", "seats-low"]);
        assert!(!format!("{:?}", c.webhooks).contains("inline-secret"));
    }

    #[test]
    fn a_config_with_webhooks_renders_as_toml_and_reads_back() {
        // the process harness and `keyfed` tooling write configs as TOML
        let mut c = NodeConfig::default();
        let text = toml::to_string(&c).expect("renders without webhooks");
        assert!(NodeConfig::from_toml(&text).unwrap().webhooks.is_empty());
        c.webhooks = vec![WebhookConfig {
            name: Some("ops".into()),
            url: "http://127.0.0.1:9/".into(),
            secret_env: Some("HOOK_SECRET".into()),
            events: vec!["key-added".into()],
            ..WebhookConfig::default()
        }];
        let text = toml::to_string(&c).expect("renders with webhooks");
        let back = NodeConfig::from_toml(&text).unwrap();
        assert_eq!(back.webhooks[0].name.as_deref(), Some("ops"));
        assert_eq!(back.webhooks[0].events, ["key-added"]);
        assert!(Webhooks::from_config(&back.webhooks, env).is_ok());
    }

    #[test]
    fn bad_webhooks_stop_the_node_with_a_message_naming_the_setting() {
        let hook = |extra: &str| {
            format!("[[webhooks]]\nname = \"ops\"\nurl = \"http://127.0.0.1:9/\"\n{extra}\n")
        };
        let secret = "secret = \"0123456789abcdef\"";
        for (toml, want) in [
            (
                hook(&format!("{secret}\nevents = [\"key-addded\"]")),
                "\"key-addded\" is not a known event",
            ),
            (hook("secret = \"short\""), "at least 16"),
            (hook(""), "exactly one of secret"),
            (
                hook(&format!("{secret}\nsecret_env = \"HOOK_SECRET\"")),
                "exactly one of secret",
            ),
            (
                hook("secret_env = \"UNSET_VAR\""),
                "UNSET_VAR, which is not set",
            ),
            (
                hook("secret_file = \"/nonexistent/secret\""),
                "reading secret_file",
            ),
            (
                format!("[[webhooks]]\nurl = \"ftp://h/\"\n{secret}\n"),
                "must start with http",
            ),
            (
                hook(&format!("{secret}\ninitial_backoff_millis = 0")),
                "initial_backoff_millis",
            ),
            (
                hook(&format!("{secret}\ntimeout_millis = 0")),
                "timeout_millis",
            ),
            (
                hook(&format!("{secret}\nca_file = \"/x.pem\"")),
                "ca_file is set but the url is http",
            ),
            (format!("{}{}", hook(secret), hook(secret)), "already used"),
            (
                format!("[[webhooks]]\nname = \"a:b\"\nurl = \"http://h/\"\n{secret}\n"),
                "may hold only",
            ),
        ] {
            let e = Webhooks::from_config(&cfg(&toml).webhooks, env)
                .err()
                .unwrap_or_else(|| panic!("accepted: {toml}"));
            assert!(e.contains(want), "{toml}\n=> {e}");
            assert!(e.starts_with("[[webhooks]] #"), "{e}");
        }
        let e = NodeConfig::from_toml("[[webhooks]]\nurl = \"http://h/\"\nsecrett = \"x\"\n")
            .unwrap_err();
        assert!(e.contains("secrett"), "{e}");
    }
}
