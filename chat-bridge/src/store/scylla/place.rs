//! The LWT allocation loop: a batch's new events go in at head + 1, ... as
//! conditional inserts (one partition per attempt); an attempt that is not
//! applied, or whose answer is lost, is resolved by `lwt.rs` from the slots
//! read at LOCAL_SERIAL.

use super::lwt::{self, Ident, Outcome, Walk};
use super::{big, bucket_of, corrupt, last_in_bucket, read, stmts, Inner, MAX_LWT_BATCH};
use crate::store::event_json;
use crate::store::{NewEvent, StoreError, StoredEvent};
use bytes::Bytes;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::MaybeUnset;
use std::time::Duration;

/// Payload bytes in one conditional batch (ScyllaDB warns above 128 KiB).
const LWT_BATCH_BYTES: usize = 96 * 1024;
/// Attempts in a row that find the slot free yet store nothing (failed or
/// timed-out inserts) before a batch gives up; each waits longer.
const MAX_STALLS: u32 = 8;
/// Attempts in a row that lose the slot to another writer before a batch
/// gives up (another bridge appending to the same room without pause).
const MAX_LOST: u32 = 64;

fn ident(ev: &NewEvent) -> Ident {
    Ident {
        sender: ev.from.clone(),
        msg_id: ev.msg_id.clone(),
    }
}

/// Where the new events of a batch went.
pub(super) struct Placed {
    /// `stored[k]` is `evs[k]`, for a prefix of the events.
    pub(super) stored: Vec<StoredEvent>,
    /// Why the rest was not stored.
    pub(super) err: Option<StoreError>,
    /// The highest seq known to be taken.
    pub(super) head: u64,
    /// Another writer's events were met: the cache was stale.
    pub(super) taken: bool,
}

/// Stores `evs` in order at `head + 1, ...`: conditional batches of
/// consecutive seqs in one partition, resolved by `lwt.rs` when not applied.
pub(super) async fn place(inner: &Inner, room: &str, head: u64, evs: &[&NewEvent]) -> Placed {
    let mut p = Placed {
        stored: Vec::with_capacity(evs.len()),
        err: None,
        head,
        taken: false,
    };
    let (mut stalls, mut lost) = (0, 0);
    while p.stored.len() < evs.len() {
        let next = p.head + 1;
        let rest = &evs[p.stored.len()..];
        let attempt = match build_chunk(rest, next) {
            Ok(c) => c,
            Err(e) => {
                p.err = Some(e);
                break;
            }
        };
        let walk = match try_chunk(inner, room, next, rest, &attempt).await {
            Ok(w) => w,
            Err(e) => {
                p.err = Some(e);
                p.taken = true; // the outcome is unknown: reload before the next append
                break;
            }
        };
        let (walk, payloads) = walk;
        for (k, seq) in walk.stored.iter().enumerate() {
            let json = match payloads.get(k) {
                Some(Some(found)) => found.clone(),
                _ => attempt.get(k).map(|(_, j)| j.clone()).unwrap_or_default(),
            };
            p.stored.push(StoredEvent { seq: *seq, json });
        }
        p.head = walk.next.saturating_sub(1).max(p.head);
        if walk.taken {
            p.taken = true;
            match read::probe(inner, room, bucket_of(p.head)).await {
                Ok(h) => p.head = p.head.max(h),
                Err(e) => {
                    p.err = Some(e);
                    break;
                }
            }
        }
        if !walk.stored.is_empty() {
            (stalls, lost) = (0, 0);
        } else if walk.taken {
            // Someone else progressed: retry at once, from the new head.
            lost += 1;
            if lost >= MAX_LOST {
                p.err = Some(StoreError::Unavailable(format!(
                    "{room}: lost {lost} slots in a row to another writer"
                )));
                break;
            }
        } else {
            stalls += 1;
            if stalls >= MAX_STALLS {
                p.err = Some(StoreError::Unavailable(format!(
                    "{room}: no insert succeeded in {stalls} attempts"
                )));
                p.taken = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5 << stalls)).await;
        }
    }
    p
}

/// The next chunk: `(seq, payload)` for the first events of `rest` at
/// `next, next + 1, ...`, within one bucket and the batch limits.
fn build_chunk(rest: &[&NewEvent], next: u64) -> Result<Vec<(u64, Bytes)>, StoreError> {
    let room_left = last_in_bucket(bucket_of(next)) - next + 1;
    let max = rest
        .len()
        .min(MAX_LWT_BATCH)
        .min(usize::try_from(room_left).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(max);
    let mut bytes = 0;
    for (seq, ev) in (next..).zip(&rest[..max]) {
        let json = Bytes::from(event_json(ev, seq)?);
        bytes += json.len();
        if !out.is_empty() && bytes > LWT_BATCH_BYTES {
            break;
        }
        out.push((seq, json));
    }
    Ok(out)
}

/// The member change column: JSON of the change, if any.
fn member_json(ev: &NewEvent) -> Result<Option<String>, StoreError> {
    ev.member
        .as_ref()
        .map(|m| serde_json::to_string(m).map_err(|e| corrupt("encoding member change", e)))
        .transpose()
}

/// One attempt: inserts the chunk (a plain conditional insert for one event,
/// a conditional batch otherwise) and resolves it into a [`Walk`], with the
/// payloads found in the slots when they were read.
async fn try_chunk(
    inner: &Inner,
    room: &str,
    next: u64,
    rest: &[&NewEvent],
    chunk: &[(u64, Bytes)],
) -> Result<(Walk, Vec<Option<Bytes>>), StoreError> {
    let bucket = big(bucket_of(next))?;
    let mut values = Vec::with_capacity(chunk.len());
    for ((seq, json), ev) in chunk.iter().zip(rest) {
        let v: stmts::InsertEvent = (
            room,
            bucket,
            big(*seq)?,
            ev.from.as_str(),
            ev.msg_id.as_str(),
            big(ev.ts)?,
            json.as_ref(),
            // Unset, not null: a null would write a tombstone cell per event.
            MaybeUnset::from_option(member_json(ev)?),
        );
        values.push(v);
    }
    let answer = if let [one] = values.as_slice() {
        inner
            .session
            .execute_unpaged(&inner.st.insert_event, one)
            .await
    } else {
        // `BEGIN BATCH`: a conditional batch on one partition runs as one Paxos
        // round (no batchlog), all-or-nothing.
        let mut b = Batch::new(BatchType::Logged);
        for _ in 0..values.len() {
            b.append_statement(inner.st.insert_event.clone());
        }
        inner.session.batch(&b, &values).await
    };
    let wants: Vec<Ident> = rest.iter().take(chunk.len()).map(|e| ident(e)).collect();
    let want_refs: Vec<&Ident> = wants.iter().collect();
    let existing;
    let outcome = match &answer {
        Err(e) => {
            tracing::debug!(room, seq = next, error = %e, "scylla: insert outcome unknown");
            Outcome::Unknown
        }
        // An answer that does not decode counts as no answer: the slot is read.
        Ok(res) => match read::lwt_answer(res).unwrap_or((None, None)) {
            (Some(true), _) => Outcome::Applied,
            // A batch answers with rows in an order that differs between
            // ScyllaDB and Cassandra: only a single insert's row is used.
            (Some(false), row) => {
                existing = row.filter(|_| wants.len() == 1);
                Outcome::NotApplied(existing.as_ref())
            }
            (None, _) => Outcome::Unknown,
        },
    };
    let none = |w: Walk| Ok((w, Vec::new()));
    if outcome == Outcome::Applied {
        return none(Walk {
            stored: (next..).take(chunk.len()).collect(),
            taken: false,
            next: next + chunk.len() as u64,
        });
    }
    match (wants.as_slice(), outcome) {
        ([want], outcome) => match lwt::after_insert(want, next, outcome) {
            lwt::Next::Taken(s) => none(Walk {
                stored: Vec::new(),
                taken: true,
                next: s + 1,
            }),
            // Ours, or unknown: read the slot (ours: for the payload as stored).
            _ => serial_walk(inner, room, next, &want_refs).await,
        },
        _ => serial_walk(inner, room, next, &want_refs).await,
    }
}

/// Reads the slots `next..next + wants.len()` at LOCAL_SERIAL and walks them.
async fn serial_walk(
    inner: &Inner,
    room: &str,
    next: u64,
    wants: &[&Ident],
) -> Result<(Walk, Vec<Option<Bytes>>), StoreError> {
    let last = next + wants.len() as u64 - 1;
    let rows = read::slots_serial(inner, room, next, last).await?;
    let idents: Vec<Option<Ident>> = rows
        .iter()
        .map(|r| r.as_ref().map(|(i, _)| i.clone()))
        .collect();
    let walk = lwt::walk(wants, next, &idents);
    let payloads = walk
        .stored
        .iter()
        .map(|s| {
            rows.get(usize::try_from(s - next).unwrap_or(usize::MAX))
                .and_then(|r| r.as_ref().map(|(_, p)| p.clone()))
        })
        .collect();
    Ok((walk, payloads))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: usize, body_len: usize) -> NewEvent {
        let mut body = serde_json::Map::new();
        body.insert("body".into(), "x".repeat(body_len).into());
        NewEvent {
            room: "r".into(),
            from: "u".into(),
            msg_id: format!("m{n}"),
            ts: 1,
            body,
            member: None,
            redacts: None,
        }
    }

    #[test]
    fn chunks_stop_at_bucket_end_and_limits() -> Result<(), StoreError> {
        let evs: Vec<NewEvent> = (0..100).map(|n| ev(n, 10)).collect();
        let refs: Vec<&NewEvent> = evs.iter().collect();
        let c = build_chunk(&refs, 1)?;
        assert_eq!(c.len(), MAX_LWT_BATCH, "capped at MAX_LWT_BATCH");
        assert_eq!(c.first().map(|x| x.0), Some(1));
        let c = build_chunk(&refs, super::super::BUCKET_SIZE - 3)?;
        assert_eq!(c.len(), 3, "stops at the bucket's last seq");
        let c = build_chunk(&refs, super::super::BUCKET_SIZE)?;
        assert_eq!(c.len(), MAX_LWT_BATCH, "a new bucket starts a new chunk");
        let big: Vec<NewEvent> = (0..10).map(|n| ev(n, 40 * 1024)).collect();
        let refs: Vec<&NewEvent> = big.iter().collect();
        assert_eq!(build_chunk(&refs, 1)?.len(), 2, "byte budget");
        let huge = [ev(0, 200 * 1024)];
        let refs: Vec<&NewEvent> = huge.iter().collect();
        assert_eq!(build_chunk(&refs, 1)?.len(), 1, "one event always fits");
        Ok(())
    }

    #[test]
    fn chunk_payload_has_its_seq() -> Result<(), StoreError> {
        let evs = [ev(0, 1), ev(1, 1)];
        let refs: Vec<&NewEvent> = evs.iter().collect();
        let c = build_chunk(&refs, 41)?;
        for (seq, json) in c {
            let v: serde_json::Value =
                serde_json::from_slice(&json).map_err(|e| corrupt("test", e))?;
            assert_eq!(v["seq"], seq);
        }
        Ok(())
    }
}
