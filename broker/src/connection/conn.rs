//! The socket side of a connection: its buffers (sized to the traffic),
//! framing in front of rumqttd's codecs, and writes in the client's
//! protocol level.

use crate::codec::{self, Version};
use crate::transport::Io;
use bytes::BytesMut;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Packet, PubAck, PubAckReason, SubAck, SubscribeReasonCode,
};
use tracing::warn;

/// Smallest and largest read the session asks for at once.
const READ_MIN: usize = 512;
const READ_MAX: usize = 8 * 1024;
/// A write buffer grown past this by a burst is let go once it is flushed
/// (a kept buffer stays resident for the connection's life).
const WRITE_KEEP: usize = 4 * 1024;

/// The socket side: buffers and the protocol level.
///
/// Buffers start empty and follow the traffic: a read that fills the room
/// it was given doubles the next one (up to [`READ_MAX`]); small reads
/// halve it (down to [`READ_MIN`]), and an empty read buffer much larger
/// than that is let go. Most connections are idle most of the time, and
/// an idle connection then holds a few hundred bytes of buffers instead of
/// 8 KiB (see `bench/results/profile.md`, memory per connection).
pub(super) struct Conn {
    pub(super) io: Io,
    pub(super) rbuf: BytesMut,
    /// How much room the next read gets.
    read_want: usize,
    wbuf: BytesMut,
    pub(super) version: Version,
}

impl Conn {
    /// Empty buffers; 3.1.1 until CONNECT says otherwise.
    pub(super) fn new(io: Io) -> Self {
        Conn {
            io,
            rbuf: BytesMut::new(),
            read_want: READ_MIN,
            wbuf: BytesMut::new(),
            version: Version::V4,
        }
    }

    pub(super) async fn read_connect(&mut self, max_len: usize) -> Result<Packet, String> {
        loop {
            match codec::frame(&self.rbuf, max_len) {
                Ok(Some(frame)) => {
                    if frame.packet_type() != 1 {
                        return Err("first packet is not CONNECT".into());
                    }
                    self.version =
                        codec::connect_version(&self.rbuf, &frame).map_err(|e| e.to_string())?;
                    return match codec::read(self.version, &mut self.rbuf, max_len) {
                        Ok(Some(inc)) => Ok(inc.packet),
                        Ok(None) => Err("incomplete connect".into()),
                        Err(e) => Err(e.to_string()),
                    };
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            if self.read_more().await.map_err(|e| e.to_string())? == 0 {
                return Err("closed before CONNECT".into());
            }
        }
    }

    /// Encodes a packet for this connection's protocol level (v4 never gets properties).
    pub(super) fn push(&mut self, packet: Packet) {
        let packet = match self.version {
            Version::V4 => for_v4(packet),
            Version::V5 => packet,
        };
        if let Err(e) = codec::write(self.version, packet, &mut self.wbuf) {
            warn!(error = %e, "cannot encode packet");
        }
    }

    /// Encodes a QoS 1 PUBLISH with our own packet id (`codec::write_qos1`).
    pub(super) fn push_qos1(
        &mut self,
        publish: rumqttd::protocol::Publish,
        props: Option<rumqttd::protocol::PublishProperties>,
        pkid: u16,
    ) {
        let props = match self.version {
            Version::V4 => None,
            Version::V5 => props,
        };
        if let Err(e) = codec::write_qos1(self.version, publish, props, pkid, &mut self.wbuf) {
            warn!(error = %e, "cannot encode packet");
        }
    }

    /// Reads more bytes into `rbuf` (cancel safe: nothing is lost if the
    /// future is dropped); `Ok(0)` when the peer closed.
    pub(super) async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 4 * self.read_want {
            self.rbuf = BytesMut::new();
        }
        let room = self.read_want;
        let n = self.io.read(&mut self.rbuf, room).await?;
        self.read_want = if n >= room {
            (room * 2).min(READ_MAX)
        } else if n < room / 4 {
            (room / 2).max(READ_MIN)
        } else {
            room
        };
        Ok(n)
    }

    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let r = self.io.write(&self.wbuf).await;
        if self.wbuf.capacity() > WRITE_KEEP {
            self.wbuf = BytesMut::new();
        } else {
            self.wbuf.clear();
        }
        r
    }

    pub(super) async fn refuse(&mut self, code: ConnectReturnCode) {
        let code = match (self.version, code) {
            (
                Version::V4,
                ConnectReturnCode::QuotaExceeded
                | ConnectReturnCode::ServerBusy
                | ConnectReturnCode::ServerUnavailable,
            ) => ConnectReturnCode::ServiceUnavailable,
            (_, c) => c,
        };
        self.push(Packet::ConnAck(
            ConnAck {
                session_present: false,
                code,
            },
            None,
        ));
        let _ = self.flush().await;
        self.io.close().await;
    }
}

/// Drops properties and maps v5-only reason codes, for 3.1.1 receivers
/// (rumqttd's v4 writer panics on properties).
pub(super) fn for_v4(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(
            PubAck {
                pkid: p.pkid,
                reason: PubAckReason::Success,
            },
            None,
        ),
        Packet::SubAck(s, _) => Packet::SubAck(
            SubAck {
                pkid: s.pkid,
                return_codes: s
                    .return_codes
                    .into_iter()
                    .map(|c| match c {
                        SubscribeReasonCode::Success(q) => SubscribeReasonCode::Success(q),
                        SubscribeReasonCode::QoS0 => {
                            SubscribeReasonCode::Success(rumqttd::protocol::QoS::AtMostOnce)
                        }
                        SubscribeReasonCode::QoS1 => {
                            SubscribeReasonCode::Success(rumqttd::protocol::QoS::AtLeastOnce)
                        }
                        SubscribeReasonCode::QoS2 => {
                            SubscribeReasonCode::Success(rumqttd::protocol::QoS::ExactlyOnce)
                        }
                        _ => SubscribeReasonCode::Failure,
                    })
                    .collect(),
            },
            None,
        ),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::UnsubAck(u, _) => Packet::UnsubAck(u, None),
        Packet::ConnAck(c, _) => Packet::ConnAck(c, None),
        Packet::Disconnect(d, _) => Packet::Disconnect(d, None),
        other => other,
    }
}
