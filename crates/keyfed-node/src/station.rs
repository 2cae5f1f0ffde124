//! The Station service on the wire; the rules are the engine's
//! (`keyfed_engine::station`).
use crate::convert;
use crate::error::OrStatus;
use crate::node::Node;
use keyfed_core::names::NameKind;
use keyfed_engine::Hello;
use keyfed_proto::v1 as pb;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct StationService {
    pub node: Node,
}

#[tonic::async_trait]
impl pb::station_server::Station for StationService {
    async fn attach(&self, r: Request<pb::ConnectRequest>) -> Result<Response<pb::Lease>, Status> {
        let r = r.into_inner();
        convert::station_hello(&r.fingerprint, &r.station_id, &r.components, &r.tenant)?;
        let hello = Hello::from(r);
        Ok(Response::new(
            self.node.engine.station_contact(hello).await.status()?,
        ))
    }
    async fn renew(&self, r: Request<pb::RenewRequest>) -> Result<Response<pb::Lease>, Status> {
        let r = r.into_inner();
        convert::station_hello(&r.fingerprint, &r.station_id, &r.components, &r.tenant)?;
        let hello = Hello::from(r);
        Ok(Response::new(
            self.node.engine.station_contact(hello).await.status()?,
        ))
    }
    async fn release(
        &self,
        r: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseReply>, Status> {
        let r = r.into_inner();
        convert::name(NameKind::Fingerprint, &r.fingerprint)?;
        self.node
            .engine
            .release_station(&r.lease_id, &r.fingerprint)
            .await
            .status()?;
        Ok(Response::new(pb::ReleaseReply {}))
    }
    async fn report(&self, r: Request<pb::ReportBatch>) -> Result<Response<pb::ReportAck>, Status> {
        Ok(Response::new(
            self.node
                .engine
                .station_reports(r.into_inner())
                .await
                .status()?,
        ))
    }
    async fn ping(&self, _: Request<pb::PingRequest>) -> Result<Response<pb::PingReply>, Status> {
        Ok(Response::new(pb::PingReply {}))
    }
}
