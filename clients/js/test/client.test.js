// The client against the real server, with Node's test runner. The server
// is started by tests/tests/js_client.rs, which runs this file with
// CHATMQ_WS_URL (MQTT over WebSocket) set; alone, these tests skip.

import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, ChatError, MemoryStorage } from "../src/index.js";

const URL = process.env.CHATMQ_WS_URL;
const skip = URL ? false : "CHATMQ_WS_URL not set (run by `cargo test --test js_client`)";
const pw = (user) => `pw-${user}`;
let n = 0;
const uniq = (tag) => `${tag}-${process.pid}-${Date.now().toString(36)}-${n++}`;

function client(user, opts = {}) {
  return connect(URL, { username: user, password: pw(user), retryMs: 1000, ...opts });
}

/** Resolves when `pred` holds, polling; fails after `ms`. */
async function until(what, pred, ms = 15000) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The messages of `room` a client applied, in order. */
function recorder(c, room) {
  const seen = [];
  c.on("message", ({ room: r, event }) => {
    if (r === room) seen.push(event);
  });
  return seen;
}

test("two clients chat: every message once, in order, gap-free; edit, delete, reaction", { skip }, async () => {
  const room = uniq("js-chat");
  const alice = client("alice");
  const bob = client("bob");
  try {
    await Promise.all([alice.ready(), bob.ready()]);
    await alice.createRoom({ room, kind: "group", members: ["bob"], title: "JS chat" });
    await bob.join(room);
    const seenByBob = recorder(bob, room);
    const sends = [];
    for (let i = 0; i < 20; i++) {
      sends.push(alice.send(room, `a${i}`));
      sends.push(bob.send(room, `b${i}`));
    }
    const acks = await Promise.all(sends);
    assert.equal(new Set(acks.map((a) => a.seq)).size, 40, "40 distinct seqs");
    await until("bob sees 40 messages", () => seenByBob.length === 40);
    const seqs = seenByBob.map((e) => e.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), "in order");
    assert.equal(seqs.at(-1) - seqs[0], 39, "gap-free");
    assert.deepEqual(
      seenByBob.filter((e) => e.from === "alice").map((e) => e.body),
      [...Array(20).keys()].map((i) => `a${i}`),
    );
    // edit, reaction, delete reach bob as events
    const events = [];
    bob.on("event", ({ room: r, event }) => r === room && events.push(event));
    const target = acks[0].seq;
    await alice.edit(room, target, "a0 (edited)");
    await bob.react(room, target, "👍");
    await alice.remove(room, acks[2].seq);
    await until("edit, reaction, delete", () => events.length >= 3);
    assert.deepEqual(
      events.map((e) => e.type),
      ["edit", "reaction", "delete"],
    );
    // history pages back
    const page = await bob.history(room, { before: seqs.at(-1), limit: 10 });
    assert.equal(page.events.length, 10);
    assert.equal(page.events.at(-1).seq, seqs.at(-1) - 1);
    // members and the room list
    const m = await alice.members(room);
    assert.deepEqual(m.members.map((x) => x.user).sort(), ["alice", "bob"]);
    const list = await bob.listRooms();
    assert.ok(list.rooms.some((r) => r.room === room));
  } finally {
    await alice.close();
    await bob.close();
  }
});

test("errors carry PROTOCOL.md's codes", { skip }, async () => {
  const room = uniq("js-err");
  const alice = client("alice");
  const carol = client("carol");
  try {
    await Promise.all([alice.ready(), carol.ready()]);
    await alice.createRoom({ room, kind: "group", members: [], title: "private" });
    await assert.rejects(carol.send(room, "let me in"), (e) => e instanceof ChatError && e.code === "not_member");
    assert.equal(carol.pendingSends().length, 0, "a final refusal leaves the outbox");
    await assert.rejects(carol.history(room), (e) => e.code === "not_member" || e.code === "forbidden");
    await assert.rejects(alice.request("history", { room, limit: "x" }), (e) => e.code === "bad_request");
    await assert.rejects(alice.request("no.such.method", {}), (e) => e.code === "bad_request");
    // blocking: carol cannot open a direct room with alice until unblocked
    assert.deepEqual(await alice.block("carol"), { user: "carol", blocked: true });
    assert.deepEqual((await alice.blocks()).users, ["carol"]);
    await assert.rejects(
      carol.createRoom({ kind: "direct", members: ["alice"] }),
      (e) => e instanceof ChatError && e.code === "forbidden",
    );
    await alice.unblock("carol");
    const dm = await carol.createRoom({ kind: "direct", members: ["alice"] });
    assert.ok(dm.room.id.startsWith("dm-"));
  } finally {
    await alice.close();
    await carol.close();
  }
});

test("sends outlive the client: a new client on the same storage sends the outbox, each once", { skip }, async () => {
  const room = uniq("js-outbox");
  const storage = new MemoryStorage();
  const alice = client("alice");
  const bob = client("bob", { storage });
  let again;
  try {
    await Promise.all([alice.ready(), bob.ready()]);
    await alice.createRoom({ room, kind: "group", members: ["bob"] });
    await bob.join(room);
    const seen = recorder(alice, room);
    // bob queues 30 sends and drops the connection at once (a reload)
    for (let i = 0; i < 30; i++) bob.send(room, `o${i}`).catch(() => {});
    await bob.close(true);
    const kept = JSON.parse(storage.get("chatmq:chat:bob:outbox"));
    assert.ok(kept.length > 0, "the outbox was kept");
    again = client("bob", { storage });
    await again.ready();
    await until("the outbox drains", () => again.pendingSends().length === 0, 20000);
    await until("alice sees 30", () => seen.length >= 30);
    await new Promise((r) => setTimeout(r, 500));
    const bodies = seen.map((e) => e.body);
    assert.deepEqual(bodies, [...Array(30).keys()].map((i) => `o${i}`), "each once, in send order");
  } finally {
    await alice.close();
    await bob.close(true);
    if (again) await again.close();
  }
});

test("offline and back: the missed messages arrive by sync, once, in order", { skip }, async () => {
  const room = uniq("js-offline");
  const storage = new MemoryStorage();
  const alice = client("alice");
  let bob = client("bob", { storage });
  await Promise.all([alice.ready(), bob.ready()]);
  await alice.createRoom({ room, kind: "group", members: ["bob"] });
  await bob.join(room);
  const before = await alice.send(room, "before");
  await until("bob has 'before'", () => bob.roomList().find((r) => r.room === room)?.cursor >= before.seq);
  await bob.close();
  for (let i = 0; i < 50; i++) await alice.send(room, `m${i}`);
  bob = client("bob", { storage });
  const seen = recorder(bob, room);
  try {
    await bob.ready();
    await until("bob catches up", () => seen.length >= 50);
    assert.deepEqual(
      seen.map((e) => e.body),
      [...Array(50).keys()].map((i) => `m${i}`),
    );
    assert.ok(bob.unread(room) >= 50, `unread counted: ${bob.unread(room)}`);
    const last = seen.at(-1).seq;
    await bob.read(room, last);
    assert.equal(bob.unread(room), 0);
  } finally {
    await alice.close();
    await bob.close();
  }
});

test("typing (throttled), receipts and presence reach the other client", { skip }, async () => {
  const room = uniq("js-signals");
  const alice = client("alice", { typingThrottleMs: 60000 });
  const bob = client("bob");
  try {
    await Promise.all([alice.ready(), bob.ready()]);
    await alice.createRoom({ room, kind: "group", members: ["bob"] });
    await bob.join(room);
    const typing = [];
    const receipts = [];
    const presence = [];
    bob.on("typing", (t) => t.room === room && typing.push(t));
    bob.on("receipt", (r) => r.room === room && receipts.push(r));
    bob.on("presence", (p) => p.user === "alice" && presence.push(p));
    await bob.watchPresence("alice");
    await until("alice online", () => presence.some((p) => p.online));
    assert.equal(alice.typing(room), true);
    assert.equal(alice.typing(room), false, "throttled");
    await until("bob sees alice typing", () => typing.some((t) => t.user === "alice" && t.typing));
    const { seq } = await bob.send(room, "read me");
    await alice.read(room, seq);
    await until("bob gets alice's receipt", () => receipts.some((r) => r.user === "alice" && r.read === seq));
    await alice.close();
    await until("alice offline", () => presence.some((p) => !p.online));
  } finally {
    await bob.close();
  }
});
