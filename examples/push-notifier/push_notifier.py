#!/usr/bin/env python3
"""A push notifier on chatmq's event hooks (docs/operations.md, "Event hooks").

It reads the hook stream from its own cursor with `hooks.read` (so nothing
is missed while it was away), prints the push notification it would send
to each member who is offline (with the unread count as the badge), saves
its cursor, then waits for live hooks on `chat/hooks/events` and reads on.

    python3 push_notifier.py --host 127.0.0.1 --port 1883 \
        --user pusher --password ... --cursor pusher.cursor [--once]

`--once`: stop when caught up (tests, cron). The account must be a service
account allowed on `chat/#` and listed in `bridge.hook_users`.
Needs paho-mqtt (pip install paho-mqtt).
"""

import argparse
import json
import os
import queue
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class Hooks:
    def __init__(self, args):
        self.user = args.user
        self.replies = queue.Queue()
        self.wake = threading.Event()
        self.subscribed = queue.Queue()
        self.reply_topic = "%s/users/%s/replies/%s" % (args.prefix, args.user, args.client_id)
        self.events_topic = "%s/hooks/events" % args.prefix
        self.rpc_topic = "%s/rpc/%s/hooks.read" % (args.prefix, args.user)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id,
                        protocol=mqtt.MQTTv5)
        c.username_pw_set(args.user, args.password)
        c.on_message = self.on_message
        c.on_subscribe = lambda cl, u, mid, rcs, p: self.subscribed.put([r.value for r in rcs])
        c.connect(args.host, args.port, keepalive=30, clean_start=True)
        c.loop_start()
        self.c = c
        for t in (self.reply_topic, self.events_topic):
            c.subscribe(t, qos=1)
            codes = self.subscribed.get(timeout=10)
            if any(code >= 0x80 for code in codes):
                sys.exit("subscribe to %s refused: %s" % (t, codes))
        self.n = 0

    def on_message(self, client, userdata, msg):
        if msg.topic == self.reply_topic:
            self.replies.put(msg)
        elif msg.topic == self.events_topic:
            self.wake.set()

    def read(self, after):
        self.n += 1
        corr = ("hooks-%d" % self.n).encode()
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        self.c.publish(self.rpc_topic, json.dumps({"after": after, "limit": 100}), qos=1,
                       properties=props)
        while True:
            m = self.replies.get(timeout=15)
            if getattr(m.properties, "CorrelationData", None) == corr:
                reply = json.loads(m.payload)
                if not reply.get("ok"):
                    sys.exit("hooks.read refused: %s" % reply.get("error"))
                return reply["result"]


def load_cursor(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except FileNotFoundError:
        return 0


def save_cursor(path, cursor):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(cursor))
    os.replace(tmp, path)


def push(record):
    """What a real notifier would hand to APNs/FCM; printed as JSON lines."""
    ev = record["event"]
    for user in record.get("offline", []):
        print(json.dumps({
            "push": user,
            "room": record["room"],
            "kind": record["kind"],
            "from": ev.get("from"),
            "body": ev.get("body"),
            "badge": record.get("unread", {}).get(user),
            "hook_seq": record["hook_seq"],
        }), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--prefix", default="chat")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--client-id", default="push-notifier")
    p.add_argument("--cursor", default="push-notifier.cursor")
    p.add_argument("--once", action="store_true")
    args = p.parse_args()
    hooks = Hooks(args)
    cursor = load_cursor(args.cursor)
    while True:
        hooks.wake.clear()
        page = hooks.read(cursor)
        for record in page["records"]:
            push(record)
        if page["records"]:
            cursor = page["records"][-1]["hook_seq"]
        # records skipped (never stored) still move the cursor to the page's end
        if not page["has_more"]:
            cursor = max(cursor, page["head"])
        save_cursor(args.cursor, cursor)
        if page["has_more"]:
            if not page["records"]:
                time.sleep(0.5)  # an event still on its way to the store
            continue
        if args.once:
            return
        hooks.wake.wait(timeout=30)


if __name__ == "__main__":
    main()
