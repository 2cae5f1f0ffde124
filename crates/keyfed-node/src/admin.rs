//! The Admin gRPC service: a thin mapping from requests to node operations.
use crate::convert;
use crate::error::{NodeError, OrStatus};
use crate::node::Node;
use keyfed_core::names::NameKind;
use keyfed_engine::lifecycle::command_info;
use keyfed_proto::v1 as pb;
use keyfed_store::{ObjectKind, StoredKey};
use std::collections::BTreeMap;
use std::pin::Pin;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct AdminService {
    pub node: Node,
    /// Ends watch streams so a graceful shutdown does not wait on them.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Owns each watch stream's forwarder, so shutdown waits for it.
    pub tasks: tokio_util::task::TaskTracker,
}

type R<T> = Result<Response<T>, Status>;

impl AdminService {
    fn key_info(&self, k: &StoredKey) -> Result<pb::KeyInfo, NodeError> {
        let used = self.node.engine.store().used(&k.key.id)?;
        let state = if k.superseded_by.is_some() {
            "superseded"
        } else if k.merged_into.is_some() {
            "activated"
        } else {
            self.node.engine.key_state(k).label()
        };
        Ok(pb::KeyInfo {
            key: Some(convert::key(
                &k.key,
                &keyfed_core::KeyFile::parse(&k.text)
                    .map(|f| f.signer)
                    .unwrap_or_default(),
            )),
            origin: Some(convert::origin(&k.origin)),
            seats_assigned: used,
            seats_free: k.held.saturating_sub(used),
            state: state.into(),
            key_file_sha256: String::new(),
            seats_entitled: k.entitlement().seats,
            entitled_until: k.entitlement().expires.to_string(),
            merged_into: k.merged_into.clone().unwrap_or_default(),
            trial_extended: k.trial_extended,
            over_limit: self.node.engine.over_limit(k)?,
            owner: k.owner().into(),
        })
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn add_key(&self, r: Request<pb::AddKeyRequest>) -> R<pb::KeyInfo> {
        let r = r.into_inner();
        let k = if r.activation.is_empty() {
            self.node.engine.add_key(&r.key_file).await.status()?
        } else {
            let mode = r
                .activation
                .parse()
                .map_err(NodeError::InvalidArgument)
                .status()?;
            self.node
                .engine
                .activate_key(&r.key_file, mode)
                .await
                .status()?
        };
        Ok(Response::new(self.key_info(&k).status()?))
    }

    async fn list_keys(&self, _: Request<pb::Empty>) -> R<pb::KeyList> {
        let keys = self
            .node
            .engine
            .store()
            .keys()
            .map_err(NodeError::from)
            .status()?;
        let keys = keys
            .iter()
            .map(|k| self.key_info(k))
            .collect::<Result<_, _>>()
            .status()?;
        Ok(Response::new(pb::KeyList { keys }))
    }

    async fn get_key(&self, r: Request<pb::KeyId>) -> R<pb::KeyInfo> {
        Ok(Response::new(
            self.key_info(&self.node.engine.get_key(&r.into_inner().id).status()?)
                .status()?,
        ))
    }

    async fn export_key(&self, r: Request<pb::KeyId>) -> R<pb::KeyFile> {
        Ok(Response::new(pb::KeyFile {
            text: self.node.engine.get_key(&r.into_inner().id).status()?.text,
        }))
    }

    async fn delete_key(&self, r: Request<pb::KeyId>) -> R<pb::Empty> {
        self.node
            .engine
            .delete_key(&r.into_inner().id)
            .await
            .status()?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn assign_seats(&self, r: Request<pb::AssignSeatsRequest>) -> R<pb::GrantInfo> {
        let r = r.into_inner();
        convert::assign_request(&r)?;
        let kind = match pb::ObjectKind::try_from(r.kind).unwrap_or_default() {
            pb::ObjectKind::Unspecified => None,
            pb::ObjectKind::Station => Some(ObjectKind::Station),
            pb::ObjectKind::Server => Some(ObjectKind::Server),
        };
        let g = self
            .node
            .engine
            .assign(&r.key_id, &r.object, r.seats, kind, r.donation_days)
            .await
            .status()?;
        Ok(Response::new(convert::grant(&g)))
    }

    async fn unassign_seats(&self, r: Request<pb::UnassignSeatsRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        convert::name(NameKind::KeyId, &r.key_id)?;
        convert::name(NameKind::Object, &r.object)?;
        self.node
            .engine
            .unassign(&r.key_id, &r.object)
            .await
            .status()?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn list_objects(&self, r: Request<pb::ListObjectsRequest>) -> R<pb::ObjectList> {
        let page = crate::object_pages::page(objects(&self.node)?, &r.into_inner())
            .map_err(NodeError::InvalidArgument)
            .status()?;
        Ok(Response::new(page))
    }

    async fn list_notifications(
        &self,
        r: Request<pb::ListNotificationsRequest>,
    ) -> R<pb::NotificationList> {
        let ns = self
            .node
            .engine
            .notifications_after(r.into_inner().after_seq)
            .status()?;
        Ok(Response::new(pb::NotificationList {
            notifications: ns.iter().map(convert::notification).collect(),
        }))
    }

    type WatchNotificationsStream =
        Pin<Box<dyn Stream<Item = Result<pb::Notification, Status>> + Send>>;

    async fn watch_notifications(
        &self,
        r: Request<pb::ListNotificationsRequest>,
    ) -> R<Self::WatchNotificationsStream> {
        // subscribe first so nothing falls between the stored list and the live feed
        let live = tokio_stream::wrappers::BroadcastStream::new(self.node.engine.subscribe());
        let stored = self
            .node
            .engine
            .notifications_after(r.into_inner().after_seq)
            .status()?;
        let mut last = stored.last().map_or(0, |n| n.seq);
        let backlog = tokio_stream::iter(stored.into_iter().map(|n| Ok(convert::notification(&n))));
        let live = live.filter_map(move |n| match n {
            Ok(n) if n.seq > last => {
                last = n.seq;
                Some(Ok(convert::notification(&n)))
            }
            Ok(_) => None,
            Err(_) => Some(Err(Status::data_loss(
                "the watcher fell behind; list notifications after the last seq seen",
            ))),
        });
        let mut feed = Box::pin(backlog.chain(live));
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            loop {
                let item = tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    item = feed.next() => item,
                };
                let Some(item) = item else { return };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn status(&self, _: Request<pb::Empty>) -> R<pb::NodeStatus> {
        let n = &self.node;
        let keys = n.engine.store().keys().map_err(NodeError::from).status()?;
        let mut warnings = Vec::new();
        for k in keys
            .iter()
            .filter(|k| k.superseded_by.is_none() && k.merged_into.is_none())
        {
            let used = n
                .engine
                .store()
                .used(&k.key.id)
                .map_err(NodeError::from)
                .status()?;
            if used > k.held {
                // e06: say who is over the limit
                warnings.push(format!(
                    "key {} is over-allocated: {used} granted of {}; over the limit: {}; new grants refused until fixed",
                    k.key.id,
                    k.held,
                    n.engine.over_limit(k).status()?.join(", ")
                ));
            }
            match n.engine.key_state(k) {
                keyfed_core::lifecycle::KeyState::Grace { until } => warnings.push(format!(
                    "key {} expired: in grace until {}, read-only",
                    k.key.id,
                    convert::ts(until)
                )),
                keyfed_core::lifecycle::KeyState::Suspended { .. } => warnings.push(format!(
                    "key {} is suspended: {used} seat(s) withdrawn until a renewal arrives",
                    k.key.id
                )),
                keyfed_core::lifecycle::KeyState::Active => {}
            }
        }
        if n.config.upstream.is_none() {
            warnings.push("no upstream configured: automatic renewal cannot run".into());
        }
        // the objects `ListObjects` lists, by the same definition
        let objects = objects(n)?.len();
        Ok(Response::new(pb::NodeStatus {
            node_id: n.id().into(),
            version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: n.config.protocol_version,
            now: convert::ts(n.engine.now()),
            keys: u32::try_from(keys.len()).unwrap_or(u32::MAX),
            objects: u32::try_from(objects).unwrap_or(u32::MAX),
            notifications: u32::try_from(n.engine.store().notification_count()).unwrap_or(u32::MAX),
            warnings,
            data_dir: n.config.data_dir.display().to_string(),
        }))
    }

    async fn check_for_updates(
        &self,
        r: Request<pb::CheckForUpdatesRequest>,
    ) -> R<pb::RenewalReport> {
        let id = r.into_inner().key_id;
        let outcomes = self
            .node
            .engine
            .check_for_updates((!id.is_empty()).then_some(id.as_str()))
            .await
            .status()?;
        Ok(Response::new(pb::RenewalReport { outcomes }))
    }

    async fn list_peers(&self, _: Request<pb::Empty>) -> R<pb::PeerList> {
        let n = &self.node;
        let mut peers = Vec::new();
        for (id, role) in n.engine.config().peers() {
            let meta = n.engine.peer_meta(&id).unwrap_or_default();
            let address = match role {
                crate::config::PeerRole::Parent => {
                    n.config.parent.as_ref().map(|p| p.address.clone())
                }
                crate::config::PeerRole::Neighbor => n
                    .engine
                    .config()
                    .neighbor(&id)
                    .and_then(|x| x.address.clone()),
                crate::config::PeerRole::Child => None,
            };
            peers.push(pb::PeerInfo {
                outbox_depth: n
                    .engine
                    .store()
                    .outbox_depth(&id)
                    .map_err(NodeError::from)
                    .status()?,
                node_id: id,
                role: role.as_str().into(),
                address: address.unwrap_or_else(|| "(dials in)".into()),
                protocol_version: meta.protocol_version,
                online: meta.online,
                since: convert::opt_ts(meta.since),
            });
        }
        Ok(Response::new(pb::PeerList { peers }))
    }

    async fn usage(&self, r: Request<pb::UsageRequest>) -> R<pb::UsageReport> {
        let r = r.into_inner();
        let rows = self.node.engine.usage_rows(r.tree).status()?;
        let rows = rows
            .into_iter()
            .filter(|u| r.key_id.is_empty() || u.key_id == r.key_id)
            .collect();
        Ok(Response::new(pb::UsageReport { rows }))
    }

    async fn queue_command(&self, r: Request<pb::QueueCommandRequest>) -> R<pb::CommandInfo> {
        let r = r.into_inner();
        convert::name(NameKind::Object, &r.object)?;
        let c = self
            .node
            .engine
            .queue_command(&r.object, &r.command)
            .await
            .status()?;
        let c = self
            .node
            .engine
            .store()
            .commands_of(&c.object)
            .map_err(NodeError::from)
            .status()?
            .into_iter()
            .find(|x| x.id == c.id)
            .unwrap_or(c);
        Ok(Response::new(command_info(
            &c,
            self.node.config.stations.command_keep_days,
        )))
    }

    async fn list_commands(&self, _: Request<pb::Empty>) -> R<pb::CommandList> {
        let keep = self.node.config.stations.command_keep_days;
        let commands = self
            .node
            .engine
            .store()
            .commands()
            .map_err(NodeError::from)
            .status()?
            .iter()
            .map(|c| command_info(c, keep))
            .collect();
        Ok(Response::new(pb::CommandList { commands }))
    }

    async fn subscription_report(&self, _: Request<pb::Empty>) -> R<pb::SubscriptionList> {
        Ok(Response::new(pb::SubscriptionList {
            subscriptions: self.node.engine.subscriptions().status()?,
        }))
    }

    async fn share_subscription(
        &self,
        r: Request<pb::ShareSubscriptionRequest>,
    ) -> R<pb::SubscriptionInfo> {
        let r = r.into_inner();
        convert::name(NameKind::KeyId, &r.key_id)?;
        convert::name(NameKind::Tenant, &r.tenant)?;
        self.node
            .engine
            .share_subscription(&r.key_id, &r.tenant, r.seats, r.r#move)
            .await
            .status()?;
        let row = self
            .node
            .engine
            .subscriptions()
            .status()?
            .into_iter()
            .find(|s| s.key_id == r.key_id && s.customer == r.tenant)
            .unwrap_or_default();
        Ok(Response::new(row))
    }

    async fn extend_trial(&self, r: Request<pb::KeyId>) -> R<pb::KeyInfo> {
        let k = self
            .node
            .engine
            .extend_trial(&r.into_inner().id)
            .await
            .status()?;
        Ok(Response::new(self.key_info(&k).status()?))
    }

    async fn get_settings(&self, _: Request<pb::Empty>) -> R<pb::StationSettings> {
        let s = self.node.engine.settings().status()?;
        Ok(Response::new(pb::StationSettings {
            settings: s.text,
            version: s.version,
        }))
    }

    async fn set_settings(&self, r: Request<pb::StationSettings>) -> R<pb::StationSettings> {
        let s = self
            .node
            .engine
            .set_settings(&r.into_inner().settings)
            .await
            .status()?;
        Ok(Response::new(pb::StationSettings {
            settings: s.text,
            version: s.version,
        }))
    }

    async fn list_stations(&self, r: Request<pb::ListStationsRequest>) -> R<pb::StationList> {
        let page = self.node.engine.station_page(&r.into_inner()).status()?;
        Ok(Response::new(pb::StationList {
            stations: page.stations,
            next_page_token: page.next_page_token,
            total: page.total,
            total_capped: page.total_capped,
        }))
    }

    async fn telemetry_status(&self, _: Request<pb::Empty>) -> R<pb::TelemetryStatusReply> {
        Ok(Response::new(
            self.node.engine.telemetry_status().await.status()?,
        ))
    }

    async fn export_telemetry(&self, _: Request<pb::Empty>) -> R<pb::TelemetryFile> {
        let text = self.node.engine.export_telemetry().await.status()?;
        Ok(Response::new(pb::TelemetryFile { text }))
    }

    async fn upload_telemetry(&self, r: Request<pb::TelemetryFile>) -> R<pb::TelemetryReceipt> {
        let text = r.into_inner().text;
        Ok(Response::new(
            self.node.engine.upload_telemetry(&text).await.status()?,
        ))
    }

    async fn list_audit(&self, r: Request<pb::ListAuditRequest>) -> R<pb::AuditList> {
        Ok(Response::new(
            crate::audit::list(&self.node, &r.into_inner()).status()?,
        ))
    }

    type BackupStream = crate::backup::BackupStream;

    async fn backup(&self, _: Request<pb::BackupRequest>) -> R<Self::BackupStream> {
        Ok(Response::new(
            crate::backup::stream(&self.node).await.status()?,
        ))
    }

    async fn usage_history(&self, r: Request<pb::UsageHistoryRequest>) -> R<pb::UsageHistoryReply> {
        let reply = self.node.engine.usage_history(&r.into_inner()).status()?;
        Ok(Response::new(reply))
    }

    async fn list_denials(&self, r: Request<pb::ListDenialsRequest>) -> R<pb::DenialList> {
        Ok(Response::new(
            crate::denials::list(&self.node, &r.into_inner()).status()?,
        ))
    }

    async fn list_webhooks(&self, _: Request<pb::Empty>) -> R<pb::WebhookList> {
        Ok(Response::new(self.node.webhooks.list()))
    }

    async fn advance_clock(&self, r: Request<pb::AdvanceClockRequest>) -> R<pb::ClockReply> {
        let secs = r.into_inner().seconds;
        let manual = self.node.engine.clock().as_manual().filter(|_| self.node.config.debug_clock).ok_or_else(|| {
            NodeError::FailedPrecondition("this node runs on the system clock; AdvanceClock needs debug_clock = true and a manual clock".into())
        }).status()?;
        if secs < 0 {
            return Err(crate::error::status(NodeError::InvalidArgument(
                "the clock only moves forward".into(),
            )));
        }
        let now = manual.advance(chrono::Duration::seconds(secs));
        Ok(Response::new(pb::ClockReply {
            now: convert::ts(now),
        }))
    }
}

/// The node's objects: everything holding seats of a key (a station, a
/// child or neighbor) or waiting for them. `ListObjects` lists them and
/// `Status` counts them, so the two never disagree.
fn objects(node: &Node) -> Result<BTreeMap<String, pb::ObjectInfo>, Status> {
    let mut objects: BTreeMap<String, pb::ObjectInfo> = BTreeMap::new();
    for g in node
        .engine
        .store()
        .all_grants()
        .map_err(NodeError::from)
        .status()?
    {
        let o = objects
            .entry(g.object.clone())
            .or_insert_with(|| pb::ObjectInfo {
                name: g.object.clone(),
                kind: convert::object_kind(g.kind).into(),
                state: "licensed".into(),
                ..Default::default()
            });
        o.grants.push(convert::grant(&g));
    }
    for w in node
        .engine
        .store()
        .waiting()
        .map_err(NodeError::from)
        .status()?
    {
        objects
            .entry(w.object.clone())
            .or_insert_with(|| pb::ObjectInfo {
                name: w.object.clone(),
                kind: convert::object_kind(w.kind).into(),
                state: format!("waiting for {} seat(s) of {}", w.seats, w.key_id),
                ..Default::default()
            });
    }
    Ok(objects)
}
