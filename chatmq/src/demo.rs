//! The demo chat page on the server's HTTP port (`[server] demo`, on by
//! default): `/` is the page (clients/demo), `/demo/chatmq.js` the JS
//! client (clients/js/src/index.js), `/demo/config.json` where MQTT over
//! WebSocket listens. The page imports MQTT.js as `mqtt` through an import
//! map: the npm package's ESM bundle from `server.demo_mqtt_js` (or
//! `clients/js/node_modules/mqtt/dist/mqtt.esm.js` under the working
//! directory, after `npm install` there), else the same version from a CDN.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const INDEX: &str = include_str!("../../clients/demo/index.html");
const APP: &str = include_str!("../../clients/demo/app.js");
const STYLE: &str = include_str!("../../clients/demo/style.css");
const CLIENT: &str = include_str!("../../clients/js/src/index.js");
/// The version clients/js/package.json pins, for the CDN fallback.
const MQTT_CDN: &str = "https://cdn.jsdelivr.net/npm/mqtt@5.16.0/dist/mqtt.esm.js";
const LOCAL_MQTT: &str = "clients/js/node_modules/mqtt/dist/mqtt.esm.js";

/// What the page needs to know.
pub struct Demo {
    /// The MQTT over WebSocket port (the page connects to its own host).
    pub ws_port: u16,
    pub prefix: String,
    /// MQTT.js's ESM bundle, if found.
    pub mqtt_js: Option<PathBuf>,
}

impl Demo {
    /// `configured`: `server.demo_mqtt_js` ("" looks under the working directory).
    pub fn find_mqtt_js(configured: &Path) -> Option<PathBuf> {
        let candidate = if configured.as_os_str().is_empty() {
            PathBuf::from(LOCAL_MQTT)
        } else {
            configured.to_path_buf()
        };
        candidate.is_file().then_some(candidate)
    }
}

fn text(kind: &'static str, body: impl Into<String>) -> Response {
    (
        [(CONTENT_TYPE, kind), (CACHE_CONTROL, "no-cache")],
        body.into(),
    )
        .into_response()
}

/// The page's routes.
pub fn routes(demo: Demo) -> Router {
    let mqtt_src = if demo.mqtt_js.is_some() {
        "/demo/vendor/mqtt.esm.js"
    } else {
        MQTT_CDN
    };
    let index = INDEX.replace(
        "<!--IMPORTMAP-->",
        &format!(r#"<script type="importmap">{{"imports":{{"mqtt":"{mqtt_src}"}}}}</script>"#),
    );
    let config = format!(
        r#"{{"ws_port":{},"ws_path":"/mqtt","prefix":"{}"}}"#,
        demo.ws_port, demo.prefix
    );
    let mqtt_js = Arc::new(demo.mqtt_js);
    Router::new()
        .route(
            "/",
            get(move || {
                let index = index.clone();
                async move { text("text/html; charset=utf-8", index) }
            }),
        )
        .route(
            "/demo/app.js",
            get(|| async { text("text/javascript; charset=utf-8", APP) }),
        )
        .route(
            "/demo/style.css",
            get(|| async { text("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/demo/chatmq.js",
            get(|| async { text("text/javascript; charset=utf-8", CLIENT) }),
        )
        .route(
            "/demo/config.json",
            get(move || {
                let config = config.clone();
                async move { text("application/json", config) }
            }),
        )
        .route(
            "/demo/vendor/mqtt.esm.js",
            get(move || {
                let path = mqtt_js.clone();
                async move {
                    let Some(p) = path.as_ref() else {
                        return StatusCode::NOT_FOUND.into_response();
                    };
                    match tokio::fs::read_to_string(p).await {
                        Ok(js) => text("text/javascript; charset=utf-8", js),
                        Err(_) => StatusCode::NOT_FOUND.into_response(),
                    }
                }
            }),
        )
}
