//! The keyfed node as a library: `run(config, listener, clock, shutdown)`
//! serves the Admin, Federation and Station services (plus health and
//! reflection) on one port, keeps links to its parent and neighbors, and runs
//! the scheduler, until `shutdown` is cancelled; then it flushes the store.
//! With `metrics_listen` and `api_listen` it also serves `/metrics` and the
//! JSON/HTTP API (`/api/v1`), each on a listener of its own.
pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod config;
mod console;
pub mod convert;
pub mod denials;
pub mod error;
pub mod exposition;
pub mod federation;
pub mod hooks;
pub mod links;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod object_pages;
pub mod pki;
pub mod sandbox;
pub mod scheduler;
pub mod station;
pub mod tls;
pub mod upstream;
pub mod webhooks;

pub use config::NodeConfig;
pub use node::Node;

use keyfed_core::SharedClock;
use keyfed_proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest gRPC message a node decodes; key files are a few hundred bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// HTTP/2 streams one client connection may have open at once (a station
/// fleet behind one proxy still fits; one client cannot hold every task).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// How long open calls may take to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = bind(config.metrics_listen, "metrics", "metrics_listen").await?;
    run_with_metrics(config, listener, metrics, clock, shutdown).await
}

async fn bind(
    addr: Option<std::net::SocketAddr>,
    what: &str,
    setting: &str,
) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|e| anyhow::anyhow!("binding the {what} address {addr} ({setting}): {e}"))
}

/// [`run`] with the `/metrics` listener already bound (tests bind
/// `127.0.0.1:0` and read the address back); `None` serves no metrics.
/// The API, if `api_listen` is set, is bound here at that address.
pub async fn run_with_metrics(
    config: NodeConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api = bind(config.api_listen, "API", "api_listen").await?;
    run_with_listeners(config, listener, metrics_listener, api, clock, shutdown).await
}

/// [`run`] with the `/metrics` and `/api/v1` listeners already bound (or
/// `None`: not served), whatever `metrics_listen` and `api_listen` say.
pub async fn run_with_listeners(
    config: NodeConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    api_listener: Option<TcpListener>,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let in_data_dir = |what: &str, e: &dyn std::fmt::Display| {
        anyhow::anyhow!("{what} {} (data_dir, KEYFED_DATA_DIR or --data-dir): {e}; the node needs a directory it can write", config.data_dir.display())
    };
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| in_data_dir("creating the data directory", &e))?;
    let server_tls = tls::server_config(&config).map_err(anyhow::Error::msg)?;
    let api_tls = api::tls_config(&config).map_err(anyhow::Error::msg)?;
    let admin_auth = auth::AdminAuth::from_config(&config).map_err(anyhow::Error::msg)?;
    let webhooks = webhooks::Webhooks::from_config(&config.webhooks, |v| std::env::var(v).ok())
        .map_err(anyhow::Error::msg)?;
    // the store's own error stays inside (a test or operator tool can
    // downcast it); the message names the data dir and its setting
    let store = open_store(&config).map_err(|e| {
        let why = format!("{e}");
        e.context(format!(
            "opening the store in the data directory {} (data_dir, KEYFED_DATA_DIR or --data-dir): {why}",
            config.data_dir.display()
        ))
    })?;
    let tasks = TaskTracker::new();
    let metrics = Arc::new(metrics::Metrics::default());
    let mut sinks: Vec<Arc<dyn keyfed_engine::EventSink>> = vec![metrics.clone()];
    if let Some(hook) = config.hook.clone() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tasks.spawn(hooks::run_hooks(
            hook,
            config.node_id.clone(),
            store.clone(),
            rx,
            shutdown.clone(),
        ));
        sinks.push(Arc::new(hooks::HookSink(tx)));
    }
    let engine = keyfed_engine::Engine::new(keyfed_engine::EngineParts {
        config: config.engine_config(),
        store: store.clone(),
        clock,
        upstream: Arc::new(upstream::GrpcUpstream::new(config.clone())),
        sinks,
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
    })?;
    let node = Node::new(engine, config, metrics, webhooks);
    webhooks::Webhooks::start(&node, &tasks, &shutdown);
    import_key_dir(&node).await;

    for (peer, address) in node.config.dialed_peers() {
        tasks.spawn(federation::dial(
            node.clone(),
            peer,
            address,
            shutdown.clone(),
        ));
    }
    tasks.spawn(scheduler::run(node.clone(), shutdown.clone()));
    if let Some(l) = metrics_listener {
        tracing::info!(node = %node.id(), addr = %l.local_addr()?, "serving Prometheus metrics at /metrics");
        tasks.spawn(exposition::serve(
            node.clone(),
            l,
            tasks.clone(),
            shutdown.clone(),
        ));
    }

    // one guarded Admin service: the gRPC port and the JSON API share its
    // tokens, roles, audit trail and errors
    let admin = auth::AdminGuard::new(
        pb::admin_server::AdminServer::new(admin::AdminService {
            node: node.clone(),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES),
        admin_auth,
        node.clone(),
    );
    if let Some(l) = api_listener {
        tracing::info!(node = %node.id(), addr = %l.local_addr()?, tls = api_tls.is_some(), "serving the JSON API at /api/v1");
        tasks.spawn(api::serve(
            admin.clone(),
            api::HostCheck::for_config(&node.config),
            l,
            api_tls,
            tasks.clone(),
            shutdown.clone(),
        ));
    }

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::admin_server::AdminServer<admin::AdminService>>()
        .await;
    health_reporter
        .set_serving::<pb::federation_server::FederationServer<federation::FederationService>>()
        .await;
    health_reporter
        .set_serving::<pb::station_server::StationServer<station::StationService>>()
        .await;
    tasks.spawn(not_serving_once_poisoned(
        store.clone(),
        health_reporter.clone(),
        shutdown.clone(),
    ));
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let fed = federation::FederationService {
        node: node.clone(),
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
    };
    tracing::info!(node = %node.id(), addr = %listener.local_addr()?, tls = server_tls.is_some(), "keyfed node serving");
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = server_tls {
        builder = builder.tls_config(t)?;
    }
    let node_id = node.id().to_owned();
    let server = builder
        // a span per RPC, so every log line of a call says which node and method
        .trace_fn(
            move |req| tracing::info_span!("rpc", node = %node_id, method = %req.uri().path()),
        )
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .layer(metrics::RpcMetricsLayer::new(node.metrics.clone()))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(admin)
        .add_service(
            pb::federation_server::FederationServer::new(fed)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(tls::RequireClientCert::station(
            &node.config,
            pb::station_server::StationServer::new(station::StationService { node: node.clone() })
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        ))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );
    // graceful shutdown waits for open streams; give them a bounded grace
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        r = server => r?,
        () = grace => tracing::warn!(node = %node.id(), "open calls did not finish within the shutdown grace; closing"),
    }
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop within 10 s");
    }
    store.flush()?;
    tracing::info!(node = %node.id(), "keyfed node stopped, store flushed");
    Ok(())
}

/// Opens the node's store; a damaged one is refused with the store's own
/// error (it names the file and says to restore from a backup), so the node
/// never serves a half-read ledger.
fn open_store(config: &NodeConfig) -> anyhow::Result<keyfed_store::Store> {
    refuse_oversized_writes();
    let dir = keyfed_store::snapshot::store_dir(&config.data_dir);
    let store =
        keyfed_store::Store::open_with_cache(&dir, config.store_cache_mb.max(1) * 1024 * 1024)
            .inspect_err(|e| tracing::error!(error = %e, "the store cannot be opened"))?;
    store.on_poison({
        let dir = dir.display().to_string();
        move || tracing::error!(store = %dir, "a write could not be made durable: the store serves nothing until restart")
    });
    Ok(store)
}

/// A write past the file size limit (`RLIMIT_FSIZE`) must fail with EFBIG
/// and be refused like a full disk, not kill the node with SIGXFSZ. Tokio
/// keeps a handler, once installed, for the life of the process.
fn refuse_oversized_writes() {
    #[cfg(unix)]
    if let Err(e) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ))
    {
        tracing::warn!(error = %e, "cannot catch SIGXFSZ: a file size limit would end the node");
    }
}

/// b06: once the store is poisoned (a failed sync), health says NOT_SERVING
/// for every service, so a balancer or orchestrator stops sending work.
async fn not_serving_once_poisoned(
    store: keyfed_store::Store,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let poisoned = Arc::new(tokio::sync::Notify::new());
    store.on_poison({
        let poisoned = poisoned.clone();
        move || poisoned.notify_one()
    });
    tokio::select! {
        () = shutdown.cancelled() => return,
        () = poisoned.notified() => {}
    }
    health
        .set_not_serving::<pb::admin_server::AdminServer<admin::AdminService>>()
        .await;
    health
        .set_not_serving::<pb::federation_server::FederationServer<federation::FederationService>>()
        .await;
    health
        .set_not_serving::<pb::station_server::StationServer<station::StationService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
}

/// The services a node's port serves, as reflection lists them.
pub const SERVED_SERVICES: [&str; 6] = [
    "keyfed.v1.Admin",
    "keyfed.v1.Federation",
    "keyfed.v1.Station",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// gRPC reflection in both versions clients speak (`v1`, and `v1alpha` for
/// grpcio-reflection, older grpcurl and GUI clients), listing exactly the
/// services this port serves (not the upstream's, though its proto is in the
/// same descriptor set).
#[allow(clippy::type_complexity)]
fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        SERVED_SERVICES.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(keyfed_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                )
                .include_reflection_service(false),
            |b, name| b.with_service_name(*name),
        )
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// r12: vendor key files dropped in the key folder are added at start,
/// except ones the administrator deleted.
async fn import_key_dir(node: &Node) {
    let dir = node.config.key_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "key") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(file) = keyfed_core::KeyFile::parse(&text) else {
            tracing::warn!(path = %path.display(), "not a key file; left alone");
            continue;
        };
        let id = &file.key.id;
        let store = node.engine.store();
        if store
            .meta(&format!("deleted:{id}"))
            .ok()
            .flatten()
            .is_some()
            || store.key(id).ok().flatten().is_some()
        {
            continue;
        }
        match node.engine.add_key(&text).await {
            Ok(_) => {
                tracing::info!(path = %path.display(), key_id = %id, "key imported from the key folder")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "key file in the key folder refused")
            }
        }
    }
}
