//! A bare MQTT client (rumqttc, 3.1.1 or 5) that shows what the `tests`
//! helpers hide: the retain flag and QoS of each delivery, the QoS a
//! SUBACK grants, and the reason of each PUBACK.

use anyhow::{anyhow, bail, Result};
use std::collections::VecDeque;
use tests::{pw, TIMEOUT};
use tokio::sync::mpsc;

/// A publish the client received.
#[derive(Clone)]
pub(super) struct Got {
    pub(super) topic: String,
    pub(super) payload: Vec<u8>,
    pub(super) qos: u8,
    pub(super) retain: bool,
}

impl std::fmt::Debug for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{} {:?} qos {} retain {}]",
            self.topic,
            self.text(),
            self.qos,
            self.retain
        )
    }
}

impl Got {
    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

enum Ev {
    Pub(Got),
    /// The PUBACK's reason (`"Success"` for 3.1.1).
    PubAck(String),
    /// Per filter: the granted QoS, or `None` when refused.
    SubAck(Vec<Option<u8>>),
    Closed(String),
}

enum Handle {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// A will for [`Raw::connect`]: topic, payload, retain.
pub(super) type Will<'a> = (&'a str, &'a str, bool);

/// One connection of a default test user (password `pw-{user}`).
pub(super) struct Raw {
    handle: Handle,
    pub(super) name: String,
    rx: mpsc::UnboundedReceiver<Ev>,
    pubs: VecDeque<Got>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        // the socket closes without DISCONNECT: the will, if any, is published
        self.task.abort();
    }
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl Raw {
    /// Connects `user` as `cid` with MQTT 5 (`v5`) or 3.1.1, optionally with a will.
    pub(super) async fn connect(
        port: u16,
        user: &str,
        cid: &str,
        v5: bool,
        will: Option<Will<'_>>,
    ) -> Result<Raw> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (handle, task) = if v5 {
            use rumqttc::v5::mqttbytes::v5::{LastWill, Packet};
            use rumqttc::v5::Event;
            let mut o = rumqttc::v5::MqttOptions::new(cid, "127.0.0.1", port);
            o.set_credentials(user, pw(user));
            if let Some((t, p, r)) = will {
                o.set_last_will(LastWill::new(t, p, qos5(1), r, None));
            }
            let (c, mut el) = rumqttc::v5::AsyncClient::new(o, 100);
            let task = tokio::spawn(async move {
                loop {
                    let ev = match el.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => Ev::Pub(Got {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            qos: p.qos as u8,
                            retain: p.retain,
                        }),
                        Ok(Event::Incoming(Packet::PubAck(a))) => {
                            Ev::PubAck(format!("{:?}", a.reason))
                        }
                        Ok(Event::Incoming(Packet::PubComp(c))) => {
                            Ev::PubAck(format!("{:?}", c.reason))
                        }
                        Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(
                            s.return_codes
                                .iter()
                                .map(|c| match c {
                                    rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(q) => {
                                        Some(*q as u8)
                                    }
                                    _ => None,
                                })
                                .collect(),
                        ),
                        Ok(_) => continue,
                        Err(e) => {
                            let _ = tx.send(Ev::Closed(format!("{e:?}")));
                            return;
                        }
                    };
                    let _ = tx.send(ev);
                }
            });
            (Handle::V5(c), task)
        } else {
            use rumqttc::{Event, LastWill, Packet, SubscribeReasonCode};
            let mut o = rumqttc::MqttOptions::new(cid, "127.0.0.1", port);
            o.set_credentials(user, pw(user));
            if let Some((t, p, r)) = will {
                o.set_last_will(LastWill::new(t, p, qos4(1), r));
            }
            let (c, mut el) = rumqttc::AsyncClient::new(o, 100);
            let task = tokio::spawn(async move {
                loop {
                    let ev = match el.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => Ev::Pub(Got {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            qos: p.qos as u8,
                            retain: p.retain,
                        }),
                        Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                            Ev::PubAck("Success".into())
                        }
                        Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(
                            s.return_codes
                                .iter()
                                .map(|c| match c {
                                    SubscribeReasonCode::Success(q) => Some(*q as u8),
                                    SubscribeReasonCode::Failure => None,
                                })
                                .collect(),
                        ),
                        Ok(_) => continue,
                        Err(e) => {
                            let _ = tx.send(Ev::Closed(format!("{e:?}")));
                            return;
                        }
                    };
                    let _ = tx.send(ev);
                }
            });
            (Handle::V4(c), task)
        };
        let mut raw = Raw {
            handle,
            name: format!("{user}/{cid}"),
            rx,
            pubs: VecDeque::new(),
            task,
        };
        // A round trip proves the CONNECT was accepted (rumqttc queues the
        // SUBSCRIBE until CONNACK, and a refusal ends the event loop).
        let own = format!("chat/users/{user}/inbox");
        if raw
            .subscribe(&[&own])
            .await?
            .first()
            .copied()
            .flatten()
            .is_none()
        {
            bail!("{}: subscribing to the own inbox was refused", raw.name);
        }
        Ok(raw)
    }

    async fn next_ev(&mut self, what: &str) -> Result<Ev> {
        match tokio::time::timeout(TIMEOUT, self.rx.recv()).await {
            Ok(Some(Ev::Closed(e))) => bail!("{}: closed while waiting for {what}: {e}", self.name),
            Ok(Some(ev)) => Ok(ev),
            Ok(None) => bail!("{}: connection task ended before {what}", self.name),
            Err(_) => bail!("{}: no {what} within {TIMEOUT:?}", self.name),
        }
    }

    /// Publishes; at QoS 1 (2) waits for the PUBACK (PUBCOMP) and returns
    /// its reason (`"Success"`, `"QuotaExceeded"`, ...), at QoS 0 `"none"`.
    pub(super) async fn publish(
        &mut self,
        topic: &str,
        payload: &str,
        qos: u8,
        retain: bool,
    ) -> Result<String> {
        let p = payload.as_bytes().to_vec();
        match &self.handle {
            Handle::V4(c) => c.publish(topic, qos4(qos), retain, p).await?,
            Handle::V5(c) => c.publish(topic, qos5(qos), retain, p).await?,
        }
        if qos == 0 {
            return Ok("none".into());
        }
        loop {
            match self.next_ev(&format!("PUBACK for {topic}")).await? {
                Ev::PubAck(r) => return Ok(r),
                Ev::Pub(g) => self.pubs.push_back(g),
                _ => {}
            }
        }
    }

    /// Subscribes to `filters` at QoS 1 in one SUBSCRIBE; returns the
    /// granted QoS per filter (`None`: refused).
    pub(super) async fn subscribe(&mut self, filters: &[&str]) -> Result<Vec<Option<u8>>> {
        match &self.handle {
            Handle::V4(c) => {
                let f = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.to_string(), qos4(1)));
                c.subscribe_many(f).await?
            }
            Handle::V5(c) => {
                let f = filters
                    .iter()
                    .map(|f| rumqttc::v5::mqttbytes::v5::Filter::new(f.to_string(), qos5(1)));
                c.subscribe_many(f).await?
            }
        }
        loop {
            match self.next_ev(&format!("SUBACK for {filters:?}")).await? {
                Ev::SubAck(codes) => return Ok(codes),
                Ev::Pub(g) => self.pubs.push_back(g),
                _ => {}
            }
        }
    }

    /// Every publish received up to and including the first that matches
    /// `pred` (which is last in the list).
    pub(super) async fn until(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&Got) -> bool,
    ) -> Result<Vec<Got>> {
        let mut seen = Vec::new();
        loop {
            let g = match self.pubs.pop_front() {
                Some(g) => g,
                None => match self.next_ev(what).await {
                    Ok(Ev::Pub(g)) => g,
                    Ok(_) => continue,
                    Err(e) => {
                        let got: Vec<String> = seen
                            .iter()
                            .map(|g: &Got| format!("{} {}", g.topic, g.text()))
                            .collect();
                        return Err(anyhow!("{e}; received before: {got:?}"));
                    }
                },
            };
            let hit = pred(&g);
            seen.push(g);
            if hit {
                return Ok(seen);
            }
        }
    }
}
