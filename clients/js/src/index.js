// chatmq's chat client, on MQTT.js. It does the hard part of PROTOCOL.md so
// that an app writes only UI:
//
// - on every (re)connect: subscribe first (reply topic, inbox, each room's
//   events, typing and receipts, watched presence), then `sync` with the
//   cursors, then page with `history` where a room has more;
// - apply each room's events in `seq` order, drop a `seq` already applied,
//   fill a gap (`seq > cursor + 1`) with `history` before going on;
// - sends get a generated `msg_id` and wait in an outbox (kept by the
//   storage adapter, so a reload loses nothing) until their echo; they are
//   retried with the same `msg_id`, which the server stores once;
// - typing is throttled, unread counts are kept per room, errors carry
//   PROTOCOL.md's codes, and the connection's state is an event.
//
// Works in Node (storage: MemoryStorage) and in the browser (LocalStorage),
// from a bundler or a plain <script type="module"> with an import map for
// "mqtt" (the demo page, clients/demo, does that).

import mqtt from "mqtt";

/** A refusal from the server, with PROTOCOL.md's `code`. */
export class ChatError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "ChatError";
    this.code = code;
    this.detail = message;
  }
}

/** Codes after which the same send is retried (the rest are final). */
const RETRYABLE = new Set(["rate_limited", "unavailable", "timeout", "offline"]);

/** Keeps everything in memory (Node, tests, or no persistence wanted). */
export class MemoryStorage {
  constructor() {
    this.map = new Map();
  }
  get(key) {
    return this.map.has(key) ? this.map.get(key) : null;
  }
  set(key, value) {
    this.map.set(key, value);
  }
  remove(key) {
    this.map.delete(key);
  }
}

/** `window.localStorage` (or any Web Storage), so cursors and the outbox survive a reload. */
export class LocalStorage {
  constructor(storage = globalThis.localStorage) {
    this.storage = storage;
  }
  get(key) {
    return this.storage.getItem(key);
  }
  set(key, value) {
    this.storage.setItem(key, value);
  }
  remove(key) {
    this.storage.removeItem(key);
  }
}

function newMsgId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}

function randomClientId(user) {
  return `${user}-web-${Math.random().toString(36).slice(2, 10)}`;
}

/**
 * Connects and returns the client. `url`: the server's MQTT over WebSocket
 * URL (`ws://host:8083/mqtt`) or `mqtt://host:1883` in Node.
 */
export function connect(url, options) {
  const c = new ChatClient(url, options);
  c.start();
  return c;
}

export class ChatClient {
  constructor(url, options = {}) {
    const o = options;
    if (!o.username) throw new Error("username is required");
    this.url = url;
    this.user = o.username;
    this.password = o.password;
    this.prefix = o.prefix || "chat";
    this.clientId = o.clientId || randomClientId(this.user);
    this.storage = o.storage || new MemoryStorage();
    this.mqtt = o.mqtt || mqtt;
    this.retryMs = o.retryMs ?? 3000;
    this.requestTimeoutMs = o.requestTimeoutMs ?? 10000;
    this.typingThrottleMs = o.typingThrottleMs ?? 3000;
    this.historyPage = o.historyPage ?? 50;
    this.mqttOptions = o.mqttOptions || {};
    this.state = "idle";
    this.listeners = new Map();
    this.pending = new Map(); // corr -> {resolve, reject, timer}
    this.corr = 0;
    this.rooms = new Map(); // room -> {cursor, unread, read, filling, buffer}
    this.watched = new Set(); // users whose presence is watched
    this.typingSent = new Map(); // room -> last typing publish, ms
    this.sendWaiters = new Map(); // msg_id -> {resolve, reject}
    this.key = `chatmq:${this.prefix}:${this.user}`;
    this.replyTopic = `${this.prefix}/users/${this.user}/replies/${this.clientId}`;
    this.inboxTopic = `${this.prefix}/users/${this.user}/inbox`;
    this.cursors = this.load("cursors", {});
    this.outbox = this.load("outbox", []);
    for (const [room, cursor] of Object.entries(this.cursors)) {
      this.room(room).cursor = cursor;
    }
    this.online = null;
  }

  // ---- events -------------------------------------------------------------

  /**
   * Events: `state` {state}, `event` {room, event}, `message` {room, event}
   * (messages only), `typing` {room, user, typing}, `receipt` {room, user,
   * read, delivered}, `presence` {user, online, ts}, `unread` {room,
   * unread}, `rooms` {rooms}, `inbox` {notice}, `sent` {room, msg_id, seq},
   * `outbox` {pending}, `error` {error, room?, msg_id?}. Returns a function
   * that removes the listener.
   */
  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this.listeners.get(type)?.delete(fn);
  }

  emit(type, detail) {
    for (const fn of this.listeners.get(type) || []) {
      try {
        fn(detail);
      } catch (e) {
        // a listener's bug must not stop the client
        console.error("chatmq listener failed", e);
      }
    }
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", { state });
  }

  // ---- storage ------------------------------------------------------------

  load(what, fallback) {
    try {
      const text = this.storage.get(`${this.key}:${what}`);
      return text ? JSON.parse(text) : fallback;
    } catch {
      return fallback;
    }
  }

  save(what, value) {
    try {
      this.storage.set(`${this.key}:${what}`, JSON.stringify(value));
    } catch (e) {
      this.emit("error", { error: e });
    }
  }

  // ---- connection ---------------------------------------------------------

  start() {
    this.setState("connecting");
    this.conn = this.mqtt.connect(this.url, {
      clientId: this.clientId,
      username: this.user,
      password: this.password,
      clean: true,
      resubscribe: false, // we subscribe on every connect, before catching up
      reconnectPeriod: 1000,
      connectTimeout: 10000,
      keepalive: 30,
      ...this.mqttOptions,
    });
    this.conn.on("connect", () => this.onConnect());
    this.conn.on("message", (topic, payload) => this.onMessage(topic, payload));
    this.conn.on("close", () => {
      if (this.state !== "closed") this.setState("offline");
    });
    this.conn.on("reconnect", () => this.setState("connecting"));
    this.conn.on("error", (e) => this.emit("error", { error: e }));
    this.retry = setInterval(() => this.retrySends(), 250);
    if (typeof window !== "undefined" && typeof window.addEventListener === "function") {
      // the browser knows before the keep-alive does
      this.onOffline = () => this.conn.connected && this.conn.stream?.destroy();
      this.onOnline = () => !this.conn.connected && this.state !== "closed" && this.conn.reconnect();
      window.addEventListener("offline", this.onOffline);
      window.addEventListener("online", this.onOnline);
    }
    return this;
  }

  /**
   * Disconnects for good (the outbox and cursors stay in storage). `force`:
   * drop the connection at once, as a page reload or a crash does.
   */
  async close(force = false) {
    this.setState("closed");
    clearInterval(this.retry);
    if (this.onOffline) {
      window.removeEventListener("offline", this.onOffline);
      window.removeEventListener("online", this.onOnline);
    }
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new ChatError("offline", "client closed"));
    }
    this.pending.clear();
    await new Promise((resolve) => this.conn.end(force, {}, resolve));
  }

  /** Resolves once connected and caught up. */
  ready() {
    if (this.state === "online") return Promise.resolve();
    return new Promise((resolve) => {
      const off = this.on("state", ({ state }) => {
        if (state === "online") {
          off();
          resolve();
        }
      });
    });
  }

  roomTopics(room) {
    const p = this.prefix;
    return [`${p}/rooms/${room}/events`, `${p}/rooms/${room}/typing/+`, `${p}/rooms/${room}/receipts`];
  }

  subscribe(topics) {
    return new Promise((resolve, reject) => {
      if (topics.length === 0) return resolve([]);
      const map = {};
      for (const t of topics) map[t] = { qos: t.includes("/typing/") ? 0 : 1 };
      this.conn.subscribe(map, (err, granted) => (err ? reject(err) : resolve(granted || [])));
    });
  }

  async onConnect() {
    this.setState("syncing");
    try {
      // 1. subscribe before fetching: nothing published meanwhile is missed
      const topics = [this.replyTopic, this.inboxTopic];
      for (const room of this.rooms.keys()) topics.push(...this.roomTopics(room));
      for (const user of this.watched) topics.push(`${this.prefix}/presence/${user}`);
      await this.subscribe(topics);
      // 2. sync with the cursors (and learn rooms joined elsewhere)
      await this.syncAll();
      // 3. unread counts and titles
      await this.refreshRooms().catch((e) => this.emit("error", { error: e }));
      this.setState("online");
      // 4. what waits in the outbox goes again, same msg_id
      this.retrySends(true);
    } catch (e) {
      this.emit("error", { error: e });
      if (this.conn.connected) {
        // try the whole catch-up again shortly
        setTimeout(() => this.conn.connected && this.onConnect(), 1000);
      }
    }
  }

  async syncAll() {
    let joinedAfter;
    for (;;) {
      const rooms = {};
      for (const [room, r] of this.rooms) rooms[room] = r.cursor;
      const params = { rooms };
      if (joinedAfter) params.joined_after = joinedAfter;
      const res = await this.request("sync", params);
      for (const [room, page] of Object.entries(res.rooms || {})) {
        if (page.left) {
          this.forget(room);
          continue;
        }
        if (page.truncated) this.truncated(room, page.events);
        for (const ev of page.events || []) this.apply(room, ev);
        if (page.has_more) await this.fillFrom(room);
      }
      for (const j of res.joined || []) {
        if (!this.rooms.has(j.room) && j.state === "joined") await this.openRoom(j.room);
      }
      if (!res.joined_has_more || !res.joined_next) return;
      joinedAfter = res.joined_next;
    }
  }

  /** Starts following `room`: its topics, then its latest page. */
  async openRoom(room) {
    const known = this.rooms.has(room);
    const r = this.room(room);
    if (this.conn.connected) await this.subscribe(this.roomTopics(room));
    if (known && r.cursor > 0) {
      await this.fillFrom(room);
      return;
    }
    const page = await this.request("history", { room, limit: this.historyPage });
    const first = page.events.length ? page.events[0].seq : page.head + 1;
    if (r.cursor === 0) r.cursor = first - 1;
    for (const ev of page.events) this.apply(room, ev);
    this.saveCursors();
  }

  forget(room) {
    this.rooms.delete(room);
    delete this.cursors[room];
    this.saveCursors();
    if (this.conn.connected) this.conn.unsubscribe(this.roomTopics(room));
  }

  room(room) {
    let r = this.rooms.get(room);
    if (!r) {
      r = { cursor: 0, unread: 0, read: 0, filling: null, buffer: new Map() };
      this.rooms.set(room, r);
    }
    return r;
  }

  saveCursors() {
    const c = {};
    for (const [room, r] of this.rooms) c[room] = r.cursor;
    this.cursors = c;
    this.save("cursors", c);
  }

  // ---- incoming -----------------------------------------------------------

  onMessage(topic, payload) {
    let v;
    try {
      v = JSON.parse(payload.toString());
    } catch {
      return;
    }
    const p = this.prefix;
    if (topic === this.replyTopic) return this.onReply(v);
    if (topic === this.inboxTopic) return this.onInbox(v);
    const parts = topic.split("/");
    if (parts[0] !== p) return;
    if (parts[1] === "presence" && parts.length === 3) {
      this.emit("presence", { user: parts[2], online: !!v.online, ts: v.ts });
      return;
    }
    if (parts[1] !== "rooms" || parts.length < 4) return;
    const room = parts[2];
    if (parts[3] === "events") this.live(room, v);
    else if (parts[3] === "typing" && parts[4] !== this.user) {
      this.emit("typing", { room, user: parts[4], typing: !!v.typing });
    } else if (parts[3] === "receipts") {
      this.emit("receipt", { room, user: v.user, read: v.read, delivered: v.delivered });
    }
  }

  onReply(v) {
    const p = this.pending.get(String(v.corr));
    if (!p) return;
    this.pending.delete(String(v.corr));
    clearTimeout(p.timer);
    if (v.ok) p.resolve(v.result);
    else p.reject(new ChatError(v.error?.code || "unavailable", v.error?.message || "request failed"));
  }

  onInbox(notice) {
    this.emit("inbox", { notice });
    if (notice.type === "error") {
      this.failSend(notice.msg_id, new ChatError(notice.code, notice.message), notice.room);
    } else if (notice.type === "kick" || notice.type === "ban") {
      this.forget(notice.room);
      this.emit("rooms", { rooms: this.roomList() });
    }
  }

  /** A live event: applied if next, buffered behind a gap fill otherwise. */
  live(room, ev) {
    const r = this.room(room);
    if (ev.seq <= r.cursor) return; // a duplicate (e.g. a retried send's second echo)
    if (ev.seq === r.cursor + 1 && !r.filling) {
      this.apply(room, ev);
      this.saveCursors();
      return;
    }
    r.buffer.set(ev.seq, ev);
    if (!r.filling) {
      r.filling = this.fillFrom(room)
        .catch((e) => this.emit("error", { error: e, room }))
        .finally(() => {
          r.filling = null;
        });
    }
  }

  /** `history` after the cursor until the head (or the buffered events join up). */
  async fillFrom(room) {
    const r = this.room(room);
    for (;;) {
      this.drainBuffer(room);
      const page = await this.request("history", { room, after: r.cursor, limit: 1000 });
      if (page.truncated) this.truncated(room, page.events);
      for (const ev of page.events) this.apply(room, ev);
      this.drainBuffer(room);
      this.saveCursors();
      if (!page.has_more || page.events.length === 0) return;
    }
  }

  /** Retention removed events after the cursor: they are gone, the stream
   * goes on from the first event kept (an app drops what it cached before). */
  truncated(room, events) {
    const from = events && events.length ? events[0].seq : undefined;
    this.emit("truncated", { room, from });
  }

  drainBuffer(room) {
    const r = this.room(room);
    for (const seq of [...r.buffer.keys()].sort((a, b) => a - b)) {
      const ev = r.buffer.get(seq);
      r.buffer.delete(seq);
      if (seq === r.cursor + 1) this.apply(room, ev);
      else if (seq > r.cursor + 1) {
        r.buffer.set(seq, ev);
        return;
      }
    }
  }

  /** Applies the next event of `room` (a lower seq is dropped). */
  apply(room, ev) {
    const r = this.room(room);
    if (ev.seq <= r.cursor) return;
    r.cursor = ev.seq;
    this.emit("event", { room, event: ev });
    if (ev.type === "message") this.emit("message", { room, event: ev });
    if (ev.from === this.user) {
      this.settleSend(ev.msg_id, ev.seq, room);
      if (ev.type === "message" && ev.seq > r.read) {
        // one's own message marks the room read up to it
        r.read = ev.seq;
        r.unread = 0;
        this.emit("unread", { room, unread: 0 });
      }
    } else if (ev.type === "message" && ev.seq > r.read) {
      r.unread += 1;
      this.emit("unread", { room, unread: r.unread });
    }
  }

  // ---- requests -----------------------------------------------------------

  /** A request (PROTOCOL.md's methods); rejects with a ChatError. */
  async request(method, params = {}) {
    if (!this.conn || !this.conn.connected) {
      await Promise.race([
        new Promise((resolve) => this.conn.once("connect", resolve)),
        new Promise((_, reject) =>
          setTimeout(() => reject(new ChatError("offline", "not connected")), this.requestTimeoutMs),
        ),
      ]);
    }
    const corr = String(++this.corr);
    const body = JSON.stringify({ ...params, reply: this.replyTopic, corr });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(corr);
        reject(new ChatError("timeout", `${method}: no reply in ${this.requestTimeoutMs} ms`));
      }, this.requestTimeoutMs);
      this.pending.set(corr, { resolve, reject, timer });
      this.conn.publish(`${this.prefix}/rpc/${this.user}/${method}`, body, { qos: 1 }, (err) => {
        if (err) {
          clearTimeout(timer);
          this.pending.delete(corr);
          reject(new ChatError("offline", err.message));
        }
      });
    });
  }

  // rooms
  async createRoom({ room, kind = "group", members = [], title } = {}) {
    const res = await this.request("rooms.create", { room, kind, members, title });
    await this.openRoom(res.room.id);
    this.emit("rooms", { rooms: this.roomList() });
    return res;
  }
  async join(room) {
    const res = await this.request("rooms.join", { room });
    await this.openRoom(room);
    this.emit("rooms", { rooms: this.roomList() });
    return res;
  }
  async leave(room) {
    const res = await this.request("rooms.leave", { room });
    this.forget(room);
    this.emit("rooms", { rooms: this.roomList() });
    return res;
  }
  invite(room, user) {
    return this.request("rooms.invite", { room, user });
  }
  kick(room, user) {
    return this.request("rooms.kick", { room, user });
  }
  ban(room, user) {
    return this.request("rooms.ban", { room, user });
  }
  /** Blocks `user`: no direct room, invitation or direct message between you. */
  block(user) {
    return this.request("users.block", { user });
  }
  unblock(user) {
    return this.request("users.unblock", { user });
  }
  blocks() {
    return this.request("users.blocks", {});
  }
  listRooms(params = {}) {
    return this.request("rooms.list", params);
  }
  members(room, params = {}) {
    return this.request("rooms.members", { room, ...params });
  }

  /** `rooms.list` (all pages): the unread counts and titles of every room. */
  async refreshRooms() {
    let after;
    const all = [];
    for (;;) {
      const res = await this.request("rooms.list", after ? { after, limit: 200 } : { limit: 200 });
      all.push(...res.rooms);
      if (!res.has_more || !res.next) break;
      after = res.next;
    }
    this.roomInfo = new Map(all.map((e) => [e.room, e]));
    for (const e of all) {
      if (e.state !== "joined") continue;
      if (!this.rooms.has(e.room)) await this.openRoom(e.room);
      const r = this.room(e.room);
      r.read = Math.max(r.read, e.read);
      // the server counts what is stored; events applied since are counted here
      r.unread = e.unread;
      this.emit("unread", { room: e.room, unread: r.unread });
    }
    this.emit("rooms", { rooms: this.roomList() });
    return all;
  }

  /** Known rooms: id, title, kind, unread. */
  roomList() {
    return [...this.rooms.keys()].sort().map((room) => {
      const info = this.roomInfo?.get(room);
      return {
        room,
        title: info?.title ?? room,
        kind: info?.kind ?? null,
        unread: this.rooms.get(room).unread,
        cursor: this.rooms.get(room).cursor,
      };
    });
  }

  unread(room) {
    return this.rooms.get(room)?.unread ?? 0;
  }

  /**
   * Older events for infinite scroll: the page before `before` (seq).
   * `view: "readable"`: messages with edits, deletes, reactions and reply
   * counts folded in by the server.
   */
  history(room, { before, after, limit, view } = {}) {
    return this.request("history", { room, before, after, limit: limit ?? this.historyPage, view });
  }

  /** A message and its replies (`reply_to`), readable. */
  thread(room, seq, { after, limit } = {}) {
    return this.request("thread", { room, seq, after, limit });
  }

  // ---- sending ------------------------------------------------------------

  /**
   * Sends a message; resolves with `{seq}` once its echo came back (the
   * server stored it). The send waits in the outbox (and storage) until
   * then, retried with the same `msg_id`.
   */
  send(room, body, { replyTo, meta, msgId } = {}) {
    return this.sendRaw(room, { type: "message", body, reply_to: replyTo, meta }, msgId);
  }
  edit(room, target, body) {
    return this.sendRaw(room, { type: "edit", target, body });
  }
  remove(room, target) {
    return this.sendRaw(room, { type: "delete", target });
  }
  react(room, target, emoji, { remove = false } = {}) {
    return this.sendRaw(room, { type: "reaction", target, emoji, remove: remove || undefined });
  }

  sendRaw(room, fields, msgId) {
    const msg_id = msgId || newMsgId();
    const payload = { msg_id };
    for (const [k, v] of Object.entries(fields)) if (v !== undefined && v !== null) payload[k] = v;
    const entry = { room, msg_id, payload, at: 0, tries: 0 };
    this.outbox.push(entry);
    this.saveOutbox();
    const done = new Promise((resolve, reject) => this.sendWaiters.set(msg_id, { resolve, reject }));
    this.pump(room);
    done.msgId = msg_id;
    return done;
  }

  /**
   * Sends the first waiting send of `room` if it is not in flight. One send
   * per room is in flight at a time: a refusal that is retried (rate
   * limited) cannot let a later send be stored before it, so a user's
   * messages keep the order they were sent in.
   */
  pump(room, force = false) {
    const head = this.outbox.find((e) => e.room === room);
    if (!head) return;
    if (!force && head.at && Date.now() - head.at < this.retryMs) return;
    this.publishSend(head);
  }

  publishSend(entry) {
    if (!this.conn || !this.conn.connected || this.state !== "online") return;
    entry.at = Date.now();
    entry.tries += 1;
    const topic = `${this.prefix}/rooms/${entry.room}/send/${this.user}`;
    // errors come back on the reply topic with the msg_id as corr
    const body = JSON.stringify({ ...entry.payload, reply: this.replyTopic, corr: `send:${entry.msg_id}` });
    this.pending.set(`send:${entry.msg_id}`, {
      resolve: () => {},
      reject: (e) => this.failSend(entry.msg_id, e, entry.room),
      timer: null,
    });
    this.conn.publish(topic, body, { qos: 1 });
  }

  /** Sends each room's first waiting send again if it waited `retryMs` (at once with `all`). */
  retrySends(all = false) {
    if (this.state !== "online") return;
    for (const room of new Set(this.outbox.map((e) => e.room))) this.pump(room, all);
  }

  settleSend(msgId, seq, room) {
    const i = this.outbox.findIndex((e) => e.msg_id === msgId && e.room === room);
    if (i >= 0) {
      this.outbox.splice(i, 1);
      this.saveOutbox();
    }
    this.pending.delete(`send:${msgId}`);
    const w = this.sendWaiters.get(msgId);
    if (w) {
      this.sendWaiters.delete(msgId);
      w.resolve({ seq, msg_id: msgId });
    }
    if (i >= 0 || w) this.emit("sent", { room, msg_id: msgId, seq });
    this.pump(room, true);
  }

  failSend(msgId, error, room) {
    if (msgId == null) {
      this.emit("error", { error, room });
      return;
    }
    const i = this.outbox.findIndex((e) => e.msg_id === msgId);
    if (RETRYABLE.has(error.code)) {
      // sent again in a second (rate limited: the bucket refills)
      if (i >= 0) this.outbox[i].at = Date.now() - this.retryMs + Math.min(1000, this.retryMs);
      return;
    }
    if (i >= 0) {
      this.outbox.splice(i, 1);
      this.saveOutbox();
    }
    const w = this.sendWaiters.get(msgId);
    if (w) {
      this.sendWaiters.delete(msgId);
      w.reject(error);
    }
    this.emit("error", { error, room, msg_id: msgId });
    if (room) this.pump(room, true);
  }

  saveOutbox() {
    this.save(
      "outbox",
      this.outbox.map(({ room, msg_id, payload }) => ({ room, msg_id, payload, at: 0, tries: 0 })),
    );
    this.emit("outbox", { pending: this.outbox.map((e) => ({ room: e.room, msg_id: e.msg_id, payload: e.payload })) });
  }

  /** Sends waiting for their echo (shown as "sending" by a UI). */
  pendingSends(room) {
    return this.outbox.filter((e) => !room || e.room === room).map((e) => ({ ...e.payload, room: e.room }));
  }

  // ---- typing, receipts, presence -----------------------------------------

  /** "I am typing" in `room`, at most once per `typingThrottleMs`. */
  typing(room, typing = true) {
    const now = Date.now();
    const last = this.typingSent.get(room) || 0;
    if (typing && now - last < this.typingThrottleMs) return false;
    this.typingSent.set(room, typing ? now : 0);
    if (!this.conn?.connected) return false;
    this.conn.publish(`${this.prefix}/rooms/${room}/typing/${this.user}`, JSON.stringify({ typing }), {
      qos: 0,
    });
    return true;
  }

  /** Moves the read marker (receipts reach the room's other members). */
  async read(room, seq) {
    const res = await this.request("read", { room, seq });
    const r = this.room(room);
    r.read = Math.max(r.read, res.read);
    if (res.read >= r.cursor) r.unread = 0;
    this.emit("unread", { room, unread: r.unread });
    return res;
  }

  delivered(room, seq) {
    return this.request("delivered", { room, seq });
  }

  /** Watches `user`'s presence (`presence` events); needs a room in common. */
  async watchPresence(user) {
    this.watched.add(user);
    if (this.conn?.connected) await this.subscribe([`${this.prefix}/presence/${user}`]);
  }
}

export default { connect, ChatClient, ChatError, MemoryStorage, LocalStorage };
