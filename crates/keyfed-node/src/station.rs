//! The Station service: an endpoint takes a seat of a key covering the
//! components it needs. A station is its fingerprint (b02): reconnecting,
//! reinstalling or connecting twice never takes a second seat. A lease is
//! durable before it is returned. Offline validity, reports, commands and
//! settings arrive with the stations issue.
use crate::convert::ts;
use crate::error::{NodeError, NodeResult};
use crate::node::Node;
use keyfed_core::seats::check_assign;
use keyfed_core::station::StationPolicy;
use keyfed_proto::v1 as pb;
use keyfed_store::{abort, Grant, ObjectKind};
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct StationService {
    pub node: Node,
}

const LATER: &str = "station reports arrive with the stations issue (SPEC o01, o04)";

fn lease_id(key_id: &str, fingerprint: &str) -> String {
    format!("{key_id}/{fingerprint}")
}

impl Node {
    /// Finds or takes one seat for `fingerprint` of a key covering `components`.
    pub async fn attach_station(
        &self,
        fingerprint: &str,
        components: &[String],
    ) -> NodeResult<pb::Lease> {
        if fingerprint.trim().is_empty() {
            return Err(NodeError::InvalidArgument(
                "a station must present its fingerprint".into(),
            ));
        }
        let now = self.now();
        let valid_until = ts(StationPolicy::default().valid_until(now));
        let candidates: Vec<_> = self
            .store
            .keys()?
            .into_iter()
            .filter(|k| {
                k.superseded_by.is_none()
                    && k.key.components.covers(components)
                    && self.key_state(k).writable()
            })
            .collect();
        // b02: a seat it already holds is its seat
        for k in &candidates {
            if self.store.grant(&k.key.id, fingerprint)?.is_some() {
                let id = lease_id(&k.key.id, fingerprint);
                return Ok(pb::Lease {
                    lease_id: id,
                    key_id: k.key.id.clone(),
                    valid_until,
                    licensed: true,
                    ..Default::default()
                });
            }
        }
        for k in &candidates {
            let key_id = k.key.id.clone();
            let taken = self
                .commit(|tx, _| {
                    let Some(k) = tx.key::<NodeError>(&key_id)? else {
                        return Ok(false);
                    };
                    if tx.grant::<NodeError>(&key_id, fingerprint)?.is_some() {
                        return Ok(true);
                    }
                    let used = tx.used::<NodeError>(&key_id)?;
                    if check_assign(&key_id, fingerprint, k.held, used, 1).is_err() {
                        return Ok(false);
                    }
                    tx.put_grant(&Grant {
                        key_id: key_id.clone(),
                        object: fingerprint.into(),
                        kind: ObjectKind::Station,
                        seats: 1,
                        granted_at: now,
                        lent_until: None,
                        delivered: true,
                    })?;
                    Ok(true)
                })
                .await?;
            if taken {
                return Ok(pb::Lease {
                    lease_id: lease_id(&key_id, fingerprint),
                    key_id,
                    valid_until,
                    licensed: true,
                    ..Default::default()
                });
            }
        }
        let wanted = components.join(",");
        let reason = if candidates.is_empty() {
            format!("no active key on {} covers {wanted}", self.id())
        } else {
            format!("every key on {} covering {wanted} is fully used", self.id())
        };
        // b04: a connection refused for want of a seat is worth a warning
        self.commit(|tx, fx| {
            fx.notify(
                tx,
                now,
                "connection-refused",
                "",
                format!("station {fingerprint} refused: {reason}"),
                &[("fingerprint", fingerprint.to_owned())],
            )
        })
        .await?;
        Ok(pb::Lease {
            licensed: false,
            reason,
            ..Default::default()
        })
    }

    pub async fn release_station(&self, lease: &str, fingerprint: &str) -> NodeResult<()> {
        let Some((key_id, fp)) = lease.split_once('/') else {
            return Err(NodeError::InvalidArgument(format!(
                "{lease:?} is not a lease id"
            )));
        };
        if fp != fingerprint {
            return Err(NodeError::InvalidArgument(
                "the lease belongs to another fingerprint".into(),
            ));
        }
        self.commit(|tx, _| match tx.grant::<NodeError>(key_id, fp)? {
            Some(g) if g.kind == ObjectKind::Station => {
                tx.remove_grant::<NodeError>(key_id, fp).map(|_| ())
            }
            _ => abort(NodeError::not_found("lease", lease)),
        })
        .await?;
        self.fill_waiting().await
    }
}

#[tonic::async_trait]
impl pb::station_server::Station for StationService {
    async fn attach(&self, r: Request<pb::ConnectRequest>) -> Result<Response<pb::Lease>, Status> {
        let r = r.into_inner();
        Ok(Response::new(
            self.node
                .attach_station(&r.fingerprint, &r.components)
                .await?,
        ))
    }
    async fn renew(&self, r: Request<pb::RenewRequest>) -> Result<Response<pb::Lease>, Status> {
        let r = r.into_inner();
        let (key_id, fp) = r
            .lease_id
            .split_once('/')
            .ok_or_else(|| Status::invalid_argument("not a lease id"))?;
        let held = fp == r.fingerprint
            && self
                .node
                .store
                .grant(key_id, fp)
                .map_err(NodeError::from)?
                .is_some();
        if !held {
            return Ok(Response::new(pb::Lease {
                licensed: false,
                reason: "the lease is gone; attach again".into(),
                ..Default::default()
            }));
        }
        let valid_until = ts(StationPolicy::default().valid_until(self.node.now()));
        Ok(Response::new(pb::Lease {
            lease_id: r.lease_id.clone(),
            key_id: key_id.into(),
            valid_until,
            licensed: true,
            ..Default::default()
        }))
    }
    async fn release(
        &self,
        r: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseReply>, Status> {
        let r = r.into_inner();
        self.node
            .release_station(&r.lease_id, &r.fingerprint)
            .await?;
        Ok(Response::new(pb::ReleaseReply {}))
    }
    async fn report(&self, _: Request<pb::ReportBatch>) -> Result<Response<pb::ReportAck>, Status> {
        Err(NodeError::Unimplemented(LATER).into())
    }
    async fn ping(&self, _: Request<pb::PingRequest>) -> Result<Response<pb::PingReply>, Status> {
        Ok(Response::new(pb::PingReply {}))
    }
}
