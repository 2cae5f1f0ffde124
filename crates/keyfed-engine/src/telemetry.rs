//! Usage telemetry on the node (t01, t02): the node's signing identity, the
//! pending report (its period start and peaks, durable in the store's meta),
//! scheduled sends with retry, export for air-gapped nodes, relaying uploaded
//! files up the tree, and the due-date warnings. The rules are in
//! `keyfed_core::telemetry`; this module only does I/O around them.
use crate::engine::Engine;
use crate::error::{EngineError, EngineResult};
use crate::time::{opt_ts, ts};
use chrono::{DateTime, Duration, Utc};
use keyfed_core::telemetry::{
    attempt_now, build_report, due_warning, next_due, observe_install, raise_peaks, DuePolicy,
    DueWarning, Install, KeySeats, NodeIdentity, Report, ReportLine, SignedReport,
};
use keyfed_store::{abort, Tx, TxResult};
use keyfed_wire::v1 as pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Store meta names.
const STATE: &str = "telemetry";
const IDENTITY: &str = "telemetry_identity_seed";
const INSTALL: &str = "install";
/// Exported reports kept for confirmation at the next contact.
const MAX_EXPORTED: usize = 16;
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The durable telemetry state of a node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TelemetryState {
    /// The pending report covers `period_start .. now`: it moves only when a
    /// report is accepted, so a failed send is folded into the next one.
    period_start: Option<DateTime<Utc>>,
    /// Highest seats in use per key since `period_start`.
    peaks: BTreeMap<String, u32>,
    last_accepted: Option<Accepted>,
    last_attempt: Option<DateTime<Utc>>,
    last_error: Option<String>,
    /// Files written by `export`, re-sent on the next contact: the upstream
    /// answers "duplicate" if an administrator already uploaded one.
    exported: Vec<Exported>,
    /// Due date each warning was last given for (t02: once each).
    warned_soon: Option<DateTime<Utc>>,
    warned_overdue: Option<DateTime<Utc>>,
    last_rollup_refresh: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Accepted {
    report_id: String,
    period_end: DateTime<Utc>,
    accepted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Exported {
    report_id: String,
    period_end: DateTime<Utc>,
    text: String,
}

/// How this node's usage reaches the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// It has an upstream and sends on its own.
    Automatic,
    /// No upstream but a parent: its usage rides up in b05 rollups and the
    /// parent's reports carry it.
    ThroughParent,
    /// Air-gapped: an administrator exports and uploads files.
    Manual,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Self::Automatic => "automatic",
            Self::ThroughParent => "through-parent",
            Self::Manual => "manual",
        }
    }
}

type Tr<T> = TxResult<T, EngineError>;

fn read_state(tx: &Tx<'_>) -> Tr<TelemetryState> {
    match tx.meta::<EngineError>(STATE)? {
        Some(s) => match serde_json::from_str(&s) {
            Ok(v) => Ok(v),
            Err(e) => abort(EngineError::Store(keyfed_store::StoreError::Corrupt {
                tree: "meta",
                why: format!("telemetry state: {e}"),
            })),
        },
        None => Ok(TelemetryState::default()),
    }
}

fn write_state(tx: &Tx<'_>, s: &TelemetryState) -> Tr<()> {
    tx.put_meta(STATE, &serde_json::to_string(s).expect("state serializes"))
}

pub(crate) fn new_report_id() -> EngineResult<String> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).map_err(|e| {
        EngineError::FailedPrecondition(format!("no randomness for a report id: {e}"))
    })?;
    Ok(format!("tr-{}", hex::encode(b)))
}

impl Engine {
    pub fn telemetry_mode(&self) -> Mode {
        if self.config.has_upstream {
            Mode::Automatic
        } else if self.config.parent.is_some() {
            Mode::ThroughParent
        } else {
            Mode::Manual
        }
    }

    /// The install record, the identity and the state; creates the first
    /// two on first use and records an upgrade (t02) once.
    async fn telemetry_ready(
        &self,
        now: DateTime<Utc>,
        seed: Option<[u8; 32]>,
    ) -> EngineResult<(Install, NodeIdentity, TelemetryState)> {
        let stored_install: Option<Install> = self
            .store
            .meta(INSTALL)?
            .and_then(|s| serde_json::from_str(&s).ok());
        let has_identity = self.store.meta(IDENTITY)?.is_some();
        let install = observe_install(stored_install.as_ref(), VERSION, now);
        if stored_install.as_ref() != Some(&install) || !has_identity {
            let seed = match seed {
                Some(s) => s,
                None => crate::tick::random_seed()?,
            };
            let install_json = serde_json::to_string(&install).expect("install serializes");
            self.commit(|tx, fx| {
                if tx.meta::<EngineError>(IDENTITY)?.is_none() {
                    tx.put_meta(IDENTITY, &hex::encode(seed))?;
                }
                let before: Option<Install> = tx
                    .meta::<EngineError>(INSTALL)?
                    .and_then(|s| serde_json::from_str(&s).ok());
                if before.as_ref().map(|b| &b.version) != Some(&install.version) {
                    tx.put_meta(INSTALL, &install_json)?;
                    tx.put_meta("installed_at", &ts(install.at))?;
                    tx.put_meta("installed_version", &install.version)?;
                    if let Some(from) = &install.upgraded_from {
                        fx.notify(
                            tx,
                            now,
                            keyfed_core::event::EventKind::Upgraded,
                            "",
                            format!(
                                "keyfed upgraded from {from} to {}: the first usage report is due within 30 days (t02)",
                                install.version
                            ),
                            &[("from", from.clone()), ("to", install.version.clone())],
                        )?;
                    }
                }
                Ok(())
            })
            .await?;
        }
        let install: Install = self
            .store
            .meta(INSTALL)?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(install);
        let seed_hex = self.store.meta(IDENTITY)?.unwrap_or_default();
        let seed: [u8; 32] = hex::decode(&seed_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                EngineError::Store(keyfed_store::StoreError::Corrupt {
                    tree: "meta",
                    why: "the node's telemetry identity seed is unreadable".into(),
                })
            })?;
        let state = self.store.transact(read_state)?;
        Ok((install, NodeIdentity::from_seed(seed), state))
    }

    fn own_key_seats(&self) -> EngineResult<Vec<KeySeats>> {
        self.store
            .keys()?
            .into_iter()
            .map(|k| {
                Ok(KeySeats {
                    used: self.store.used(&k.key.id)?,
                    key: k.key.id,
                    customer: k.key.customer,
                    held: k.held,
                })
            })
            .collect()
    }

    /// b05 lines of the subtree, as report lines. A server this node gave
    /// seats that never rolled up its usage is listed as never seen (t03,
    /// defect 9), so the upstream counts it as a server that did not report.
    fn subtree_lines(&self) -> EngineResult<Vec<ReportLine>> {
        let keys = self.store.keys()?;
        let customers: BTreeMap<String, String> = keys
            .iter()
            .map(|k| (k.key.id.clone(), k.key.customer.clone()))
            .collect();
        let customer = |id: &str| {
            customers
                .get(id)
                .cloned()
                .unwrap_or_else(|| "unknown".into())
        };
        let usage = self.store.usage_lines()?;
        let mut lines: Vec<ReportLine> = usage
            .iter()
            .filter(|l| l.node_id != self.id())
            .map(|l| ReportLine {
                customer: customer(&l.key_id),
                node: l.node_id.clone(),
                key: l.key_id.clone(),
                held: l.seats,
                used: l.used,
                peak: l.used,
                as_of: l.reported_at,
            })
            .collect();
        for (peer, _) in self.config.peers() {
            if usage.iter().any(|l| l.node_id == peer) {
                continue;
            }
            for k in &keys {
                if let Some(g) = self.store.grant(&k.key.id, &peer)? {
                    lines.push(ReportLine {
                        customer: customer(&k.key.id),
                        node: peer.clone(),
                        key: k.key.id.clone(),
                        held: g.seats,
                        used: 0,
                        peak: 0,
                        as_of: DateTime::<Utc>::UNIX_EPOCH,
                    });
                }
            }
        }
        Ok(lines)
    }

    fn due_of(install: &Install, state: &TelemetryState) -> DateTime<Utc> {
        next_due(
            install.at,
            state.last_accepted.as_ref().map(|a| a.period_end),
            &DuePolicy::default(),
        )
    }

    /// Builds and signs the report of `period_start .. now`.
    async fn pending_report(
        &self,
        now: DateTime<Utc>,
        report_id: &str,
        seed: Option<[u8; 32]>,
    ) -> EngineResult<SignedReport> {
        let (install, identity, state) = self.telemetry_ready(now, seed).await?;
        let own = self.own_key_seats()?;
        let report = build_report(
            report_id,
            self.id(),
            VERSION,
            install.at,
            state.period_start.unwrap_or(install.at),
            now,
            &own,
            &state.peaks,
            &self.subtree_lines()?,
        );
        identity.sign(report).map_err(|e| {
            EngineError::FailedPrecondition(format!("this node cannot sign its usage report: {e}"))
        })
    }

    /// Records that the upstream holds `report`. The period start moves to
    /// its end; peaks restart from today's usage when it was the report of
    /// the whole pending period.
    async fn telemetry_accepted(
        &self,
        report: &Report,
        accepted_at: DateTime<Utc>,
        restart_peaks: bool,
    ) -> EngineResult<()> {
        let own = self.own_key_seats()?;
        self.commit(|tx, _| {
            let mut s = read_state(tx)?;
            if s.last_accepted
                .as_ref()
                .is_none_or(|a| a.period_end <= report.period_end)
            {
                s.last_accepted = Some(Accepted {
                    report_id: report.id.clone(),
                    period_end: report.period_end,
                    accepted_at,
                });
            }
            if s.period_start.is_none_or(|p| p < report.period_end) {
                s.period_start = Some(report.period_end);
                if restart_peaks {
                    s.peaks = own.iter().map(|k| (k.key.clone(), k.used)).collect();
                }
            }
            s.exported.retain(|e| e.report_id != report.id);
            write_state(tx, &s)
        })
        .await
    }

    async fn submit(&self, text: &str) -> EngineResult<pb::TelemetryAck> {
        self.upstream.submit_telemetry(text).await
    }

    /// Exported files the node has not seen accepted, sent first; a
    /// transient failure is returned, to be tried again later.
    async fn resend_exported(
        &self,
        state: &TelemetryState,
        now: DateTime<Utc>,
    ) -> EngineResult<Result<(), EngineError>> {
        let mut result = Ok(());
        for e in &state.exported {
            match self.submit(&e.text).await {
                Ok(ack) => {
                    let r = SignedReport::parse(&e.text)
                        .map_err(|err| {
                            EngineError::FailedPrecondition(format!(
                                "exported report {}: {err}",
                                e.report_id
                            ))
                        })?
                        .report;
                    let at = crate::time::parse_ts("accepted_at", &ack.accepted_at)
                        .ok()
                        .flatten()
                        .unwrap_or(now);
                    self.telemetry_accepted(&r, at, false).await?;
                }
                Err(s) if s.code().transient() => {
                    result = Err(s);
                    break;
                }
                Err(s) => {
                    tracing::warn!(node = %self.id(), report = %e.report_id, error = %s, "exported report refused by the upstream; dropped");
                    let id = e.report_id.clone();
                    self.commit(|tx, _| {
                        let mut s = read_state(tx)?;
                        s.exported.retain(|x| x.report_id != id);
                        write_state(tx, &s)
                    })
                    .await?;
                }
            }
        }
        Ok(result)
    }

    /// Sends what is pending: first exported files the node has not seen
    /// accepted, then the report of the whole pending period (t01). A
    /// failure is recorded and retried; nothing is lost because the period
    /// start only moves on acceptance.
    pub async fn send_telemetry(&self) -> EngineResult<pb::TelemetryReceipt> {
        let now = self.now();
        let (_, _, state) = self.telemetry_ready(now, None).await?;
        let result = self.resend_exported(&state, now).await?;
        let signed = self.pending_report(now, &new_report_id()?, None).await?;
        let outcome = match result {
            Ok(()) => self.submit(&signed.render()).await,
            Err(s) => Err(s),
        };
        let error = outcome.as_ref().err().map(ToString::to_string);
        let first_failure = {
            let error = error.clone();
            self.commit(move |tx, fx| {
                let mut s = read_state(tx)?;
                let changed = error.is_some() && s.last_error != error;
                s.last_attempt = Some(now);
                s.last_error.clone_from(&error);
                write_state(tx, &s)?;
                if changed {
                    fx.notify(
                        tx,
                        now,
                        keyfed_core::event::EventKind::TelemetrySendFailed,
                        "",
                        format!(
                            "the usage report could not be sent; retried later: {}",
                            error.clone().unwrap_or_default()
                        ),
                        &[],
                    )?;
                }
                Ok(changed)
            })
            .await?
        };
        match outcome {
            Ok(ack) => {
                let at = crate::time::parse_ts("accepted_at", &ack.accepted_at)
                    .ok()
                    .flatten()
                    .unwrap_or(now);
                self.telemetry_accepted(&signed.report, at, true).await?;
                tracing::info!(node = %self.id(), report = %ack.report_id, duplicate = ack.duplicate, "usage report accepted");
                Ok(pb::TelemetryReceipt {
                    report_id: ack.report_id,
                    duplicate: ack.duplicate,
                    node_id: self.id().into(),
                    via: format!("{} > upstream", self.id()),
                })
            }
            Err(s) => {
                if first_failure {
                    tracing::warn!(node = %self.id(), error = %s, "usage report not sent; retried later");
                }
                Err(EngineError::Upstream(s.to_string()))
            }
        }
    }

    /// Writes the pending report as a signed file for an air-gapped node
    /// (t01). The period does not move: it moves when the node learns the
    /// file was accepted (it re-sends the file at its next contact, or an
    /// administrator uploads the file through this node).
    pub async fn export_telemetry(&self) -> EngineResult<String> {
        let cmd = crate::command::Command::ExportTelemetry {
            now: self.now(),
            report_id: new_report_id()?,
            seed: crate::tick::random_seed()?,
        };
        self.execute(cmd).await?.text()
    }

    pub(crate) async fn export_telemetry_at(
        &self,
        now: DateTime<Utc>,
        report_id: &str,
        seed: [u8; 32],
    ) -> EngineResult<String> {
        let signed = self.pending_report(now, report_id, Some(seed)).await?;
        let text = signed.render();
        let e = Exported {
            report_id: signed.report.id.clone(),
            period_end: signed.report.period_end,
            text: text.clone(),
        };
        self.commit(|tx, _| {
            let mut s = read_state(tx)?;
            s.exported.push(e.clone());
            if s.exported.len() > MAX_EXPORTED {
                let drop = s.exported.len() - MAX_EXPORTED;
                s.exported.drain(..drop);
            }
            write_state(tx, &s)
        })
        .await?;
        Ok(text)
    }

    /// Admin.UploadTelemetry: checks the file, then forwards it to the
    /// upstream, or to the parent when this node has no upstream (which
    /// forwards it the same way). A file this node signed marks its report
    /// accepted here.
    pub async fn upload_telemetry(&self, text: &str) -> EngineResult<pb::TelemetryReceipt> {
        let file = SignedReport::parse(text)
            .map_err(|e| EngineError::InvalidArgument(format!("telemetry file refused: {e}")))?;
        let receipt = if self.config.has_upstream {
            let ack = self.submit(text).await?;
            pb::TelemetryReceipt {
                report_id: ack.report_id,
                duplicate: ack.duplicate,
                node_id: ack.node_id,
                via: format!("{} > upstream", self.id()),
            }
        } else if self.config.parent.is_some() {
            let r = self.upstream.relay_telemetry(text).await?;
            pb::TelemetryReceipt {
                via: format!("{} > {}", self.id(), r.via),
                ..r
            }
        } else {
            return Err(EngineError::FailedPrecondition(format!(
                "node {} has neither an upstream nor a parent to forward the file to; upload it to the upstream directly (keyfedctl --addr UPSTREAM telemetry upload FILE) or through a connected node",
                self.id()
            )));
        };
        if file.report.node == self.id() {
            self.telemetry_accepted(&file.report, self.now(), false)
                .await?;
        }
        Ok(receipt)
    }

    pub async fn telemetry_status(&self) -> EngineResult<pb::TelemetryStatusReply> {
        let (install, identity, state) = self.telemetry_ready(self.now(), None).await?;
        let due = Self::due_of(&install, &state);
        Ok(pb::TelemetryStatusReply {
            last_accepted: opt_ts(state.last_accepted.as_ref().map(|a| a.period_end)),
            next_due: ts(due),
            days_left: keyfed_core::telemetry::days_left(due, self.now()),
            last_accepted_report_id: state
                .last_accepted
                .as_ref()
                .map(|a| a.report_id.clone())
                .unwrap_or_default(),
            mode: self.telemetry_mode().label().into(),
            period_start: ts(state.period_start.unwrap_or(install.at)),
            installed_at: ts(install.at),
            version: install.version,
            last_attempt: opt_ts(state.last_attempt),
            last_error: state.last_error.unwrap_or_default(),
            exported_report_ids: state.exported.iter().map(|e| e.report_id.clone()).collect(),
            node_id: self.id().into(),
            public_key: identity.public_hex(),
        })
    }

    /// One scheduler tick: sample peaks, warn about due dates; true when it
    /// is time to send. Errors are logged; the next tick tries again.
    pub(crate) async fn telemetry_tick(&self, now: DateTime<Utc>, seed: [u8; 32]) -> bool {
        match self.telemetry_tick_inner(now, seed).await {
            Ok(send) => send,
            Err(e) => {
                tracing::debug!(node = %self.id(), error = %e, "telemetry tick");
                false
            }
        }
    }

    async fn telemetry_tick_inner(&self, now: DateTime<Utc>, seed: [u8; 32]) -> EngineResult<bool> {
        let (install, _, state) = self.telemetry_ready(now, Some(seed)).await?;
        let own = self.own_key_seats()?;
        let mut peaks = state.peaks.clone();
        if raise_peaks(&mut peaks, &own) {
            self.commit(|tx, _| {
                let mut s = read_state(tx)?;
                raise_peaks(&mut s.peaks, &own);
                write_state(tx, &s)
            })
            .await?;
        }
        let mode = self.telemetry_mode();
        let interval = Duration::seconds(self.config.telemetry_interval_secs.max(1));
        let retry = Duration::seconds(self.config.telemetry_retry_secs.max(1));
        // keep the subtree lines the parent reports fresh even when idle
        let has_peer_keys = self.store.keys()?.iter().any(|k| k.origin.peer().is_some());
        if has_peer_keys
            && state
                .last_rollup_refresh
                .is_none_or(|t| now >= t + interval)
        {
            self.refresh_rollups()?;
            self.commit(|tx, _| {
                let mut s = read_state(tx)?;
                s.last_rollup_refresh = Some(now);
                write_state(tx, &s)
            })
            .await?;
        }
        let due = Self::due_of(&install, &state);
        if mode != Mode::ThroughParent {
            self.due_warnings(&state, due, now).await?;
        }
        Ok(mode == Mode::Automatic
            && attempt_now(
                state.last_attempt,
                state.last_error.is_some(),
                due,
                now,
                interval,
                retry,
            ))
    }

    async fn due_warnings(
        &self,
        state: &TelemetryState,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> EngineResult<()> {
        let p = DuePolicy::default();
        let Some(w) = due_warning(due, now, state.warned_soon, state.warned_overdue, &p) else {
            return Ok(());
        };
        let days = keyfed_core::telemetry::days_left(due, now);
        self.commit(|tx, fx| {
            let mut s = read_state(tx)?;
            // re-checked inside the transaction so each warning is given once
            if due_warning(due, now, s.warned_soon, s.warned_overdue, &p) != Some(w) {
                return Ok(());
            }
            let (event, message) = match w {
                DueWarning::DueSoon => {
                    s.warned_soon = Some(due);
                    (keyfed_core::event::EventKind::TelemetryDueSoon, format!("the usage report is due on {} ({days} day(s) left): send it, or export it and upload it (keyfedctl telemetry export)", ts(due)))
                }
                DueWarning::Overdue => {
                    s.warned_overdue = Some(due);
                    (keyfed_core::event::EventKind::TelemetryOverdue, format!("the usage report was due on {} and has not been accepted: the customer's compliance is at risk (t02/t03)", ts(due)))
                }
            };
            write_state(tx, &s)?;
            fx.notify(tx, now, event, "", message, &[("due", ts(due))])
        })
        .await
    }
}
