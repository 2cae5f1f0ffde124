//! TLS for keyfedctl: an `https://` address is reached over TLS, trusting
//! `--ca` and presenting `--cert`/`--key` when given (mutual TLS).
use anyhow::Context;
use std::path::Path;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

pub fn endpoint(
    addr: &str,
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<Endpoint> {
    let ep = Endpoint::from_shared(addr.to_owned())
        .with_context(|| format!("{addr:?} is not a valid address"))?;
    if !addr.starts_with("https://") {
        return Ok(ep);
    }
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let ca = ca.context("an https:// address needs --ca (or KEYFED_CA): the CA that signed the server's certificate")?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    match (cert, key) {
        (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
        (None, None) => {}
        _ => anyhow::bail!("--cert and --key (KEYFED_CERT, KEYFED_KEY) go together"),
    }
    ep.tls_config(tls).context("configuring TLS")
}
