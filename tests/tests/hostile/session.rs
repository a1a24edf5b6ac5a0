//! Client ids and persistent sessions belong to their user (issue 10, item 1):
//! another user presenting a client id whose session is kept, or an id kept
//! for a service account, is refused at CONNECT (3.1.1: 0x02 identifier
//! rejected; 5: 0x85 client identifier not valid), and nothing queued for
//! the owner reaches anyone else. The owner still resumes and takes over
//! their own session. See `hostile.rs`.

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use std::time::Duration;
use tests::*;
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum V {
    V4,
    V5,
}

/// What the client's event loop saw.
#[derive(Debug)]
enum Ev {
    ConnAck {
        session_present: bool,
    },
    /// The CONNACK's refusal code, as rumqttc names it.
    Refused(String),
    SubAck(bool),
    Msg(String, Value),
    Closed(String),
}

enum Handle {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// A client whose clean session flag the test chooses.
struct Raw {
    handle: Handle,
    who: String,
    ev: mpsc::UnboundedReceiver<Ev>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a CONNECT ended.
enum Connack {
    Accepted { raw: Raw, session_present: bool },
    Refused(String),
}

impl Connack {
    fn accepted(self, what: &str) -> Result<(Raw, bool)> {
        match self {
            Connack::Accepted {
                raw,
                session_present,
            } => Ok((raw, session_present)),
            Connack::Refused(code) => bail!("{what}: CONNECT refused with {code}"),
        }
    }
}

/// Connects `user` (password `password`) with `client_id`; `clean`: 3.1.1
/// clean session / 5 Clean Start. A persistent MQTT 5 session asks for an
/// hour's expiry.
async fn connect(
    port: u16,
    v: V,
    user: &str,
    password: &str,
    client_id: &str,
    clean: bool,
) -> Result<Connack> {
    let (tx, mut ev) = mpsc::unbounded_channel();
    let (handle, task) = match v {
        V::V4 => {
            let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
            o.set_credentials(user, password);
            o.set_keep_alive(Duration::from_secs(30));
            o.set_clean_session(clean);
            let (c, mut el) = rumqttc::AsyncClient::new(o, 100);
            let task = tokio::spawn(async move {
                use rumqttc::{ConnectionError, Event, Packet, SubscribeReasonCode};
                loop {
                    let e = match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(a))) => Ev::ConnAck {
                            session_present: a.session_present,
                        },
                        Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(
                            s.return_codes
                                .iter()
                                .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
                        ),
                        Ok(Event::Incoming(Packet::Publish(p))) => Ev::Msg(
                            p.topic.clone(),
                            serde_json::from_slice(&p.payload).unwrap_or(Value::Null),
                        ),
                        Ok(_) => continue,
                        Err(ConnectionError::ConnectionRefused(code)) => {
                            Ev::Refused(format!("{code:?}"))
                        }
                        Err(e) => Ev::Closed(e.to_string()),
                    };
                    let end = matches!(e, Ev::Refused(_) | Ev::Closed(_));
                    let _ = tx.send(e);
                    if end {
                        return;
                    }
                }
            });
            (Handle::V4(c), task)
        }
        V::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", port);
            o.set_credentials(user, password);
            o.set_keep_alive(Duration::from_secs(30));
            o.set_clean_start(clean);
            if !clean {
                o.set_session_expiry_interval(Some(3600));
            }
            let (c, mut el) = rumqttc::v5::AsyncClient::new(o, 100);
            let task = tokio::spawn(async move {
                use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
                use rumqttc::v5::{ConnectionError, Event};
                loop {
                    let e = match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(a))) => Ev::ConnAck {
                            session_present: a.session_present,
                        },
                        Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(
                            s.return_codes
                                .iter()
                                .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
                        ),
                        Ok(Event::Incoming(Packet::Publish(p))) => Ev::Msg(
                            String::from_utf8_lossy(&p.topic).into_owned(),
                            serde_json::from_slice(&p.payload).unwrap_or(Value::Null),
                        ),
                        Ok(_) => continue,
                        Err(ConnectionError::ConnectionRefused(code)) => {
                            Ev::Refused(format!("{code:?}"))
                        }
                        Err(e) => Ev::Closed(e.to_string()),
                    };
                    let end = matches!(e, Ev::Refused(_) | Ev::Closed(_));
                    let _ = tx.send(e);
                    if end {
                        return;
                    }
                }
            });
            (Handle::V5(c), task)
        }
    };
    let who = format!("{user} as {client_id:?} ({v:?}, clean {clean})");
    match tokio::time::timeout(TIMEOUT, ev.recv()).await {
        Ok(Some(Ev::ConnAck { session_present })) => Ok(Connack::Accepted {
            raw: Raw {
                handle,
                who,
                ev,
                task,
            },
            session_present,
        }),
        Ok(Some(Ev::Refused(code))) => Ok(Connack::Refused(code)),
        Ok(other) => bail!("{who}: no CONNACK, got {other:?}"),
        Err(_) => bail!("{who}: no CONNACK within {TIMEOUT:?}"),
    }
}

/// A default user (password `pw-{user}`).
async fn connect_user(
    port: u16,
    v: V,
    user: &str,
    client_id: &str,
    clean: bool,
) -> Result<Connack> {
    connect(port, v, user, &pw(user), client_id, clean).await
}

/// The refusal code of "identifier rejected" as rumqttc names it.
fn id_rejected(v: V) -> &'static str {
    match v {
        V::V4 => "BadClientId",
        V::V5 => "ClientIdentifierNotValid",
    }
}

impl Raw {
    async fn subscribe(&mut self, filter: &str) -> Result<()> {
        match &self.handle {
            Handle::V4(c) => c.subscribe(filter, rumqttc::QoS::AtLeastOnce).await?,
            Handle::V5(c) => {
                c.subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                    .await?
            }
        }
        loop {
            match tokio::time::timeout(TIMEOUT, self.ev.recv()).await {
                Ok(Some(Ev::SubAck(true))) => return Ok(()),
                Ok(Some(Ev::SubAck(false))) => bail!("{}: SUBSCRIBE {filter} refused", self.who),
                Ok(Some(Ev::Msg(..))) => {}
                other => bail!("{}: no SubAck for {filter}: {other:?}", self.who),
            }
        }
    }

    /// Waits for a message matching `pred`, skipping others.
    async fn recv(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&str, &Value) -> bool,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.ev.recv()).await {
                Ok(Some(Ev::Msg(t, v))) if pred(&t, &v) => return Ok(v),
                Ok(Some(Ev::Msg(..) | Ev::SubAck(_) | Ev::ConnAck { .. })) => {}
                Ok(Some(Ev::Closed(e))) => bail!("{}: closed waiting for {what}: {e}", self.who),
                Ok(other) => bail!("{}: ended waiting for {what}: {other:?}", self.who),
                Err(_) => bail!("{}: no {what} within {TIMEOUT:?}", self.who),
            }
        }
    }

    /// Everything that arrives within [`QUIET`].
    async fn drain(&mut self) -> Vec<String> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + QUIET;
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, self.ev.recv()).await {
            got.push(format!("{e:?}"));
        }
        got
    }

    /// Waits until the server closed the connection.
    async fn closed(&mut self) -> Result<()> {
        loop {
            match tokio::time::timeout(TIMEOUT, self.ev.recv()).await {
                Ok(Some(Ev::Closed(_)) | None) => return Ok(()),
                Ok(Some(_)) => {}
                Err(_) => bail!("{}: still connected after {TIMEOUT:?}", self.who),
            }
        }
    }

    /// Sends DISCONNECT (the session is kept if it is persistent).
    async fn disconnect(mut self) -> Result<()> {
        match &self.handle {
            Handle::V4(c) => c.disconnect().await?,
            Handle::V5(c) => c.disconnect().await?,
        }
        self.closed().await
    }
}

/// Waits until the server counts `n` connections past CONNACK, so that one
/// which ended has left the router before the test goes on.
async fn wait_connections(srv: &TestServer, n: usize) -> Result<()> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (_, body) = srv.http_get("/metrics").await?;
        let now = metric(&body, "chatmq_connections");
        if now == n as f64 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the server still counts {now} connections, not {n}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn invited_to(room: &'static str) -> impl FnMut(&str, &Value) -> bool {
    move |t, v| t == "chat/users/alice/inbox" && v["type"] == "invited" && v["room"] == room
}

/// Alice keeps a session under `alice-1` and leaves; Carol invites her;
/// Bob presents `alice-1`: refused, and Alice's invitation waits for her.
async fn takeover_by_another_user(v: V) -> Result<()> {
    let srv = TestServer::start().await?;
    let port = srv.tcp_port();
    let mut carol = srv.user_v4("carol", "carol-1").await?;

    let (mut alice, _) = connect_user(port, v, "alice", "alice-1", false)
        .await?
        .accepted("alice's first connection")?;
    alice.subscribe("chat/users/alice/inbox").await?;
    alice.disconnect().await?;
    wait_connections(&srv, 1).await?;
    carol
        .rpc(
            "rooms.create",
            json!({"room": "party", "kind": "group", "members": ["alice"]}),
        )
        .await?;

    for clean in [false, true] {
        match connect_user(port, v, "bob", "alice-1", clean).await? {
            Connack::Refused(code) => assert_eq!(code, id_rejected(v), "bob, clean {clean}"),
            Connack::Accepted {
                mut raw,
                session_present,
            } => bail!(
                "bob (clean {clean}) was accepted with alice's client id, session present \
                 {session_present}; he received: {:?}",
                raw.drain().await
            ),
        }
    }
    // everyone else is still served
    let r = carol.rpc("rooms.list", json!({})).await?;
    assert!(r["rooms"].is_array(), "{r}");

    // alice comes back to her session and the invitation queued for her
    let (mut alice, present) = connect_user(port, v, "alice", "alice-1", false)
        .await?
        .accepted("alice back")?;
    assert!(present, "alice's session was kept for her");
    alice
        .recv(
            "the invitation sent while alice was away",
            invited_to("party"),
        )
        .await?;

    // she takes over her own live session from another connection
    let (mut alice2, present) = connect_user(port, v, "alice", "alice-1", false)
        .await?
        .accepted("alice's takeover of her own session")?;
    assert!(present, "the takeover resumes the session");
    alice.closed().await?;
    carol
        .rpc(
            "rooms.create",
            json!({"room": "party2", "kind": "group", "members": ["alice"]}),
        )
        .await?;
    alice2
        .recv(
            "an invitation on the taken-over session",
            invited_to("party2"),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn another_users_connect_cannot_take_a_kept_session_v4() -> Result<()> {
    takeover_by_another_user(V::V4).await
}

#[tokio::test(flavor = "multi_thread")]
async fn another_users_connect_cannot_take_a_kept_session_v5() -> Result<()> {
    takeover_by_another_user(V::V5).await
}

/// The split bridge's default client id `chat-bridge` (default `[bridge]`
/// settings of `chatmq broker`) is refused to a user while the bridge is
/// away; the bridge itself still connects with it.
#[tokio::test(flavor = "multi_thread")]
async fn the_split_bridges_client_id_is_kept_while_it_is_away() -> Result<()> {
    let broker = TestServer::builder()
        .mode("broker")
        .toml("[broker.auth.services.chat-bridge]\npassword = \"pw-cb\"\nallow = [\"chat/#\"]\n")
        .start()
        .await?;
    let port = broker.tcp_port();
    for v in [V::V4, V::V5] {
        for clean in [false, true] {
            match connect_user(port, v, "mallory", "chat-bridge", clean).await? {
                Connack::Refused(code) => assert_eq!(code, id_rejected(v), "{v:?} clean {clean}"),
                Connack::Accepted { .. } => {
                    bail!("mallory ({v:?}, clean {clean}) got the bridge's client id")
                }
            }
        }
    }
    // the bridge (default client id and username) connects and serves
    let _bridge = TestServer::builder()
        .mode("bridge")
        .toml(&format!(
            "[bridge]\nbroker = \"127.0.0.1:{port}\"\npassword = \"pw-cb\"\n"
        ))
        .start()
        .await?;
    let mut alice = broker.user_v4("alice", "alice-split").await?;
    let r = alice
        .rpc("rooms.create", json!({"room": "sr", "kind": "group"}))
        .await?;
    assert_eq!(r["room"]["id"], "sr", "{r}");
    Ok(())
}

/// A configured service's own id and its `client_ids` are refused to users
/// before the service ever connected; the service connects with them.
#[tokio::test(flavor = "multi_thread")]
async fn service_client_ids_are_kept_for_their_service() -> Result<()> {
    let srv = TestServer::builder()
        .toml(
            "[broker.auth.services.pusher]\npassword = \"pw-pusher\"\n\
             allow = [\"chat/hooks/#\"]\nclient_ids = [\"pusher-1\"]\n",
        )
        .start()
        .await?;
    let port = srv.tcp_port();
    for id in ["pusher", "pusher-1", "ext-bridge"] {
        for v in [V::V4, V::V5] {
            match connect_user(port, v, "mallory", id, false).await? {
                Connack::Refused(code) => assert_eq!(code, id_rejected(v), "{id} {v:?}"),
                Connack::Accepted { .. } => bail!("mallory ({v:?}) got the service id {id}"),
            }
        }
    }
    let (mut pusher, _) = connect(port, V::V5, "pusher", "pw-pusher", "pusher-1", false)
        .await?
        .accepted("the pusher with its own client id")?;
    pusher.subscribe("chat/hooks/#").await?;
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    let r = bob.rpc("rooms.list", json!({})).await?;
    assert!(r["rooms"].is_array(), "{r}");
    Ok(())
}

/// A user keeps at most `persistent_sessions_per_user` persistent sessions;
/// one more is refused with quota exceeded, clean sessions are not bounded,
/// and ending a session with a clean one frees its slot.
#[tokio::test(flavor = "multi_thread")]
async fn persistent_sessions_per_user_are_bounded() -> Result<()> {
    let srv = TestServer::builder()
        .toml("[broker.limits]\npersistent_sessions_per_user = 2\n")
        .start()
        .await?;
    let port = srv.tcp_port();
    for id in ["a-1", "a-2"] {
        let (raw, _) = connect_user(port, V::V5, "alice", id, false)
            .await?
            .accepted(id)?;
        raw.disconnect().await?;
    }
    wait_connections(&srv, 0).await?;
    match connect_user(port, V::V5, "alice", "a-3", false).await? {
        Connack::Refused(code) => assert_eq!(code, "QuotaExceeded"),
        Connack::Accepted { .. } => bail!("a third persistent session was accepted"),
    }
    match connect_user(port, V::V4, "alice", "a-3", false).await? {
        Connack::Refused(code) => assert_eq!(code, "ServiceUnavailable"),
        Connack::Accepted { .. } => bail!("a third persistent session was accepted (3.1.1)"),
    }
    let (raw, _) = connect_user(port, V::V4, "alice", "a-3", true)
        .await?
        .accepted("a clean session")?;
    raw.disconnect().await?;
    // alice ends a-1's session with a clean one: a slot is free again
    let (raw, present) = connect_user(port, V::V4, "alice", "a-1", true)
        .await?
        .accepted("a-1 clean")?;
    assert!(!present);
    raw.disconnect().await?;
    wait_connections(&srv, 0).await?;
    let (_raw, _) = connect_user(port, V::V5, "alice", "a-3", false)
        .await?
        .accepted("a-3 after a slot was freed")?;
    // and another user is served all along
    let mut bob = srv.user_v4("bob", "bob-1").await?;
    bob.rpc("rooms.list", json!({})).await?;
    Ok(())
}

/// paho-mqtt (3.1.1 over TCP): one connection, then out. argv: host port
/// user password client_id clean(0/1) subscribe_to("" for none)
/// until(suback|msg|quiet) seconds. Prints `{"rc","session_present","msgs"}`.
const PAHO_SESSION: &str = r#"
import sys, json, time
import paho.mqtt.client as mqtt
host, port, user, pw, cid, clean, sub, until, secs = sys.argv[1:10]
kw = dict(client_id=cid, clean_session=(clean == "1"), protocol=mqtt.MQTTv311)
try:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, **kw)
except AttributeError:
    c = mqtt.Client(**kw)
c.username_pw_set(user, pw)
st = {"rc": None, "session_present": None, "subacked": False, "msgs": []}
def on_connect(client, userdata, flags, rc):
    st["rc"] = int(rc)
    st["session_present"] = bool(flags.get("session present"))
    if int(rc) == 0 and sub:
        client.subscribe(sub, qos=1)
def on_subscribe(client, userdata, mid, granted):
    st["subacked"] = True
def on_message(client, userdata, msg):
    st["msgs"].append({"topic": msg.topic, "payload": msg.payload.decode("utf-8", "replace")})
c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_message = on_message
c.connect(host, int(port), keepalive=30)
deadline = time.time() + float(secs)
while time.time() < deadline:
    if c.loop(timeout=0.05) != 0:
        break
    if st["rc"] not in (None, 0):
        break
    if until == "suback" and st["subacked"]:
        break
    if until == "msg" and st["msgs"]:
        break
if st["rc"] == 0:
    c.disconnect()
    c.loop(timeout=0.2)
print(json.dumps(st))
"#;

async fn paho(
    port: u16,
    user: &str,
    cid: &str,
    clean: bool,
    sub: &str,
    until: &str,
) -> Result<Value> {
    let secs = if until == "quiet" { QUIET } else { TIMEOUT };
    let args: Vec<String> = [
        "127.0.0.1",
        &port.to_string(),
        user,
        &pw(user),
        cid,
        if clean { "1" } else { "0" },
        sub,
        until,
        &secs.as_secs_f64().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (ok, out, err) = python(PAHO_SESSION, &args, TIMEOUT + secs).await?;
    if !ok {
        bail!("paho script failed: {out} {err}");
    }
    serde_json::from_str(out.trim()).map_err(|e| anyhow!("paho output {out:?}: {e}; stderr {err}"))
}

/// The takeover with paho-mqtt: Bob's CONNECT with Alice's kept client id
/// gets 0x02 and none of her messages; Alice gets her invitation.
#[tokio::test(flavor = "multi_thread")]
async fn paho_cannot_take_a_kept_session() -> Result<()> {
    if let Err(why) = paho_available().await {
        println!("SKIPPED: python paho-mqtt not importable: {why}");
        return Ok(());
    }
    let srv = TestServer::start().await?;
    let port = srv.tcp_port();
    let mut carol = srv.user_v4("carol", "carol-1").await?;
    let st = paho(
        port,
        "alice",
        "alice-p",
        false,
        "chat/users/alice/inbox",
        "suback",
    )
    .await?;
    assert_eq!(st["rc"], 0, "{st}");
    assert_eq!(st["subacked"], true, "{st}");
    wait_connections(&srv, 1).await?;
    carol
        .rpc(
            "rooms.create",
            json!({"room": "party", "kind": "group", "members": ["alice"]}),
        )
        .await?;
    let st = paho(port, "bob", "alice-p", false, "", "quiet").await?;
    assert_eq!(st["rc"], 2, "identifier rejected: {st}");
    assert_eq!(st["msgs"], json!([]), "{st}");
    let r = carol.rpc("rooms.list", json!({})).await?;
    assert!(r["rooms"].is_array(), "{r}");
    let st = paho(port, "alice", "alice-p", false, "", "msg").await?;
    assert_eq!(st["rc"], 0, "{st}");
    assert_eq!(st["session_present"], true, "{st}");
    let msg = &st["msgs"][0];
    assert_eq!(msg["topic"], "chat/users/alice/inbox", "{st}");
    let inv: Value = serde_json::from_str(msg["payload"].as_str().unwrap_or(""))?;
    assert_eq!(inv["type"], "invited", "{st}");
    assert_eq!(inv["room"], "party", "{st}");
    Ok(())
}
