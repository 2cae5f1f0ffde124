//! Console pages over plain HTTP, for the benches and the screenshot
//! command: one GET on a fresh connection, and timed runs of a page.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One GET of `path` on a fresh connection (as a browser's first request
/// would be); the reply's size. Anything but a 200 is an error that quotes
/// the start of the reply.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
