//! Slow mode: `rooms.slow {"room", "seconds"}` (0 to 3600; 0 turns it off),
//! by the room's owners and admins. While on, each member who is not an
//! owner or admin may send one message per `seconds` in the room (edits,
//! deletes and reactions are not slowed); a faster one is refused with
//! `rate_limited`. The setting is stored (`Store::set_room_settings`) and
//! announced in the room as a `{"type": "settings", "slow_secs": n}` event.

use super::{now_ms, Chat, Out};
use crate::store::{MemberState, NewEvent, Role};
use crate::wire::{self, required_room, Code, Refusal};
use schema::result::SeqResult;
use schema::RawValue;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Longest slow mode, seconds.
const SLOW_MAX: u64 = 3600;

/// `rooms.slow`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Slow {
    room: Option<String>,
    seconds: Option<u64>,
}

/// When each (room, user) last sent in a slow room, and each room's slow
/// mode as last read from the store (kept [`SETTINGS_TTL`]: sends do not
/// read the store each batch; a change made through another bridge of a
/// cluster applies within that time).
#[derive(Default)]
pub(super) struct LastSends(
    parking_lot::Mutex<HashMap<(String, String), Instant>>,
    parking_lot::Mutex<HashMap<String, (u64, Instant)>>,
);

/// How long a room's slow mode is kept before it is read again.
const SETTINGS_TTL: Duration = Duration::from_secs(5);

impl LastSends {
    /// The room's slow mode if read less than [`SETTINGS_TTL`] ago.
    pub(super) fn cached(&self, room: &str) -> Option<u64> {
        let map = self.1.lock();
        map.get(room)
            .filter(|(_, at)| at.elapsed() < SETTINGS_TTL)
            .map(|(s, _)| *s)
    }

    /// Keeps the room's slow mode as just read (or just set).
    pub(super) fn remember(&self, room: &str, secs: u64) {
        let mut map = self.1.lock();
        if map.len() > 100_000 {
            map.retain(|_, (_, at)| at.elapsed() < SETTINGS_TTL);
        }
        map.insert(room.to_owned(), (secs, Instant::now()));
    }

    /// Whether `user` may send in `room` now under a slow mode of `secs`
    /// (and, if so, from now on counts as having sent).
    pub(super) fn take(&self, room: &str, user: &str, secs: u64) -> bool {
        let now = Instant::now();
        let every = Duration::from_secs(secs);
        let mut map = self.0.lock();
        if map.len() > 100_000 {
            map.retain(|_, t| now.duration_since(*t) < Duration::from_secs(SLOW_MAX));
        }
        let key = (room.to_owned(), user.to_owned());
        match map.get(&key) {
            Some(t) if now.duration_since(*t) < every => false,
            _ => {
                map.insert(key, now);
                true
            }
        }
    }
}

/// The slow mode of a room's stored settings (0: off).
pub(super) fn slow_secs(settings: Option<&str>) -> u64 {
    settings
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
        .and_then(|v| v["slow_secs"].as_u64())
        .unwrap_or(0)
}

impl Chat {
    pub(super) async fn slow(
        &self,
        user: &str,
        p: Slow,
        out: &mut Vec<Out>,
    ) -> Result<Box<RawValue>, Refusal> {
        let room = required_room(p.room)?;
        let secs = match p.seconds {
            Some(s) if s <= SLOW_MAX => s,
            _ => return Err(Refusal::bad(format!("seconds must be 0..{SLOW_MAX}"))),
        };
        if self.store.room(&room).await?.is_none() {
            return Err(Refusal::new(Code::NotFound, format!("no room {room}")));
        }
        let m = self.store.member(&room, user).await?;
        let allowed = self.is_admin(user)
            || m.is_some_and(|m| {
                m.state == MemberState::Joined && matches!(m.role, Role::Owner | Role::Admin)
            });
        if !allowed {
            return Err(Refusal::new(
                Code::Forbidden,
                format!("only {room}'s owners and admins set its slow mode"),
            ));
        }
        let mut settings = self
            .store
            .room_settings(&room)
            .await?
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        settings["slow_secs"] = json!(secs);
        self.store
            .set_room_settings(&room, &settings.to_string())
            .await?;
        self.last_sends.remember(&room, secs);
        let mut body = serde_json::Map::new();
        body.insert("type".into(), "settings".into());
        body.insert("slow_secs".into(), secs.into());
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ev = NewEvent {
            room: room.clone(),
            from: user.to_owned(),
            msg_id: format!("$slow:{}:{n}", now_ms()),
            ts: now_ms(),
            body,
            member: None,
            redacts: None,
        };
        let a = self.store.append(ev).await?;
        out.push(self.event_out(&room, &a.event));
        wire::result(&SeqResult::new(a.event.seq))
    }
}
