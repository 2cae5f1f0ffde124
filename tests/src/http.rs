//! A plain HTTP/1.1 client for the JSON API and console tests, the benches
//! and the screenshot command: one request per fresh connection
//! (`Connection: close`), over TCP or any stream (TLS).
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A reply: status, headers (lowercase names) and the body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics naming the body when it is not.
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the body is JSON ({e}): {}", self.body))
    }

    /// `name=value` of the Set-Cookie header, for the next request's Cookie.
    #[must_use]
    pub fn session(&self) -> String {
        self.header("set-cookie")
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

/// One request on `s`, addressed (`Host`) as curl would address it; a
/// `Host` in `headers` replaces that. A body gets its Content-Length.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut head = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {host}\r\n"));
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("send the head");
    s.write_all(body).await.expect("send the body");
    s.flush().await.expect("flush");
    let mut raw = Vec::new();
    // a TLS peer may close without close_notify: keep what arrived
    let _ = s.read_to_end(&mut raw).await;
    parse_reply(&raw)
}

/// One console request as a browser sends it: a POST carries `body` as a
/// filled-in form (`application/x-www-form-urlencoded`).
pub async fn form_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut headers = headers.to_vec();
    if method == "POST" {
        headers.push(("Content-Type", "application/x-www-form-urlencoded"));
    }
    exchange(s, host, method, target, &headers, body.as_bytes()).await
}

/// The CSRF token in a console page's forms.
#[must_use]
pub fn csrf(page: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let at = page.find(marker).expect("a form with a CSRF token") + marker.len();
    page[at..].split('"').next().unwrap_or_default().to_owned()
}

/// One request to `addr` on a fresh TCP connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP listener");
    exchange(s, &addr.to_string(), method, target, headers, body).await
}

/// Status line, headers and body of a raw reply.
#[must_use]
pub fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an HTTP reply: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// One GET of `path` on a fresh connection (as a browser's first request
/// would be); the reply's size. Anything but a 200 is an error that quotes
/// the start of the reply.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<usize> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    anyhow::ensure!(
        out.starts_with(b"HTTP/1.1 200"),
        "{path}: {}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );
    Ok(out.len())
}

/// `runs` GETs of `path` one after another: their latencies, sorted, and
/// the size of the last reply.
pub async fn timed_get(
    addr: SocketAddr,
    path: &str,
    runs: usize,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut lat = Vec::with_capacity(runs);
    let mut bytes = 0;
    for _ in 0..runs {
        let s = Instant::now();
        bytes = get(addr, path).await?;
        lat.push(s.elapsed());
    }
    lat.sort();
    Ok((lat, bytes))
}
