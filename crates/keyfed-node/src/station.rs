//! The Station service. Leases, offline validity and reports arrive with the
//! stations issue; the no-op Ping is here already as the benchmark ceiling.
use crate::error::NodeError;
use crate::node::Node;
use keyfed_proto::v1 as pb;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct StationService {
    pub node: Node,
}

const LATER: &str = "station leases arrive with the stations issue (SPEC o01-o05, b02-b03)";

#[tonic::async_trait]
impl pb::station_server::Station for StationService {
    async fn attach(&self, _: Request<pb::ConnectRequest>) -> Result<Response<pb::Lease>, Status> {
        Err(NodeError::Unimplemented(LATER).into())
    }
    async fn renew(&self, _: Request<pb::RenewRequest>) -> Result<Response<pb::Lease>, Status> {
        Err(NodeError::Unimplemented(LATER).into())
    }
    async fn release(
        &self,
        _: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseReply>, Status> {
        Err(NodeError::Unimplemented(LATER).into())
    }
    async fn report(&self, _: Request<pb::ReportBatch>) -> Result<Response<pb::ReportAck>, Status> {
        Err(NodeError::Unimplemented(LATER).into())
    }
    async fn ping(&self, _: Request<pb::PingRequest>) -> Result<Response<pb::PingReply>, Status> {
        let _ = &self.node;
        Ok(Response::new(pb::PingReply {}))
    }
}
