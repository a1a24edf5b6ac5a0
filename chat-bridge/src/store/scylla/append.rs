//! The append path: per-room queues and batches, and the derived rows
//! (idempotency keys, membership, tombstones of deleted events) with their repair (see the module doc of
//! `scylla`); the LWT allocation itself is in `place.rs`.
//!
//! Ordering rule: a room's appends are handled by whoever holds its `state`
//! lock, in queue order; a caller pushes its events to the queue (all of one
//! call together, in order) and then spawns a task that takes the lock and
//! drains the queue. Nothing else writes a room's stream in this process.

use super::place::place;
use super::{big, bucket_of, read, same_err, stmts, unavailable, unbig, Inner, MAX_BATCH};
use crate::store::{
    redacts_of, tombstone, Appended, MemberChange, NewEvent, StoreError, StoredEvent,
};
use bytes::Bytes;
use futures_util::future::try_join_all;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Events replayed per read of a repair.
const REPAIR_WINDOW: u64 = 1000;

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

struct Job {
    ev: NewEvent,
    reply: Reply,
}

/// A room's queue and cached state.
pub(super) struct Room {
    id: String,
    queue: parking_lot::Mutex<Vec<Job>>,
    /// Held while a batch is handled (across awaits: a tokio mutex).
    state: tokio::sync::Mutex<State>,
    /// The highest head seen; a lower bound for readers.
    hint: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Cached head; `None`: load (and repair) before the next append.
    head: Option<u64>,
    /// Every event with seq <= indexed has its key and membership rows.
    indexed: u64,
    /// The `room_index.indexed` this process last wrote.
    persisted: u64,
}

impl Room {
    pub(super) fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            queue: parking_lot::Mutex::new(Vec::new()),
            state: tokio::sync::Mutex::new(State::default()),
            hint: AtomicU64::new(0),
        }
    }

    pub(super) fn hint(&self) -> u64 {
        self.hint.load(Ordering::Relaxed)
    }
}

/// Queues every event on its room, lets each room's batch run (concurrently
/// across rooms), and returns the results in call order.
pub(super) async fn append_many(
    inner: &Arc<Inner>,
    events: Vec<NewEvent>,
) -> Vec<Result<Appended, StoreError>> {
    let mut waiting = Vec::with_capacity(events.len());
    let mut groups: Vec<(Arc<Room>, Vec<Job>)> = Vec::new();
    for ev in events {
        let (reply, rx) = oneshot::channel();
        waiting.push(rx);
        let job = Job { ev, reply };
        match groups.iter_mut().find(|(r, _)| r.id == job.ev.room) {
            Some((_, jobs)) => jobs.push(job),
            None => groups.push((inner.room(&job.ev.room), vec![job])),
        }
    }
    for (room, jobs) in groups {
        room.queue.lock().extend(jobs);
        // A task, so that a caller going away never abandons other callers'
        // events half-way through a batch.
        tokio::spawn(drive(inner.clone(), room));
    }
    let mut out = Vec::with_capacity(waiting.len());
    for rx in waiting {
        out.push(
            rx.await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("append task stopped".into()))),
        );
    }
    out
}

async fn drive(inner: Arc<Inner>, room: Arc<Room>) {
    let mut st = room.state.lock().await;
    loop {
        let jobs: Vec<Job> = {
            let mut q = room.queue.lock();
            let n = q.len().min(MAX_BATCH);
            q.drain(..n).collect()
        };
        if jobs.is_empty() {
            return;
        }
        batch(&inner, &room, &mut st, jobs).await;
    }
}

/// Handles one batch of a room's appends and answers every job.
async fn batch(inner: &Inner, room: &Room, st: &mut State, jobs: Vec<Job>) {
    // Taken now, put back only on success: any early return reloads the room.
    let head = match st.head.take() {
        Some(h) => h,
        None => match load(inner, room, st).await {
            Ok(h) => h,
            Err(e) => return fail_all(jobs, &e),
        },
    };
    // In-batch duplicates answer like their first occurrence.
    let mut first: HashMap<(&str, &str), usize> = HashMap::new();
    let mut dup_of = vec![None; jobs.len()];
    let mut unique = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        match first.get(&(j.ev.from.as_str(), j.ev.msg_id.as_str())) {
            Some(&f) => dup_of[i] = Some(f),
            None => {
                first.insert((&j.ev.from, &j.ev.msg_id), i);
                unique.push(i);
            }
        }
    }
    let found = match try_join_all(unique.iter().map(|&i| stored_key(inner, &jobs[i].ev))).await {
        Ok(f) => f,
        Err(e) => {
            st.head = Some(head);
            return fail_all(jobs, &e);
        }
    };
    let mut results: Vec<Option<Result<Appended, StoreError>>> =
        std::iter::repeat_with(|| None).take(jobs.len()).collect();
    let mut new = Vec::new();
    for (&i, f) in unique.iter().zip(found) {
        match f {
            Some(event) => {
                results[i] = Some(Ok(Appended {
                    event,
                    duplicate: true,
                }))
            }
            None => new.push(i),
        }
    }
    let evs: Vec<&NewEvent> = new.iter().map(|&i| &jobs[i].ev).collect();
    let placed = place(inner, &room.id, head, &evs).await;
    room.hint.fetch_max(placed.head, Ordering::Relaxed);
    let watermark = (st.indexed > st.persisted).then_some(st.indexed);
    let written = index_batch(inner, &room.id, &evs, &placed.stored, watermark).await;
    match &written {
        Ok(()) => {
            if let Some(w) = watermark {
                st.persisted = w;
            }
            if placed.err.is_none() && !placed.taken {
                st.indexed = placed.head;
                st.head = Some(placed.head);
            }
        }
        Err(e) => {
            tracing::warn!(room = %room.id, error = %e, "scylla: index writes failed; the room will be repaired")
        }
    }
    for (k, &i) in new.iter().enumerate() {
        results[i] = Some(match (placed.stored.get(k), &written, &placed.err) {
            (Some(event), Ok(()), _) => Ok(Appended {
                event: event.clone(),
                duplicate: false,
            }),
            (Some(_), Err(e), _) => Err(same_err(e)),
            (None, _, Some(e)) => Err(same_err(e)),
            (None, _, None) => Err(StoreError::Unavailable("append not attempted".into())),
        });
    }
    // Answers are copied, not taken: a later in-batch duplicate reads its
    // first occurrence's answer after that one was sent.
    for (i, job) in jobs.into_iter().enumerate() {
        let r = match (dup_of[i], results.get(dup_of[i].unwrap_or(i))) {
            (Some(_), Some(Some(Ok(a)))) => Ok(Appended {
                event: a.event.clone(),
                duplicate: true,
            }),
            (None, Some(Some(Ok(a)))) => Ok(a.clone()),
            (_, Some(Some(Err(e)))) => Err(same_err(e)),
            (_, _) => Err(StoreError::Unavailable("append not attempted".into())),
        };
        drop(job.reply.send(r));
    }
}

fn fail_all(jobs: Vec<Job>, e: &StoreError) {
    for j in jobs {
        drop(j.reply.send(Err(same_err(e))));
    }
}

/// The stored event of `(room, from, msg_id)`, if its key is stored.
pub(super) async fn lookup(
    inner: &Inner,
    room: &str,
    from: &str,
    msg_id: &str,
) -> Result<Option<StoredEvent>, StoreError> {
    let key: stmts::IdemKey = (room, from, msg_id);
    let seq: Option<(Option<i64>,)> =
        read::one(inner, &inner.st.idem_get, key, "idempotency read").await?;
    let Some((Some(seq),)) = seq else {
        return Ok(None);
    };
    let seq = unbig(seq)?;
    let at: stmts::EventAt = (room, big(bucket_of(seq))?, big(seq)?);
    let row: Option<(Vec<u8>,)> = read::one(inner, &inner.st.event_at, at, "event read").await?;
    match row {
        Some((payload,)) => Ok(Some(StoredEvent {
            seq,
            json: Bytes::from(payload),
        })),
        None => Err(StoreError::Corrupt(format!(
            "{room}: idempotency key points at missing seq {seq}"
        ))),
    }
}

/// The stored event of a new event's idempotency key, if any.
async fn stored_key(inner: &Inner, ev: &NewEvent) -> Result<Option<StoredEvent>, StoreError> {
    lookup(inner, &ev.room, &ev.from, &ev.msg_id).await
}

/// Writes the idempotency keys, membership rows and tombstones of the
/// stored events (and the lagging watermark), concurrently.
async fn index_batch(
    inner: &Inner,
    room: &str,
    evs: &[&NewEvent],
    stored: &[StoredEvent],
    watermark: Option<u64>,
) -> Result<(), StoreError> {
    let rows = evs.iter().zip(stored).map(|(ev, s)| {
        let derived = Derived {
            sender: &ev.from,
            msg_id: &ev.msg_id,
            member: ev.member.as_ref(),
            redacts: ev.redacts,
        };
        index_event(inner, room, s.seq, derived)
    });
    let mark = async {
        match watermark {
            Some(w) => write_watermark(inner, room, w).await,
            None => Ok(()),
        }
    };
    tokio::try_join!(try_join_all(rows), mark).map(|_| ())
}

/// What an event derives: its idempotency key, its membership change, the
/// event it deletes.
pub(super) struct Derived<'a> {
    pub(super) sender: &'a str,
    pub(super) msg_id: &'a str,
    pub(super) member: Option<&'a MemberChange>,
    pub(super) redacts: Option<u64>,
}

/// The derived rows of one event: its idempotency key, its membership
/// change in both directions (`USING TIMESTAMP seq`: the latest change
/// wins), and the tombstone of the event it deletes.
pub(super) async fn index_event(
    inner: &Inner,
    room: &str,
    seq: u64,
    d: Derived<'_>,
) -> Result<(), StoreError> {
    let Derived {
        sender,
        msg_id,
        member,
        redacts,
    } = d;
    let s = big(seq)?;
    let key = async {
        inner
            .session
            .execute_unpaged(&inner.st.idem_put, {
                let v: stmts::IdemPut = (room, sender, msg_id, s);
                v
            })
            .await
            .map_err(|e| unavailable("idempotency write", e))
    };
    let rows = async {
        let Some(m) = member else { return Ok(()) };
        let (role, state) = (read::enum_str(&m.role)?, read::enum_str(&m.state)?);
        let v: stmts::MemberPut = (room, &m.user, &role, &state, m.muted, s, s);
        let by_room = inner.session.execute_unpaged(&inner.st.member_put, v);
        let v: stmts::MemberPut = (&m.user, room, &role, &state, m.muted, s, s);
        let by_user = inner.session.execute_unpaged(&inner.st.user_room_put, v);
        tokio::try_join!(by_room, by_user).map_err(|e| unavailable("membership write", e))?;
        Ok(())
    };
    let tomb = async {
        match redacts {
            Some(target) if target < seq => redact(inner, room, target).await,
            _ => Ok(()),
        }
    };
    tokio::try_join!(key, rows, tomb).map(|_| ())
}

/// Replaces the payload of `room`'s event `target` with its tombstone.
/// Idempotent: the cell is written `USING TIMESTAMP` one above the
/// payload's own write time, so it wins over the LWT insert whatever the
/// nodes' clocks say, and a payload that is already the tombstone is left
/// alone. A missing or undecodable target is logged and skipped (a repair
/// must never be stuck on it).
async fn redact(inner: &Inner, room: &str, target: u64) -> Result<(), StoreError> {
    let (bucket, seq) = (big(bucket_of(target))?, big(target)?);
    let at: stmts::EventAt = (room, bucket, seq);
    let row: Option<stmts::PayloadRow> =
        read::one(inner, &inner.st.payload_get, at, "event read").await?;
    let Some((Some(payload), Some(written))) = row else {
        tracing::warn!(room, target, "scylla: delete of a missing event");
        return Ok(());
    };
    let tomb = match tombstone(&payload) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(room, target, error = %e, "scylla: cannot redact an undecodable event");
            return Ok(());
        }
    };
    if tomb == payload {
        return Ok(());
    }
    let v: stmts::PayloadPut = (
        written.saturating_add(1),
        tomb.as_slice(),
        room,
        bucket,
        seq,
    );
    inner
        .session
        .execute_unpaged(&inner.st.payload_put, v)
        .await
        .map_err(|e| unavailable("tombstone write", e))?;
    Ok(())
}

async fn write_watermark(inner: &Inner, room: &str, w: u64) -> Result<(), StoreError> {
    let w = big(w)?;
    inner
        .session
        .execute_unpaged(&inner.st.index_put, {
            let v: stmts::IndexPut = (w, w, room);
            v
        })
        .await
        .map_err(|e| unavailable("room index write", e))?;
    Ok(())
}

/// Loads a room before its first append (or after a failure): finds the
/// head from the index watermark, replays `(indexed, head]` into the
/// idempotency and membership tables, and moves the watermark.
async fn load(inner: &Inner, room: &Room, st: &mut State) -> Result<u64, StoreError> {
    let stored: Option<(Option<i64>,)> = read::one(
        inner,
        &inner.st.index_get,
        (room.id.as_str(),),
        "room index read",
    )
    .await?;
    let w = match stored {
        Some((Some(w),)) => unbig(w)?,
        _ => 0,
    }
    .max(st.indexed);
    let head = read::probe(inner, &room.id, bucket_of(w)).await?;
    let mut lo = w + 1;
    while lo <= head {
        let hi = head.min(lo + REPAIR_WINDOW - 1);
        let rows = read::scan(inner, &room.id, lo, hi).await?;
        for chunk in rows.chunks(64) {
            try_join_all(chunk.iter().map(|r| {
                // the stream row has no column for it: a delete's target is
                // read back from its payload
                let derived = Derived {
                    sender: &r.sender,
                    msg_id: &r.msg_id,
                    member: r.member.as_ref(),
                    redacts: redacts_of(&r.payload),
                };
                index_event(inner, &room.id, r.seq, derived)
            }))
            .await?;
        }
        if rows.len() as u64 != hi - lo + 1 {
            tracing::warn!(room = %room.id, lo, hi, found = rows.len(), "scylla: gap in a room's stream");
        }
        lo = hi + 1;
    }
    if head > w {
        tracing::info!(room = %room.id, from = w + 1, to = head, "scylla: replayed index rows");
    }
    st.indexed = head;
    if head > st.persisted {
        write_watermark(inner, &room.id, head).await?;
        st.persisted = head;
    }
    room.hint.fetch_max(head, Ordering::Relaxed);
    Ok(head)
}

/// Writes every room's lagging watermark.
pub(super) async fn flush(inner: &Inner) -> Result<(), StoreError> {
    let rooms: Vec<Arc<Room>> = inner.rooms.lock().values().cloned().collect();
    for room in rooms {
        let mut st = room.state.lock().await;
        if st.head.is_some() && st.indexed > st.persisted {
            write_watermark(inner, &room.id, st.indexed).await?;
            st.persisted = st.indexed;
        }
    }
    Ok(())
}
