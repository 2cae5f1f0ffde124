//! What went wrong, in words that say what to do: the error classes with
//! their exit codes and JSON form, and the probes that tell a TLS mismatch
//! or the wrong kind of server apart from plain transport noise.
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the server refused or failed the request (its gRPC code and message are printed)
  2  usage error: unknown flag, missing or malformed argument
  3  no usable answer from the server: unreachable, TLS mismatch, wrong kind of server
  4  local error: a file that cannot be read or written, a bad context or config file

With --json, an error is one JSON object on stderr: {\"code\": \"...\", \"message\": \"...\"}
(code is the gRPC code name, or UNAVAILABLE, USAGE or LOCAL for the classes above).";

/// Where a command was sent and with which credentials (never the token).
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub addr: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The server could not be reached at any of these addresses.
#[derive(Debug)]
pub struct Unreachable {
    pub tries: Vec<(Target, String)>,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .tries
            .iter()
            .map(|(t, why)| format!("could not reach {}: {why}", t.addr))
            .collect();
        f.write_str(&parts.join("; "))
    }
}
impl std::error::Error for Unreachable {}

/// A failure, ready to print.
pub struct Report {
    pub code: String,
    pub message: String,
    pub exit: u8,
}

/// The error and its sources, joined by ": ".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        src = s.source();
    }
    out
}

/// gRPC's spelling of a code: `FAILED_PRECONDITION`.
pub fn code_name(code: tonic::Code) -> String {
    format!("{code:?}").chars().fold(String::new(), |mut s, c| {
        if c.is_uppercase() && !s.is_empty() {
            s.push('_');
        }
        s.push(c.to_ascii_uppercase());
        s
    })
}

/// A status the client library made up for a broken connection, as opposed
/// to one the server sent: it carries the transport error as its source.
fn is_transport(s: &tonic::Status) -> bool {
    std::error::Error::source(s).is_some()
        || (matches!(s.code(), tonic::Code::Unknown | tonic::Code::Unavailable)
            && s.message().contains("transport error"))
}

pub async fn report(e: &anyhow::Error, target: &Target) -> Report {
    if let Some(u) = e.downcast_ref::<Unreachable>() {
        let mut lines = Vec::new();
        for (t, why) in &u.tries {
            lines.push(format!("{}: {}", t.addr, transport_advice(t, why).await));
        }
        return Report {
            code: "UNAVAILABLE".into(),
            message: lines.join("; "),
            exit: 3,
        };
    }
    if let Some(s) = e.downcast_ref::<tonic::Status>() {
        if is_transport(s) {
            let why = chain(s);
            return Report {
                code: "UNAVAILABLE".into(),
                message: format!("{}: {}", target.addr, transport_advice(target, &why).await),
                exit: 3,
            };
        }
        if s.code() == tonic::Code::Unimplemented {
            return Report {
                code: code_name(s.code()),
                message: wrong_server(target).await,
                exit: 3,
            };
        }
        return Report {
            code: code_name(s.code()),
            message: s.message().to_owned(),
            exit: 1,
        };
    }
    Report {
        code: "LOCAL".into(),
        message: format!("{e:#}"),
        exit: 4,
    }
}

/// What a transport failure means and what to do about it.
async fn transport_advice(t: &Target, why: &str) -> String {
    let low = why.to_ascii_lowercase();
    let https = t.addr.starts_with("https://");
    let has = |words: &[&str]| words.iter().any(|w| low.contains(w));
    let advice = if has(&["connection refused"]) {
        "nothing listens there: is the node (or upstream) running, and is the port right?"
            .to_owned()
    } else if has(&["dns error", "failed to lookup", "name or service not known"]) {
        "the host name does not resolve: check the address".to_owned()
    } else if https && has(&["certificaterequired", "certificate required"]) {
        need_cert()
    } else if https && has(&["unknownissuer", "unknown issuer", "badsignature"]) {
        format!(
            "the server's certificate is not signed by the CA in --ca{}: pass the CA that issued it (KEYFED_CA, or ca in the context)",
            t.ca.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default()
        )
    } else if https && has(&["notvalidforname", "not valid for name"]) {
        "the server's certificate does not name this host: use an address whose host is in the certificate (`keyfed pki issue --dns/--ip` adds names)".to_owned()
    } else if https
        && has(&[
            "invalidcontenttype",
            "corrupt message",
            "wrong version number",
            "invalid content type",
        ])
    {
        format!(
            "the server does not speak TLS: use {}",
            t.addr.replacen("https://", "http://", 1)
        )
    } else if https
        && t.cert.is_none()
        && has(&[
            "broken pipe",
            "connection reset",
            "unexpected eof",
            "closed",
            "alert",
        ])
    {
        format!("the server closed the TLS connection; {}", need_cert())
    } else if !https && speaks_tls(&t.addr, t.ca.as_deref()).await {
        format!(
            "the server speaks TLS and this call was plaintext: use {} with --ca (KEYFED_CA), and --cert/--key if the node asks for a client certificate",
            t.addr.replacen("http://", "https://", 1)
        )
    } else {
        "the connection failed".to_owned()
    };
    format!("{advice} ({why})")
}

fn need_cert() -> String {
    "it requires a client certificate: pass --cert and --key (KEYFED_CERT/KEYFED_KEY, or cert/key in the context); for token-only administration the node can set admin_client_cert = \"optional\" under [tls]".to_owned()
}

/// True if a TLS handshake with `addr` gets as far as the server's
/// certificate: then the port speaks TLS.
pub async fn speaks_tls(addr: &str, ca: Option<&std::path::Path>) -> bool {
    let url = addr.replacen("http://", "https://", 1);
    let mut tls = ClientTlsConfig::new();
    if let Some(pem) = ca.and_then(|p| std::fs::read(p).ok()) {
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    let Ok(ep) = Endpoint::from_shared(url).and_then(|e| e.tls_config(tls)) else {
        return false;
    };
    match tokio::time::timeout(Duration::from_secs(3), ep.connect()).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            let why = chain(&e).to_ascii_lowercase();
            ["certificate", "unknownissuer", "alert"]
                .iter()
                .any(|w| why.contains(w))
        }
        Err(_) => false,
    }
}

/// UNIMPLEMENTED: ask the server's health service what it is.
async fn wrong_server(t: &Target) -> String {
    let kind = match served(t).await {
        Some((true, _)) => Some("a keyfed node: it answers node commands (key, objects, status, peers, usage, stations, telemetry, audit ...); `upstream` and `compliance` go to the vendor upstream (keyfed-gus, port 7600 in the sandbox)"),
        Some((false, true)) => Some("the vendor upstream (keyfed-gus): it answers `upstream ...`, `compliance` and `telemetry upload`; point --addr at a node (port 7601 in the sandbox) for node commands"),
        _ => None,
    };
    match kind {
        Some(k) => format!("{} is {k}", t.addr),
        None => format!(
            "{} does not serve what this command needs; is it a keyfed node or upstream?",
            t.addr
        ),
    }
}

/// (serves Admin, serves Upstream), from the health service.
async fn served(t: &Target) -> Option<(bool, bool)> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let ep = crate::tls::endpoint(
        &t.addr,
        t.ca.as_deref(),
        t.cert.as_deref(),
        t.key.as_deref(),
    )
    .ok()?;
    let channel = tokio::time::timeout(Duration::from_secs(3), ep.connect())
        .await
        .ok()?
        .ok()?;
    let health = HealthClient::new(channel);
    let serves = |service: &'static str| {
        let mut h = health.clone();
        async move {
            h.check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving)
        }
    };
    Some((
        serves("keyfed.v1.Admin").await,
        serves("keyfed.v1.Upstream").await,
    ))
}
