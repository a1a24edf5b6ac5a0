//! Identifier rules shared by the broker and the bridge (PROTOCOL.md "Names").

/// A user id or room id: 1-64 chars of `A-Z a-z 0-9 _ . -`.
pub(crate) fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A chat client id: 1-128 chars of `A-Z a-z 0-9 _ . : -` (PROTOCOL.md
/// "Names"). Service accounts' reserved ids are of this form; a user's
/// reply topic is only allowed for such an id.
pub(crate) fn valid_client_id(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(plain_byte)
}

fn plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

/// An MQTT client id any client may connect with: 1-256 bytes of UTF-8
/// without control characters or the wildcards `+` `#`. MQTT lets a server
/// refuse more than `0-9 a-z A-Z`; common clients and test suites use `/`
/// (mosquitto_pub's own ids did). An id with `/` matches no reply topic
/// (one level), so it cannot make chat requests (its subscription is
/// refused, fail closed); chat clients use [`valid_client_id`]'s.
pub(crate) fn acceptable_client_id(s: &str) -> bool {
    (1..=256).contains(&s.len()) && !s.chars().any(|c| c.is_control() || matches!(c, '+' | '#'))
}

/// The id rumqttd's router knows a client by: the client id itself when it
/// is a plain one, else each byte outside the plain set written `~XX` (hex),
/// so the router only ever sees `A-Z a-z 0-9 _ . : - ~` and two ids never
/// share a router id (`~` is itself escaped).
pub(crate) fn router_id(client_id: &str) -> std::borrow::Cow<'_, str> {
    if client_id.bytes().all(plain_byte) {
        return std::borrow::Cow::Borrowed(client_id);
    }
    let mut out = String::with_capacity(client_id.len() * 3);
    for b in client_id.bytes() {
        if plain_byte(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    std::borrow::Cow::Owned(out)
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
        for ok in ["GMQTT/1796204726.3/myclientid", "a b", "é", "$x"] {
            assert!(acceptable_client_id(ok), "{ok}");
        }
        for bad in ["", "a+b", "a#", "a\nb", "a\0b"] {
            assert!(!acceptable_client_id(bad), "{bad:?}");
        }
        assert!(!acceptable_client_id(&"a".repeat(257)));
    }

    #[test]
    fn router_ids_are_plain_and_distinct() {
        assert_eq!(router_id("phone:1"), "phone:1");
        assert_eq!(router_id("a/b"), "a~2Fb");
        assert_eq!(router_id("a~2Fb"), "a~7E2Fb");
        assert_ne!(router_id("a/b"), router_id("a~2Fb"));
        assert!(router_id("é/$").bytes().all(|b| plain_byte(b) || b == b'~'));
    }
}
