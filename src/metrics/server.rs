//! The Prometheus text endpoint: `GET /metrics` answers the registry in the
//! text exposition format, anything else 404.
//!
//! Training is synchronous and must not wait on scrapes, so the endpoint
//! runs on its own thread with its own single-threaded tokio runtime; the
//! registry's metrics are atomics, so a scrape reads them without locking
//! the training loop. The socket is bound before the thread starts, so an
//! address in use fails `glom train` at once, naming `metrics.listen`.
//! Dropping the [`Endpoint`] stops the accept loop and joins the thread.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Longest request head read before answering 400 (a scrape's is ~200 bytes).
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A client that has not sent its request head by then is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// `registry` in the text exposition format.
pub(crate) fn encode(registry: &Registry) -> String {
    let mut buf = Vec::new();
    // Encoding into memory fails only on a malformed metric family, which
    // the registry refuses at registration.
    if TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .is_err()
    {
        buf.clear();
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// A running endpoint; drop it to stop.
pub(crate) struct Endpoint {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Bind `listen` (the `metrics.listen` value) and serve `registry`.
    pub(crate) fn start(listen: &str, registry: Registry) -> Result<Self> {
        let addr: SocketAddr = listen
            .parse()
            .with_context(|| format!("metrics.listen = {listen:?} is not a socket address"))?;
        let std_listener = std::net::TcpListener::bind(addr).with_context(|| {
            format!("metrics.listen: cannot listen on {addr} (is another run using it?)")
        })?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("starting the metrics endpoint's runtime")?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(std_listener) {
                        Ok(listener) => serve(listener, registry, stopped).await,
                        Err(e) => tracing::warn!(error = %e, "metrics endpoint not started"),
                    }
                })
            })
            .context("starting the metrics endpoint's thread")?;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address (the real port when `metrics.listen` asked for 0).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accept until `stopped` fires; each connection is its own task, and the
/// tasks still running are dropped with the runtime.
async fn serve(listener: TcpListener, registry: Registry, mut stopped: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let registry = registry.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &registry).await {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Read one request head and answer it; the connection then closes.
async fn answer(stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
            let n = read_some(&stream, &mut chunk).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok(head.windows(4).any(|w| w == b"\r\n\r\n"))
    })
    .await;
    let (status, content_type, body) = match complete {
        Ok(Ok(true)) => route(&head, registry),
        Ok(Ok(false)) | Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    write_all(&stream, reply.as_bytes()).await?;
    write_all(&stream, body.as_bytes()).await?;
    let std_stream = stream.into_std()?;
    std_stream.shutdown(std::net::Shutdown::Write)
}

/// Read what is available (waiting for some); 0 at end of stream.
async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// Write all of `bytes`, waiting whenever the socket is full.
async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Status, content type and body for a request head.
fn route(head: &[u8], registry: &Registry) -> (&'static str, &'static str, String) {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split('?').next().unwrap_or(t));
    match (method, path) {
        (Some("GET"), Some("/metrics")) => ("200 OK", prometheus::TEXT_FORMAT, encode(registry)),
        (Some(_), Some(_)) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => ("400 Bad Request", "text/plain", "bad request\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_404s_the_rest_and_stops() {
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("glom_test_total", "test").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc();
        let ep = Endpoint::start("127.0.0.1:0", registry).unwrap();
        let addr = ep.addr();
        let ok = get(addr, "/metrics");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.contains("\nglom_test_total 1\n"), "{ok}");
        assert!(get(addr, "/").starts_with("HTTP/1.1 404"));
        // The address is taken while the endpoint runs, and the error names the key.
        let busy = Endpoint::start(&addr.to_string(), Registry::new())
            .err()
            .unwrap();
        let msg = format!("{busy:#}");
        assert!(
            msg.contains("metrics.listen") && msg.contains(&addr.to_string()),
            "{msg}"
        );
        drop(ep);
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
