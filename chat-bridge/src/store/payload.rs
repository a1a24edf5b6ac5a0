//! The stored event payload, the same bytes in every store.

use super::{NewEvent, StoreError};
use serde_json::Value;

/// Body fields the server sets itself; a body cannot override them.
const RESERVED: [&str; 5] = ["room", "seq", "ts", "from", "msg_id"];

/// The stored event payload: `{"room","seq","ts","from","msg_id", ...body}`
/// in that order; body fields named like the first five are dropped.
pub(crate) fn event_json(ev: &NewEvent, seq: u64) -> Result<Vec<u8>, StoreError> {
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
        };
        let json = event_json(&ev, 3)?;
        assert_eq!(
            std::str::from_utf8(&json).unwrap_or_default(),
            r#"{"room":"r","seq":3,"ts":7,"from":"u","msg_id":"m","type":"message"}"#
        );
        Ok(())
    }
}
