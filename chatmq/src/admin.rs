//! The admin HTTP API on `server.http`, under `/admin/v1`, for a team's own
//! backend: create rooms with members, list rooms and members, read a
//! user's unread counts, kick and ban, erase a user (GDPR), export a
//! room's history as JSON lines. Authenticated with `Authorization: Bearer <server.admin_token>`
//! (empty: no API). Described by `/admin/v1/openapi.json` (OpenAPI 3.0, public,
//! `admin-openapi.json`), which schemathesis checks against the running
//! server (`tests/tests/admin_api.rs`).
//!
//! Each call is a chat request of the admin account (`server.admin_user`,
//! one of `bridge.admin_users`): the same code, checks and events as over
//! MQTT ([`Chat::request`]), its events published on a service link of the
//! in-process broker. So it runs where broker and bridge share a process
//! (`chatmq all`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use broker::link::{LinkSender, Outgoing};
use chat_bridge::chat::Chat;
use chat_bridge::wire::{Code, Refusal};
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};

/// The OpenAPI description served at `/admin/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../admin-openapi.json");

/// The chat service and where its events go, once the bridge is up.
pub struct Backend {
    pub chat: Arc<Chat>,
    pub publish: Arc<LinkSender>,
}

#[derive(Clone)]
pub struct AdminState {
    token: Arc<str>,
    user: Arc<str>,
    backend: Arc<OnceLock<Backend>>,
}

impl AdminState {
    pub fn new(token: &str, user: &str) -> Self {
        AdminState {
            token: token.into(),
            user: user.into(),
            backend: Arc::new(OnceLock::new()),
        }
    }

    /// Where requests go from now on (before it is set they get 503).
    pub fn set_backend(&self, b: Backend) {
        let _ = self.backend.set(b);
    }
}

/// The routes, each behind the bearer token.
pub fn routes(state: AdminState) -> Router {
    Router::new()
        .route("/admin/v1/openapi.json", get(openapi))
        .route("/admin/v1/rooms", post(create_room).get(list_rooms))
        .route("/admin/v1/rooms/:room/members", get(members))
        .route("/admin/v1/rooms/:room/kick", post(kick))
        .route("/admin/v1/rooms/:room/ban", post(ban))
        .route("/admin/v1/rooms/:room/export", get(export))
        .route("/admin/v1/users/:user/unread", get(unread))
        .route("/admin/v1/users/:user", axum::routing::delete(erase))
        .with_state(state)
}

/// A refusal: the PROTOCOL.md code and a message (its response: [`error`]).
struct ApiError(Code, String);

impl ApiError {
    fn bad(message: &str) -> Self {
        ApiError(Code::BadRequest, message.to_owned())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

/// An error body: the PROTOCOL.md code and a message, with its HTTP status.
fn error(code: Code, message: &str) -> Response {
    let status = match code {
        Code::BadRequest | Code::TooLarge => StatusCode::BAD_REQUEST,
        Code::Unauthorized => StatusCode::UNAUTHORIZED,
        Code::Forbidden | Code::Banned | Code::Muted => StatusCode::FORBIDDEN,
        Code::NotMember | Code::NotFound => StatusCode::NOT_FOUND,
        Code::Conflict => StatusCode::CONFLICT,
        Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = json!({"error": {"code": code.as_str(), "message": message}});
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn json_ok(status: StatusCode, v: &str) -> Response {
    (status, [(CONTENT_TYPE, "application/json")], v.to_owned()).into_response()
}

/// Constant-time comparison of the presented token with the configured one.
fn authorized(state: &AdminState, headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), state.token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The query string's `key=value` pairs (values are ids and cursors: no
/// percent-decoding; a `%` is refused).
fn query(uri: &Uri) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if v.contains('%') || v.contains('+') {
            return Err(ApiError::bad("query values are ids, cursors or numbers"));
        }
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// `limit` (1..=`max`) and `after` (empty: from the start) from the
/// query, as request params.
fn paging(uri: &Uri, mut params: Value, max: u64) -> Result<Value, ApiError> {
    for (k, v) in query(uri)? {
        match k.as_str() {
            "limit" => match v.parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => params["limit"] = json!(n),
                _ => return Err(ApiError::bad(&format!("limit must be 1..{max}"))),
            },
            "after" if !v.is_empty() => params["after"] = json!(v),
            _ => {}
        }
    }
    Ok(params)
}

/// Runs a chat request as the admin account; publishes what it made.
async fn call(state: &AdminState, method: &str, params: Value) -> Result<String, ApiError> {
    let Some(b) = state.backend.get() else {
        return Err(ApiError(Code::Unavailable, "starting, retry later".into()));
    };
    let payload = params.to_string();
    let (r, outs) = b
        .chat
        .request(&state.user, method, payload.as_bytes())
        .await;
    if !outs.is_empty() {
        b.publish
            .publish(outs.into_iter().map(|o| Outgoing {
                topic: o.topic,
                payload: o.payload,
                corr: o.corr,
            }))
            .await;
    }
    match r {
        Ok(v) => Ok(v.get().to_owned()),
        Err(Refusal { code, message }) => Err(ApiError(code, message)),
    }
}

macro_rules! guard {
    ($state:expr, $headers:expr) => {
        if !authorized(&$state, &$headers) {
            return error(Code::Unauthorized, "a valid bearer token is required");
        }
    };
}

fn body_object(body: &Bytes) -> Result<Value, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(ApiError::bad("the body must be a JSON object")),
    }
}

/// A GET of a paged request: `params` plus the query's paging, as `method`.
async fn paged(
    state: &AdminState,
    headers: &HeaderMap,
    uri: &Uri,
    params: Value,
    max: u64,
    method: &str,
) -> Response {
    if !authorized(state, headers) {
        return error(Code::Unauthorized, "a valid bearer token is required");
    }
    let r = match paging(uri, params, max) {
        Ok(p) => call(state, method, p).await,
        Err(e) => Err(e),
    };
    match r {
        Ok(v) => json_ok(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

/// Public: the description holds no secret, and tools load it first.
async fn openapi() -> Response {
    json_ok(StatusCode::OK, OPENAPI)
}

async fn create_room(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    guard!(state, headers);
    let r = match body_object(&body) {
        Ok(params) => call(&state, "admin.create", params).await,
        Err(e) => Err(e),
    };
    match r {
        Ok(v) => {
            let created = serde_json::from_str::<Value>(&v)
                .ok()
                .is_some_and(|r| r["created"] == true);
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_ok(status, &v)
        }
        Err(e) => e.into_response(),
    }
}

async fn list_rooms(State(state): State<AdminState>, headers: HeaderMap, uri: Uri) -> Response {
    paged(&state, &headers, &uri, json!({}), 1000, "admin.rooms").await
}

async fn members(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(room): Path<String>,
    uri: Uri,
) -> Response {
    let params = json!({"room": room});
    paged(&state, &headers, &uri, params, 1000, "rooms.members").await
}

async fn unread(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(user): Path<String>,
    uri: Uri,
) -> Response {
    let params = json!({"user": user});
    paged(&state, &headers, &uri, params, 500, "admin.unread").await
}

async fn moderate(
    state: AdminState,
    headers: HeaderMap,
    room: String,
    body: Bytes,
    method: &str,
) -> Response {
    guard!(state, headers);
    let mut params = match body_object(&body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    if params.get("remove").is_some_and(|r| !r.is_boolean()) {
        return error(Code::BadRequest, "remove must be true or false");
    }
    params["room"] = json!(room);
    match call(&state, method, params).await {
        Ok(v) => json_ok(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

async fn kick(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(room): Path<String>,
    body: Bytes,
) -> Response {
    moderate(state, headers, room, body, "rooms.kick").await
}

async fn ban(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(room): Path<String>,
    body: Bytes,
) -> Response {
    moderate(state, headers, room, body, "rooms.ban").await
}

/// GDPR erasure: the user's messages, memberships and blocks (see
/// `chat_bridge::chat::admin`, `admin.erase`; what remains is in the answer).
async fn erase(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Response {
    guard!(state, headers);
    match call(&state, "admin.erase", json!({"user": user})).await {
        Ok(v) => json_ok(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

/// The room's whole history, oldest first, one event per line.
async fn export(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Response {
    guard!(state, headers);
    let mut out = String::new();
    let mut after = 0u64;
    loop {
        let page = match call(
            &state,
            "history",
            json!({"room": room, "after": after, "limit": 1000}),
        )
        .await
        {
            Ok(v) => v,
            Err(e) => return e.into_response(),
        };
        let Ok(page) = serde_json::from_str::<Value>(&page) else {
            return error(Code::Unavailable, "an unreadable page");
        };
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            out.push_str(&e.to_string());
            out.push('\n');
            after = after.max(e["seq"].as_u64().unwrap_or(after));
        }
        if page["has_more"] != true || events.is_empty() {
            break;
        }
    }
    (
        StatusCode::OK,
        [(CONTENT_TYPE, "application/x-ndjson")],
        out,
    )
        .into_response()
}
