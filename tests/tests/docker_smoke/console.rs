//! The compose federation's console and JSON API (issue 12), end to end:
//! main serves them on 7610 over TLS with the federation CA's certificate,
//! and a browser logs in with the demo admin token alone (no client
//! certificate). The test speaks HTTPS to main's container address on the
//! compose network, trusting only the CA that the `pki` service made.
use super::{must, say, Smoke};
use keyfed_tests::http::{csrf, form_exchange, Reply};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use tokio_rustls::rustls;

/// The token `deploy/docker-compose.yml` gives main unless
/// `KEYFED_DEMO_TOKEN` says otherwise.
const DEMO_TOKEN: &str = "keyfed-demo-token";

struct Console {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl Console {
    async fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .unwrap_or_else(|e| panic!("connect to main's console at {}: {e}", self.addr));
        let tls = self
            .tls
            .connect(ServerName::try_from("main").expect("name"), tcp)
            .await
            .expect("main's console speaks TLS with a certificate of the federation CA for `main`");
        form_exchange(tls, "main:7610", method, target, headers, body).await
    }

    /// Logs in as a browser does; the reply to the form's POST.
    async fn login(&self, token: &str) -> Reply {
        let page = self.send("GET", "/login", &[], "").await;
        assert_eq!(page.status, 200, "the log-in page: {}", page.body);
        let csrf = csrf(&page.body);
        let jar = page.session();
        self.send(
            "POST",
            "/login",
            &[("Cookie", &jar)],
            &format!("csrf={csrf}&token={token}"),
        )
        .await
    }
}

/// main's address on the compose network and a TLS client trusting the CA
/// the `pki` service wrote into its volume.
fn console(s: &mut Smoke) -> Console {
    let main = s.container("main");
    let ip = must(Command::new("docker").args([
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        &main,
    ]));
    let ip = ip
        .split_whitespace()
        .next()
        .expect("main has an address")
        .to_owned();
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = dir.path().join("ca.pem");
    must(
        Command::new("docker")
            .args(["cp", &format!("{main}:/pki/ca.pem")])
            .arg(&ca),
    );
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca).expect("the CA file") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("CA added");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Console {
        addr: format!("{ip}:7610").parse().expect("an address"),
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
    }
}

/// Logs in to main's console with the demo token, sees the federation's
/// key and children on the dashboard and key page, reads the same over the
/// JSON API with the token as a bearer, and is refused with a wrong token.
pub fn check(s: &mut Smoke, key: &str) {
    let c = console(s);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        // not logged in: sent to the log-in page
        let r = c.send("GET", "/", &[], "").await;
        assert_eq!(
            (r.status, r.header("location")),
            (303, Some("/login")),
            "{}",
            r.body
        );
        // a wrong token: no session
        let r = c.login("not-the-demo-token").await;
        assert_ne!(r.status, 303, "a wrong token logged in: {:?}", r.headers);
        let after = c.send("GET", "/", &[("Cookie", &r.session())], "").await;
        assert_eq!(after.status, 303, "a wrong token's cookie opens no page");
        // the demo token: a Secure, HttpOnly session cookie
        let r = c.login(DEMO_TOKEN).await;
        assert_eq!(r.status, 303, "log-in with the demo token: {}", r.body);
        let set = r.header("set-cookie").unwrap_or_default().to_owned();
        assert!(
            set.contains("HttpOnly") && set.contains("Secure"),
            "the session cookie over TLS: {set}"
        );
        let cookie = r.session();
        let dash = c.send("GET", "/", &[("Cookie", &cookie)], "").await;
        assert_eq!(dash.status, 200, "{}", dash.body);
        assert!(dash.body.contains("main"), "the dashboard names the node");
        assert!(
            dash.body.contains(key),
            "the dashboard lists {key}: {}",
            dash.body
        );
        let page = c
            .send("GET", &format!("/keys/{key}"), &[("Cookie", &cookie)], "")
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        for child in ["child", "east", "west"] {
            assert!(
                page.body.contains(child),
                "the key page shows {child}'s grant"
            );
        }
        // the JSON API beside it, with the same token as a bearer
        let bearer = format!("Bearer {DEMO_TOKEN}");
        let status = c
            .send("GET", "/api/v1/status", &[("Authorization", &bearer)], "")
            .await;
        assert_eq!(status.status, 200, "{}", status.body);
        assert_eq!(status.json()["node_id"], "main");
        let keys = c
            .send("GET", "/api/v1/keys", &[("Authorization", &bearer)], "")
            .await;
        assert_eq!(keys.status, 200, "{}", keys.body);
        assert!(keys.body.contains(key), "{}", keys.body);
        let none = c.send("GET", "/api/v1/status", &[], "").await;
        assert_eq!(none.status, 401, "no credentials: {}", none.body);
    });
    say("console: logged in over TLS with the demo token; dashboard, key page and JSON API agree");
}
