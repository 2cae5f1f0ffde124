//! The engine's [`UpstreamPort`] over gRPC: the vendor upstream's Upstream
//! service (renewals, telemetry) and the parent's Admin service (relayed
//! telemetry files), over TLS when the node has `[tls]`.
use crate::config::NodeConfig;
use crate::error::error_code;
use keyfed_engine::{EngineError, EngineResult, PortFuture, UpstreamPort};
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::upstream_client::UpstreamClient;
use std::time::Duration;
use tonic::transport::Channel;

/// A client of the upstream at `url`, over TLS when the node has `[tls]`.
pub fn upstream_client(config: &NodeConfig, url: &str) -> EngineResult<UpstreamClient<Channel>> {
    let ep = crate::tls::endpoint(config, url, None)
        .map_err(|e| EngineError::InvalidArgument(format!("upstream: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    Ok(UpstreamClient::new(ep.connect_lazy()))
}

pub struct GrpcUpstream {
    config: NodeConfig,
}

impl GrpcUpstream {
    #[must_use]
    pub fn new(config: NodeConfig) -> Self {
        Self { config }
    }

    fn client(&self) -> EngineResult<(String, UpstreamClient<Channel>)> {
        let url = self.config.upstream.clone().ok_or_else(|| {
            EngineError::FailedPrecondition(
                "no upstream is configured on this node (set `upstream` in its config)".into(),
            )
        })?;
        let client = upstream_client(&self.config, &url)?;
        Ok((url, client))
    }
}

fn remote(what: String, s: &tonic::Status) -> EngineError {
    EngineError::Remote {
        code: error_code(s.code()),
        message: format!("{what}: {}", s.message()),
    }
}

impl UpstreamPort for GrpcUpstream {
    fn check_renewal<'a>(&'a self, key_id: &'a str) -> PortFuture<'a, Option<String>> {
        Box::pin(async move {
            let (url, mut client) = self.client()?;
            let avail = client
                .check_renewal(pb::KeyId { id: key_id.into() })
                .await
                .map_err(|s| {
                    EngineError::Upstream(format!(
                        "asking {url} for a renewal of {key_id}: {}",
                        s.message()
                    ))
                })?
                .into_inner();
            Ok(avail.available.then_some(avail.renewal_key_id))
        })
    }

    fn download_key<'a>(&'a self, key_id: &'a str) -> PortFuture<'a, String> {
        Box::pin(async move {
            let (url, mut client) = self.client()?;
            let file = client
                .download_key(pb::KeyId { id: key_id.into() })
                .await
                .map_err(|s| {
                    EngineError::Upstream(format!(
                        "downloading {key_id} from {url}: {}",
                        s.message()
                    ))
                })?
                .into_inner();
            Ok(file.text)
        })
    }

    fn submit_telemetry<'a>(&'a self, text: &'a str) -> PortFuture<'a, pb::TelemetryAck> {
        Box::pin(async move {
            let (url, mut client) = self.client()?;
            client
                .submit_telemetry(pb::TelemetrySubmission { text: text.into() })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| remote(format!("upstream {url}"), &s))
        })
    }

    fn relay_telemetry<'a>(&'a self, text: &'a str) -> PortFuture<'a, pb::TelemetryReceipt> {
        Box::pin(async move {
            let parent = self.config.parent.clone().ok_or_else(|| {
                EngineError::FailedPrecondition("this node has no parent to relay to".into())
            })?;
            let ep = crate::tls::endpoint(&self.config, &parent.address, Some(&parent.node_id))
                .map_err(|e| EngineError::Internal(format!("parent: {e}")))?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30));
            let mut client = pb::admin_client::AdminClient::new(ep.connect_lazy());
            client
                .upload_telemetry(pb::TelemetryFile { text: text.into() })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| remote(format!("via parent {}", parent.node_id), &s))
        })
    }
}
