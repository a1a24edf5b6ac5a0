//! The operations endpoint: `/metrics` (Prometheus text format), `/healthz`
//! (liveness: the process answers) and `/readyz` (readiness: every
//! registered check passes, and the server is not shutting down).
//!
//! On axum (the version rumqttd already builds), so later endpoints (a web
//! page, admin routes) join the same router.

use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::warn;

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

/// The routes: `/metrics`, `/healthz`, `/readyz`. Later endpoints (a web
/// page, admin routes) are merged into this router by the app.
pub fn router(registry: Registry, health: Arc<Health>) -> Router {
    let registry = Arc::new(registry);
    Router::new()
        .route("/metrics", get(move || metrics(registry.clone())))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || readyz(health.clone())))
}

/// Serves `router` on `listener` until `shutdown` flips; requests in
/// flight are answered first (axum's graceful shutdown).
pub async fn serve(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        warn!(error = %e, "http server stopped");
    }
}

async fn metrics(registry: Arc<Registry>) -> Response {
    let mut out = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut out) {
        Ok(()) => ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(health: Arc<Health>) -> (StatusCode, String) {
    let failing = health.not_ready().await;
    if failing.is_empty() {
        return (StatusCode::OK, "ready\n".into());
    }
    let mut text = failing.join("\n");
    text.push('\n');
    (StatusCode::SERVICE_UNAVAILABLE, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn call(app: &Router, method: &str, path: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .expect("request");
        let res = app.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn routes_answer_and_readiness_follows_checks_and_draining() {
        let registry = Registry::new();
        let c =
            prometheus::IntCounter::new("chatmq_test_total", "a test counter").expect("counter");
        registry.register(Box::new(c.clone())).expect("register");
        c.inc();
        let health = Health::new();
        let app = router(registry, health.clone());
        assert_eq!(
            call(&app, "GET", "/healthz").await,
            (StatusCode::OK, "ok\n".into())
        );
        let (status, body) = call(&app, "GET", "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("chatmq_test_total 1"), "{body}");
        assert_eq!(call(&app, "GET", "/readyz").await.0, StatusCode::OK);
        health.add(
            "store",
            Arc::new(|| Box::pin(async { Err("down".to_string()) })),
        );
        assert_eq!(
            call(&app, "GET", "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "store: down\n".into())
        );
        health.set_draining();
        assert_eq!(
            call(&app, "GET", "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into())
        );
        assert_eq!(call(&app, "GET", "/nope").await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            call(&app, "POST", "/metrics").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(call(&app, "HEAD", "/healthz").await.0, StatusCode::OK);
    }
}
