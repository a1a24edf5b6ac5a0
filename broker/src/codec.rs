//! Framing in front of rumqttd's codecs.
//!
//! rumqttd's `V4`/`V5` parse packets but hide a publish's QoS and packet id
//! and panic on some packet types a client must never send. We frame each
//! packet ourselves first: enforce the size limit, refuse packet types a
//! client may not send, detect the protocol level of CONNECT and read the
//! QoS and packet id of a PUBLISH straight from its bytes.

use bytes::BytesMut;
use rumqttd::protocol::{self, Packet, Protocol};

/// MQTT protocol level of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

/// Why a byte stream cannot be read as MQTT.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed remaining length")]
    BadLength,
    #[error("packet type {0} may not be sent by a client")]
    ForbiddenType(u8),
    #[error("unsupported protocol level {0}")]
    UnsupportedLevel(u8),
    #[error("malformed packet: {0}")]
    Malformed(String),
}

/// The fixed header of one complete packet at the front of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub byte1: u8,
    pub header_len: usize,
    pub remaining: usize,
}

impl Frame {
    pub fn packet_type(&self) -> u8 {
        self.byte1 >> 4
    }
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// Packet types a client may send: CONNECT 1, PUBLISH 3, PUBACK 4, PUBREC 5,
/// PUBREL 6, PUBCOMP 7, SUBSCRIBE 8, UNSUBSCRIBE 10, PINGREQ 12, DISCONNECT 14.
fn client_may_send(kind: u8) -> bool {
    matches!(kind, 1 | 3..=8 | 10 | 12 | 14)
}

/// Finds one complete packet at the front of `buf`. `Ok(None)`: need more bytes.
pub fn frame(buf: &[u8], max_len: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let byte1 = buf[0];
    let mut remaining: usize = 0;
    let mut shift = 0;
    let mut i = 1;
    loop {
        if i > 4 {
            return Err(FrameError::BadLength);
        }
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        remaining += ((b & 0x7f) as usize) << shift;
        shift += 7;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    let frame = Frame {
        byte1,
        header_len: i,
        remaining,
    };
    if !client_may_send(frame.packet_type()) {
        return Err(FrameError::ForbiddenType(frame.packet_type()));
    }
    if frame.len() > max_len {
        return Err(FrameError::TooLarge(frame.len()));
    }
    if buf.len() < frame.len() {
        return Ok(None);
    }
    Ok(Some(frame))
}

/// Protocol level of a framed CONNECT packet.
pub fn connect_version(buf: &[u8], frame: &Frame) -> Result<Version, FrameError> {
    let body = &buf[frame.header_len..frame.len()];
    let name_len = match body {
        [a, b, ..] => u16::from_be_bytes([*a, *b]) as usize,
        _ => return Err(FrameError::Malformed("short connect".into())),
    };
    match body.get(2 + name_len) {
        Some(4) => Ok(Version::V4),
        Some(5) => Ok(Version::V5),
        Some(&level) => Err(FrameError::UnsupportedLevel(level)),
        None => Err(FrameError::Malformed("short connect".into())),
    }
}

/// QoS and packet id (0 for QoS 0) of a framed PUBLISH.
pub fn publish_qos_pkid(buf: &[u8], frame: &Frame) -> (u8, u16) {
    let qos = (frame.byte1 >> 1) & 0b11;
    if qos == 0 {
        return (0, 0);
    }
    let body = &buf[frame.header_len..frame.len()];
    let topic_len = match body {
        [a, b, ..] => u16::from_be_bytes([*a, *b]) as usize,
        _ => return (qos, 0),
    };
    match (body.get(2 + topic_len), body.get(3 + topic_len)) {
        (Some(a), Some(b)) => (qos, u16::from_be_bytes([*a, *b])),
        _ => (qos, 0),
    }
}

/// One packet read from the client, with the publish header fields rumqttd hides.
#[derive(Debug)]
pub struct Incoming {
    pub packet: Packet,
    pub qos: u8,
    pub pkid: u16,
    pub len: usize,
}

/// Reads the next complete packet from `buf`, if any.
pub fn read(
    version: Version,
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<Incoming>, FrameError> {
    let Some(frame) = frame(buf, max_len)? else {
        return Ok(None);
    };
    let (qos, pkid) = if frame.packet_type() == 3 {
        publish_qos_pkid(buf, &frame)
    } else {
        (0, 0)
    };
    if frame.packet_type() == 3 {
        // The router forwards at the subscription's QoS; the delivery must
        // be at the lower of the two (MQTT-3.8.4-8). rumqttd's `Publish`
        // keeps QoS and DUP private and never sets or reads DUP, which a
        // QoS 0 PUBLISH may not carry (MQTT-3.3.1-2): so DUP, set here
        // before rumqttd parses the packet, says "published at QoS 0" to
        // the connection that takes the forward (`mark_published_qos`).
        if let Some(b) = buf.first_mut() {
            *b = if qos == 0 { *b | 0b1000 } else { *b & !0b1000 };
        }
    }
    let mut one = buf.split_to(frame.len());
    if version == Version::V5 && frame.packet_type() == 14 && frame.remaining == 1 {
        // A DISCONNECT of a reason code alone may omit the property length
        // (MQTT-3.14.2.2.1); rumqttd 0.20 reads past the end and calls it
        // malformed, which would publish the will of a clean DISCONNECT.
        let reason = one.get(frame.header_len).copied().unwrap_or(0);
        one = BytesMut::from(&[frame.byte1, 2, reason, 0][..]);
    }
    let parsed = match version {
        Version::V4 => protocol::v4::V4.read_mut(&mut one, max_len),
        Version::V5 => protocol::v5::V5.read_mut(&mut one, max_len),
    };
    let packet = parsed.map_err(|e| FrameError::Malformed(e.to_string()))?;
    if let Packet::Publish(_, Some(props)) = &packet {
        // MQTT-3.3.4-6: a client's PUBLISH never carries one. rumqttd 0.20
        // also miscounts their bytes (the property byte twice), so the
        // payload it reads would start inside the properties: found by the
        // `mqtt_framing` fuzz target.
        if !props.subscription_identifiers.is_empty() {
            return Err(FrameError::Malformed(
                "subscription identifier in a client PUBLISH".into(),
            ));
        }
    }
    Ok(Some(Incoming {
        packet,
        qos,
        pkid,
        len: frame.len(),
    }))
}

/// Encodes one packet for the connection's protocol level.
pub fn write(version: Version, packet: Packet, out: &mut BytesMut) -> Result<(), FrameError> {
    let res = match version {
        Version::V4 => protocol::v4::V4.write(packet, out),
        Version::V5 => protocol::v5::V5.write(v5_disconnect_fix(packet), out),
    };
    res.map(|_| ())
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Encodes `publish` as a QoS 1 PUBLISH with packet id `pkid`.
///
/// rumqttd 0.20's `Publish` keeps its QoS and packet id private (only its
/// router sets them), so the packet is written as QoS 0 by rumqttd's writer
/// (which knows the v5 properties) and then given its QoS bits and the two
/// packet id bytes after the topic, with the remaining length grown by 2.
pub fn write_qos1(
    version: Version,
    publish: protocol::Publish,
    props: Option<protocol::PublishProperties>,
    pkid: u16,
    out: &mut BytesMut,
) -> Result<(), FrameError> {
    let plain = protocol::Publish::new(publish.topic, publish.payload, publish.retain);
    let mut tmp = BytesMut::new();
    write(version, Packet::Publish(plain, props), &mut tmp)?;
    let bad = || FrameError::Malformed("rumqttd wrote an unexpected PUBLISH".into());
    let first = *tmp.first().ok_or_else(bad)?;
    let (len, len_bytes) = remaining_length(&tmp[1..]).ok_or_else(bad)?;
    let body = tmp.get(1 + len_bytes..).ok_or_else(bad)?;
    if body.len() != len || body.len() < 2 {
        return Err(bad());
    }
    let topic_end = 2 + usize::from(u16::from_be_bytes([body[0], body[1]]));
    if topic_end > body.len() {
        return Err(bad());
    }
    out.reserve(tmp.len() + 3);
    out.extend_from_slice(&[(first & !0b0000_0110) | 0b0000_0010]);
    let mut n = len + 2;
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.extend_from_slice(&[byte]);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&body[..topic_end]);
    out.extend_from_slice(&pkid.to_be_bytes());
    out.extend_from_slice(&body[topic_end..]);
    Ok(())
}

/// The remaining length at the start of `b` and how many bytes it took.
fn remaining_length(b: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for (i, byte) in b.iter().take(4).enumerate() {
        len += usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((len, i + 1));
        }
    }
    None
}

/// rumqttd 0.20's v5 writer mis-encodes a DISCONNECT with a reason code:
/// without properties it writes 2 bytes after a remaining length of 1, and
/// with empty properties (a real length of 2) it takes the 2 for its
/// "normal disconnection" shorthand and writes `E0 00`. Either way the
/// client never sees the reason. A reason string makes the length right
/// and tells a person why.
fn v5_disconnect_fix(packet: Packet) -> Packet {
    use protocol::{DisconnectProperties, DisconnectReasonCode as Code};
    match packet {
        Packet::Disconnect(d, props) if d.reason_code != Code::NormalDisconnection => {
            let mut props = props.unwrap_or(DisconnectProperties {
                session_expiry_interval: None,
                reason_string: None,
                user_properties: Vec::new(),
                server_reference: None,
            });
            if props.reason_string.is_none() {
                props.reason_string = Some(match d.reason_code {
                    Code::MaximumConnectTime => "credentials expired".into(),
                    other => format!("{other:?}"),
                });
            }
            Packet::Disconnect(d, Some(props))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_disconnect_with_a_reason_is_well_formed() {
        let mut out = BytesMut::new();
        let d = protocol::Disconnect {
            reason_code: protocol::DisconnectReasonCode::MaximumConnectTime,
        };
        write(Version::V5, Packet::Disconnect(d, None), &mut out).unwrap();
        // type, remaining length, reason 0xA0, properties: a reason string
        let why = b"credentials expired";
        let mut want = vec![0xE0, 5 + why.len() as u8, 0xA0, 3 + why.len() as u8];
        want.extend([0x1F, 0, why.len() as u8]);
        want.extend(why);
        assert_eq!(&out[..], &want[..]);
        let mut out = BytesMut::new();
        let d = protocol::Disconnect {
            reason_code: protocol::DisconnectReasonCode::NormalDisconnection,
        };
        write(Version::V5, Packet::Disconnect(d, None), &mut out).unwrap();
        assert_eq!(&out[..], &[0xE0, 0x00]);
    }

    #[test]
    fn a_v5_disconnect_of_a_reason_code_alone_reads() {
        use protocol::DisconnectReasonCode as Code;
        for (reason, want) in [
            (0x00, Code::NormalDisconnection),
            (0x04, Code::DisconnectWithWillMessage),
        ] {
            let mut buf = BytesMut::from(&[0xE0, 0x01, reason, 0xC0, 0x00][..]);
            let inc = read(Version::V5, &mut buf, 1024)
                .expect("well formed")
                .expect("a whole packet");
            match inc.packet {
                Packet::Disconnect(d, None) => assert_eq!(d.reason_code, want),
                other => panic!("{other:?}"),
            }
            // the next packet (a PINGREQ) is read after it
            let next = read(Version::V5, &mut buf, 1024)
                .expect("ok")
                .expect("a packet");
            assert!(
                matches!(next.packet, Packet::PingReq(_)),
                "{:?}",
                next.packet
            );
        }
    }

    #[test]
    fn qos1_publishes_read_back_with_their_packet_id() {
        use bytes::Bytes;
        for version in [Version::V4, Version::V5] {
            for payload_len in [0usize, 3, 200, 20_000] {
                let p = protocol::Publish::new(
                    Bytes::from_static(b"chat/users/alice/inbox"),
                    Bytes::from(vec![7u8; payload_len]),
                    false,
                );
                let props = (version == Version::V5).then(|| protocol::PublishProperties {
                    correlation_data: Some(Bytes::from_static(b"corr-1")),
                    ..Default::default()
                });
                let mut out = BytesMut::new();
                write_qos1(version, p, props, 4242, &mut out).expect("written");
                let inc = read(version, &mut out, usize::MAX)
                    .expect("reads back")
                    .expect("whole");
                assert_eq!((inc.qos, inc.pkid), (1, 4242), "{version:?} {payload_len}");
                let Packet::Publish(back, props) = inc.packet else {
                    panic!("not a publish");
                };
                assert_eq!(back.topic, Bytes::from_static(b"chat/users/alice/inbox"));
                assert_eq!(back.payload.len(), payload_len);
                if version == Version::V5 {
                    let corr = props.and_then(|p| p.correlation_data);
                    assert_eq!(corr, Some(Bytes::from_static(b"corr-1")));
                }
                assert!(out.is_empty());
            }
        }
    }

    #[test]
    fn frames_need_whole_packet() {
        // PINGREQ
        assert!(frame(&[0xC0, 0x00], 100).unwrap().is_some());
        // PUBLISH with remaining length 3, only 2 bytes present
        assert!(frame(&[0x30, 0x03, 0x00, 0x01], 100).unwrap().is_none());
        assert!(frame(&[0x30], 100).unwrap().is_none());
    }

    #[test]
    fn refuses_server_only_types_and_oversize() {
        assert!(matches!(
            frame(&[0x20, 0x02, 0, 0], 100),
            Err(FrameError::ForbiddenType(2))
        ));
        assert!(matches!(
            frame(&[0xF0, 0x00], 100),
            Err(FrameError::ForbiddenType(15))
        ));
        assert!(matches!(
            frame(&[0x00, 0x00], 100),
            Err(FrameError::ForbiddenType(0))
        ));
        assert!(matches!(
            frame(&[0x30, 0xFF, 0x7F], 100),
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(
            frame(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], usize::MAX),
            Err(FrameError::BadLength)
        ));
    }

    #[test]
    fn reads_publish_qos_and_pkid() {
        // QoS 1 publish, topic "a/b", pkid 0x1234, payload "x"
        let buf = [0x32, 8, 0, 3, b'a', b'/', b'b', 0x12, 0x34, b'x'];
        let f = frame(&buf, 100).unwrap().unwrap();
        assert_eq!(publish_qos_pkid(&buf, &f), (1, 0x1234));
    }

    /// Found by the `mqtt_framing` fuzz target: rumqttd counts the property
    /// byte of a Subscription Identifier twice, so with several of them it
    /// stops reading properties early and takes the rest as payload (the
    /// packet then re-encodes to different bytes). A client may not send one
    /// (MQTT-3.3.4-6): refused.
    #[test]
    fn refuses_subscription_identifier_in_client_publish() {
        let publish = [
            0x32, 11, 0, 1, b't', 0x00, 0x07, // topic "t", pkid 7
            4, 0x0B, 1, 0x0B, 2, // properties: subscription ids 1 and 2
            b'x',
        ];
        let mut buf = BytesMut::from(&publish[..]);
        assert!(matches!(
            read(Version::V5, &mut buf, 100),
            Err(FrameError::Malformed(_))
        ));
        // the same without properties is fine
        let plain = [0x32, 7, 0, 1, b't', 0x00, 0x07, 0, b'x'];
        let mut buf = BytesMut::from(&plain[..]);
        assert!(matches!(read(Version::V5, &mut buf, 100), Ok(Some(_))));
    }

    #[test]
    fn detects_connect_level() {
        let v4 = [0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60];
        let f = frame(&v4, 100).unwrap().unwrap();
        assert_eq!(connect_version(&v4, &f).unwrap(), Version::V4);
        let mut v5 = v4;
        v5[8] = 5;
        assert_eq!(connect_version(&v5, &f).unwrap(), Version::V5);
        let mut v3 = v4;
        v3[8] = 3;
        assert!(connect_version(&v3, &f).is_err());
    }
}
