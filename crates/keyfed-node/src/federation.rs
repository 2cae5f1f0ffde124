//! Links between nodes (DESIGN data flow 4). The dialing side sends Hello,
//! the other side answers with its own; then each side replays every
//! delivery the other has not applied, pushes new ones live, applies what it
//! receives exactly once and acks it. A broken stream only means "offline":
//! the outbox is durable, so nothing is lost.
use crate::config::PeerRole;
use crate::error::NodeError;
pub use crate::links::Links;
use crate::node::Node;
use keyfed_proto::v1 as pb;
use keyfed_proto::v1::federation_client::FederationClient;
use keyfed_proto::v1::link_frame::Frame;
use prost::Message;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a link's pusher looks at the outbox without being woken.
const OUTBOX_RECHECK: Duration = Duration::from_millis(500);

fn hello(node: &Node, peer: &str) -> Result<pb::LinkFrame, NodeError> {
    let role = match node.engine.config().role_of(peer) {
        Some(PeerRole::Parent) => "child",
        _ => "neighbor",
    };
    let allow_receive = node
        .engine
        .config()
        .neighbor(peer)
        .is_none_or(|n| n.allow_receive);
    let store = node.engine.store();
    let cursor = store.cursor(peer)?;
    // issue 15 §3: a node configured as an older protocol speaks it fully,
    // epochs left out
    let epochs = node.config.protocol_version >= keyfed_core::PROTOCOL_VERSION;
    let (store_epoch, peer_epoch_seen, outbox_head) = if epochs {
        (
            store.epoch()?,
            cursor.peer_epoch.clone(),
            cursor.last_queued,
        )
    } else {
        (String::new(), String::new(), 0)
    };
    Ok(pb::LinkFrame {
        frame: Some(Frame::Hello(pb::Hello {
            node_id: node.id().to_owned(),
            protocol_version: node.config.protocol_version,
            last_applied_seq: cursor.applied,
            accepts_donations: allow_receive,
            role: role.into(),
            store_epoch,
            peer_epoch_seen,
            outbox_head,
        })),
    })
}

/// A span per applied delivery: which node, from which peer, which key.
fn delivery_span(node: &Node, peer: &str, d: &pb::Delivery) -> tracing::Span {
    use pb::delivery::Body;
    let (kind, key_id) = match &d.body {
        Some(b @ Body::Withdrawn(w)) => (keyfed_engine::engine::body_name(b), w.key_id.as_str()),
        Some(b @ Body::Renewed(r)) => (keyfed_engine::engine::body_name(b), r.old_key_id.as_str()),
        Some(b @ Body::Claim(c)) => (keyfed_engine::engine::body_name(b), c.key_id.as_str()),
        Some(b) => (keyfed_engine::engine::body_name(b), ""),
        None => ("empty", ""),
    };
    tracing::info_span!("delivery", node = %node.id(), %peer, seq = d.seq, kind, key_id)
}

/// Runs one link until either side drops it or the node shuts down.
async fn session<S>(
    node: Node,
    peer: String,
    peer_hello: pb::Hello,
    mut inbound: S,
    out: mpsc::Sender<Result<pb::LinkFrame, Status>>,
    stop: CancellationToken,
) where
    S: Stream<Item = Result<pb::LinkFrame, Status>> + Unpin,
{
    let link = node.links.open(&peer, stop.clone());
    if let Err(e) = node.engine.set_peer_online(&peer, true, Some(&peer_hello)) {
        tracing::warn!(%peer, error = %e, "could not record link state");
    }
    tracing::info!(node = %node.id(), %peer, protocol = peer_hello.protocol_version, "link up");
    // issue 15 §3: a wiped, restored or copied-back store on either side is
    // reconciled before its sequence numbers are believed
    if let Err(e) = node.engine.reconcile_at_hello(&peer, &peer_hello).await {
        // the link must not run on numbers that drop deliveries as replays
        tracing::warn!(%peer, error = %e, "could not reconcile store epochs; link dropped");
        stop.cancel();
    }
    // what the peer says it applied counts as acked, in case its ack was lost
    match node.engine.store().ack(&peer, peer_hello.last_applied_seq) {
        Ok(done) => {
            if let Err(e) = node.engine.on_acked(&peer, done).await {
                tracing::warn!(%peer, error = %e, "ack bookkeeping failed");
            }
        }
        Err(e) => tracing::warn!(%peer, error = %e, "ack not recorded"),
    }
    let sender_stop = stop.child_token();
    let sender = tokio::spawn(push_outbox(
        node.clone(),
        peer.clone(),
        peer_hello.last_applied_seq,
        out.clone(),
        sender_stop.clone(),
    ));
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => break,
            f = inbound.next() => f,
        };
        let Some(Ok(frame)) = frame else { break };
        match frame.frame {
            Some(Frame::Delivery(d)) => {
                let seq = d.seq;
                let span = delivery_span(&node, &peer, &d);
                if let Err(e) = node.engine.apply_delivery(&peer, d).instrument(span).await {
                    // not acked: the peer replays it on the next link
                    tracing::warn!(%peer, seq, error = %e, "delivery not applied");
                    break;
                }
                if out
                    .send(Ok(pb::LinkFrame {
                        frame: Some(Frame::Ack(pb::Ack { seq })),
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Some(Frame::Ack(a)) => match node.engine.store().ack(&peer, a.seq) {
                Ok(done) => {
                    if let Err(e) = node.engine.on_acked(&peer, done).await {
                        tracing::warn!(%peer, error = %e, "ack bookkeeping failed");
                    }
                }
                Err(e) => tracing::warn!(%peer, error = %e, "ack not recorded"),
            },
            Some(Frame::Hello(_)) | None => {
                tracing::warn!(%peer, "unexpected frame on an open link ignored")
            }
        }
    }
    sender_stop.cancel();
    let _ = sender.await;
    if !node.links.close(&peer, link) {
        tracing::info!(node = %node.id(), %peer, "link replaced by a newer one");
        return;
    }
    if let Err(e) = node.engine.set_peer_online(&peer, false, None) {
        tracing::warn!(%peer, error = %e, "could not record link state");
    }
    tracing::info!(node = %node.id(), %peer, "link down");
}

/// Sends every outbox entry past what the peer applied, then waits for more.
async fn push_outbox(
    node: Node,
    peer: String,
    peer_applied: u64,
    out: mpsc::Sender<Result<pb::LinkFrame, Status>>,
    stop: CancellationToken,
) {
    let wake = node.engine.waker(&peer);
    let mut next = peer_applied + 1;
    loop {
        let entries = match node.engine.store().outbox(&peer) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(%peer, error = %e, "outbox unreadable");
                return;
            }
        };
        let from = next;
        for e in entries.into_iter().filter(|e| e.seq >= from) {
            let mut d = match pb::Delivery::decode(e.body.as_slice()) {
                Ok(d) => d,
                Err(err) => {
                    tracing::error!(%peer, seq = e.seq, error = %err, "outbox entry undecodable; skipped");
                    continue;
                }
            };
            d.seq = e.seq;
            d.message_id = e.message_id.clone();
            if out
                .send(Ok(pb::LinkFrame {
                    frame: Some(Frame::Delivery(d)),
                }))
                .await
                .is_err()
            {
                return;
            }
            next = e.seq + 1;
        }
        // the wake-up is a shared Notify: while a replaced link's pusher is
        // still winding down it may take the permit meant for this one, so
        // the outbox is also looked at every OUTBOX_RECHECK
        tokio::select! {
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(OUTBOX_RECHECK) => {}
            () = out.closed() => return,
        }
    }
}

/// The accepting side of Federation.Link.
#[derive(Clone)]
pub struct FederationService {
    pub node: Node,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

type LinkStream = Pin<Box<dyn Stream<Item = Result<pb::LinkFrame, Status>> + Send>>;

#[tonic::async_trait]
impl pb::federation_server::Federation for FederationService {
    type LinkStream = LinkStream;

    async fn link(
        &self,
        request: Request<Streaming<pb::LinkFrame>>,
    ) -> Result<Response<LinkStream>, Status> {
        let certs = request.peer_certs();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))?;
        // e.g. an oversized or malformed first frame: say so, not "no hello"
        if let Some(Err(s)) = first {
            return Err(s);
        }
        let Some(Ok(pb::LinkFrame {
            frame: Some(Frame::Hello(h)),
        })) = first
        else {
            return Err(Status::invalid_argument("a link starts with a hello frame"));
        };
        let peer = h.node_id.clone();
        crate::tls::check_link_peer(&self.node, certs.as_deref().map(|c| &c[..]), &peer).await?;
        let role = self.node.engine.config().role_of(&peer);
        match role {
            Some(PeerRole::Child | PeerRole::Neighbor) => {}
            Some(PeerRole::Parent) => {
                return Err(Status::permission_denied(format!(
                    "{peer} is this node's parent; a parent does not dial its child"
                )))
            }
            None => {
                tracing::warn!(%peer, "link from an unknown node refused");
                return Err(Status::permission_denied(format!(
                    "node {peer} is not a configured child or neighbor of {}",
                    self.node.id()
                )));
            }
        }
        // both sides of a neighbor pair given an address would replace each
        // other's link forever; the lower node id keeps its own dial
        if self
            .node
            .config
            .neighbor(&peer)
            .is_some_and(|n| n.address.is_some())
            && self.node.id() < peer.as_str()
        {
            return Err(Status::already_exists(format!(
                "{} dials {peer} itself: one link per neighbor pair; leave the address of {} empty in {peer}'s config",
                self.node.id(),
                self.node.id()
            )));
        }
        let (tx, rx) = mpsc::channel(256);
        let reply = hello(&self.node, &peer).map_err(crate::error::status)?;
        tx.send(Ok(reply))
            .await
            .map_err(|_| Status::internal("link closed"))?;
        let stop = self.shutdown.child_token();
        self.tasks
            .spawn(session(self.node.clone(), peer, h, inbound, tx, stop));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Keeps a link to `peer` at `address` open, reconnecting with backoff.
pub async fn dial(node: Node, peer: String, address: String, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    let max = Duration::from_millis(node.config.max_backoff_millis.max(50));
    while !shutdown.is_cancelled() {
        match dial_once(&node, &peer, &address, &shutdown).await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                tracing::debug!(node = %node.id(), %peer, %address, error = %e, "link attempt failed")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(max);
    }
}

async fn dial_once(
    node: &Node,
    peer: &str,
    address: &str,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let endpoint = crate::tls::endpoint(&node.config, address, Some(peer))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let mut client = FederationClient::new(channel);
    let (tx, rx) = mpsc::channel(256);
    tx.send(Ok::<_, Status>(
        hello(node, peer).map_err(|e| e.to_string())?,
    ))
    .await
    .map_err(|e| e.to_string())?;
    let outbound = ReceiverStream::new(rx).filter_map(Result::ok);
    let mut inbound = client
        .link(outbound)
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
        .await
        .map_err(|_| "no hello from peer".to_owned())?;
    let Some(Ok(pb::LinkFrame {
        frame: Some(Frame::Hello(h)),
    })) = first
    else {
        return Err("the peer did not answer with a hello".into());
    };
    if h.node_id != peer {
        return Err(format!(
            "expected node {peer} at {address}, found {}",
            h.node_id
        ));
    }
    session(
        node.clone(),
        peer.to_owned(),
        h,
        inbound,
        tx,
        shutdown.child_token(),
    )
    .await;
    Ok(())
}
