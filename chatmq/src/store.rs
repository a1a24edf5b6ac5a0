//! The store a bridge runs on, and how the broker of the same process reads
//! and follows its memberships.

use crate::settings::{Backend, Settings};
use anyhow::Context;
use broker::acl::{Access, Loader};
use chat_bridge::chat::AccessSink;
use chat_bridge::metrics::{BridgeMetrics, MeteredStore};
use chat_bridge::store::embedded::{EmbeddedConfig, EmbeddedStore};
use chat_bridge::store::scylla::ScyllaStore;
use chat_bridge::store::{MemberState, RoomKind, Store};
use std::sync::Arc;

/// Opens the configured store, metered.
pub(crate) async fn open(
    cfg: &Settings,
    metrics: &Arc<BridgeMetrics>,
) -> anyhow::Result<Arc<dyn Store>> {
    let inner: Arc<dyn Store> = match cfg.store.backend {
        Backend::Scylla => Arc::new(
            ScyllaStore::connect(&cfg.store.scylla)
                .await
                .map_err(|e| anyhow::anyhow!("store.scylla: {e}"))?,
        ),
        Backend::Embedded => {
            let dir = &cfg.store.data_dir;
            std::fs::create_dir_all(dir).with_context(|| format!("data dir {}", dir.display()))?;
            Arc::new(
                EmbeddedStore::open(EmbeddedConfig {
                    path: dir.join("store"),
                    fsync: cfg.store.fsync,
                })
                .map_err(|e| anyhow::anyhow!("store: {e}"))?,
            )
        }
    };
    Ok(Arc::new(MeteredStore::new(inner, metrics.clone())))
}

/// `chatmq migrate`: applies pending schema migrations; the lines it
/// returns say what it did.
pub async fn migrate(cfg: &Settings) -> anyhow::Result<Vec<String>> {
    match cfg.store.backend {
        Backend::Embedded => Ok(vec![
            "store.backend = \"embedded\": nothing to migrate".into()
        ]),
        Backend::Scylla => {
            let ks = &cfg.store.scylla.keyspace;
            let done = chat_bridge::store::scylla::migrate(&cfg.store.scylla)
                .await
                .map_err(|e| anyhow::anyhow!("store.scylla: {e}"))?;
            let mut lines = vec![format!("server: {}", done.server.describe())];
            if done.applied.is_empty() {
                lines.push(format!("keyspace {ks}: up to date"));
            }
            lines.extend(
                done.applied
                    .into_iter()
                    .map(|v| format!("keyspace {ks}: applied {v}")),
            );
            Ok(lines)
        }
    }
}

/// How the broker loads a room it has not seen: its kind and joined members,
/// read from the store page by page.
/// A room two users are both joined to (for presence after a restart).
pub(crate) fn shared_loader(store: Arc<dyn Store>) -> broker::acl::SharedLoader {
    Arc::new(move |a: String, b: String| {
        let store = store.clone();
        Box::pin(async move {
            let joined = |rows: Vec<chat_bridge::store::Member>| {
                rows.into_iter()
                    .filter(|m| m.state == MemberState::Joined)
                    .map(|m| m.room)
                    .collect::<std::collections::BTreeSet<String>>()
            };
            let ra = joined(store.user_rooms(&a).await.map_err(|e| e.to_string())?);
            let rb = joined(store.user_rooms(&b).await.map_err(|e| e.to_string())?);
            // a channel shares no presence (Access::share_room)
            for room in ra.intersection(&rb) {
                let info = store.room(room).await.map_err(|e| e.to_string())?;
                if info.is_some_and(|i| i.kind != RoomKind::Channel) {
                    return Ok(Some(room.clone()));
                }
            }
            Ok(None)
        })
    })
}

pub(crate) fn loader(store: Arc<dyn Store>) -> Loader {
    Arc::new(move |room: String| {
        let store = store.clone();
        Box::pin(async move {
            let Some(info) = store.room(&room).await.map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let mut joined = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = store
                    .members(&room, after.as_deref(), 1000)
                    .await
                    .map_err(|e| e.to_string())?;
                let n = page.len();
                after = page.last().map(|m| m.user.clone());
                joined.extend(
                    page.into_iter()
                        .filter(|m| m.state == MemberState::Joined)
                        .map(|m| m.user),
                );
                if n < 1000 {
                    break;
                }
            }
            Ok(Some((info.kind == RoomKind::Channel, joined)))
        })
    })
}

/// Membership changes straight into the broker's view (one process).
pub(crate) struct Sink(pub(crate) Arc<Access>);

impl AccessSink for Sink {
    fn member(&self, room: &str, user: &str, joined: bool) {
        self.0.set_member(room, user, joined);
    }
    fn open(&self, room: &str, open: bool) {
        self.0.set_open(room, open);
    }
}

/// A bridge running apart: the broker learns through `{prefix}/hooks/access`.
pub(crate) struct NoSink;

impl AccessSink for NoSink {
    fn member(&self, _: &str, _: &str, _: bool) {}
    fn open(&self, _: &str, _: bool) {}
}
