//! Retention and the idempotency window (`[bridge.retention]`).
//!
//! * **Events** of a room older than its kind's retention are removed by a
//!   periodic sweep, oldest first; the room's head event always stays (the
//!   next seq follows from it). `history` and `sync` then say `truncated`
//!   where the stream no longer reaches back (PROTOCOL terms: see
//!   docs/architecture.md, "Retention").
//! * **Idempotency keys** are remembered for `idempotency_window_secs`: a
//!   retry within the window is answered with the original event; a send
//!   that reuses a `msg_id` after it is a new event. The sweep forgets the
//!   keys of events older than the window (and of every event it removes),
//!   so the key table holds one window of sends, not all of history.
//!
//! The sweep reads each room's events in seq order from where it stopped
//! last time (the store's [`Expired`]) up to the first event young enough
//! to keep, so a sweep costs about what expired since the last one.

use super::Chat;
use crate::store::{Expired, KeyAt, Page, Range, RoomKind, StoreError, StoredEvent};
use serde::Deserialize;
use std::time::Duration;

/// `[bridge.retention]`. Every duration 0 means forever.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// How long a send's `msg_id` is remembered for idempotency.
    pub idempotency_window_secs: u64,
    /// How long events are kept, per room kind.
    pub group_secs: u64,
    pub direct_secs: u64,
    pub channel_secs: u64,
    /// How often the sweep runs.
    pub sweep_interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            idempotency_window_secs: 0,
            group_secs: 0,
            direct_secs: 0,
            channel_secs: 0,
            sweep_interval_ms: 60_000,
        }
    }
}

impl RetentionConfig {
    /// Events of `kind` are kept this long (`None`: forever).
    pub fn events(&self, kind: RoomKind) -> Option<Duration> {
        let s = match kind {
            RoomKind::Group => self.group_secs,
            RoomKind::Direct => self.direct_secs,
            RoomKind::Channel => self.channel_secs,
        };
        (s > 0).then(|| Duration::from_secs(s))
    }

    /// A `msg_id` is remembered this long (`None`: as long as its event).
    pub fn window(&self) -> Option<Duration> {
        (self.idempotency_window_secs > 0)
            .then(|| Duration::from_secs(self.idempotency_window_secs))
    }

    /// Whether anything is ever removed.
    pub fn any(&self) -> bool {
        self.window().is_some()
            || [RoomKind::Group, RoomKind::Direct, RoomKind::Channel]
                .into_iter()
                .any(|k| self.events(k).is_some())
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub rooms: u64,
    pub events: u64,
    pub keys: u64,
}

/// Events read per step of a sweep.
const STEP: usize = 200;
/// Most events (or keys) one room gives up per sweep: a room with a long
/// backlog is caught up over several sweeps, the others are not kept waiting.
const PER_ROOM: u64 = 20_000;

/// The envelope fields the sweep reads from a stored event.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    ts: u64,
    #[serde(default)]
    from: String,
    #[serde(default)]
    msg_id: String,
}

fn envelope(e: &StoredEvent) -> Option<Envelope> {
    serde_json::from_slice(&e.json).ok()
}

/// The `ts` of a stored event (0 when unreadable).
pub(super) fn ts_of(e: &StoredEvent) -> u64 {
    envelope(e).map_or(0, |e| e.ts)
}

impl Chat {
    /// One sweep over every room `owns` accepts (a cluster's bridge sweeps
    /// the rooms of its partitions), at time `now_ms`.
    pub async fn sweep(
        &self,
        now_ms: u64,
        owns: &(dyn Fn(&str) -> bool + Send + Sync),
    ) -> Result<Swept, StoreError> {
        let mut total = Swept::default();
        if !self.retention.any() {
            return Ok(total);
        }
        let mut cursor = None;
        loop {
            let page = self.store.rooms_page(cursor, 1000).await?;
            for (room, kind) in &page.rooms {
                if !owns(room) {
                    continue;
                }
                match self.sweep_room(room, *kind, now_ms).await {
                    Ok((events, keys)) => {
                        total.rooms += 1;
                        total.events += events;
                        total.keys += keys;
                    }
                    Err(e) => tracing::warn!(room, error = %e, "retention sweep of a room failed"),
                }
            }
            cursor = page.next;
            if cursor.is_none() {
                return Ok(total);
            }
        }
    }

    /// Sweeps one room: (events removed, keys forgotten).
    async fn sweep_room(
        &self,
        room: &str,
        kind: RoomKind,
        now: u64,
    ) -> Result<(u64, u64), StoreError> {
        let cut = |d: Option<Duration>| d.map(|d| now.saturating_sub(d.as_millis() as u64));
        let events_cut = cut(self.retention.events(kind));
        // a key never outlives its event
        let keys_cut = match (cut(self.retention.window()), events_cut) {
            (Some(k), Some(e)) => Some(k.max(e)),
            (k, e) => k.or(e),
        };
        let (Some(keys_cut), cur) = (keys_cut, self.store.expired(room).await?) else {
            return Ok((0, 0));
        };
        // the keys: from where the last sweep stopped to the first young event
        let mut keys = Vec::new();
        let mut keys_before = cur.keys_before;
        let mut head = 0;
        'keys: while (keys.len() as u64) < PER_ROOM {
            let page = self
                .store
                .read(room, Range::After(keys_before - 1), STEP)
                .await?;
            head = page.head;
            for e in &page.events {
                let Some(env) = envelope(e) else { continue };
                if env.ts >= keys_cut || e.seq >= page.head {
                    break 'keys;
                }
                keys.push(KeyAt {
                    from: env.from,
                    msg_id: env.msg_id,
                    seq: e.seq,
                });
                keys_before = e.seq + 1;
            }
            if !page.has_more {
                break;
            }
        }
        // the events: likewise, from the first still stored
        let mut events_before = cur.events_before;
        if let Some(events_cut) = events_cut {
            'events: while events_before - cur.events_before < PER_ROOM {
                let page: Page = self
                    .store
                    .read(room, Range::After(events_before - 1), STEP)
                    .await?;
                head = page.head;
                for e in &page.events {
                    if ts_of(e) >= events_cut || e.seq >= page.head {
                        break 'events;
                    }
                    events_before = e.seq + 1;
                }
                if !page.has_more {
                    break;
                }
            }
        }
        // keys of removed events go too (the caller's contract)
        let events_before = events_before.min(keys_before.max(cur.keys_before));
        if keys.is_empty() && events_before == cur.events_before {
            return Ok((0, 0));
        }
        let n_keys = keys.len() as u64;
        let after: Expired = self
            .store
            .expire(room, keys, keys_before, events_before)
            .await?;
        tracing::debug!(room, head, ?after, "retention sweep");
        Ok((after.events_before - cur.events_before, n_keys))
    }
}

/// Runs [`Chat::sweep`] every `sweep_interval_ms` until `stop` turns true.
pub async fn run_sweeper(
    chat: std::sync::Arc<Chat>,
    owns: Box<dyn Fn(&str) -> bool + Send + Sync>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if !chat.retention.any() {
        return;
    }
    let every = Duration::from_millis(chat.retention.sweep_interval_ms.max(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match chat.sweep(super::now_ms(), &*owns).await {
            Ok(s) if s.events > 0 || s.keys > 0 => {
                tracing::info!(
                    rooms = s.rooms,
                    events = s.events,
                    keys = s.keys,
                    "retention sweep"
                );
                chat.metrics.retention_events.inc_by(s.events);
                chat.metrics.retention_keys.inc_by(s.keys);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
        }
    }
}
