//! The stored event payload, the same bytes in every store, and the
//! tombstone a deleted event's payload becomes.

use super::{NewEvent, StoreError};
use serde_json::{Map, Value};

/// Body fields the server sets itself; a body cannot override them.
const RESERVED: [&str; 5] = ["room", "seq", "ts", "from", "msg_id"];

/// The stored event payload: `{"room","seq","ts","from","msg_id", ...body}`
/// in that order; body fields named like the first five are dropped.
pub(crate) fn event_json(ev: &NewEvent, seq: u64) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(96 + ev.body.len() * 32);
    out.push(b'{');
    field(&mut out, "room", &Value::from(ev.room.as_str()))?;
    field(&mut out, "seq", &Value::from(seq))?;
    field(&mut out, "ts", &Value::from(ev.ts))?;
    field(&mut out, "from", &Value::from(ev.from.as_str()))?;
    field(&mut out, "msg_id", &Value::from(ev.msg_id.as_str()))?;
    for (k, v) in &ev.body {
        if !RESERVED.contains(&k.as_str()) {
            field(&mut out, k, v)?;
        }
    }
    out.push(b'}');
    Ok(out)
}

/// Writes `"k":v` after a `,` unless it is the object's first field.
fn field(out: &mut Vec<u8>, k: &str, v: &Value) -> Result<(), StoreError> {
    if out.len() > 1 {
        out.push(b',');
    }
    serde_json::to_writer(&mut *out, k)
        .and_then(|()| {
            out.push(b':');
            serde_json::to_writer(&mut *out, v)
        })
        .map_err(|e| StoreError::Corrupt(format!("encoding event: {e}")))
}

/// Fields a tombstone keeps of the event it replaces.
const KEPT: [&str; 6] = ["room", "seq", "ts", "from", "msg_id", "type"];

/// The tombstone of a stored event: its envelope (`room`, `seq`, `ts`,
/// `from`, `msg_id`, `type`) and `"deleted":true`; no body, meta or anything
/// else. Idempotent: the tombstone of a tombstone is the same bytes.
pub(crate) fn tombstone(json: &[u8]) -> Result<Vec<u8>, StoreError> {
    let ev: Map<String, Value> = serde_json::from_slice(json)
        .map_err(|e| StoreError::Corrupt(format!("stored event is not a JSON object: {e}")))?;
    let mut out = Vec::with_capacity(128);
    out.push(b'{');
    for k in KEPT {
        if let Some(v) = ev.get(k) {
            field(&mut out, k, v)?;
        }
    }
    field(&mut out, "deleted", &Value::Bool(true))?;
    out.push(b'}');
    Ok(out)
}

/// The seq a stored delete event redacts: its `target`, if it is a delete.
/// Used where only the payload is at hand (the ScyllaDB repair replay).
pub(crate) fn redacts_of(json: &[u8]) -> Option<u64> {
    // cheap filter first: almost no event is a delete
    if !json.windows(8).any(|w| w == b"\"delete\"") {
        return None;
    }
    let ev: Map<String, Value> = serde_json::from_slice(json).ok()?;
    match ev.get("type").and_then(Value::as_str) {
        Some("delete") => ev.get("target").and_then(Value::as_u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_order_and_reserved_fields() -> Result<(), StoreError> {
        let mut body = serde_json::Map::new();
        body.insert("type".into(), "message".into());
        body.insert("seq".into(), 999.into());
        let ev = NewEvent {
            room: "r".into(),
            from: "u".into(),
            msg_id: "m".into(),
            ts: 7,
            body,
            member: None,
            redacts: None,
        };
        let json = event_json(&ev, 3)?;
        assert_eq!(
            std::str::from_utf8(&json).unwrap_or_default(),
            r#"{"room":"r","seq":3,"ts":7,"from":"u","msg_id":"m","type":"message"}"#
        );
        Ok(())
    }

    #[test]
    fn tombstone_keeps_the_envelope_only() -> Result<(), StoreError> {
        let json = br#"{"room":"r","seq":3,"ts":7,"from":"u","msg_id":"m","body":"secret","meta":{"a":1},"reply_to":1,"type":"message"}"#;
        let t = tombstone(json)?;
        assert_eq!(
            std::str::from_utf8(&t).unwrap_or_default(),
            r#"{"room":"r","seq":3,"ts":7,"from":"u","msg_id":"m","type":"message","deleted":true}"#
        );
        assert_eq!(tombstone(&t)?, t, "idempotent");
        assert!(tombstone(b"[1]").is_err());
        Ok(())
    }

    #[test]
    fn redacts_only_top_level_deletes() {
        assert_eq!(
            redacts_of(br#"{"room":"r","seq":9,"type":"delete","target":4}"#),
            Some(4)
        );
        assert_eq!(
            redacts_of(
                br#"{"room":"r","seq":9,"type":"message","meta":{"type":"delete","target":4}}"#
            ),
            None
        );
        assert_eq!(redacts_of(br#"{"type":"message","body":"delete"}"#), None);
        assert_eq!(redacts_of(b"not json \"delete\""), None);
    }
}
