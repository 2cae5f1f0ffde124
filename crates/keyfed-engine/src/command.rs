//! The engine's API as typed domain commands. Each command carries
//! everything that makes it deterministic: the time it happens at (`now`,
//! stamped by the shell from its clock) and any generated value (a report
//! id, the entropy of the node's identity). The same commands applied in
//! the same order to two engines on equal stores leave equal stores.
//!
//! What needs the upstream (asking for a renewal, sending a usage report)
//! is I/O and stays outside: the wrappers do it and feed its result back as
//! a command ([`Command::RenewalFound`], [`Command::RenewalFailed`]). The
//! public methods the shell calls (`add_key`, `assign`, ...) are thin
//! wrappers that stamp `now` and call [`Engine::execute`].
use crate::engine::Engine;
use crate::error::{EngineError, EngineResult};
use crate::ledger::Unassigned;
use crate::station::{Hello, Settings};
use crate::tick::TickDue;
use chrono::{DateTime, Utc};
use keyfed_core::entitlement::ActivationMode;
use keyfed_store::{Grant, ObjectKind, StoredKey};
use keyfed_wire::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

/// One report a station sends (o01), as a command carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StationReportIn {
    pub report_id: String,
    pub at: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// Admin.AddKey without activation: a vendor key file (r02).
    AddKey { text: String, now: DateTime<Utc> },
    /// Admin.DeleteKey (r08, r12).
    DeleteKey { key_id: String, now: DateTime<Utc> },
    /// Admin.AssignSeats (r13, b01).
    Assign {
        key_id: String,
        object: String,
        seats: u32,
        kind: Option<ObjectKind>,
        donation_days: u32,
        now: DateTime<Utc>,
    },
    /// Admin.UnassignSeats: a grant, or a wait (r11).
    Unassign {
        key_id: String,
        object: String,
        now: DateTime<Utc>,
    },
    /// Admin.AddKey with an activation mode (e05).
    ActivateKey {
        text: String,
        mode: ActivationMode,
        now: DateTime<Utc>,
    },
    /// e04.
    ExtendTrial { key_id: String, now: DateTime<Utc> },
    /// e07.
    ShareSubscription {
        key_id: String,
        tenant: String,
        seats: u32,
        move_it: bool,
        now: DateTime<Utc>,
    },
    /// o03: a command queued for a station or a child.
    QueueCommand {
        object: String,
        command: String,
        now: DateTime<Utc>,
    },
    /// o05.
    SetSettings { text: String, now: DateTime<Utc> },
    /// Station.Attach / Station.Renew.
    StationContact { hello: Hello, now: DateTime<Utc> },
    /// Station.Release.
    ReleaseStation {
        lease_id: String,
        fingerprint: String,
        now: DateTime<Utc>,
    },
    /// Station.Report (o01).
    StationReports {
        fingerprint: String,
        reports: Vec<StationReportIn>,
        now: DateTime<Utc>,
    },
    /// A link to `peer` went up (with its Hello: protocol version, accepts
    /// donations) or down.
    PeerLink {
        peer: String,
        online: bool,
        hello: Option<(u32, bool)>,
        now: DateTime<Utc>,
    },
    /// One delivery from `peer`: an encoded `keyfed.v1.Delivery`.
    Delivery {
        peer: String,
        delivery: Vec<u8>,
        now: DateTime<Utc>,
    },
    /// `peer` acked its outbox up to `seq`.
    Acked {
        peer: String,
        seq: u64,
        now: DateTime<Utc>,
    },
    /// r03 (2)-(3): the upstream holds `text` as the renewal of `key_id`.
    RenewalFound {
        key_id: String,
        text: String,
        now: DateTime<Utc>,
    },
    /// r03: the renewal check of `key_id` ended early with `error`.
    RenewalFailed {
        key_id: String,
        error: String,
        now: DateTime<Utc>,
    },
    /// t01: the pending usage report written as a signed file.
    ExportTelemetry {
        now: DateTime<Utc>,
        report_id: String,
        seed: [u8; 32],
    },
    /// The periodic sweeps; `seed` makes the node's telemetry identity if
    /// it has none yet.
    Tick { now: DateTime<Utc>, seed: [u8; 32] },
}

/// What a command produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Key(StoredKey),
    Grant(Grant),
    Unassigned(Unassigned),
    Queued(keyfed_store::Command),
    Settings(Settings),
    /// A station's lease; with the key's origin when the seat is
    /// provisional until that origin answers (b02).
    Lease(pb::Lease, Option<String>),
    Reports(pb::ReportAck),
    Renewal(pb::RenewalOutcome),
    Text(String),
    Ticked(TickDue),
    Done,
}

fn unexpected(o: &Outcome) -> EngineError {
    EngineError::Internal(format!("unexpected outcome {o:?}"))
}

impl Outcome {
    pub fn key(self) -> EngineResult<StoredKey> {
        match self {
            Self::Key(k) => Ok(k),
            o => Err(unexpected(&o)),
        }
    }
    pub fn grant(self) -> EngineResult<Grant> {
        match self {
            Self::Grant(g) => Ok(g),
            o => Err(unexpected(&o)),
        }
    }
    pub fn lease(self) -> EngineResult<(pb::Lease, Option<String>)> {
        match self {
            Self::Lease(l, origin) => Ok((l, origin)),
            o => Err(unexpected(&o)),
        }
    }
    pub fn renewal(self) -> EngineResult<pb::RenewalOutcome> {
        match self {
            Self::Renewal(r) => Ok(r),
            o => Err(unexpected(&o)),
        }
    }
    pub fn text(self) -> EngineResult<String> {
        match self {
            Self::Text(t) => Ok(t),
            o => Err(unexpected(&o)),
        }
    }
    pub fn ticked(self) -> EngineResult<TickDue> {
        match self {
            Self::Ticked(t) => Ok(t),
            o => Err(unexpected(&o)),
        }
    }
}

impl Engine {
    /// Applies one command: its changes are durable and its effects
    /// published when this returns.
    pub async fn execute(&self, cmd: Command) -> EngineResult<Outcome> {
        use Command as C;
        Ok(match cmd {
            C::AddKey { text, now } => Outcome::Key(self.add_key_at(&text, now).await?),
            C::DeleteKey { key_id, now } => {
                self.delete_key_at(&key_id, now).await?;
                Outcome::Done
            }
            C::Assign {
                key_id,
                object,
                seats,
                kind,
                donation_days,
                now,
            } => Outcome::Grant(
                self.assign_at(&key_id, &object, seats, kind, donation_days, now)
                    .await?,
            ),
            C::Unassign {
                key_id,
                object,
                now,
            } => Outcome::Unassigned(self.unassign_at(&key_id, &object, now).await?),
            C::ActivateKey { text, mode, now } => {
                Outcome::Key(self.activate_key_at(&text, mode, now).await?)
            }
            C::ExtendTrial { key_id, now } => {
                Outcome::Key(self.extend_trial_at(&key_id, now).await?)
            }
            C::ShareSubscription {
                key_id,
                tenant,
                seats,
                move_it,
                now,
            } => Outcome::Key(
                self.share_subscription_at(&key_id, &tenant, seats, move_it, now)
                    .await?,
            ),
            C::QueueCommand {
                object,
                command,
                now,
            } => Outcome::Queued(self.queue_command_at(&object, &command, now).await?),
            C::SetSettings { text, now } => {
                Outcome::Settings(self.set_settings_at(&text, now).await?)
            }
            other => self.execute_link(other).await?,
        })
    }

    /// The commands of stations, peers, the upstream's answers and the tick.
    async fn execute_link(&self, cmd: Command) -> EngineResult<Outcome> {
        use Command as C;
        Ok(match cmd {
            C::StationContact { hello, now } => {
                let (lease, origin) = self.station_contact_at(hello, now).await?;
                Outcome::Lease(lease, origin)
            }
            C::ReleaseStation {
                lease_id,
                fingerprint,
                now,
            } => {
                self.release_station_at(&lease_id, &fingerprint, now)
                    .await?;
                Outcome::Done
            }
            C::StationReports {
                fingerprint,
                reports,
                now,
            } => Outcome::Reports(self.station_reports_at(&fingerprint, &reports, now).await?),
            C::PeerLink {
                peer,
                online,
                hello,
                now,
            } => {
                self.peer_link(&peer, online, hello, now)?;
                Outcome::Done
            }
            C::Delivery {
                peer,
                delivery,
                now,
            } => {
                let d = pb::Delivery::decode(delivery.as_slice()).map_err(|e| {
                    EngineError::InvalidArgument(format!("a truncated or malformed delivery: {e}"))
                })?;
                self.apply_delivery_at(&peer, d, now).await?;
                Outcome::Done
            }
            C::Acked { peer, seq, now } => {
                let entries = self.store.ack(&peer, seq)?;
                self.acked_at(&peer, &entries, now).await?;
                Outcome::Done
            }
            C::RenewalFound { key_id, text, now } => {
                Outcome::Renewal(self.renewal_found_at(&key_id, &text, now).await?)
            }
            C::RenewalFailed { key_id, error, now } => {
                Outcome::Renewal(self.renewal_failed_at(&key_id, &error, now).await?)
            }
            C::ExportTelemetry {
                now,
                report_id,
                seed,
            } => Outcome::Text(self.export_telemetry_at(now, &report_id, seed).await?),
            C::Tick { now, seed } => Outcome::Ticked(self.tick_at(now, seed).await?),
            // every administrator command is matched in `execute`
            other => {
                return Err(EngineError::Internal(format!(
                    "command {other:?} was routed to the wrong handler"
                )))
            }
        })
    }

    // ---- the shell's entry points: stamp `now`, execute -------------------

    /// Admin.AddKey: a vendor key file added by hand (origin: upstream).
    pub async fn add_key(&self, text: &str) -> EngineResult<StoredKey> {
        let now = self.now();
        self.execute(Command::AddKey {
            text: text.to_owned(),
            now,
        })
        .await?
        .key()
    }

    pub async fn delete_key(&self, id: &str) -> EngineResult<()> {
        let now = self.now();
        self.execute(Command::DeleteKey {
            key_id: id.to_owned(),
            now,
        })
        .await
        .map(|_| ())
    }

    pub async fn assign(
        &self,
        key_id: &str,
        object: &str,
        seats: u32,
        kind: Option<ObjectKind>,
        donation_days: u32,
    ) -> EngineResult<Grant> {
        let now = self.now();
        self.execute(Command::Assign {
            key_id: key_id.to_owned(),
            object: object.to_owned(),
            seats,
            kind,
            donation_days,
            now,
        })
        .await?
        .grant()
    }

    pub async fn unassign(&self, key_id: &str, object: &str) -> EngineResult<()> {
        let now = self.now();
        self.execute(Command::Unassign {
            key_id: key_id.to_owned(),
            object: object.to_owned(),
            now,
        })
        .await
        .map(|_| ())
    }

    pub async fn activate_key(&self, text: &str, mode: ActivationMode) -> EngineResult<StoredKey> {
        let now = self.now();
        self.execute(Command::ActivateKey {
            text: text.to_owned(),
            mode,
            now,
        })
        .await?
        .key()
    }

    pub async fn extend_trial(&self, key_id: &str) -> EngineResult<StoredKey> {
        let now = self.now();
        self.execute(Command::ExtendTrial {
            key_id: key_id.to_owned(),
            now,
        })
        .await?
        .key()
    }

    pub async fn share_subscription(
        &self,
        key_id: &str,
        tenant: &str,
        seats: u32,
        move_it: bool,
    ) -> EngineResult<StoredKey> {
        let now = self.now();
        self.execute(Command::ShareSubscription {
            key_id: key_id.to_owned(),
            tenant: tenant.to_owned(),
            seats,
            move_it,
            now,
        })
        .await?
        .key()
    }

    pub async fn queue_command(
        &self,
        object: &str,
        command: &str,
    ) -> EngineResult<keyfed_store::Command> {
        let now = self.now();
        match self
            .execute(Command::QueueCommand {
                object: object.to_owned(),
                command: command.to_owned(),
                now,
            })
            .await?
        {
            Outcome::Queued(c) => Ok(c),
            o => Err(unexpected(&o)),
        }
    }

    pub async fn set_settings(&self, text: &str) -> EngineResult<Settings> {
        let now = self.now();
        match self
            .execute(Command::SetSettings {
                text: text.to_owned(),
                now,
            })
            .await?
        {
            Outcome::Settings(s) => Ok(s),
            o => Err(unexpected(&o)),
        }
    }

    pub async fn release_station(&self, lease: &str, fingerprint: &str) -> EngineResult<()> {
        let now = self.now();
        self.execute(Command::ReleaseStation {
            lease_id: lease.to_owned(),
            fingerprint: fingerprint.to_owned(),
            now,
        })
        .await
        .map(|_| ())
    }

    /// Station.Report: keeps each report once by its id (o01, exactly once
    /// across resends), durably before the ack.
    pub async fn station_reports(&self, batch: pb::ReportBatch) -> EngineResult<pb::ReportAck> {
        let now = self.now();
        let reports = batch
            .reports
            .into_iter()
            .map(|r| StationReportIn {
                report_id: r.report_id,
                at: r.at,
                body: r.body,
            })
            .collect();
        match self
            .execute(Command::StationReports {
                fingerprint: batch.fingerprint,
                reports,
                now,
            })
            .await?
        {
            Outcome::Reports(a) => Ok(a),
            o => Err(unexpected(&o)),
        }
    }

    /// r11: serves objects waiting for seats now (the seat poll does it on
    /// every `seat_poll_secs`).
    pub async fn fill_waiting(&self) -> EngineResult<()> {
        self.fill_waiting_at(self.now()).await
    }
}
