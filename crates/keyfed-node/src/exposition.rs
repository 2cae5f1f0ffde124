//! The `/metrics` endpoint: the gauges read from the store at scrape time,
//! the node's counters, and the small HTTP/1 server answering `GET /metrics`.
use crate::node::Node;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codegen::http;

/// Station states come from a scan of every station record, so a scrape
/// reuses the last count for this long.
const STATION_STATES_TTL: Duration = Duration::from_secs(30);
/// Concurrent scrape connections; more are closed at once.
const MAX_SCRAPE_CONNECTIONS: usize = 16;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Stations by state: a scan of every record, so reused for `STATION_STATES_TTL`.
fn station_states(node: &Node) -> BTreeMap<String, u64> {
    let mut cached = node.metrics.stations.lock().expect("metrics lock");
    if let Some((at, states)) = cached.as_ref() {
        if at.elapsed() < STATION_STATES_TTL {
            return states.clone();
        }
    }
    let mut states: BTreeMap<String, u64> = ["licensed", "unlicensed", "withdrawn", "retired"]
        .into_iter()
        .map(|s| (s.to_owned(), 0))
        .collect();
    match node.engine.list_stations() {
        Ok(list) => {
            for s in list {
                *states.entry(s.state).or_default() += 1;
            }
        }
        Err(e) => tracing::warn!(error = %e, "station states not counted"),
    }
    *cached = Some((Instant::now(), states.clone()));
    states
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    node: String,
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeatLabels {
    key_id: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

fn gauge(v: impl TryInto<i64>) -> Gauge {
    let g = Gauge::default();
    g.set(clamp(v));
    g
}

fn clamp(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

/// The gauges read from the store at scrape time, in a registry of their
/// own. Per key it reads the key and its `used` counter; it never scans
/// grants, and stations at most every 30 s.
fn store_gauges(node: &Node) -> Result<Registry, keyfed_store::StoreError> {
    let mut r = Registry::default();
    let build = Family::<BuildLabels, Gauge>::default();
    build
        .get_or_create(&BuildLabels {
            node: node.id().to_owned(),
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    r.register(
        "keyfed_build_info",
        "the running node and its version",
        build,
    );

    let seats = Family::<SeatLabels, Gauge>::default();
    let store = node.engine.store();
    for k in store.keys()? {
        let used = store.used(&k.key.id)?;
        for (state, n) in [
            ("held", k.held),
            ("used", used),
            ("free", k.held.saturating_sub(used)),
        ] {
            let labels = SeatLabels {
                key_id: k.key.id.clone(),
                state,
            };
            seats.get_or_create(&labels).set(i64::from(n));
        }
    }
    r.register(
        "keyfed_key_seats",
        "seats of a key on this node: held (may hand out), used (granted), free",
        seats,
    );

    let up = Family::<PeerLabels, Gauge>::default();
    let depth = Family::<PeerLabel, Gauge>::default();
    for (peer, role) in node.engine.config().peers() {
        let online = node.engine.peer_meta(&peer).is_some_and(|p| p.online);
        let labels = PeerLabels {
            peer: peer.clone(),
            role: role.as_str(),
        };
        up.get_or_create(&labels).set(i64::from(online));
        let n = store.outbox_depth(&peer)?;
        depth.get_or_create(&PeerLabel { peer }).set(clamp(n));
    }
    r.register(
        "keyfed_peer_up",
        "1 while the federation link to the peer is up",
        up,
    );
    r.register(
        "keyfed_outbox_depth",
        "deliveries queued for the peer and not yet acknowledged",
        depth,
    );

    r.register(
        "keyfed_station_records",
        "stations this node knows of",
        gauge(store.station_count()),
    );
    let states = Family::<StateLabel, Gauge>::default();
    for (state, n) in station_states(node) {
        states.get_or_create(&StateLabel { state }).set(clamp(n));
    }
    r.register(
        "keyfed_stations",
        "stations by state (counted at most every 30 s)",
        states,
    );
    denial_counters(&mut r, store)?;
    Ok(r)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// `keyfed_denials_total{reason}`: the store's durable per-reason counts
/// (issue 12), so they survive restarts and agree with `ListDenials`;
/// every reason shows from the start, at zero.
fn denial_counters(
    r: &mut Registry,
    store: &keyfed_store::Store,
) -> Result<(), keyfed_store::StoreError> {
    let family = Family::<ReasonLabel, Counter>::default();
    let counts = store.denial_counts()?;
    for reason in keyfed_core::denial::DenialReason::ALL {
        let n = counts.get(&reason).copied().unwrap_or(0);
        family
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc_by(n);
    }
    r.register(
        "keyfed_denials",
        "refused station connections and assignments by reason, as the node recorded them",
        family,
    );
    Ok(())
}

/// Renders every metric of `node` as OpenMetrics text.
pub fn render(node: &Node) -> Result<String, keyfed_store::StoreError> {
    let gauges = store_gauges(node)?;
    let mut out = String::new();
    let written = encode_registry(&mut out, &gauges)
        .and_then(|()| encode_registry(&mut out, &node.metrics.registry))
        .and_then(|()| encode_eof(&mut out));
    // writing to a String cannot fail
    debug_assert!(written.is_ok());
    Ok(out)
}

fn respond(node: &Node, req: &http::Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
    let reply = |status: http::StatusCode, body: String| {
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    if req.uri().path() != "/metrics" {
        return reply(
            http::StatusCode::NOT_FOUND,
            "not found: metrics are served at /metrics\n".into(),
        );
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return reply(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "use GET /metrics\n".into(),
        );
    }
    match render(node) {
        Ok(text) => reply(http::StatusCode::OK, text),
        Err(e) => {
            tracing::error!(error = %e, "metrics not rendered");
            reply(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("store unreadable: {e}\n"),
            )
        }
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    node: Node,
    listener: TcpListener,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // e.g. out of file descriptors: do not spin
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // too many scrapers: the connection is dropped
        };
        let node = node.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let reply = respond(&node, &req);
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}
