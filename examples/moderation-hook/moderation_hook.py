#!/usr/bin/env python3
"""A pre-publish moderation hook for chatmq (docs/operations.md,
"Pre-publish moderation"): rejects messages and edits that contain a word
of --reject, masks the words of --mask (a rewrite), accepts the rest.

    python3 moderation_hook.py --user modsvc --password ... \
        --reject spam,scam --mask darn

The account must be a service account allowed on `chat/#`; the server needs
`[bridge.moderation] enabled = true`. Needs paho-mqtt (pip install paho-mqtt).
Prints one line per verdict; "ready" once subscribed.
"""

import argparse
import json
import re
import sys

import paho.mqtt.client as mqtt


def verdict(request, reject, mask):
    body = request.get("body") or ""
    words = set(w.lower() for w in re.findall(r"[\w']+", body))
    hit = sorted(words & reject)
    if hit:
        return {"verdict": "reject", "reason": "contains " + ", ".join(hit)}
    masked = body
    for w in mask:
        masked = re.sub(r"\b%s\b" % re.escape(w),
                        lambda m: m.group(0)[0] + "*" * (len(m.group(0)) - 1),
                        masked, flags=re.IGNORECASE)
    if masked != body:
        return {"verdict": "rewrite", "body": masked}
    return {"verdict": "accept"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--prefix", default="chat")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--reject", default="")
    p.add_argument("--mask", default="")
    args = p.parse_args()
    reject = set(w.strip().lower() for w in args.reject.split(",") if w.strip())
    mask = [w.strip() for w in args.mask.split(",") if w.strip()]
    requests = "%s/hooks/moderate" % args.prefix
    verdicts = "%s/hooks/verdicts" % args.prefix

    def on_message(client, userdata, msg):
        try:
            req = json.loads(msg.payload)
        except ValueError:
            return
        v = verdict(req, reject, mask)
        v["id"] = req.get("id")
        client.publish(verdicts, json.dumps(v), qos=1)
        print(json.dumps({"msg_id": req.get("msg_id"), **v}), flush=True)

    def on_subscribe(client, userdata, mid, codes, props):
        if any(c.value >= 0x80 for c in codes):
            sys.exit("subscribe refused")
        print("ready", flush=True)

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="moderation-hook",
                    protocol=mqtt.MQTTv5)
    c.username_pw_set(args.user, args.password)
    c.on_message = on_message
    c.on_subscribe = on_subscribe
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(requests, qos=1)
    c.connect(args.host, args.port, keepalive=30)
    c.loop_forever()


if __name__ == "__main__":
    main()
