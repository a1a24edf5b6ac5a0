//! The moderation service's channel in one process (`[bridge.moderation]`,
//! `chatmq all`): requests go out on `{prefix}/hooks/moderate` as
//! `{"id", "room", "from", "msg_id", "type", "body", "target", "meta"}`;
//! the service (a service account) answers on `{prefix}/hooks/verdicts`
//! with `{"id", "verdict": "accept"|"reject"|"rewrite", "reason"?, "body"?}`.
//! Both travel on service links of the in-process broker, apart from the
//! bridge's: a batch waiting for verdicts never waits behind itself.

use async_trait::async_trait;
use broker::link::{LinkSender, Outgoing};
use broker::Broker;
use chat_bridge::chat::moderation::{Moderator, Verdict};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

pub struct LinkModerator {
    publish: Arc<LinkSender>,
    topic: String,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Verdict>>>>,
    next: AtomicU64,
}

impl LinkModerator {
    /// Opens the two links: one to publish requests, one to take verdicts.
    pub async fn start(broker: &Broker) -> Result<Arc<Self>, String> {
        let prefix = broker.prefix().to_owned();
        let (publish, _none) = broker.service_link("chatmq@moderation", Vec::new()).await?;
        let (_, mut verdicts) = broker
            .service_link("chatmq@verdicts", vec![format!("{prefix}/hooks/verdicts")])
            .await?;
        let pending: Arc<Mutex<HashMap<String, oneshot::Sender<Verdict>>>> = Arc::default();
        let waiting = pending.clone();
        tokio::spawn(async move {
            let _keep = _none;
            let mut got = Vec::new();
            loop {
                let seen = verdicts.recv(64, &mut got).await;
                for d in got.drain(..) {
                    let Ok(v) = serde_json::from_slice::<Value>(&d.payload) else {
                        continue;
                    };
                    let Some(id) = v.get("id").and_then(Value::as_str) else {
                        continue;
                    };
                    let Ok(verdict) = serde_json::from_value::<Verdict>(v.clone()) else {
                        continue;
                    };
                    if let Some(tx) = waiting.lock().remove(id) {
                        let _ = tx.send(verdict);
                    }
                }
                if seen.closed {
                    break;
                }
            }
        });
        Ok(Arc::new(LinkModerator {
            publish,
            topic: format!("{prefix}/hooks/moderate"),
            pending,
            next: AtomicU64::new(1),
        }))
    }
}

#[async_trait]
impl Moderator for LinkModerator {
    async fn ask(&self, mut request: Value, timeout: Duration) -> Option<Verdict> {
        let id = format!("m{}", self.next.fetch_add(1, Ordering::Relaxed));
        request["id"] = Value::String(id.clone());
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id.clone(), tx);
        self.publish
            .publish([Outgoing {
                topic: self.topic.clone(),
                payload: request.to_string().into_bytes().into(),
                corr: None,
            }])
            .await;
        let verdict = tokio::time::timeout(timeout, rx)
            .await
            .ok()
            .and_then(Result::ok);
        self.pending.lock().remove(&id);
        verdict
    }
}
