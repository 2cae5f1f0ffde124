//! Who may call the Admin service, and what. `AdminGuard` wraps the Admin
//! service: it names the caller (token, administrator certificate, a peer
//! node's certificate, or "local"), checks the RPC against the one role
//! table below, and writes every mutating call to the audit trail.
pub use crate::config::{AdminToken, Role};
use crate::node::Node;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::CertificateDer;
use tonic::{Code, Status};

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// What an Admin RPC does, for the role check and the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only; any authenticated caller.
    Read,
    /// Changes state: administrators only; audited.
    Write,
    /// Changes state, and a linked peer node may also call it (a child
    /// forwards air-gapped telemetry files through its parent).
    Forward,
    /// Reads everything at once, key files included (a backup):
    /// administrators only; audited.
    AdminRead,
}

/// Every Admin RPC and what it does. An RPC missing here is treated as
/// `Write` (refused to read-only callers); a test keeps the table complete.
pub const ADMIN_RPCS: &[(&str, Access)] = &[
    ("AddKey", Access::Write),
    ("ListKeys", Access::Read),
    ("GetKey", Access::Read),
    ("ExportKey", Access::Read),
    ("DeleteKey", Access::Write),
    ("AssignSeats", Access::Write),
    ("UnassignSeats", Access::Write),
    ("ListObjects", Access::Read),
    ("ListNotifications", Access::Read),
    ("WatchNotifications", Access::Read),
    ("Status", Access::Read),
    ("CheckForUpdates", Access::Write),
    ("ListPeers", Access::Read),
    ("Usage", Access::Read),
    ("QueueCommand", Access::Write),
    ("ListCommands", Access::Read),
    ("SubscriptionReport", Access::Read),
    ("ShareSubscription", Access::Write),
    ("ExtendTrial", Access::Write),
    ("GetSettings", Access::Read),
    ("SetSettings", Access::Write),
    ("ListStations", Access::Read),
    ("TelemetryStatus", Access::Read),
    // signs a report with the node's identity and records it as exported
    ("ExportTelemetry", Access::Write),
    ("UploadTelemetry", Access::Forward),
    ("ListAudit", Access::Read),
    ("AdvanceClock", Access::Write),
    ("Backup", Access::AdminRead),
    ("UsageHistory", Access::Read),
    ("ListDenials", Access::Read),
    ("ListWebhooks", Access::Read),
];

#[must_use]
pub fn access(rpc: &str) -> Access {
    ADMIN_RPCS
        .iter()
        .find(|(n, _)| *n == rpc)
        .map_or(Access::Write, |(_, a)| *a)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Admin,
    ReadOnly,
    Peer,
}

/// A caller the guard has identified.
#[derive(Debug, Clone)]
pub struct Actor {
    /// Token name, `cert:NAME`, `node:ID` or `local`.
    pub name: String,
    caller: Caller,
}

/// The credentials the node accepts, built once at start.
pub struct AdminAuth {
    tokens: Vec<(String, [u8; 32], Role)>,
    admin_names: Vec<String>,
    peers: Vec<String>,
    tls: bool,
    /// `[tls] admin_client_cert = "required"`: no call without a certificate
    require_cert: bool,
    open: bool,
}

impl AdminAuth {
    pub fn from_config(cfg: &crate::NodeConfig) -> Result<Self, String> {
        let mut tokens = Vec::new();
        for t in &cfg.admin_tokens {
            if t.name.is_empty() {
                return Err("admin_tokens: every token needs a name".into());
            }
            if tokens.iter().any(|(n, _, _)| n == &t.name) {
                return Err(format!("admin_tokens: the name {:?} is used twice", t.name));
            }
            let hex_hash = match (&t.token, &t.token_sha256) {
                (Some(tok), None) if !tok.is_empty() => sha256_hex(tok),
                (None, Some(h)) => h.to_ascii_lowercase(),
                _ => {
                    return Err(format!(
                        "admin token {:?}: set exactly one of `token` or `token_sha256`",
                        t.name
                    ))
                }
            };
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&hex_hash, &mut hash).map_err(|_| {
                format!(
                    "admin token {:?}: token_sha256 must be 64 hex digits",
                    t.name
                )
            })?;
            tokens.push((t.name.clone(), hash, t.role));
        }
        let tls = cfg.tls.is_some();
        let auth = Self {
            tokens,
            admin_names: cfg
                .tls
                .as_ref()
                .map(|t| t.admin_names.clone())
                .unwrap_or_default(),
            peers: cfg.peers().into_iter().map(|(id, _)| id).collect(),
            tls,
            require_cert: cfg
                .tls
                .as_ref()
                .is_some_and(|t| t.admin_policy() == crate::tls::ClientCert::Required),
            open: cfg.insecure_open_admin,
        };
        if auth.tokens.is_empty() && auth.admin_names.is_empty() {
            if auth.open {
                tracing::warn!(node = %cfg.node_id, "no admin tokens and insecure_open_admin: anyone who reaches the port administers this node");
            } else {
                tracing::warn!(node = %cfg.node_id, "no admin tokens configured: the Admin service answers loopback callers only");
            }
        }
        Ok(auth)
    }

    fn token(&self, presented: &str) -> Option<(&str, Role)> {
        let h: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // compare every entry in constant time; no early exit on a match
        let mut found = None;
        for (name, want, role) in &self.tokens {
            let diff = want.iter().zip(h.iter()).fold(0u8, |d, (a, b)| d | (a ^ b));
            if diff == 0 {
                found = Some((name.as_str(), *role));
            }
        }
        found
    }

    /// Names the caller, or says why it is not let in. Order: a bearer
    /// token; an administrator's or a peer node's client certificate; with
    /// no credentials configured, a loopback caller is "local".
    fn identify(
        &self,
        headers: &http::HeaderMap,
        remote: Option<SocketAddr>,
        certs: Option<&[CertificateDer<'static>]>,
        rpc: &str,
    ) -> Result<Actor, (Status, String)> {
        let from = remote.map_or_else(|| "unknown".into(), |a| a.ip().to_string());
        if self.require_cert && certs.and_then(<[_]>::first).is_none() {
            tracing::warn!(%rpc, %from, "admin call refused: no client certificate");
            return Err((
                Status::unauthenticated(
                    "the Admin service of this node needs a client certificate from the federation CA: \
                     pass --cert and --key (KEYFED_CERT/KEYFED_KEY); for token-only administration \
                     set admin_client_cert = \"optional\" under [tls]",
                ),
                format!("anonymous without a client certificate (from {from})"),
            ));
        }
        if let Some(v) = headers.get("authorization") {
            let presented = v
                .to_str()
                .ok()
                .and_then(|s| s.strip_prefix("Bearer "))
                .unwrap_or_default()
                .trim();
            if let Some((name, role)) = self.token(presented) {
                let caller = match role {
                    Role::Admin => Caller::Admin,
                    Role::ReadOnly => Caller::ReadOnly,
                };
                return Ok(Actor {
                    name: name.into(),
                    caller,
                });
            }
            if !self.tokens.is_empty() {
                // never the token itself: a short hash prefix tells attempts apart
                let tag = format!("token sha256:{}", &sha256_hex(presented)[..8]);
                tracing::warn!(%rpc, %from, token = %tag, "admin call refused: unknown token");
                return Err((
                    Status::unauthenticated(
                        "the admin token is not valid on this node (keyfedctl --token or KEYFED_TOKEN)",
                    ),
                    format!("unknown ({tag}, from {from})"),
                ));
            }
        }
        if let Some(cert) = certs.and_then(<[_]>::first) {
            if let Some(n) = self
                .admin_names
                .iter()
                .find(|n| crate::tls::cert_names(cert, n))
            {
                return Ok(Actor {
                    name: format!("cert:{n}"),
                    caller: Caller::Admin,
                });
            }
            if let Some(p) = self.peers.iter().find(|p| crate::tls::cert_names(cert, p)) {
                return Ok(Actor {
                    name: format!("node:{p}"),
                    caller: Caller::Peer,
                });
            }
        }
        let loopback = remote.is_some_and(|a| a.ip().is_loopback());
        if self.tokens.is_empty() && self.admin_names.is_empty() && (loopback || self.open) {
            return Ok(Actor {
                name: "local".into(),
                caller: Caller::Admin,
            });
        }
        tracing::warn!(%rpc, %from, "admin call refused: no credentials");
        let how = if self.tokens.is_empty() && self.admin_names.is_empty() {
            "this node has no admin tokens, so its Admin service answers loopback callers only; configure [[admin_tokens]]"
        } else if self.tls {
            "send an admin token (keyfedctl --token or KEYFED_TOKEN) or use an administrator's client certificate"
        } else {
            "send an admin token (keyfedctl --token or KEYFED_TOKEN)"
        };
        Err((
            Status::unauthenticated(format!("the Admin service needs credentials: {how}")),
            format!("anonymous (from {from})"),
        ))
    }

    fn authorize(actor: &Actor, rpc: &str, access: Access) -> Result<(), Status> {
        let ok = match (actor.caller, access) {
            (Caller::Admin, _) | (Caller::ReadOnly, Access::Read) => true,
            (Caller::Peer, a) => a == Access::Forward,
            (Caller::ReadOnly, _) => false,
        };
        if ok {
            return Ok(());
        }
        tracing::warn!(actor = %actor.name, %rpc, "admin call refused: not allowed for this role");
        if access == Access::AdminRead {
            return Err(Status::permission_denied(format!(
                "{rpc} needs the admin role (it copies every key file and grant of the node), and {} may only read",
                actor.name
            )));
        }
        Err(Status::permission_denied(format!(
            "{rpc} changes the node and {} may only read",
            actor.name
        )))
    }
}

/// The Admin service behind authentication, the role check and the audit trail.
#[derive(Clone)]
pub struct AdminGuard<S> {
    inner: S,
    auth: Arc<AdminAuth>,
    node: Node,
}

impl<S> AdminGuard<S> {
    pub fn new(inner: S, auth: AdminAuth, node: Node) -> Self {
        Self {
            inner,
            auth: Arc::new(auth),
            node,
        }
    }

    /// The name and role of an admin token (the console's header and forms).
    pub fn token_role(&self, token: &str) -> Option<(String, Role)> {
        self.auth.token(token).map(|(n, r)| (n.to_owned(), r))
    }

    /// The node: its id, clock and config for the console's page header.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Whether any admin token is configured (else loopback callers administer).
    pub fn takes_tokens(&self) -> bool {
        !self.auth.tokens.is_empty()
    }
}

impl<S: NamedService> NamedService for AdminGuard<S> {
    const NAME: &'static str = S::NAME;
}

/// `RESOURCE_EXHAUSTED`-style names as gRPC documents them.
#[must_use]
pub fn code_name(code: Code) -> String {
    format!("{code:?}").chars().fold(String::new(), |mut s, c| {
        if c.is_uppercase() && !s.is_empty() {
            s.push('_');
        }
        s.push(c.to_ascii_uppercase());
        s
    })
}

impl<S> Service<http::Request<Body>> for AdminGuard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // the clone that was polled ready serves this call
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let node = self.node.clone();
        Box::pin(async move {
            let rpc = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
            let access = access(&rpc);
            let (remote, certs) = connection(&req);
            let who = auth.identify(
                req.headers(),
                remote,
                certs.as_deref().map(|c| &c[..]),
                &rpc,
            );
            if access == Access::Read {
                return match who
                    .and_then(|a| AdminAuth::authorize(&a, &rpc, access).map_err(|s| (s, a.name)))
                {
                    Ok(()) => inner.call(req).await,
                    Err((status, _)) => Ok(status.into_http()),
                };
            }
            // a mutating call: read the (small, unary) request to say in the
            // audit trail what it was about
            let (parts, body) = req.into_parts();
            let (body, detail) = match crate::audit::read_request(&rpc, body).await {
                Ok(x) => x,
                Err(status) => {
                    let actor = who
                        .as_ref()
                        .map_or_else(|(_, n)| n.clone(), |a| a.name.clone());
                    crate::audit::record(&node, &actor, &rpc, "", &code_name(status.code())).await;
                    return Ok(status.into_http());
                }
            };
            let actor = match who {
                Ok(a) => a,
                Err((status, name)) => {
                    crate::audit::record(&node, &name, &rpc, &detail, &code_name(status.code()))
                        .await;
                    return Ok(status.into_http());
                }
            };
            if let Err(status) = AdminAuth::authorize(&actor, &rpc, access) {
                crate::audit::record(&node, &actor.name, &rpc, &detail, &code_name(status.code()))
                    .await;
                return Ok(status.into_http());
            }
            let mut req = http::Request::from_parts(parts, body);
            req.extensions_mut().insert(actor.clone());
            let resp = inner.call(req).await?;
            // a unary error is a trailers-only response: grpc-status is a header
            let outcome = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .filter(|c| *c != 0)
                .map_or_else(|| "ok".to_owned(), |c| code_name(Code::from_i32(c)));
            crate::audit::record(&node, &actor.name, &rpc, &detail, &outcome).await;
            Ok(resp)
        })
    }
}

type PeerCerts = Option<Arc<Vec<CertificateDer<'static>>>>;

/// The caller's address and, on TLS, its verified certificate chain.
fn connection(req: &http::Request<Body>) -> (Option<SocketAddr>, PeerCerts) {
    let ext = req.extensions();
    if let Some(t) = ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
        return (t.get_ref().remote_addr(), crate::tls::peer_certs(req));
    }
    (
        ext.get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientCert, NodeConfig};

    #[test]
    fn b06_the_documented_tls_and_token_config_parses() {
        let c = NodeConfig::from_toml(
            r#"
node_id = "main"
[tls]
ca = "/etc/keyfed/ca.pem"
cert = "/etc/keyfed/main.pem"
key = "/etc/keyfed/main.key"
admin_names = ["ops"]
[[admin_tokens]]
name = "ci"
token_sha256 = "1a7674eb4ee78df7e1ac439a93c3fa8e3c945784d4dec9fd8e3011738b2f1d62"
role = "admin"
[[admin_tokens]]
name = "dashboard"
token = "change-me"
role = "read-only"
"#,
        )
        .unwrap();
        let t = c.tls.as_ref().unwrap();
        assert!(
            t.admin_policy() == ClientCert::Required && t.station_policy() == ClientCert::Required,
            "client certificates are required by default"
        );
        let token_only = NodeConfig::from_toml(
            "[tls]\nca = \"c\"\ncert = \"n\"\nkey = \"k\"\nadmin_client_cert = \"optional\"\n",
        )
        .unwrap();
        let t = token_only.tls.unwrap();
        assert_eq!(
            (t.admin_policy(), t.station_policy()),
            (ClientCert::Optional, ClientCert::Required)
        );
        assert_eq!(c.admin_tokens[1].role, Role::ReadOnly);
        assert!(
            !format!("{c:?}").contains("change-me"),
            "Debug never prints a token"
        );
        assert!(AdminAuth::from_config(&c).is_ok());
        let mut e = NodeConfig::default();
        let env = |k: &str| match k {
            "KEYFED_TLS_CA" => Some("ca.pem".into()),
            "KEYFED_TLS_CERT" => Some("n.pem".into()),
            "KEYFED_TLS_KEY" => Some("n.key".into()),
            "KEYFED_TLS_ADMIN_NAMES" => Some("ops, ci".into()),
            "KEYFED_TLS_ADMIN_CLIENT_CERT" => Some("optional".into()),
            _ => None,
        };
        e.apply_env(env).unwrap();
        let t = e.tls.unwrap();
        assert_eq!(t.cert, std::path::PathBuf::from("n.pem"));
        assert_eq!(t.admin_names, ["ops", "ci"]);
        assert_eq!(t.admin_policy(), ClientCert::Optional);
    }

    use prost::Message;

    #[test]
    fn b06_every_admin_rpc_in_the_proto_is_classified() {
        let fds = prost_types::FileDescriptorSet::decode(keyfed_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        let admin = fds
            .file
            .iter()
            .flat_map(|f| &f.service)
            .find(|s| s.name() == "Admin")
            .expect("the Admin service is in the descriptor set");
        let rpcs: Vec<&str> = admin.method.iter().map(|m| m.name()).collect();
        for m in &rpcs {
            assert!(
                ADMIN_RPCS.iter().any(|(n, _)| n == m),
                "Admin.{m} is not in auth::ADMIN_RPCS; classify it as Read, Write or Forward"
            );
        }
        for (n, _) in ADMIN_RPCS {
            assert!(
                rpcs.contains(n),
                "ADMIN_RPCS names {n}, which the proto does not have"
            );
        }
        // reads are exactly the list/get/watch/status/usage/report-style calls
        for (n, a) in ADMIN_RPCS {
            let reads = [
                "List", "Get", "Watch", "Status", "Usage", "Report", "Export",
            ]
            .iter()
            .any(|p| n.starts_with(p) || n.ends_with(p));
            if *a == Access::Read {
                assert!(
                    reads,
                    "{n} is classified Read but its name says it changes things"
                );
            }
        }
    }

    fn auth(tokens: Vec<AdminToken>, open: bool) -> AdminAuth {
        let cfg = crate::NodeConfig {
            admin_tokens: tokens,
            insecure_open_admin: open,
            ..crate::NodeConfig::default()
        };
        AdminAuth::from_config(&cfg).unwrap()
    }

    fn bearer(t: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        h
    }

    #[test]
    fn b06_without_tokens_only_loopback_callers_administer() {
        let a = auth(vec![], false);
        let local = Some(SocketAddr::from(([127, 0, 0, 1], 5000)));
        let remote = Some(SocketAddr::from(([10, 0, 0, 7], 5000)));
        let h = http::HeaderMap::new();
        assert_eq!(a.identify(&h, local, None, "AddKey").unwrap().name, "local");
        let (s, who) = a.identify(&h, remote, None, "AddKey").unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(who.contains("10.0.0.7"), "{who}");
        // insecure_open_admin lets anyone in (containers without tokens)
        let open = auth(vec![], true);
        assert!(open.identify(&h, remote, None, "AddKey").is_ok());
    }

    #[test]
    fn b06_tokens_are_matched_by_hash_and_a_wrong_one_is_named_by_a_hash_prefix() {
        let a = auth(
            vec![
                AdminToken {
                    name: "ops".into(),
                    token_sha256: Some(sha256_hex("s3cret")),
                    role: Role::Admin,
                    ..AdminToken::default()
                },
                AdminToken {
                    name: "viewer".into(),
                    token: Some("look".into()),
                    role: Role::ReadOnly,
                    ..AdminToken::default()
                },
            ],
            false,
        );
        let local = Some(SocketAddr::from(([127, 0, 0, 1], 5000)));
        let ops = a
            .identify(&bearer("s3cret"), local, None, "AddKey")
            .unwrap();
        assert_eq!((ops.name.as_str(), ops.caller), ("ops", Caller::Admin));
        let v = a.identify(&bearer("look"), local, None, "AddKey").unwrap();
        assert!(AdminAuth::authorize(&v, "ListKeys", Access::Read).is_ok());
        let denied = AdminAuth::authorize(&v, "AddKey", Access::Write).unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(denied.message().contains("AddKey"), "{}", denied.message());
        let (s, who) = a
            .identify(&bearer("guess"), local, None, "AddKey")
            .unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(!who.contains("guess") && who.contains("sha256:"), "{who}");
        // tokens configured: loopback alone is not enough
        let (s, _) = a
            .identify(&http::HeaderMap::new(), local, None, "AddKey")
            .unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(!format!(
            "{:?}",
            vec![AdminToken {
                token: Some("x1".into()),
                ..AdminToken::default()
            }]
        )
        .contains("x1"));
    }

    #[test]
    fn a_token_entry_needs_exactly_one_secret() {
        let cfg = crate::NodeConfig {
            admin_tokens: vec![AdminToken {
                name: "x".into(),
                ..AdminToken::default()
            }],
            ..crate::NodeConfig::default()
        };
        assert!(AdminAuth::from_config(&cfg).is_err());
    }
}
