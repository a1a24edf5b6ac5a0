//! Identifier rules shared by the broker and the bridge (PROTOCOL.md "Names").

/// A user id or room id: 1-64 chars of `A-Z a-z 0-9 _ . -`.
pub(crate) fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// An MQTT client id: 1-128 chars of `A-Z a-z 0-9 _ . : -`. Refusing `/ + # $`
/// also keeps rumqttd's client-id defect (#1062) out of reach.
pub(crate) fn valid_client_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("alice.B-2_"));
        assert!(!valid_id(""));
        assert!(!valid_id(&"a".repeat(65)));
        for bad in ["a/b", "a+b", "a#", "$a", "a b", "é"] {
            assert!(!valid_id(bad), "{bad}");
            assert!(!valid_client_id(bad), "{bad}");
        }
        assert!(valid_client_id("phone:1"));
        assert!(!valid_id("phone:1"));
    }
}
