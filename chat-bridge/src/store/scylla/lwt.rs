//! The allocation decision of the append path, as pure functions (no I/O),
//! so every branch is unit tested without a cluster.
//!
//! An event is stored by `INSERT ... IF NOT EXISTS` at a candidate seq. The
//! answer is one of: applied; not applied (the slot holds another row, which
//! the answer may carry); or no answer at all (timeout, lost connection),
//! after which the insert may or may not have been applied. In the last case
//! the slot is read at LOCAL_SERIAL: a serial read first completes any Paxos
//! round still in flight on the partition, so what it returns is final.
//! A slot holding a row with the same `(sender, msg_id)` is ours: either our
//! own earlier attempt, or the same event stored by another bridge, which is
//! the same event.

/// The identity of an event in its room: its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ident {
    pub(crate) sender: String,
    pub(crate) msg_id: String,
}

/// What a conditional insert of one slot answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome<'a> {
    /// `[applied] = true`.
    Applied,
    /// `[applied] = false`; the row holding the slot when the answer carried it.
    NotApplied(Option<&'a Ident>),
    /// No answer: the insert may or may not have been applied.
    Unknown,
}

/// What to do next with the event that was tried at `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// The event is stored at this seq.
    Stored(u64),
    /// Another event holds this seq: try the next one.
    Taken(u64),
    /// Unknown outcome: read the slot at LOCAL_SERIAL, then [`after_read`].
    ReadSerial(u64),
    /// Definitely not stored and the slot is free: try this seq again.
    Retry(u64),
}

/// The decision after an insert at `seq`.
pub(crate) fn after_insert(want: &Ident, seq: u64, outcome: Outcome<'_>) -> Next {
    match outcome {
        Outcome::Applied => Next::Stored(seq),
        Outcome::NotApplied(Some(row)) => after_read(want, seq, Some(row)),
        // Not applied, yet the answer did not say what holds the slot.
        Outcome::NotApplied(None) | Outcome::Unknown => Next::ReadSerial(seq),
    }
}

/// The decision after reading slot `seq` at LOCAL_SERIAL.
pub(crate) fn after_read(want: &Ident, seq: u64, row: Option<&Ident>) -> Next {
    match row {
        Some(r) if r == want => Next::Stored(seq),
        Some(_) => Next::Taken(seq),
        None => Next::Retry(seq),
    }
}

/// How a batch attempt of `pending` at `first..` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Walk {
    /// Seqs of `pending[0..stored.len()]`, now stored.
    pub(crate) stored: Vec<u64>,
    /// Whether some slot held another event (the cached head was stale).
    pub(crate) taken: bool,
    /// The next seq to try for the rest.
    pub(crate) next: u64,
}

/// Resolves a conditional batch (all-or-nothing) that tried `pending` at
/// seqs `first, first + 1, ...`, from the rows then read at LOCAL_SERIAL for
/// those slots (`rows[i]` is slot `first + i`). Events keep their order: the
/// walk stops at the first free slot, so nothing is stored after a gap.
pub(crate) fn walk(pending: &[&Ident], first: u64, rows: &[Option<Ident>]) -> Walk {
    let mut w = Walk {
        stored: Vec::new(),
        taken: false,
        next: first,
    };
    for (seq, row) in (first..).zip(rows) {
        let Some(want) = pending.get(w.stored.len()) else {
            break;
        };
        match after_read(want, seq, row.as_ref()) {
            Next::Stored(s) => w.stored.push(s),
            Next::Taken(_) => w.taken = true,
            Next::Retry(_) | Next::ReadSerial(_) => break,
        }
        w.next = seq + 1;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sender: &str, msg_id: &str) -> Ident {
        Ident {
            sender: sender.into(),
            msg_id: msg_id.into(),
        }
    }

    #[test]
    fn applied_is_stored() {
        assert_eq!(
            after_insert(&id("a", "m1"), 7, Outcome::Applied),
            Next::Stored(7)
        );
    }

    #[test]
    fn not_applied_but_ours_is_stored() {
        let me = id("a", "m1");
        let row = id("a", "m1");
        assert_eq!(
            after_insert(&me, 7, Outcome::NotApplied(Some(&row))),
            Next::Stored(7)
        );
    }

    #[test]
    fn not_applied_and_someone_elses_moves_on() {
        let me = id("a", "m1");
        for other in [id("b", "m1"), id("a", "m2")] {
            assert_eq!(
                after_insert(&me, 7, Outcome::NotApplied(Some(&other))),
                Next::Taken(7),
                "{other:?}"
            );
        }
    }

    #[test]
    fn not_applied_without_the_row_reads_it() {
        assert_eq!(
            after_insert(&id("a", "m1"), 7, Outcome::NotApplied(None)),
            Next::ReadSerial(7)
        );
    }

    #[test]
    fn timeout_then_read_decides() {
        let me = id("a", "m1");
        assert_eq!(after_insert(&me, 7, Outcome::Unknown), Next::ReadSerial(7));
        assert_eq!(
            after_read(&me, 7, Some(&id("a", "m1"))),
            Next::Stored(7),
            "timeout, then the read shows ours: it was applied"
        );
        assert_eq!(
            after_read(&me, 7, Some(&id("b", "x"))),
            Next::Taken(7),
            "timeout, then the read shows another event: next seq"
        );
        assert_eq!(
            after_read(&me, 7, None),
            Next::Retry(7),
            "timeout, then the read shows nothing: not applied, same seq"
        );
    }

    #[test]
    fn walk_all_ours() {
        let (a, b) = (id("u", "1"), id("u", "2"));
        let w = walk(&[&a, &b], 10, &[Some(a.clone()), Some(b.clone())]);
        assert_eq!(
            w,
            Walk {
                stored: vec![10, 11],
                taken: false,
                next: 12
            }
        );
    }

    #[test]
    fn walk_skips_others_then_stops_at_free_slot() {
        let (a, b) = (id("u", "1"), id("u", "2"));
        let x = id("v", "9");
        let w = walk(&[&a, &b], 10, &[Some(x.clone()), Some(x), None]);
        assert_eq!(
            w,
            Walk {
                stored: vec![],
                taken: true,
                next: 12
            }
        );
    }

    #[test]
    fn walk_other_bridge_stored_our_first_event() {
        let (a, b) = (id("u", "1"), id("u", "2"));
        let w = walk(&[&a, &b], 10, &[Some(a.clone()), Some(id("v", "9"))]);
        assert_eq!(
            w,
            Walk {
                stored: vec![10],
                taken: true,
                next: 12
            }
        );
    }

    #[test]
    fn walk_nothing_there_retries_at_first() {
        let a = id("u", "1");
        let w = walk(&[&a], 10, &[None]);
        assert_eq!(
            w,
            Walk {
                stored: vec![],
                taken: false,
                next: 10
            }
        );
    }

    #[test]
    fn walk_keeps_order() {
        // b is found before a was placed: not taken as ours (a must come first).
        let (a, b) = (id("u", "1"), id("u", "2"));
        let w = walk(&[&a, &b], 10, &[Some(b.clone()), None]);
        assert_eq!(w.stored, Vec::<u64>::new());
        assert!(w.taken);
        assert_eq!(w.next, 11);
    }
}
