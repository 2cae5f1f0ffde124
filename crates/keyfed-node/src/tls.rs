//! Mutual TLS for the node: the server side of its one port, the client side
//! of every connection it opens (links, upstream, parent), and the check that
//! a linking peer's certificate names the node id it claims.
use crate::config::NodeConfig;
use crate::node::Node;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
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
    /// true (default): the handshake itself demands a certificate from the
    /// CA, from every caller. false: stations and token-holding
    /// administrators may connect with server-only TLS; Federation.Link
    /// still demands a certificate.
    pub require_client_cert: bool,
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
            admin_names: Vec::new(),
        }
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
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("reading the TLS {what} {}: {e}", path.display()))
}

/// The server side: `None` (with one WARN) when the node runs plaintext.
pub fn server_config(cfg: &NodeConfig) -> Result<Option<ServerTlsConfig>, String> {
    let Some(t) = &cfg.tls else {
        tracing::warn!(node = %cfg.node_id, addr = %cfg.listen, "plaintext gRPC: links, admin tokens and keys travel unencrypted; configure [tls] outside local development");
        return Ok(None);
    };
    let identity = Identity::from_pem(read(&t.cert, "certificate")?, read(&t.key, "key")?);
    let ca = Certificate::from_pem(read(&t.ca, "CA")?);
    tracing::info!(node = %cfg.node_id, client_cert_required = t.require_client_cert, "mutual TLS on");
    Ok(Some(
        ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(ca)
            .client_auth_optional(!t.require_client_cert),
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
        .ca_certificate(Certificate::from_pem(read(&t.ca, "CA")?))
        .identity(Identity::from_pem(
            read(&t.cert, "certificate")?,
            read(&t.key, "key")?,
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
            t.require_client_cert,
            "client certificates are required by default"
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
            _ => None,
        };
        e.apply_env(env).unwrap();
        assert_eq!(e.tls.unwrap().cert, PathBuf::from("n.pem"));
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
