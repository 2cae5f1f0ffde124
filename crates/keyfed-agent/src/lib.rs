//! The station side of keyfed. An [`Agent`] is one station: it keeps its
//! lease, settings and unsent reports in one state file, so it keeps working
//! while its node is unreachable (o01) for as long as the lease's offline
//! validity lasts (o02), queues reports in a bounded queue (o04) and delivers
//! them exactly once when the node is back, picking up settings changed
//! meanwhile (o05) and commands queued for it (o03).
//!
//! Every change to the state is written to disk (a temp file renamed over
//! the old one) before the agent acts on it, so a crash loses nothing the
//! agent has acknowledged to its caller.
use chrono::{DateTime, Utc};
use keyfed_core::station::{QueueFullPolicy, ReportQueue};
use keyfed_core::SharedClock;
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::station_client::StationClient;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Reports sent per Report call.
pub const BATCH: usize = 500;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("agent state {path}: {why}")]
    State { path: String, why: String },
    #[error("node {node} unreachable: {why}")]
    Offline { node: String, why: String },
    #[error("node {node} refused the request: {status}")]
    Refused { node: String, status: String },
    #[error("agent config: {0}")]
    Config(String),
}

/// Who the station is and how it behaves.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node's URL, e.g. `http://127.0.0.1:7601`.
    pub node: String,
    pub state_dir: PathBuf,
    /// Stable per machine (b02): a reinstall presents the same one.
    pub fingerprint: String,
    pub station_id: String,
    pub components: Vec<String>,
    pub tenant: String,
    /// o04: at most this many reports wait while offline ...
    pub queue_capacity: usize,
    /// ... and this is what happens to one more.
    pub queue_full: QueueFullPolicy,
    /// Per request; an unreachable node is noticed this fast.
    pub timeout: Duration,
    /// For an `https://` node: the federation CA (PEM) that signed the
    /// node's certificate, and optionally this station's own certificate and
    /// key (PEM) when the node asks stations for one.
    pub tls_ca: Option<PathBuf>,
    pub tls_identity: Option<(PathBuf, PathBuf)>,
}

impl AgentConfig {
    #[must_use]
    pub fn new(node: &str, state_dir: &Path, fingerprint: &str, components: &[&str]) -> Self {
        Self {
            node: node.to_owned(),
            state_dir: state_dir.to_owned(),
            fingerprint: fingerprint.to_owned(),
            station_id: fingerprint.to_owned(),
            components: components.iter().map(|c| (*c).to_owned()).collect(),
            tenant: String::new(),
            queue_capacity: 1000,
            queue_full: QueueFullPolicy::DropOldest,
            timeout: Duration::from_secs(5),
            tls_ca: None,
            tls_identity: None,
        }
    }
}

/// The lease as last received from the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedLease {
    pub lease_id: String,
    pub key_id: String,
    /// o02: valid without contact until then.
    pub valid_until: Option<DateTime<Utc>>,
    /// The node's answer: false when it refused or withdrew the seat.
    pub granted: bool,
    pub reason: String,
    pub key_state: String,
}

/// A report waiting for the node; its id makes delivery exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedReport {
    pub id: String,
    pub at: DateTime<Utc>,
    pub body: String,
}

/// Everything the agent keeps on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub fingerprint: String,
    pub lease: Option<CachedLease>,
    pub settings: String,
    pub settings_version: u64,
    /// Commands received from the node, oldest first, for the application.
    pub commands: Vec<String>,
    pub queue: ReportQueue<QueuedReport>,
    pub next_report: u64,
    pub last_contact: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Reports the node confirmed, in all.
    pub delivered: u64,
}

/// What the station shows its user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentStatus {
    /// The station the state belongs to.
    pub fingerprint: String,
    pub licensed: bool,
    pub reason: String,
    pub valid_until: Option<DateTime<Utc>>,
    pub key_id: String,
    pub settings: String,
    pub settings_version: u64,
    pub queued: usize,
    pub lost: u64,
    pub delivered: u64,
    pub online: bool,
}

pub struct Agent {
    cfg: AgentConfig,
    clock: SharedClock,
    state: AgentState,
    client: Option<StationClient<Channel>>,
    online: bool,
}

const STATE_FILE: &str = "agent-state.json";

impl Agent {
    /// Loads the station's state, or starts a new one.
    pub fn open(cfg: AgentConfig, clock: SharedClock) -> Result<Self, AgentError> {
        if cfg.fingerprint.trim().is_empty() {
            return Err(AgentError::Config("a station needs a fingerprint".into()));
        }
        let path = cfg.state_dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let s: AgentState =
                    serde_json::from_slice(&bytes).map_err(|e| AgentError::State {
                        path: path.display().to_string(),
                        why: format!("unreadable ({e}); move it away to start over"),
                    })?;
                if s.fingerprint != cfg.fingerprint {
                    return Err(AgentError::State {
                        path: path.display().to_string(),
                        why: format!(
                            "belongs to fingerprint {}, not {}",
                            s.fingerprint, cfg.fingerprint
                        ),
                    });
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AgentState {
                fingerprint: cfg.fingerprint.clone(),
                lease: None,
                settings: String::new(),
                settings_version: 0,
                commands: Vec::new(),
                queue: ReportQueue::new(cfg.queue_capacity, cfg.queue_full),
                next_report: 1,
                last_contact: None,
                last_error: None,
                delivered: 0,
            },
            Err(e) => {
                return Err(AgentError::State {
                    path: path.display().to_string(),
                    why: e.to_string(),
                })
            }
        };
        let mut agent = Self {
            cfg,
            clock,
            state,
            client: None,
            online: false,
        };
        agent.save()?;
        Ok(agent)
    }

    /// The state in `state_dir` as it is, whichever fingerprint wrote it,
    /// without writing anything (`keyfed-agent status`); `None` when the
    /// directory holds no state yet.
    pub fn inspect(state_dir: &Path, clock: SharedClock) -> Result<Option<Self>, AgentError> {
        let path = state_dir.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(AgentError::State {
                    path: path.display().to_string(),
                    why: e.to_string(),
                })
            }
        };
        let state: AgentState = serde_json::from_slice(&bytes).map_err(|e| AgentError::State {
            path: path.display().to_string(),
            why: format!("unreadable ({e})"),
        })?;
        let cfg = AgentConfig::new("http://127.0.0.1:1", state_dir, &state.fingerprint, &[]);
        Ok(Some(Self {
            cfg,
            clock,
            state,
            client: None,
            online: false,
        }))
    }

    #[must_use]
    pub fn state(&self) -> &AgentState {
        &self.state
    }

    #[must_use]
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// o01/o02: licensed while the node granted a seat and the lease's
    /// offline validity has not run out, whether or not the node is reachable.
    #[must_use]
    pub fn licensed(&self) -> bool {
        let now = self.clock.now();
        self.state
            .lease
            .as_ref()
            .is_some_and(|l| l.granted && l.valid_until.is_some_and(|v| now < v))
    }

    #[must_use]
    pub fn status(&self) -> AgentStatus {
        let lease = self.state.lease.as_ref();
        let reason = match lease {
            _ if self.licensed() => String::new(),
            Some(l) if l.granted => format!(
                "no contact with the node since {}: the lease's offline validity ended {}",
                self.state
                    .last_contact
                    .map_or_else(|| "ever".into(), |t| t.to_rfc3339()),
                l.valid_until.map_or_else(String::new, |t| t.to_rfc3339())
            ),
            Some(l) => l.reason.clone(),
            None => self
                .state
                .last_error
                .clone()
                .unwrap_or_else(|| "never connected to a node".into()),
        };
        AgentStatus {
            fingerprint: self.state.fingerprint.clone(),
            licensed: self.licensed(),
            reason,
            valid_until: lease.and_then(|l| l.valid_until),
            key_id: lease.map(|l| l.key_id.clone()).unwrap_or_default(),
            settings: self.state.settings.clone(),
            settings_version: self.state.settings_version,
            queued: self.state.queue.len(),
            lost: self.state.queue.lost,
            delivered: self.state.delivered,
            online: self.online,
        }
    }

    /// o04: queues a report for the node; false when a full queue that stops
    /// collecting did not keep it. Durable before it returns.
    pub fn record(&mut self, body: &str) -> Result<bool, AgentError> {
        let id = format!("{}-{}", self.cfg.fingerprint, self.state.next_report);
        self.state.next_report += 1;
        let kept = self.state.queue.push(QueuedReport {
            id,
            at: self.clock.now(),
            body: body.to_owned(),
        });
        self.save()?;
        Ok(kept)
    }

    fn client(&mut self) -> Result<StationClient<Channel>, AgentError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let mut endpoint = Endpoint::from_shared(self.cfg.node.clone())
            .map_err(|e| AgentError::Config(format!("node address {:?}: {e}", self.cfg.node)))?
            .connect_timeout(self.cfg.timeout)
            .timeout(self.cfg.timeout);
        if self.cfg.node.starts_with("https://") {
            endpoint = endpoint
                .tls_config(self.tls()?)
                .map_err(|e| AgentError::Config(format!("TLS: {e}")))?;
        }
        let c = StationClient::new(endpoint.connect_lazy());
        self.client = Some(c.clone());
        Ok(c)
    }

    fn tls(&self) -> Result<tonic::transport::ClientTlsConfig, AgentError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| AgentError::Config(format!("reading {}: {e}", p.display())))
        };
        let ca = self.cfg.tls_ca.as_deref().ok_or_else(|| {
            AgentError::Config(
                "an https:// node needs the CA that signed its certificate (--ca)".into(),
            )
        })?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let Some((cert, key)) = &self.cfg.tls_identity {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(tls)
    }

    fn offline(&mut self, status: &tonic::Status) -> AgentError {
        self.online = false;
        let e = match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown => AgentError::Offline {
                node: self.cfg.node.clone(),
                why: status.message().to_owned(),
            },
            _ => AgentError::Refused {
                node: self.cfg.node.clone(),
                status: format!("{:?}: {}", status.code(), status.message()),
            },
        };
        self.state.last_error = Some(e.to_string());
        let _ = self.save();
        e
    }

    /// One contact with the node: renews (or takes) the lease, takes changed
    /// settings and queued commands, then delivers queued reports. On
    /// failure the cached lease stays as it was (o01).
    pub async fn sync(&mut self) -> Result<AgentStatus, AgentError> {
        let mut client = self.client()?;
        let hello = pb::RenewRequest {
            lease_id: self
                .state
                .lease
                .as_ref()
                .map(|l| l.lease_id.clone())
                .unwrap_or_default(),
            fingerprint: self.cfg.fingerprint.clone(),
            settings_version: self.state.settings_version,
            components: self.cfg.components.clone(),
            station_id: self.cfg.station_id.clone(),
            tenant: self.cfg.tenant.clone(),
        };
        let lease = match client.renew(hello).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(self.offline(&s)),
        };
        self.online = true;
        let now = self.clock.now();
        self.state.last_contact = Some(now);
        self.state.last_error = None;
        if lease.settings_version > self.state.settings_version {
            // o05: the node sends the text only to a station that is behind
            self.state.settings = lease.settings.clone();
            self.state.settings_version = lease.settings_version;
        }
        self.state.commands.extend(lease.commands.iter().cloned());
        self.state.lease = Some(CachedLease {
            lease_id: lease.lease_id.clone(),
            key_id: lease.key_id.clone(),
            valid_until: DateTime::parse_from_rfc3339(&lease.valid_until)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            granted: lease.licensed,
            reason: lease.reason.clone(),
            key_state: lease.key_state.clone(),
        });
        self.save()?;
        self.deliver_reports(&mut client).await?;
        Ok(self.status())
    }

    /// Sends queued reports oldest first; each batch leaves the queue only
    /// once the node confirmed it, and the node keeps each id once, so a
    /// batch resent after a lost answer is counted once.
    async fn deliver_reports(
        &mut self,
        client: &mut StationClient<Channel>,
    ) -> Result<(), AgentError> {
        while !self.state.queue.is_empty() {
            let batch: Vec<pb::StationReport> = self
                .state
                .queue
                .peek(BATCH)
                .map(|r| pb::StationReport {
                    report_id: r.id.clone(),
                    at: r.at.to_rfc3339(),
                    body: r.body.clone(),
                })
                .collect();
            let n = batch.len();
            let ack = match client
                .report(pb::ReportBatch {
                    fingerprint: self.cfg.fingerprint.clone(),
                    reports: batch,
                })
                .await
            {
                Ok(a) => a.into_inner(),
                Err(s) => return Err(self.offline(&s)),
            };
            self.state.queue.confirm(n);
            self.state.delivered += u64::from(ack.accepted);
            self.save()?;
        }
        Ok(())
    }

    /// Gives the seat back (an uninstall).
    pub async fn release(&mut self) -> Result<(), AgentError> {
        let Some(lease) = self.state.lease.clone() else {
            return Ok(());
        };
        let mut client = self.client()?;
        if let Err(s) = client
            .release(pb::ReleaseRequest {
                lease_id: lease.lease_id,
                fingerprint: self.cfg.fingerprint.clone(),
            })
            .await
        {
            return Err(self.offline(&s));
        }
        self.state.lease = None;
        self.save()
    }

    fn save(&mut self) -> Result<(), AgentError> {
        let err = |why: String| AgentError::State {
            path: self.cfg.state_dir.display().to_string(),
            why,
        };
        std::fs::create_dir_all(&self.cfg.state_dir).map_err(|e| err(e.to_string()))?;
        let path = self.cfg.state_dir.join(STATE_FILE);
        let tmp = self.cfg.state_dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec(&self.state).expect("agent state serializes");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
            f.write_all(&bytes).map_err(|e| err(e.to_string()))?;
            f.sync_all().map_err(|e| err(e.to_string()))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))
    }

    /// Runs the agent on its own: one contact every `every`, retried after
    /// failures, until `stop`. The latest status is published on the channel.
    pub fn spawn(
        mut self,
        every: Duration,
        stop: CancellationToken,
    ) -> watch::Receiver<AgentStatus> {
        let (tx, rx) = watch::channel(self.status());
        tokio::spawn(async move {
            loop {
                let result = self.sync().await;
                if let Err(e) = &result {
                    tracing::debug!(fingerprint = %self.cfg.fingerprint, error = %e, "contact failed; working offline");
                }
                let _ = tx.send(self.status());
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyfed_core::ManualClock;
    use std::sync::Arc;

    #[test]
    fn o04_reports_survive_a_restart_and_the_queue_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new("2026-11-23T00:00:00Z".parse().unwrap()));
        let mut cfg = AgentConfig::new("http://127.0.0.1:1", dir.path(), "fp-1", &["av"]);
        cfg.queue_capacity = 2;
        cfg.queue_full = QueueFullPolicy::StopCollecting;
        let mut a = Agent::open(cfg.clone(), clock.clone()).unwrap();
        assert!(a.record("one").unwrap());
        assert!(a.record("two").unwrap());
        assert!(!a.record("three").unwrap());
        drop(a);
        let a = Agent::open(cfg.clone(), clock.clone()).unwrap();
        let ids: Vec<_> = a.state().queue.peek(10).map(|r| r.body.clone()).collect();
        assert_eq!(ids, vec!["one", "two"]);
        assert_eq!(a.status().lost, 1);
        assert!(!a.licensed());
        // another fingerprint cannot take this state over
        let other = AgentConfig::new("http://127.0.0.1:1", dir.path(), "fp-2", &["av"]);
        assert!(matches!(
            Agent::open(other, clock.clone()),
            Err(AgentError::State { .. })
        ));
        // but anyone may look at it, and looking writes nothing
        let before = std::fs::read(dir.path().join(STATE_FILE)).unwrap();
        let seen = Agent::inspect(dir.path(), clock.clone()).unwrap().unwrap();
        assert_eq!(seen.status().fingerprint, cfg.fingerprint);
        assert_eq!(seen.status().lost, 1);
        assert_eq!(std::fs::read(dir.path().join(STATE_FILE)).unwrap(), before);
        let empty = tempfile::tempdir().unwrap();
        assert!(Agent::inspect(empty.path(), clock).unwrap().is_none());
        assert!(!empty.path().join(STATE_FILE).exists());
    }
}
