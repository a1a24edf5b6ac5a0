//! Key and value encodings of the embedded store (layout: see `embedded.rs`).

use super::super::{Expired, Markers, StoreError};

/// Appends `s` as a u16 big-endian length followed by its bytes, so a
/// component followed by more key bytes is unambiguous and a prefix scan on
/// it matches exactly one id.
fn put_lp(key: &mut Vec<u8>, s: &str) -> Result<(), StoreError> {
    let len = u16::try_from(s.len())
        .map_err(|_| StoreError::Conflict(format!("id longer than 65535 bytes: {}", s.len())))?;
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(s.as_bytes());
    Ok(())
}

/// `lp(id)`: the prefix of every key of one room (or of one user in `user_rooms`).
pub(super) fn prefix(id: &str) -> Result<Vec<u8>, StoreError> {
    let mut k = Vec::with_capacity(2 + id.len() + 8);
    put_lp(&mut k, id)?;
    Ok(k)
}

/// `lp(room) ++ seq (u64 BE)`.
pub(super) fn event(room: &str, seq: u64) -> Result<Vec<u8>, StoreError> {
    let mut k = prefix(room)?;
    k.extend_from_slice(&seq.to_be_bytes());
    Ok(k)
}

/// The seq of an `events` key (its last 8 bytes).
pub(super) fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key.get(at..))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("event key shorter than 8 bytes".into()))
}

/// `lp(a) ++ b`: `members` (room, user), `user_rooms` (user, room), `markers` (room, user).
pub(super) fn pair(a: &str, b: &str) -> Result<Vec<u8>, StoreError> {
    let mut k = prefix(a)?;
    k.extend_from_slice(b.as_bytes());
    Ok(k)
}

/// `lp(room) ++ lp(from) ++ msg_id`.
pub(super) fn idem(room: &str, from: &str, msg_id: &str) -> Result<Vec<u8>, StoreError> {
    let mut k = prefix(room)?;
    put_lp(&mut k, from)?;
    k.extend_from_slice(msg_id.as_bytes());
    Ok(k)
}

/// A u64 value (big-endian).
pub(super) fn get_u64(v: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(v)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(format!("expected 8 bytes, got {}", v.len())))
}

/// Markers value: `read (u64 BE) ++ delivered (u64 BE)`.
pub(super) fn markers_value(m: Markers) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&m.read.to_be_bytes());
    v[8..].copy_from_slice(&m.delivered.to_be_bytes());
    v
}

pub(super) fn markers_of(v: &[u8]) -> Result<Markers, StoreError> {
    match (v.get(..8), v.get(8..)) {
        (Some(r), Some(d)) if v.len() == 16 => Ok(Markers {
            read: get_u64(r)?,
            delivered: get_u64(d)?,
        }),
        _ => Err(StoreError::Corrupt(format!(
            "markers: expected 16 bytes, got {}",
            v.len()
        ))),
    }
}

/// Retention value: `events_before (u64 BE) ++ keys_before (u64 BE)`.
pub(super) fn expired_value(e: Expired) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&e.events_before.to_be_bytes());
    v[8..].copy_from_slice(&e.keys_before.to_be_bytes());
    v
}

pub(super) fn expired_of(v: &[u8]) -> Result<Expired, StoreError> {
    match (v.get(..8), v.get(8..)) {
        (Some(e), Some(k)) if v.len() == 16 => Ok(Expired {
            events_before: get_u64(e)?,
            keys_before: get_u64(k)?,
        }),
        _ => Err(StoreError::Corrupt(format!(
            "expired: expected 16 bytes, got {}",
            v.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_keys_sort_by_seq_within_a_room() -> Result<(), StoreError> {
        assert!(event("r", 255)? < event("r", 256)?);
        assert!(event("r", u64::MAX)? < event("rr", 0)?);
        assert_eq!(seq_of(&event("r", 42)?)?, 42);
        Ok(())
    }
}
