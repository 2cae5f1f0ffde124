//! Mutual TLS for the node: the server side of its one port, the client side
//! of every connection it opens (links, upstream, parent), and the check that
//! a linking peer's certificate names the node id it claims.
use crate::config::NodeConfig;
use crate::node::Node;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::Poll;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{
    Certificate, CertificateDer, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};
use tonic::Status;

/// `[tls]` in the node config. With it, the port speaks TLS only and every
/// outgoing connection uses TLS with this certificate as client identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM of the federation CA: peers' and clients' certificates must chain to it.
    pub ca: PathBuf,
    /// PEM certificate of this node (CN/SAN = its node id).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The default of `admin_client_cert` and `station_client_cert`:
    /// true (default) = "required", false = "optional".
    pub require_client_cert: bool,
    /// Whether the Admin service demands a client certificate from the CA.
    /// "optional": token-only administration over server-only TLS.
    pub admin_client_cert: Option<ClientCert>,
    /// Whether the Station service demands one. Federation.Link always does.
    pub station_client_cert: Option<ClientCert>,
    /// Client certificate names that may use the Admin service as
    /// administrators without a token.
    pub admin_names: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            require_client_cert: true,
            admin_client_cert: None,
            station_client_cert: None,
            admin_names: Vec::new(),
        }
    }
}

/// A service's client-certificate policy. The handshake asks every caller
/// for a certificate but lets one without it in; each service then checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientCert {
    Required,
    Optional,
}

impl TlsConfig {
    fn default_policy(&self) -> ClientCert {
        if self.require_client_cert {
            ClientCert::Required
        } else {
            ClientCert::Optional
        }
    }
    #[must_use]
    pub fn admin_policy(&self) -> ClientCert {
        self.admin_client_cert.unwrap_or(self.default_policy())
    }
    #[must_use]
    pub fn station_policy(&self) -> ClientCert {
        self.station_client_cert.unwrap_or(self.default_policy())
    }
}

/// `KEYFED_TLS_CA`, `KEYFED_TLS_CERT`, `KEYFED_TLS_KEY` (all three) turn TLS on.
pub fn apply_env(cfg: &mut NodeConfig, get: &impl Fn(&str) -> Option<String>) {
    if let (Some(ca), Some(cert), Some(key)) = (
        get("KEYFED_TLS_CA"),
        get("KEYFED_TLS_CERT"),
        get("KEYFED_TLS_KEY"),
    ) {
        let t = cfg.tls.get_or_insert_with(TlsConfig::default);
        t.ca = ca.into();
        t.cert = cert.into();
        t.key = key.into();
    }
    // comma separated: the compose federation names its administrator here
    if let (Some(t), Some(names)) = (cfg.tls.as_mut(), get("KEYFED_TLS_ADMIN_NAMES")) {
        t.admin_names = names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
    }
}

fn read(path: &std::path::Path, what: &str, setting: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "reading the TLS {what} {} ({setting} under [tls], or KEYFED_TLS_{}): {e}",
            path.display(),
            setting.trim_start_matches("tls.").to_ascii_uppercase()
        )
    })
}

/// The server side: `None` (with one WARN) when the node runs plaintext.
pub fn server_config(cfg: &NodeConfig) -> Result<Option<ServerTlsConfig>, String> {
    let Some(t) = &cfg.tls else {
        tracing::warn!(node = %cfg.node_id, addr = %cfg.listen, "plaintext gRPC: links, admin tokens and keys travel unencrypted; configure [tls] outside local development");
        return Ok(None);
    };
    let identity = Identity::from_pem(
        read(&t.cert, "certificate", "tls.cert")?,
        read(&t.key, "key", "tls.key")?,
    );
    let ca = Certificate::from_pem(read(&t.ca, "CA", "tls.ca")?);
    tracing::info!(node = %cfg.node_id, admin_client_cert = ?t.admin_policy(), station_client_cert = ?t.station_policy(), "mutual TLS on; federation links need a client certificate");
    // the handshake asks for a certificate and verifies one that is sent;
    // each service decides whether it needs one (RequireClientCert, AdminAuth)
    Ok(Some(
        ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(ca)
            .client_auth_optional(true),
    ))
}

/// An endpoint for an outgoing call. With `[tls]` the address is taken as
/// https whatever its scheme says, and the node presents its certificate;
/// when dialing a peer, the server's certificate must name the peer's node
/// id (not only the host in the address).
pub fn endpoint(cfg: &NodeConfig, url: &str, peer: Option<&str>) -> Result<Endpoint, String> {
    let Some(t) = &cfg.tls else {
        if url.starts_with("https://") {
            return Err(format!(
                "{url} is an https address but this node has no [tls] config"
            ));
        }
        return Endpoint::from_shared(url.to_owned()).map_err(|e| format!("address {url:?}: {e}"));
    };
    let url = match url.strip_prefix("http://") {
        Some(rest) => format!("https://{rest}"),
        None => url.to_owned(),
    };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&t.ca, "CA", "tls.ca")?))
        .identity(Identity::from_pem(
            read(&t.cert, "certificate", "tls.cert")?,
            read(&t.key, "key", "tls.key")?,
        ));
    if let Some(p) = peer.filter(|p| dns_name(p).is_some()) {
        tls = tls.domain_name(p);
    }
    Endpoint::from_shared(url.clone())
        .map_err(|e| format!("address {url:?}: {e}"))?
        .tls_config(tls)
        .map_err(|e| format!("TLS for {url}: {e}"))
}

fn dns_name(name: &str) -> Option<rustls_pki_types::ServerName<'static>> {
    rustls_pki_types::ServerName::try_from(name.to_owned())
        .ok()
        .filter(|n| matches!(n, rustls_pki_types::ServerName::DnsName(_)))
}

/// True if the certificate's SAN names `name` (the CA already verified
/// the chain during the handshake).
pub fn cert_names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Some(n) = dns_name(name) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&n).is_ok())
}

/// Federation.Link on a TLS node: the peer must present a certificate and
/// it must name the node id the peer's hello claims.
pub async fn check_link_peer(
    node: &Node,
    certs: Option<&[CertificateDer<'static>]>,
    claimed: &str,
) -> Result<(), Status> {
    if node.config.tls.is_none() {
        return Ok(());
    }
    let Some(cert) = certs.and_then(<[_]>::first) else {
        tracing::warn!(node = %node.id(), peer = %claimed, "link without a client certificate refused");
        return Err(Status::unauthenticated(format!(
            "federation links need a client certificate from the federation CA; {claimed} presented none"
        )));
    };
    if cert_names(cert, claimed) {
        return Ok(());
    }
    let msg = format!(
        "a link claiming to be {claimed} was refused: its certificate is not issued to {claimed}"
    );
    tracing::warn!(node = %node.id(), peer = %claimed, "{msg}");
    if let Err(e) = node
        .engine
        .raise(
            "link-refused",
            "",
            msg.clone(),
            &[("peer", claimed.to_owned())],
        )
        .await
    {
        tracing::warn!(error = %e, "link refusal not recorded");
    }
    Err(Status::permission_denied(format!(
        "{msg}; issue one with `keyfed pki issue --name {claimed}`"
    )))
}

/// The verified client certificate chain of the connection a request came
/// on; `None` on plaintext or when the caller sent no certificate.
#[must_use]
pub fn peer_certs<B>(req: &http::Request<B>) -> Option<Arc<Vec<CertificateDer<'static>>>> {
    req.extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .filter(|c| !c.is_empty())
}

/// A service that refuses callers without a client certificate when its
/// policy says "required" (the Station service).
#[derive(Clone)]
pub struct RequireClientCert<S> {
    inner: S,
    required: bool,
}

impl<S: NamedService> RequireClientCert<S> {
    /// The Station service under `[tls] station_client_cert`.
    pub fn station(cfg: &NodeConfig, inner: S) -> Self {
        Self {
            inner,
            required: cfg
                .tls
                .as_ref()
                .is_some_and(|t| t.station_policy() == ClientCert::Required),
        }
    }
}

impl<S: NamedService> NamedService for RequireClientCert<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for RequireClientCert<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if self.required && peer_certs(&req).is_none() {
            tracing::warn!(
                service = S::NAME,
                "call without a client certificate refused"
            );
            let status = Status::unauthenticated(format!(
                "{} on this node needs a client certificate from the federation CA: \
                 pass one (keyfed-agent --cert/--key), or set station_client_cert = \"optional\" under [tls]",
                S::NAME
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let fut = self.inner.call(req);
        Box::pin(fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.admin_tokens[1].role, crate::auth::Role::ReadOnly);
        assert!(
            !format!("{c:?}").contains("change-me"),
            "Debug never prints a token"
        );
        assert!(crate::auth::AdminAuth::from_config(&c).is_ok());
        let mut e = NodeConfig::default();
        let env = |k: &str| match k {
            "KEYFED_TLS_CA" => Some("ca.pem".into()),
            "KEYFED_TLS_CERT" => Some("n.pem".into()),
            "KEYFED_TLS_KEY" => Some("n.key".into()),
            "KEYFED_TLS_ADMIN_NAMES" => Some("ops, ci".into()),
            _ => None,
        };
        e.apply_env(env).unwrap();
        let t = e.tls.unwrap();
        assert_eq!(t.cert, PathBuf::from("n.pem"));
        assert_eq!(t.admin_names, ["ops", "ci"]);
    }

    #[test]
    fn with_tls_every_outgoing_address_is_https_and_without_it_https_is_refused() {
        let plain = NodeConfig::default();
        assert!(endpoint(&plain, "https://x:1", None)
            .unwrap_err()
            .contains("[tls]"));
        assert!(endpoint(&plain, "http://x:1", None).is_ok());
    }
}
