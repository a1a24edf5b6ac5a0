//! The parts of the contract an app relies on but no topic name shows,
//! checked with a client nobody here wrote: Python paho-mqtt over MQTT 5
//! (Response Topic and Correlation Data). A retried send is one event;
//! presence comes at QoS 1 with the current state flagged retained;
//! receipts reach the room's members; unread counts only others' messages
//! and one's own send clears it; the readable view folds an edit; a block
//! refuses a direct room.

use anyhow::Result;
use serde_json::Value;
use std::time::Duration;
use tests::{paho_or_skip, pw, python, TestServer};

const SCRIPT: &str = r#"
import json, queue, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

host, port, room = sys.argv[1], int(sys.argv[2]), sys.argv[3]
passwords = {"alice": sys.argv[4], "bob": sys.argv[5]}
out = {}

class User:
    def __init__(self, name):
        self.name, self.n, self.held = name, 0, []
        self.q, self.acks = queue.Queue(), queue.Queue()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name + "-paho5",
                        protocol=mqtt.MQTTv5)
        c.username_pw_set(name, passwords[name])
        c.on_message = lambda cl, u, m: self.q.put(m)
        c.on_subscribe = lambda cl, u, mid, rcs, p: self.acks.put([rc.value for rc in rcs])
        c.connect(host, port, keepalive=30, clean_start=True)
        c.loop_start()
        self.c = c
        self.reply = "chat/users/%s/replies/%s-paho5" % (name, name)
        self.sub(self.reply)
        self.sub("chat/users/%s/inbox" % name)

    def sub(self, topic, qos=1):
        self.c.subscribe(topic, qos=qos)
        codes = self.acks.get(timeout=10)
        assert all(c < 0x80 for c in codes), (topic, codes)

    def wait(self, pred, what, timeout=10):
        for i, m in enumerate(self.held):
            if pred(m):
                return self.held.pop(i)
        end = time.time() + timeout
        while time.time() < end:
            try:
                m = self.q.get(timeout=max(0.01, end - time.time()))
            except queue.Empty:
                break
            if pred(m):
                return m
            self.held.append(m)
        raise TimeoutError("%s: no %s" % (self.name, what))

    def rpc(self, method, params):
        self.n += 1
        corr = ("%s-%d" % (self.name, self.n)).encode()
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply
        props.CorrelationData = corr
        self.c.publish("chat/rpc/%s/%s" % (self.name, method), json.dumps(params), qos=1,
                       properties=props)
        m = self.wait(lambda m: m.topic == self.reply
                      and getattr(m.properties, "CorrelationData", None) == corr,
                      "reply to " + method)
        return json.loads(m.payload)

    def send(self, body):
        self.c.publish("chat/rooms/%s/send/%s" % (room, self.name), json.dumps(body), qos=1)

    def event(self, pred, what):
        t = "chat/rooms/%s/events" % room
        return json.loads(self.wait(lambda m: m.topic == t and pred(json.loads(m.payload)),
                                    what).payload)

alice, bob = User("alice"), User("bob")
out["create"] = alice.rpc("rooms.create", {"room": room, "members": ["bob"]})["ok"]
out["join"] = bob.rpc("rooms.join", {"room": room})["ok"]
for u in (alice, bob):
    u.sub("chat/rooms/%s/events" % room)
    u.sub("chat/rooms/%s/receipts" % room)

# a retried send is the same event
alice.send({"msg_id": "p1", "body": "one"})
first = alice.event(lambda e: e.get("msg_id") == "p1", "echo of p1")
alice.send({"msg_id": "p1", "body": "one"})
again = alice.event(lambda e: e.get("msg_id") == "p1", "echo of the retry")
h = alice.rpc("history", {"room": room})["result"]
out["retry"] = [first["seq"], again["seq"],
                len([e for e in h["events"] if e.get("msg_id") == "p1"])]

# presence: the current state at QoS 1, flagged retained
bob.sub("chat/presence/alice", qos=1)
p = bob.wait(lambda m: m.topic == "chat/presence/alice", "alice's presence")
out["presence"] = [p.qos, bool(p.retain), json.loads(p.payload).get("online")]

# receipts reach the other member
alice.rpc("read", {"room": room, "seq": first["seq"]})
r = bob.wait(lambda m: m.topic == "chat/rooms/%s/receipts" % room
             and json.loads(m.payload).get("user") == "alice", "alice's receipt")
out["receipt"] = json.loads(r.payload).get("read") == first["seq"]

# unread: alice's one message, not the membership events; one's own send clears it
def unread(u):
    rooms = u.rpc("rooms.list", {})["result"]["rooms"]
    return [x["unread"] for x in rooms if x["room"] == room][0]
before = unread(bob)
bob.send({"msg_id": "b1", "body": "hi"})
bob.event(lambda e: e.get("msg_id") == "b1", "echo of b1")
out["unread"] = [before, unread(bob), unread(alice)]

# the readable view folds an edit into its message
alice.send({"msg_id": "e1", "type": "edit", "target": first["seq"], "body": "one (edited)"})
alice.event(lambda e: e.get("msg_id") == "e1", "echo of the edit")
v = bob.rpc("history", {"room": room, "view": "readable"})["result"]["events"]
msg = [e for e in v if e.get("seq") == first["seq"]][0]
out["readable"] = [msg.get("body"), msg.get("edited"), any(e.get("type") == "edit" for e in v)]

# a block refuses a direct room
bob.rpc("users.block", {"user": "alice"})
refused = alice.rpc("rooms.create", {"kind": "direct", "members": ["bob"]})
out["blocked"] = [refused["ok"], refused.get("error", {}).get("code")]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_hidden_contract_with_paho_mqtt5() -> Result<()> {
    if !paho_or_skip().await {
        return Ok(());
    }
    let srv = TestServer::start().await?;
    let args = vec![
        "127.0.0.1".to_string(),
        srv.tcp_port().to_string(),
        "paho-room".into(),
        pw("alice"),
        pw("bob"),
    ];
    let (ok, out, err) = python(SCRIPT, &args, Duration::from_secs(60)).await?;
    assert!(ok, "the paho script failed; stdout: {out}; stderr: {err}");
    let r: Value = serde_json::from_str(out.trim().lines().last().unwrap_or(""))?;
    assert_eq!(
        (&r["create"], &r["join"]),
        (&Value::Bool(true), &Value::Bool(true)),
        "{r}"
    );
    let retry = &r["retry"];
    assert_eq!(retry[0], retry[1], "a retry is the same seq: {r}");
    assert_eq!(retry[2], 1, "stored once: {r}");
    assert_eq!(
        r["presence"],
        serde_json::json!([1, true, true]),
        "QoS 1, retained, online: {r}"
    );
    assert_eq!(r["receipt"], true, "{r}");
    assert_eq!(
        r["unread"],
        serde_json::json!([1, 0, 1]),
        "bob 1 then 0, alice 1 (bob's): {r}"
    );
    assert_eq!(
        r["readable"],
        serde_json::json!(["one (edited)", true, false]),
        "{r}"
    );
    assert_eq!(r["blocked"], serde_json::json!([false, "forbidden"]), "{r}");
    Ok(())
}
