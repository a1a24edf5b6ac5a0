//! Pre-publish moderation (`[bridge.moderation]`): before a message or an
//! edit is sequenced, a moderation service may accept it, reject it with a
//! reason, or rewrite its body. The service is asked through a
//! [`Moderator`] (the server's: a request on `{prefix}/hooks/moderate`, the
//! verdict on `{prefix}/hooks/verdicts`); one that does not answer within
//! `timeout_ms` gets the configured `on_timeout` verdict. A retry of a send
//! that was stored already is not asked again (it is answered with the
//! stored event, whatever a verdict would say now).

use super::Chat;
use crate::store::NewEvent;
use crate::wire::{Code, Refusal};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// `[bridge.moderation]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModerationConfig {
    /// Ask the moderation service before storing messages and edits.
    pub enabled: bool,
    /// How long a verdict may take.
    pub timeout_ms: u64,
    /// The verdict when none came in time: `accept` or `reject`.
    pub on_timeout: OnTimeout,
}

impl Default for ModerationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            timeout_ms: 1000,
            on_timeout: OnTimeout::Accept,
        }
    }
}

/// What a send gets when the moderation service is silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    Accept,
    Reject,
}

/// A moderation service's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// `accept`, `reject` or `rewrite`.
    pub verdict: String,
    /// Why (a rejection's message to the sender).
    #[serde(default)]
    pub reason: Option<String>,
    /// The new body of a `rewrite`.
    #[serde(default)]
    pub body: Option<String>,
}

/// Where moderation requests go; `None` when no verdict came in `timeout`.
#[async_trait]
pub trait Moderator: Send + Sync {
    async fn ask(&self, request: Value, timeout: Duration) -> Option<Verdict>;
}

impl Chat {
    /// Applies moderation to a valid send (see the module doc).
    pub(super) async fn moderate_send(&self, mut ev: NewEvent) -> Result<NewEvent, Refusal> {
        let Some(m) = self.moderator.as_ref() else {
            return Ok(ev);
        };
        let kind = ev
            .body
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        if !matches!(kind, "message" | "edit") {
            return Ok(ev);
        }
        if self
            .store
            .lookup(&ev.room, &ev.from, &ev.msg_id)
            .await?
            .is_some()
        {
            return Ok(ev); // a retry of a stored send
        }
        let request = json!({
            "room": ev.room,
            "from": ev.from,
            "msg_id": ev.msg_id,
            "type": kind,
            "body": ev.body.get("body"),
            "target": ev.body.get("target"),
            "meta": ev.body.get("meta"),
        });
        let timeout = Duration::from_millis(self.moderation.timeout_ms);
        let verdict = match m.ask(request, timeout).await {
            Some(v) => v,
            None => {
                self.metrics.moderation_timeouts.inc();
                match self.moderation.on_timeout {
                    OnTimeout::Accept => return Ok(ev),
                    OnTimeout::Reject => {
                        return Err(Refusal::new(
                            Code::Forbidden,
                            "moderation did not answer in time, try again",
                        ))
                    }
                }
            }
        };
        match verdict.verdict.as_str() {
            "accept" => Ok(ev),
            "rewrite" => match verdict.body {
                Some(b) if b.len() <= self.sizes.body_max => {
                    ev.body.insert("body".into(), Value::String(b));
                    ev.body.insert("moderated".into(), Value::Bool(true));
                    Ok(ev)
                }
                _ => Err(Refusal::new(Code::Forbidden, "rejected by moderation")),
            },
            _ => {
                let reason: String = verdict
                    .reason
                    .unwrap_or_else(|| "not allowed".into())
                    .chars()
                    .take(200)
                    .collect();
                Err(Refusal::new(
                    Code::Forbidden,
                    format!("rejected by moderation: {reason}"),
                ))
            }
        }
    }
}
