//! The internal topics of a cluster (docs/cluster.md): N brokers, M bridges.
//!
//! A broker turns a user's send, request, typing publish and its own
//! presence changes into a topic under `{prefix}/part/{p}/` (clients may
//! neither publish nor subscribe there), where `p` is the room's or the
//! user's partition; bridge `k` of `M` subscribes to the partitions with
//! `p % M == k` on every broker. Both sides compute `p` with
//! [`partition`], so they cannot disagree.

/// The partition of a room (sends, typing) or of a user (requests,
/// presence): FNV-1a (64 bit) of the id, modulo `partitions`. Stable across
/// processes, versions and platforms: changing it would move every room to
/// another bridge.
pub fn partition(id: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as u32
}

/// Which partition a client's topic goes to, if it is one the cluster
/// routes through a bridge: `rooms/{room}/send/{user}` and
/// `rooms/{room}/typing/{user}` by room, `rpc/{user}/{method}` by user.
/// `topic` is the part after `{prefix}/`.
pub fn route(rest: &str, partitions: u32) -> Option<u32> {
    let mut levels = rest.split('/');
    match (levels.next(), levels.next(), levels.next(), levels.next()) {
        (Some("rooms"), Some(room), Some("send" | "typing"), Some(_)) => {
            Some(partition(room, partitions))
        }
        (Some("rpc"), Some(user), Some(_), None) => Some(partition(user, partitions)),
        _ => None,
    }
}

/// `{prefix}/part/{p}/{rest}`: a client topic on its way to the bridge that
/// owns partition `p`.
pub fn part_topic(prefix: &str, p: u32, rest: &str) -> String {
    format!("{prefix}/part/{p}/{rest}")
}

/// The client topic inside a partition topic, `(p, "{prefix}/{rest}")`.
pub fn unpart(prefix: &str, topic: &str) -> Option<(u32, String)> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix("/part/")?;
    let (p, rest) = rest.split_once('/')?;
    Some((p.parse().ok()?, format!("{prefix}/{rest}")))
}

/// The filters bridge `ordinal` of `bridges` subscribes to on every broker,
/// with their QoS: for each partition it owns, sends and requests (QoS 1,
/// acked after they are handled), presence reports (QoS 1) and typing
/// (QoS 0: relayed at once, never acked).
pub fn bridge_filters(
    prefix: &str,
    partitions: u32,
    ordinal: u32,
    bridges: u32,
) -> Vec<(String, u8)> {
    owned(partitions, ordinal, bridges)
        .flat_map(|p| {
            [
                (part_topic(prefix, p, "rooms/+/send/+"), 1),
                (part_topic(prefix, p, "rpc/+/+"), 1),
                (part_topic(prefix, p, "presence/+"), 1),
                (part_topic(prefix, p, "rooms/+/typing/+"), 0),
            ]
        })
        .collect()
}

/// The partitions bridge `ordinal` of `bridges` owns.
pub fn owned(partitions: u32, ordinal: u32, bridges: u32) -> impl Iterator<Item = u32> {
    let bridges = bridges.max(1);
    (0..partitions).filter(move |p| p % bridges == ordinal)
}

/// A broker asks its bridges for nothing; a bridge asks a broker for a
/// report of every user connected to it (after it connected with no
/// session, or for the first time since it started): `{prefix}/hooks/presence-sync`.
pub fn presence_sync_topic(prefix: &str) -> String {
    format!("{prefix}/hooks/presence-sync")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_stable_and_in_range() {
        // fixed values: a change here moves rooms between bridges
        assert_eq!(partition("", 64), (0xcbf2_9ce4_8422_2325u64 % 64) as u32);
        assert_eq!(partition("r1", 64), partition("r1", 64));
        for id in ["a", "room-1", "dm-0123", "ünï"] {
            assert!(partition(id, 7) < 7);
        }
        assert_eq!(partition("anything", 1), 0);
        assert_eq!(partition("anything", 0), 0);
        // spread: 1000 rooms over 16 partitions, none empty
        let mut seen = [0u32; 16];
        for i in 0..1000 {
            seen[partition(&format!("room-{i}"), 16) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 20), "{seen:?}");
    }

    #[test]
    fn routes() {
        let p = |room: &str| Some(partition(room, 8));
        assert_eq!(route("rooms/r1/send/alice", 8), p("r1"));
        assert_eq!(route("rooms/r1/typing/alice", 8), p("r1"));
        assert_eq!(route("rpc/alice/history", 8), p("alice"));
        assert_eq!(route("rooms/r1/events", 8), None);
        assert_eq!(route("rooms/r1/receipts", 8), None);
        assert_eq!(route("presence/alice", 8), None);
        assert_eq!(route("rpc/alice", 8), None);
        assert_eq!(route("users/alice/inbox", 8), None);
    }

    #[test]
    fn part_and_unpart() {
        let t = part_topic("chat", 5, "rooms/r1/send/alice");
        assert_eq!(t, "chat/part/5/rooms/r1/send/alice");
        assert_eq!(
            unpart("chat", &t),
            Some((5, "chat/rooms/r1/send/alice".into()))
        );
        assert_eq!(unpart("chat", "chat/rooms/r1/send/alice"), None);
        assert_eq!(unpart("chat", "chat/part/x/rooms"), None);
    }

    #[test]
    fn every_partition_has_exactly_one_owner() {
        for bridges in 1..5 {
            let mut owners = vec![0; 16];
            for k in 0..bridges {
                for p in owned(16, k, bridges) {
                    owners[p as usize] += 1;
                }
            }
            assert!(owners.iter().all(|n| *n == 1), "{bridges}: {owners:?}");
            let f = bridge_filters("chat", 16, 0, bridges);
            assert_eq!(f.len(), 4 * owned(16, 0, bridges).count());
        }
    }
}
