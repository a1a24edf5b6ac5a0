//! Marks a client's PUBLISH carries through rumqttd's router for what the
//! router would otherwise lose: the QoS it was published at (the router
//! forwards at the subscription's) and its RETAIN flag (cleared on live
//! forwards). Set where packets enter (`codec::read` for DUP,
//! [`mark_publish`]), read and removed where they leave
//! ([`published_marks`], in `connection::session`). Also the options of a
//! session's subscriptions this layer applies ([`SubOpts`]), which a kept
//! session keeps while it is away.

use rumqttd::protocol::{Publish, PublishProperties, QoS};

/// User property marking a PUBLISH a client sent at QoS 2 (see [`mark_publish`]).
const QOS2_MARK: &str = "chatmq:qos2";
/// User property marking a PUBLISH a client sent with RETAIN set.
const RETAIN_MARK: &str = "chatmq:retain";

/// Records in the packet the router stores what rumqttd would lose of a
/// client's PUBLISH: its QoS (rumqttd forwards at the subscription's; QoS 0
/// is marked by DUP in `codec::read`, QoS 2, rare, by [`QOS2_MARK`],
/// unmarked is QoS 1) and its RETAIN flag (cleared on live forwards, which
/// Retain As Published needs; [`RETAIN_MARK`]). A client's own properties
/// of those names are removed, so it cannot fake them.
pub(crate) fn mark_publish(qos: u8, retain: bool, props: &mut Option<PublishProperties>) {
    if let Some(p) = props.as_mut() {
        if !p.user_properties.is_empty() {
            p.user_properties
                .retain(|(k, _)| k != QOS2_MARK && k != RETAIN_MARK);
        }
    }
    for (mark, on) in [(QOS2_MARK, qos == 2), (RETAIN_MARK, retain)] {
        if on {
            props
                .get_or_insert_with(Default::default)
                .user_properties
                .push((mark.into(), String::new()));
        }
    }
}

/// The QoS a forwarded PUBLISH was published at and whether it was
/// published retained, from its DUP flag (see `codec::read`) and the
/// marks of [`mark_publish`], which are removed before it goes out.
/// Publishes of the broker's own links carry no mark: QoS 1.
pub(crate) fn published_marks(dup: bool, props: &mut Option<PublishProperties>) -> (QoS, bool) {
    let mut qos = if dup {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let mut retained = false;
    if let Some(p) = props.as_mut() {
        if !p.user_properties.is_empty() {
            p.user_properties.retain(|(k, _)| {
                if k == QOS2_MARK {
                    if !dup {
                        qos = QoS::ExactlyOnce;
                    }
                    false
                } else if k == RETAIN_MARK {
                    retained = true;
                    false
                } else {
                    true
                }
            });
        }
    }
    (qos, retained)
}

/// A QoS 0 PUBLISH with DUP set, the mark `codec::read` gives a client's
/// QoS 0 PUBLISH (rumqttd's `Publish` keeps DUP private; its own
/// serialized form sets it).
pub(crate) fn marked_qos0(topic: &[u8], payload: &[u8], retain: bool) -> Publish {
    use bytes::BufMut;
    let mut b = bytes::BytesMut::with_capacity(5 + topic.len() + payload.len());
    b.put_u8(0b0011_1000 | u8::from(retain));
    b.put_u16(0);
    b.put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
    b.put_slice(topic);
    b.put_slice(payload);
    Publish::deserialize(b.freeze())
}

/// A router subscription's options this layer applies.
#[derive(Debug)]
pub(crate) struct SubOpts {
    pub(crate) filter: String,
    pub(crate) no_local: bool,
    /// The QoS granted (rumqttd grants what was asked).
    pub(crate) qos: QoS,
    /// The SUBSCRIBE's Subscription Identifier.
    pub(crate) id: Option<usize>,
    /// Retain As Published.
    pub(crate) rap: bool,
    /// Retained messages matching it are delivered (Retain Handling 0, or 1
    /// on a new subscription) until the next SUBSCRIBE.
    pub(crate) wants_retained: bool,
}

impl SubOpts {
    /// Whether two of these subscriptions may match one topic: two or
    /// more, one with a wildcard (distinct exact filters never do).
    pub(crate) fn may_overlap(subs: &[SubOpts]) -> bool {
        subs.len() >= 2 && subs.iter().any(|s| s.filter.contains(['+', '#']))
    }
}
