//! Target `mqtt_framing`: `broker::codec` in front of rumqttd's codecs.
//!
//! Input: `[mode, limit, bytes...]`. `mode % 3` picks how the protocol level
//! is chosen (v4, v5, or as a connection does: the first packet must be a
//! CONNECT and its level picks the codec); `mode / 3` picks a chunk size for
//! a second, incremental pass; `limit` picks the packet size limit. The bytes
//! are read packet after packet until the buffer is exhausted (need more) or
//! an error, as a connection would before dropping the client.
//!
//! Checked: no panic; every read consumes exactly the one frame `frame`
//! reported, so the loop ends; `read` and `frame` agree; the QoS and packet
//! id the codec takes from the bytes agree with rumqttd's packet; feeding the
//! same bytes in chunks gives the same packets and the same end; every
//! accepted packet can be re-encoded with `codec::write`, and a PUBLISH
//! (the one client packet the broker forwards) reads back equal, also when
//! forwarded from v5 to v4 (properties dropped) and from v4 to v5.

use broker::codec::{self, Version};
use bytes::BytesMut;
use rumqttd::protocol::Packet;

/// Packet size limits the fuzzer chooses from: tiny, typical, rumqttd's
/// largest remaining length, and none.
const LIMITS: [usize; 8] = [2, 5, 64, 1024, 65_536, 1 << 20, 268_435_455, usize::MAX];

/// How a read sequence ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Buffer exhausted: the codec waits for more bytes.
    NeedMore,
    /// The codec refused the stream (the connection drops the client).
    Error(String),
    /// The first packet was not a CONNECT or named an unknown level.
    NoConnect,
}

/// Runs one input; panics on a violated property.
pub fn run(data: &[u8]) {
    let [mode, limit, bytes @ ..] = data else {
        return;
    };
    let max_len = LIMITS[usize::from(*limit) % LIMITS.len()];
    let how = mode % 3;
    let whole = read_all(how, bytes, max_len, bytes.len().max(1));
    let chunk = 1 + usize::from(mode / 3) % 16;
    let pieces = read_all(how, bytes, max_len, chunk);
    assert_eq!(
        whole, pieces,
        "reading in chunks of {chunk} differs from reading at once"
    );
    for packet in whole.0 {
        reencode(whole.2, packet);
    }
}

/// Reads every packet, feeding `bytes` `chunk` bytes at a time as a
/// connection's reads would. The packets, how it ended, the level used.
fn read_all(how: u8, bytes: &[u8], max_len: usize, chunk: usize) -> (Vec<Packet>, End, Version) {
    let mut packets = Vec::new();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut version = match how {
        0 => Some(Version::V4),
        1 => Some(Version::V5),
        _ => None,
    };
    // each pass of the loop either consumes a packet, feeds bytes or ends:
    // bounded by the input's length
    for _ in 0..=2 * bytes.len() + 2 {
        let v = match version {
            Some(v) => v,
            None => match codec::frame(&buf, max_len) {
                Ok(Some(f)) if f.packet_type() == 1 => match codec::connect_version(&buf, &f) {
                    Ok(v) => {
                        version = Some(v);
                        v
                    }
                    Err(_) => return (packets, End::NoConnect, Version::V4),
                },
                Ok(Some(_)) => return (packets, End::NoConnect, Version::V4),
                Ok(None) if fed < bytes.len() => {
                    fed = feed(&mut buf, bytes, fed, chunk);
                    continue;
                }
                Ok(None) => return (packets, End::NeedMore, Version::V4),
                Err(e) => return (packets, End::Error(e.to_string()), Version::V4),
            },
        };
        let before = buf.len();
        let framed = codec::frame(&buf, max_len);
        match codec::read(v, &mut buf, max_len) {
            Ok(Some(inc)) => {
                let f = match framed {
                    Ok(Some(f)) => f,
                    other => panic!("read accepted a packet frame() reports as {other:?}"),
                };
                assert_eq!(inc.len, f.len(), "read and frame disagree on the length");
                assert!(inc.len >= 2 && inc.len <= max_len, "length {}", inc.len);
                assert_eq!(
                    before - buf.len(),
                    inc.len,
                    "read consumes exactly one frame"
                );
                if let Packet::Publish(p, _) = &inc.packet {
                    // rumqttd hides them: read them back from its own encoding
                    if let Some(header) = qos_pkid_of(p) {
                        assert_eq!((inc.qos, inc.pkid), header, "codec and rumqttd disagree");
                    }
                } else {
                    assert_eq!((inc.qos, inc.pkid), (0, 0));
                }
                packets.push(inc.packet);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "need-more consumed bytes");
                assert!(
                    matches!(framed, Ok(None)),
                    "read waits, frame says {framed:?}"
                );
                if fed == bytes.len() {
                    return (packets, End::NeedMore, v);
                }
                fed = feed(&mut buf, bytes, fed, chunk);
            }
            Err(e) => return (packets, End::Error(e.to_string()), v),
        }
    }
    panic!("the read loop did not end within its bound");
}

/// QoS and packet id of a parsed PUBLISH, as rumqttd encodes them.
fn qos_pkid_of(p: &rumqttd::protocol::Publish) -> Option<(u8, u16)> {
    let mut out = BytesMut::new();
    codec::write(Version::V4, Packet::Publish(p.clone(), None), &mut out).ok()?;
    let f = codec::frame(&out, usize::MAX).ok()??;
    Some(codec::publish_qos_pkid(&out, &f))
}

fn feed(buf: &mut BytesMut, bytes: &[u8], fed: usize, chunk: usize) -> usize {
    let end = (fed + chunk).min(bytes.len());
    buf.extend_from_slice(&bytes[fed..end]);
    end
}

/// Re-encodes an accepted packet; a PUBLISH must read back equal, at its own
/// level and forwarded to the other one.
fn reencode(version: Version, packet: Packet) {
    let mut out = BytesMut::new();
    let publish = match &packet {
        Packet::Publish(p, props) => Some((p.clone(), props.clone())),
        _ => None,
    };
    // client packets other than PUBLISH are never written by the broker;
    // encoding them must still not panic
    let _ = codec::write(version, packet, &mut out);
    let Some((p, props)) = publish else {
        return;
    };
    let same = read_back(version, &out);
    assert_eq!(
        same,
        Some(Packet::Publish(p.clone(), props)),
        "publish does not read back"
    );
    // forwarded to a subscriber of the other level, as the connection does
    // (properties dropped for 3.1.1)
    let (other, props) = match version {
        Version::V4 => (Version::V5, None),
        Version::V5 => (Version::V4, None),
    };
    let mut out = BytesMut::new();
    if codec::write(other, Packet::Publish(p.clone(), props.clone()), &mut out).is_ok() {
        assert_eq!(
            read_back(other, &out),
            Some(Packet::Publish(p, props)),
            "forwarded publish does not read back"
        );
    }
}

fn read_back(version: Version, bytes: &[u8]) -> Option<Packet> {
    let mut buf = BytesMut::from(bytes);
    match codec::read(version, &mut buf, usize::MAX) {
        Ok(Some(inc)) => {
            assert!(buf.is_empty(), "re-encoded packet has trailing bytes");
            Some(inc.packet)
        }
        other => panic!("re-encoded packet does not read: {other:?}"),
    }
}
