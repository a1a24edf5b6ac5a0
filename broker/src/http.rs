//! The operations endpoint: `/metrics` (Prometheus text format), `/healthz`
//! (liveness: the process answers) and `/readyz` (readiness: every
//! registered check passes, and the server is not shutting down).
//!
//! A deliberately small HTTP/1.1 server: GET only, one request per
//! connection, bounded request size and time. Probes and scrapers need no more.

use prometheus::{Encoder, Registry, TextEncoder};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

/// A readiness check: `Err` says what is not ready.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// What `/readyz` asks.
#[derive(Default)]
pub struct Health {
    checks: parking_lot::Mutex<Vec<(&'static str, Check)>>,
    draining: AtomicBool,
}

/// Time one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_MAX: usize = 8 * 1024;

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Health::default())
    }

    /// Adds a named readiness check.
    pub fn add(&self, name: &'static str, check: Check) {
        self.checks.lock().push((name, check));
    }

    /// From now on `/readyz` answers 503: the server is shutting down.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Runs every check; the names and reasons of those that fail.
    pub async fn not_ready(&self) -> Vec<String> {
        if self.draining.load(Ordering::SeqCst) {
            return vec!["shutting down".into()];
        }
        let checks = self.checks.lock().clone();
        let results =
            futures_util::future::join_all(checks.into_iter().map(|(name, c)| async move {
                match tokio::time::timeout(CHECK_TIMEOUT, c()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(format!("{name}: {e}")),
                    Err(_) => Some(format!("{name}: no answer in {CHECK_TIMEOUT:?}")),
                }
            }))
            .await;
        results.into_iter().flatten().collect()
    }
}

/// Serves until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) {
    let registry = Arc::new(registry);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((sock, _)) => {
                let registry = registry.clone();
                let health = health.clone();
                tokio::spawn(async move {
                    if let Err(e) = one(sock, &registry, &health).await {
                        debug!(error = %e, "http request failed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads the request head; returns the method and path.
async fn read_head(sock: &mut TcpStream) -> Result<(String, String), String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > REQUEST_MAX {
            return Err("request head too large".into());
        }
        let n = sock.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the request ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    Ok((method, path))
}

async fn one(mut sock: TcpStream, registry: &Registry, health: &Health) -> Result<(), String> {
    let (method, path) = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut sock))
        .await
        .map_err(|_| "request timeout".to_string())??;
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n".to_vec(),
        )
    } else {
        match path {
            "/metrics" => {
                let mut out = Vec::new();
                let enc = TextEncoder::new();
                match enc.encode(&registry.gather(), &mut out) {
                    Ok(()) => ("200 OK", "text/plain; version=0.0.4", out),
                    Err(e) => (
                        "500 Internal Server Error",
                        "text/plain",
                        e.to_string().into_bytes(),
                    ),
                }
            }
            "/healthz" => ("200 OK", "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let failing = health.not_ready().await;
                if failing.is_empty() {
                    ("200 OK", "text/plain", b"ready\n".to_vec())
                } else {
                    let mut text = failing.join("\n");
                    text.push('\n');
                    ("503 Service Unavailable", "text/plain", text.into_bytes())
                }
            }
            _ => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    if method != "HEAD" {
        sock.write_all(&body).await.map_err(|e| e.to_string())?;
    }
    let _ = sock.shutdown().await;
    Ok(())
}
