// The demo chat page, on chatmq-client (served as /demo/chatmq.js). All the
// protocol work is the client's; this file is UI only.

import { connect, LocalStorage } from "/demo/chatmq.js";

const $ = (id) => document.getElementById(id);
const config = await (await fetch("/demo/config.json")).json();
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.hostname}:${config.ws_port}${config.ws_path}`;

let client = null;
let current = null; // the open room
const shown = new Map(); // room -> Map(seq -> event)
const oldest = new Map(); // room -> lowest seq loaded
const typers = new Map(); // room -> Map(user -> timeout)
const online = new Map(); // user -> bool
const receipts = new Map(); // room -> Map(user -> read seq)

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  login($("user").value.trim(), $("password").value);
});

function login(user, password) {
  sessionStorage.setItem("chatmq-demo-login", JSON.stringify({ user, password }));
  // a client id per tab, kept across reloads (the outbox is the user's)
  let clientId = sessionStorage.getItem("chatmq-demo-client");
  if (!clientId) {
    clientId = `${user}-demo-${Math.random().toString(36).slice(2, 8)}`;
    sessionStorage.setItem("chatmq-demo-client", clientId);
  }
  client = connect(wsUrl, {
    username: user,
    password,
    clientId,
    prefix: config.prefix,
    storage: new LocalStorage(),
  });
  $("me").textContent = user;
  client.on("state", ({ state }) => {
    $("state").textContent = state;
    if (state === "online") {
      $("login").hidden = true;
      $("app").hidden = false;
      renderRooms();
      if (current) renderMessages();
    }
  });
  client.on("error", ({ error, room }) => {
    if (error?.code === "unauthorized" || /Not authorized|Bad user name/i.test(error?.message || "")) {
      $("login-error").textContent = "login refused";
      client.close();
      sessionStorage.removeItem("chatmq-demo-login");
      return;
    }
    if (error?.code) $("room-error").textContent = `${room ? room + ": " : ""}${error.code}: ${error.detail}`;
  });
  client.on("rooms", renderRooms);
  client.on("unread", renderRooms);
  client.on("event", ({ room, event }) => {
    remember(room, event);
    const who = event.user || event.from;
    if (event.type === "member" && event.action === "join" && who !== client.user) {
      // a new member: their presence dot (allowed now that a room is shared)
      const m = receipts.get(room) || new Map();
      receipts.set(room, m);
      if (!m.has(who)) m.set(who, 0);
      client.watchPresence(who).catch(() => {});
    }
    if (room === current) {
      renderMessages(true);
      if (document.visibilityState === "visible" && event.from !== client.user) client.read(room, event.seq).catch(() => {});
    }
  });
  client.on("outbox", () => current && renderMessages(true));
  client.on("typing", ({ room, user, typing }) => {
    const m = typers.get(room) || new Map();
    typers.set(room, m);
    clearTimeout(m.get(user));
    if (typing) m.set(user, setTimeout(() => (m.delete(user), renderTyping()), 6000));
    else m.delete(user);
    renderTyping();
  });
  client.on("receipt", ({ room, user, read }) => {
    const m = receipts.get(room) || new Map();
    receipts.set(room, m);
    m.set(user, read);
    if (room === current) renderMessages(true);
  });
  client.on("presence", ({ user, online: on }) => {
    online.set(user, on);
    renderRooms();
  });
}

function remember(room, ev) {
  const m = shown.get(room) || new Map();
  shown.set(room, m);
  if (ev.type === "edit" && m.has(ev.target)) {
    m.get(ev.target).body = ev.body;
    m.get(ev.target).edited = true;
  } else if (ev.type === "delete" && m.has(ev.target)) {
    m.get(ev.target).deleted = true;
  }
  m.set(ev.seq, { ...ev });
  if (!oldest.has(room) || ev.seq < oldest.get(room)) oldest.set(room, ev.seq);
}

function renderRooms() {
  if (!client) return;
  const ul = $("rooms");
  ul.replaceChildren();
  for (const r of client.roomList()) {
    const li = document.createElement("li");
    li.dataset.room = r.room;
    if (r.room === current) li.classList.add("active");
    const dot = document.createElement("span");
    dot.className = "dot";
    // online while another member is (members are learned when the room is opened)
    const anyOnline = [...(receipts.get(r.room)?.keys() || [])].some((u) => online.get(u));
    if (anyOnline) dot.classList.add("online");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = r.title || r.room;
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = r.unread && r.room !== current ? String(r.unread) : "";
    li.append(dot, name, badge);
    li.addEventListener("click", () => openRoom(r.room));
    ul.append(li);
  }
}

async function openRoom(room) {
  current = room;
  $("chat-title").textContent = room;
  $("text").disabled = false;
  $("send").disabled = false;
  if (!shown.has(room) || shown.get(room).size < 30) await loadOlder(room);
  renderMessages();
  renderRooms();
  // presence dots and "seen by" of the members
  const m = await client.members(room).catch(() => ({ members: [] }));
  const r = receipts.get(room) || new Map();
  receipts.set(room, r);
  for (const x of m.members) {
    if (x.user !== client.user) {
      r.set(x.user, Math.max(r.get(x.user) || 0, x.read));
      client.watchPresence(x.user).catch(() => {});
    }
  }
  const last = [...(shown.get(room)?.keys() || [])].pop();
  if (last) await client.read(room, last).catch(() => {});
  renderMessages(true);
  renderRooms();
}

/** Infinite scroll back: the page before the oldest loaded event. */
async function loadOlder(room) {
  const before = oldest.get(room);
  if (before === 1) return false;
  const page = await client.history(room, before ? { before, limit: 30 } : { limit: 30 });
  for (const ev of page.events) remember(room, ev);
  if (page.events.length === 0) oldest.set(room, 1);
  return page.events.length > 0;
}

$("messages").addEventListener("scroll", async () => {
  const list = $("messages");
  if (list.scrollTop > 20 || !current) return;
  const height = list.scrollHeight;
  if (await loadOlder(current)) {
    renderMessages();
    list.scrollTop = list.scrollHeight - height;
  }
});

function renderMessages(stickToBottom = false) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.replaceChildren();
  const events = [...(shown.get(current)?.values() || [])].sort((a, b) => a.seq - b.seq);
  const reads = receipts.get(current) || new Map();
  for (const ev of events) {
    if (ev.type === "edit" || ev.type === "delete" || ev.type === "reaction") continue;
    const li = document.createElement("li");
    li.dataset.seq = ev.seq;
    if (ev.type === "member") {
      li.className = "system";
      li.textContent = `${ev.user || ev.from} ${ev.action || "changed"}`;
      list.append(li);
      continue;
    }
    if (ev.from === client.user) li.classList.add("mine");
    if (ev.deleted) li.classList.add("deleted");
    const from = document.createElement("div");
    from.className = "from";
    from.textContent = ev.from;
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = ev.deleted ? "message deleted" : ev.body;
    const meta = document.createElement("div");
    meta.className = "meta";
    const seenBy = [...reads].filter(([u, s]) => u !== ev.from && s >= ev.seq).map(([u]) => u);
    meta.textContent = `#${ev.seq}${ev.edited ? " · edited" : ""}${seenBy.length && ev.from === client.user ? " · seen by " + seenBy.join(", ") : ""}`;
    li.append(from, body, meta);
    list.append(li);
  }
  for (const p of client.pendingSends(current)) {
    const li = document.createElement("li");
    li.className = "mine pending";
    li.dataset.msgId = p.msg_id;
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = p.body ?? "";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = "sending…";
    li.append(body, meta);
    list.append(li);
  }
  if (!stickToBottom || atBottom) list.scrollTop = list.scrollHeight;
}

function renderTyping() {
  const m = typers.get(current);
  const who = m ? [...m.keys()] : [];
  $("typing").textContent = who.length ? `${who.join(", ")} ${who.length > 1 ? "are" : "is"} typing…` : "";
}

$("text").addEventListener("input", () => current && client.typing(current));
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text || !current) return;
  $("text").value = "";
  client.typing(current, false);
  client.send(current, text).catch(() => {});
  renderMessages();
});

$("room-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("room-error").textContent = "";
  const room = $("room-name").value.trim();
  const members = $("room-members").value.split(",").map((s) => s.trim()).filter(Boolean);
  try {
    await client.createRoom({ room, kind: "group", members, title: room });
    for (const m of members) client.watchPresence(m).catch(() => {});
    await openRoom(room);
  } catch (err) {
    $("room-error").textContent = `${err.code || "error"}: ${err.detail || err.message}`;
  }
});

$("join-room").addEventListener("click", async () => {
  $("room-error").textContent = "";
  const room = $("room-name").value.trim();
  try {
    await client.join(room);
    await openRoom(room);
  } catch (err) {
    $("room-error").textContent = `${err.code || "error"}: ${err.detail || err.message}`;
  }
});

// a reload logs in again with the same tab's login (the outbox is in localStorage)
const saved = sessionStorage.getItem("chatmq-demo-login");
if (saved) {
  const { user, password } = JSON.parse(saved);
  login(user, password);
}
window.chatmqDemo = { get client() { return client; }, openRoom };
