//! The JSON/HTTP API at `/api/v1/...` on its own listener (`api_listen`):
//! the Admin reads and the everyday writes in the protobuf JSON mapping.
//! Each request becomes one unary call to the same
//! `AdminGuard<AdminServer<AdminService>>` the gRPC port serves, so tokens,
//! roles, the audit trail and error messages are the Admin service's own.
use crate::admin::AdminService;
use crate::auth::{code_name, AdminGuard};
use crate::config::NodeConfig;
use bytes::Bytes;
pub use host::HostCheck;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use keyfed_proto::v1 as pb;
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};

mod denials;
pub(crate) mod events;
mod host;
mod pages;
pub(crate) mod usage;

/// The Admin service as the gRPC port serves it: behind the guard.
pub type GuardedAdmin = AdminGuard<pb::admin_server::AdminServer<AdminService>>;

/// Largest request body the API reads (a key file is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = crate::MAX_MESSAGE_BYTES;
/// Concurrent API connections; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const JSON: &str = "application/json";

type Reply = http::Response<Full<Bytes>>;
/// Any reply: a whole one or the event stream.
pub(crate) type ApiBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the guard learns about the connection: the caller's address and,
/// on TLS, its verified certificate chain (the same extensions tonic sets).
#[derive(Clone)]
enum Conn {
    Tcp(TcpConnectInfo),
    Tls(TlsConnectInfo<TcpConnectInfo>),
}

/// An error as the API answers it: an HTTP status and
/// `{"code": "NOT_FOUND", "message": "..."}` with the gRPC code's name.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) http: http::StatusCode,
    pub(crate) code: Code,
    pub(crate) message: String,
    allow: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            http: http_status(code),
            code,
            message: message.into(),
            allow: None,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub(crate) fn with_http(mut self, http: http::StatusCode) -> Self {
        self.http = http;
        self
    }

    pub(crate) fn reply(self) -> Reply {
        let body = serde_json::json!({ "code": code_name(self.code), "message": self.message });
        let mut r = json_reply(self.http, &body);
        if let Some(allow) = self.allow {
            r.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
        }
        r
    }
}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        Self::new(s.code(), s.message())
    }
}

/// The HTTP status of a gRPC code, as `google.rpc.Code` documents it.
#[must_use]
pub fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as H;
    match code {
        Code::Ok => H::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => H::BAD_REQUEST,
        Code::Unauthenticated => H::UNAUTHORIZED,
        Code::PermissionDenied => H::FORBIDDEN,
        Code::NotFound => H::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => H::CONFLICT,
        Code::ResourceExhausted => H::TOO_MANY_REQUESTS,
        // 499 "client closed request" is not a registered status
        Code::Cancelled => H::from_u16(499).unwrap_or(H::BAD_REQUEST),
        Code::Unimplemented => H::NOT_IMPLEMENTED,
        Code::Unavailable => H::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => H::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => H::INTERNAL_SERVER_ERROR,
    }
}

fn json_reply(status: http::StatusCode, value: &impl Serialize) -> Reply {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, JSON)
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// One API request on its way to the Admin service.
pub(crate) struct Call {
    pub(crate) admin: GuardedAdmin,
    host_check: HostCheck,
    conn: Conn,
    pub(crate) authorization: Option<http::HeaderValue>,
}

impl Call {
    /// Sends the Admin RPC `rpc` with `req` through the guard. Returns the
    /// reply's head and body once the head says the call was taken; a
    /// refusal (a trailers-only reply) is its status as an [`ApiError`].
    pub(crate) async fn send<Req: Message>(
        &self,
        rpc: &str,
        req: &Req,
    ) -> Result<(http::response::Parts, Body), ApiError> {
        // a gRPC frame: uncompressed flag, 4-byte length, the message
        let len = req.encoded_len();
        let mut frame = Vec::with_capacity(5 + len);
        frame.push(0);
        frame.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        req.encode(&mut frame)
            .map_err(|e| ApiError::new(Code::Internal, format!("encoding {rpc}: {e}")))?;
        let mut grpc = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("/keyfed.v1.Admin/{rpc}"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(Body::new(Full::new(Bytes::from(frame))))
            .map_err(|e| ApiError::new(Code::Internal, format!("building {rpc}: {e}")))?;
        if let Some(a) = &self.authorization {
            grpc.headers_mut()
                .insert(http::header::AUTHORIZATION, a.clone());
        }
        match &self.conn {
            Conn::Tcp(c) => {
                grpc.extensions_mut().insert(c.clone());
            }
            Conn::Tls(c) => {
                grpc.extensions_mut().insert(c.clone());
            }
        }
        let mut admin = self.admin.clone();
        let Ok(()) = std::future::poll_fn(|cx| admin.poll_ready(cx)).await;
        let Ok(resp) = admin.call(grpc).await;
        let (parts, body) = resp.into_parts();
        // a refusal is trailers-only: grpc-status is then a header
        match Status::from_header_map(&parts.headers) {
            Some(s) if s.code() != Code::Ok => Err(s.into()),
            _ => Ok((parts, body)),
        }
    }

    /// The unary Admin RPC `rpc` with `req`; its reply in the JSON
    /// mapping, or its status as an [`ApiError`].
    async fn unary<Req, Resp>(&self, rpc: &str, req: &Req) -> Result<Reply, ApiError>
    where
        Req: Message,
        Resp: Message + Default + Serialize,
    {
        let msg: Resp = self.message(rpc, req).await?;
        Ok(json_reply(http::StatusCode::OK, &msg))
    }

    /// The unary Admin RPC `rpc` with `req`; its reply message.
    pub(crate) async fn message<Req, Resp>(&self, rpc: &str, req: &Req) -> Result<Resp, ApiError>
    where
        Req: Message,
        Resp: Message + Default,
    {
        let (parts, body) = self.send(rpc, req).await?;
        let collected = body.collect().await?;
        let status = Status::from_header_map(&parts.headers)
            .or_else(|| collected.trailers().and_then(Status::from_header_map));
        match status {
            Some(s) if s.code() == Code::Ok => {}
            Some(s) => return Err(s.into()),
            None => {
                return Err(ApiError::new(
                    Code::Internal,
                    format!("{rpc} answered without a gRPC status"),
                ))
            }
        }
        let data = collected.to_bytes();
        let msg = data
            .get(5..)
            .and_then(|m| Resp::decode(m).ok())
            .ok_or_else(|| ApiError::new(Code::Internal, format!("{rpc}: undecodable reply")))?;
        Ok(msg)
    }
}

/// The query string of a GET, checked against what the endpoint takes.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for part in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((decode(k, true)?, decode(v, true)?));
        }
        Ok(Self(pairs))
    }

    /// Refuses a parameter this endpoint does not take.
    fn only(&self, names: &[&str]) -> Result<&Self, ApiError> {
        if let Some((k, _)) = self.0.iter().find(|(k, _)| !names.contains(&k.as_str())) {
            let takes = if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            };
            return Err(ApiError::invalid(format!(
                "unknown query parameter {k:?}; this endpoint takes: {takes}"
            )));
        }
        Ok(self)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn string(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().to_owned()
    }

    fn number<T: std::str::FromStr + Default>(&self, name: &str) -> Result<T, ApiError> {
        self.get(name).map_or(Ok(T::default()), |v| {
            v.parse().map_err(|_| {
                ApiError::invalid(format!(
                    "query parameter {name}={v:?} is not a non-negative whole number"
                ))
            })
        })
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("" | "true") => Ok(true),
            Some(v) => Err(ApiError::invalid(format!(
                "query parameter {name}={v:?} is not true or false"
            ))),
        }
    }
}

/// Percent-decoding of a path segment or (with `plus`) a query part.
pub(crate) fn decode(s: &str, plus: bool) -> Result<String, ApiError> {
    let bad = || ApiError::invalid(format!("{s:?} is not validly percent-encoded UTF-8"));
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = bytes.next().and_then(|c| char::from(c).to_digit(16));
                let lo = bytes.next().and_then(|c| char::from(c).to_digit(16));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(bad());
                };
                out.push(u8::try_from(hi * 16 + lo).map_err(|_| bad())?);
            }
            b'+' if plus => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Reads a write's JSON body (at most [`MAX_BODY_BYTES`]) as `T` in the JSON
/// mapping; an empty body is `{}`. Only `Content-Type: application/json` is
/// taken: a web page cannot send that to another origin without a CORS
/// preflight, which this API never grants, so a browser on a loopback-open
/// node cannot be made to write.
async fn json_body<T: DeserializeOwned + Default>(
    headers: &http::HeaderMap,
    body: Incoming,
    what: &str,
) -> Result<T, ApiError> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case(JSON) {
        return Err(ApiError::invalid(format!(
            "send the body as JSON with Content-Type: {JSON} (got {:?})",
            content_type
        ))
        .with_http(http::StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    let too_large = || {
        ApiError::new(
            Code::ResourceExhausted,
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        )
        .with_http(http::StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(ApiError::new(
                Code::Cancelled,
                format!("reading the request body: {e}"),
            ))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid(format!(
            "the body is not a valid {what} (protobuf JSON mapping): {e}"
        ))
    })
}

/// A path parameter the body may repeat, but not contradict.
fn from_path(field: &mut String, name: &str, path: &str) -> Result<(), ApiError> {
    if !field.is_empty() && field != path {
        return Err(ApiError::invalid(format!(
            "{name} {field:?} in the body is not the {path:?} in the path; leave it out"
        )));
    }
    path.clone_into(field);
    Ok(())
}

/// The methods a known path takes, for 405 and `Allow`.
fn allowed(segs: &[&str]) -> Option<&'static str> {
    Some(match segs {
        ["keys"] | ["commands"] => "GET, POST",
        ["keys", _] => "GET, DELETE",
        ["keys", _, "file"]
        | ["objects" | "notifications" | "status" | "peers" | "usage" | "stations"
        | "subscriptions" | "audit" | "telemetry" | "denials"]
        | ["notifications", "stream"]
        | ["webhooks"]
        | ["usage", "history"]
        | ["telemetry", "file"] => "GET",
        ["keys", _, "grants" | "renew" | "extend-trial" | "shares"]
        | ["renew"]
        | ["telemetry", "upload"] => "POST",
        ["keys", _, "grants", _] => "DELETE",
        ["settings"] => "GET, PUT",
        _ => return None,
    })
}

async fn route(call: Call, req: http::Request<Incoming>) -> Result<Reply, ApiError> {
    use http::Method as M;
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let not_found = || {
        ApiError::new(
            Code::NotFound,
            format!("no API endpoint at {path}; see docs/api.md for the /api/v1 endpoints"),
        )
    };
    let rest = path.strip_prefix("/api/v1/").ok_or_else(not_found)?;
    let owned = rest
        .split('/')
        .map(|s| decode(s, false))
        .collect::<Result<Vec<_>, _>>()?;
    let segs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let q = Query::parse(parts.uri.query())?;
    let h = &parts.headers;
    match (&parts.method, segs.as_slice()) {
        (&M::GET, ["keys"]) => {
            q.only(&[])?;
            call.unary::<_, pb::KeyList>("ListKeys", &pb::Empty {})
                .await
        }
        (&M::POST, ["keys"]) => {
            let r: pb::AddKeyRequest = json_body(h, body, "AddKeyRequest").await?;
            call.unary::<_, pb::KeyInfo>("AddKey", &r).await
        }
        (&M::GET, ["keys", id]) => {
            q.only(&[])?;
            let r = pb::KeyId { id: (*id).into() };
            call.unary::<_, pb::KeyInfo>("GetKey", &r).await
        }
        (&M::DELETE, ["keys", id]) => {
            q.only(&[])?;
            let r = pb::KeyId { id: (*id).into() };
            call.unary::<_, pb::Empty>("DeleteKey", &r).await
        }
        (&M::POST, ["keys", id, "extend-trial"]) => {
            let mut r: pb::KeyId = json_body(h, body, "KeyId").await?;
            from_path(&mut r.id, "id", id)?;
            call.unary::<_, pb::KeyInfo>("ExtendTrial", &r).await
        }
        (&M::GET, ["keys", id, "file"]) => {
            q.only(&[])?;
            let r = pb::KeyId { id: (*id).into() };
            call.unary::<_, pb::KeyFile>("ExportKey", &r).await
        }
        (&M::POST, ["keys", id, "grants"]) => {
            let mut r: pb::AssignSeatsRequest = json_body(h, body, "AssignSeatsRequest").await?;
            from_path(&mut r.key_id, "key_id", id)?;
            call.unary::<_, pb::GrantInfo>("AssignSeats", &r).await
        }
        (&M::DELETE, ["keys", id, "grants", object]) => {
            q.only(&[])?;
            let r = pb::UnassignSeatsRequest {
                key_id: (*id).into(),
                object: (*object).into(),
            };
            call.unary::<_, pb::Empty>("UnassignSeats", &r).await
        }
        (&M::POST, ["keys", id, "renew"]) => {
            let mut r: pb::CheckForUpdatesRequest =
                json_body(h, body, "CheckForUpdatesRequest").await?;
            from_path(&mut r.key_id, "key_id", id)?;
            call.unary::<_, pb::RenewalReport>("CheckForUpdates", &r)
                .await
        }
        (&M::POST, ["renew"]) => {
            let r: pb::CheckForUpdatesRequest =
                json_body(h, body, "CheckForUpdatesRequest").await?;
            call.unary::<_, pb::RenewalReport>("CheckForUpdates", &r)
                .await
        }
        (&M::GET, ["objects"]) => pages::objects(&call, &q).await,
        (&M::GET, ["denials"]) => denials::get(&call, &q, h).await,
        (&M::GET, ["notifications"]) => {
            let r = pb::ListNotificationsRequest {
                after_seq: q.only(&["after_seq"])?.number("after_seq")?,
            };
            call.unary::<_, pb::NotificationList>("ListNotifications", &r)
                .await
        }
        (&M::GET, ["webhooks"]) => {
            q.only(&[])?;
            call.unary::<_, pb::WebhookList>("ListWebhooks", &pb::Empty {})
                .await
        }
        (&M::GET, ["status"]) => {
            q.only(&[])?;
            call.unary::<_, pb::NodeStatus>("Status", &pb::Empty {})
                .await
        }
        (&M::GET, ["peers"]) => {
            q.only(&[])?;
            call.unary::<_, pb::PeerList>("ListPeers", &pb::Empty {})
                .await
        }
        (&M::GET, ["usage"]) => {
            let r = pb::UsageRequest {
                key_id: q.only(&["key_id", "tree"])?.string("key_id"),
                tree: q.flag("tree")?,
            };
            call.unary::<_, pb::UsageReport>("Usage", &r).await
        }
        (&M::GET, ["usage", "history"]) => usage::history(&call, &q, h).await,
        (&M::GET, ["stations"]) => pages::stations(&call, &q).await,
        (&M::GET, ["commands"]) => {
            q.only(&[])?;
            call.unary::<_, pb::CommandList>("ListCommands", &pb::Empty {})
                .await
        }
        (&M::POST, ["commands"]) => {
            let r: pb::QueueCommandRequest = json_body(h, body, "QueueCommandRequest").await?;
            call.unary::<_, pb::CommandInfo>("QueueCommand", &r).await
        }
        (&M::GET, ["settings"]) => {
            q.only(&[])?;
            call.unary::<_, pb::StationSettings>("GetSettings", &pb::Empty {})
                .await
        }
        (&M::PUT, ["settings"]) => {
            let r: pb::StationSettings = json_body(h, body, "StationSettings").await?;
            call.unary::<_, pb::StationSettings>("SetSettings", &r)
                .await
        }
        (&M::GET, ["subscriptions"]) => {
            q.only(&[])?;
            call.unary::<_, pb::SubscriptionList>("SubscriptionReport", &pb::Empty {})
                .await
        }
        (&M::POST, ["keys", id, "shares"]) => {
            let mut r: pb::ShareSubscriptionRequest =
                json_body(h, body, "ShareSubscriptionRequest").await?;
            from_path(&mut r.key_id, "key_id", id)?;
            call.unary::<_, pb::SubscriptionInfo>("ShareSubscription", &r)
                .await
        }
        (&M::GET, ["telemetry", "file"]) => {
            q.only(&[])?;
            call.unary::<_, pb::TelemetryFile>("ExportTelemetry", &pb::Empty {})
                .await
        }
        (&M::POST, ["telemetry", "upload"]) => {
            let r: pb::TelemetryFile = json_body(h, body, "TelemetryFile").await?;
            call.unary::<_, pb::TelemetryReceipt>("UploadTelemetry", &r)
                .await
        }
        (&M::GET, ["audit"]) => {
            let q = q.only(&["after_seq", "limit"])?;
            let r = pb::ListAuditRequest {
                after_seq: q.number("after_seq")?,
                limit: q.number("limit")?,
            };
            call.unary::<_, pb::AuditList>("ListAudit", &r).await
        }
        (&M::GET, ["telemetry"]) => {
            q.only(&[])?;
            call.unary::<_, pb::TelemetryStatusReply>("TelemetryStatus", &pb::Empty {})
                .await
        }
        (m, s) => match allowed(s) {
            Some(allow) => Err(ApiError {
                allow: Some(allow),
                ..ApiError::new(
                    Code::Unimplemented,
                    format!("{path} does not take {m}; it takes {allow}"),
                )
                .with_http(http::StatusCode::METHOD_NOT_ALLOWED)
            }),
            None => Err(not_found()),
        },
    }
}

/// The server side of the API's TLS under `[tls]`: the node's certificate;
/// a client certificate from the federation CA is asked for and verified
/// but not required here (the Admin guard applies `admin_client_cert`).
pub fn tls_config(cfg: &NodeConfig) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let Some(t) = &cfg.tls else {
        return Ok(None);
    };
    let pem = |path: &std::path::Path, setting: &str, e: &dyn std::fmt::Display| {
        format!(
            "the API's TLS: reading {} ({setting} under [tls]): {e}",
            path.display()
        )
    };
    let certs = |path: &std::path::Path, setting: &str| {
        CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| pem(path, setting, &e))
    };
    let chain = certs(&t.cert, "cert")?;
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| pem(&t.key, "key", &e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&t.ca, "ca")? {
        roots.add(c).map_err(|e| pem(&t.ca, "ca", &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| format!("the API's TLS: the CA in [tls] ca: {e}"))?;
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
        })
        .map_err(|e| format!("the API's TLS: [tls] cert and key: {e}"))?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(sc)))
}

/// Serves `/api/v1` on `listener` (TLS with `tls`) until `shutdown`.
pub async fn serve(
    admin: GuardedAdmin,
    host_check: HostCheck,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let console = Arc::new(crate::console::Console::new(acceptor.is_some(), &admin));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // e.g. out of file descriptors: do not spin
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // too many connections: this one is dropped
        };
        let (admin, console) = (admin.clone(), console.clone());
        let acceptor = acceptor.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let Some(acceptor) = acceptor else {
                let conn = Conn::Tcp(stream.connect_info());
                serve_connection(TokioIo::new(stream), admin, console, host_check, conn, stop)
                    .await;
                return;
            };
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let conn = Conn::Tls(tls.connect_info());
                    serve_connection(TokioIo::new(tls), admin, console, host_check, conn, stop)
                        .await;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "api TLS handshake failed"),
                Err(_) => tracing::debug!("api TLS handshake timed out"),
            }
        });
    }
}

async fn serve_connection<I>(
    io: I,
    admin: GuardedAdmin,
    console: Arc<crate::console::Console>,
    host_check: HostCheck,
    conn: Conn,
    stop: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let streams_stop = stop.clone();
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let call = Call {
            admin: admin.clone(),
            host_check,
            conn: conn.clone(),
            authorization: req.headers().get(http::header::AUTHORIZATION).cloned(),
        };
        let stop = streams_stop.clone();
        let console = console.clone();
        async move {
            let reply = if let Err(e) = call.host_check.check(req.headers()) {
                Err(e)
            } else if !req.uri().path().starts_with("/api/") {
                Ok(console.handle(call, req, stop).await)
            } else if events::is_stream(&req) {
                events::stream(call, req, stop).await
            } else {
                route(call, req).await.map(|r| r.map(BodyExt::boxed))
            };
            Ok::<_, Infallible>(reply.unwrap_or_else(|e| e.reply().map(BodyExt::boxed)))
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_code_has_the_documented_http_status() {
        assert_eq!(http_status(Code::NotFound), 404);
        assert_eq!(http_status(Code::PermissionDenied), 403);
        assert_eq!(http_status(Code::Unauthenticated), 401);
        assert_eq!(http_status(Code::FailedPrecondition), 400);
        assert_eq!(http_status(Code::AlreadyExists), 409);
        assert_eq!(http_status(Code::Unavailable), 503);
    }

    #[test]
    fn paths_and_queries_are_percent_decoded_and_unknown_parameters_named() {
        assert_eq!(decode("pc%201", false).unwrap(), "pc 1");
        assert_eq!(decode("a+b", true).unwrap(), "a b");
        assert_eq!(decode("a+b", false).unwrap(), "a+b");
        assert!(decode("%zz", false).is_err());
        let q = Query::parse(Some("after_seq=3&tree")).unwrap();
        assert_eq!(q.number::<u64>("after_seq").unwrap(), 3);
        assert!(q.flag("tree").unwrap());
        let e = q.only(&["after_seq"]).err().expect("tree is not taken");
        assert!(e.message.contains("\"tree\""), "{}", e.message);
        let e = Query::parse(Some("after_seq=-1"))
            .unwrap()
            .number::<u64>("after_seq")
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
    }

    #[test]
    fn api_listen_comes_from_toml_and_env_and_is_off_by_default() {
        assert_eq!(NodeConfig::default().api_listen, None);
        let c = NodeConfig::from_toml("api_listen = \"127.0.0.1:7603\"").unwrap();
        assert_eq!(c.api_listen, Some("127.0.0.1:7603".parse().unwrap()));
        let mut c = NodeConfig::default();
        c.apply_env(|k| (k == "KEYFED_API_LISTEN").then(|| "0.0.0.0:7603".into()))
            .unwrap();
        assert_eq!(c.api_listen, Some("0.0.0.0:7603".parse().unwrap()));
        let mut c = NodeConfig::default();
        let e = c
            .apply_env(|k| (k == "KEYFED_API_LISTEN").then(|| "nowhere".into()))
            .unwrap_err();
        assert!(e.contains("KEYFED_API_LISTEN"), "{e}");
    }

    #[test]
    fn a_path_parameter_may_be_repeated_in_the_body_but_not_contradicted() {
        let mut f = String::new();
        from_path(&mut f, "key_id", "k-1").unwrap();
        assert_eq!(f, "k-1");
        from_path(&mut f, "key_id", "k-1").unwrap();
        let mut g = "k-2".to_owned();
        assert!(from_path(&mut g, "key_id", "k-1").is_err());
    }
}
