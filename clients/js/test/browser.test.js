// The demo page (served by the server's HTTP port) in Debian's Chromium,
// driven by playwright-core: two pages chat; one goes offline while the
// other sends 100 messages and gets each once, in order, when it is back;
// a page reloaded mid-send loses nothing; typing, receipts and unread
// counts reach the other page. Run by tests/tests/js_client.rs with
// CHATMQ_HTTP_URL set; skips without it or without Chromium.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";

const HTTP = process.env.CHATMQ_HTTP_URL;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const skip = !HTTP
  ? "CHATMQ_HTTP_URL not set (run by `cargo test --test js_client`)"
  : !existsSync(CHROMIUM)
    ? `no Chromium at ${CHROMIUM} (apt install chromium)`
    : false;
const pw = (user) => `pw-${user}`;

let browser;
before(async () => {
  if (skip) return;
  const { chromium } = await import("playwright-core");
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
  });
});
after(async () => {
  if (browser) await browser.close();
});

async function page(user) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  const p = await context.newPage();
  p.on("pageerror", (e) => console.error(`[${user} page error]`, e));
  await p.goto(HTTP);
  await p.fill("#user", user);
  await p.fill("#password", pw(user));
  await p.click("#login-button");
  await p.waitForSelector("#app:not([hidden])");
  await p.waitForFunction(() => document.getElementById("state").textContent === "online");
  return { context, page: p };
}

/** The message bodies a page shows in its open room, in order (sent ones only). */
function bodies(p) {
  return p.$$eval("#messages li:not(.pending):not(.system) .body", (els) => els.map((e) => e.textContent));
}

async function createAndJoin(a, b, room) {
  await a.fill("#room-name", room);
  await a.fill("#room-members", "bob");
  await a.click("#create-room");
  await a.waitForSelector(`#rooms li[data-room="${room}"].active`);
  await b.fill("#room-name", room);
  await b.click("#join-room");
  await b.waitForSelector(`#rooms li[data-room="${room}"].active`);
}

test("two pages chat: messages, typing, receipts, unread counts", { skip }, async () => {
  const room = `web-${Date.now().toString(36)}`;
  const alice = await page("alice");
  const bob = await page("bob");
  try {
    await createAndJoin(alice.page, bob.page, room);
    // presence: bob's dot is green on alice's room list
    await alice.page.waitForSelector(`#rooms li[data-room="${room}"] .dot.online`);
    // typing reaches the other page
    await alice.page.type("#text", "hel");
    await bob.page.waitForFunction(() => document.getElementById("typing").textContent.includes("alice is typing"));
    await alice.page.fill("#text", "hello bob");
    await alice.page.press("#text", "Enter");
    await bob.page.waitForFunction(() =>
      [...document.querySelectorAll("#messages .body")].some((e) => e.textContent === "hello bob"),
    );
    // bob has the room open and read it: alice sees "seen by bob"
    await alice.page.waitForFunction(() =>
      [...document.querySelectorAll("#messages li.mine .meta")].some((e) => e.textContent.includes("seen by bob")),
    );
    await bob.page.fill("#text", "hi alice");
    await bob.page.press("#text", "Enter");
    await alice.page.waitForFunction(() =>
      [...document.querySelectorAll("#messages .body")].some((e) => e.textContent === "hi alice"),
    );
    // bob looks at another room: alice's messages count as unread there
    const other = `${room}-other`;
    await bob.page.fill("#room-name", other);
    await bob.page.fill("#room-members", "");
    await bob.page.click("#create-room");
    await bob.page.waitForSelector(`#rooms li[data-room="${other}"].active`);
    for (const t of ["one", "two", "three"]) {
      await alice.page.fill("#text", t);
      await alice.page.press("#text", "Enter");
    }
    await bob.page.waitForFunction(
      (r) => document.querySelector(`#rooms li[data-room="${r}"] .badge`)?.textContent === "3",
      room,
    );
    if (process.env.CHATMQ_SCREENSHOT) {
      await bob.page.click(`#rooms li[data-room="${room}"]`);
      await alice.page.fill("#text", "typing a reply");
      await bob.page.type("#text", "…");
      await alice.page.waitForTimeout(300);
      await alice.page.screenshot({ path: process.env.CHATMQ_SCREENSHOT });
    }
  } finally {
    await alice.context.close();
    await bob.context.close();
  }
});

test("a page offline while the other sends 100 messages gets each once, in order", { skip }, async () => {
  const room = `web-off-${Date.now().toString(36)}`;
  const alice = await page("alice");
  const bob = await page("bob");
  try {
    await createAndJoin(alice.page, bob.page, room);
    await bob.context.setOffline(true);
    // the connection is gone (the client's keep-alive or the socket's error notices)
    await bob.page.waitForFunction(() => document.getElementById("state").textContent !== "online", null, {
      timeout: 60000,
    });
    const sent = await alice.page.evaluate(async (r) => {
      const c = window.chatmqDemo.client;
      const acks = [];
      for (let i = 0; i < 100; i++) acks.push(c.send(r, `offline-${i}`));
      return (await Promise.all(acks)).length;
    }, room);
    assert.equal(sent, 100);
    await bob.context.setOffline(false);
    await bob.page.waitForFunction(
      () => [...document.querySelectorAll("#messages .body")].filter((e) => e.textContent.startsWith("offline-")).length >= 100,
      null,
      { timeout: 60000 },
    );
    const got = (await bodies(bob.page)).filter((b) => b.startsWith("offline-"));
    assert.deepEqual(got, [...Array(100).keys()].map((i) => `offline-${i}`), "each once, in order");
  } finally {
    await alice.context.close();
    await bob.context.close();
  }
});

test("a page reloaded mid-send loses nothing it showed as sent", { skip }, async () => {
  const room = `web-reload-${Date.now().toString(36)}`;
  const alice = await page("alice");
  const bob = await page("bob");
  try {
    await createAndJoin(alice.page, bob.page, room);
    // 20 sends go into the outbox (localStorage), and the page reloads at once
    await alice.page.evaluate((r) => {
      const c = window.chatmqDemo.client;
      for (let i = 0; i < 20; i++) c.send(r, `reload-${i}`).catch(() => {});
    }, room);
    await alice.page.reload();
    await alice.page.waitForFunction(() => document.getElementById("state").textContent === "online");
    await bob.page.waitForFunction(
      () => [...document.querySelectorAll("#messages .body")].filter((e) => e.textContent.startsWith("reload-")).length >= 20,
      null,
      { timeout: 30000 },
    );
    await bob.page.waitForTimeout(1000);
    const got = (await bodies(bob.page)).filter((b) => b.startsWith("reload-"));
    assert.deepEqual(got, [...Array(20).keys()].map((i) => `reload-${i}`), "each once, in order");
    const left = await alice.page.evaluate(() => window.chatmqDemo.client.pendingSends().length);
    assert.equal(left, 0, "the outbox drained after the reload");
  } finally {
    await alice.context.close();
    await bob.context.close();
  }
});

test("infinite scroll back loads older messages", { skip }, async () => {
  const room = `web-scroll-${Date.now().toString(36)}`;
  const alice = await page("alice");
  const bob = await page("bob");
  try {
    await createAndJoin(alice.page, bob.page, room);
    await alice.page.evaluate(async (r) => {
      const c = window.chatmqDemo.client;
      await Promise.all([...Array(45).keys()].map((i) => c.send(r, `scroll-${i}`)));
    }, room);
    // a fresh page for bob opens the room with only its latest page
    await bob.page.reload();
    await bob.page.waitForFunction(() => document.getElementById("state").textContent === "online");
    await bob.page.click(`#rooms li[data-room="${room}"]`);
    await bob.page.waitForFunction(() =>
      [...document.querySelectorAll("#messages .body")].some((e) => e.textContent === "scroll-44"),
    );
    const first = await bodies(bob.page);
    assert.ok(!first.includes("scroll-0"), `only the latest page at first: ${first.length} shown`);
    for (let i = 0; i < 5 && !(await bodies(bob.page)).includes("scroll-0"); i++) {
      await bob.page.$eval("#messages", (el) => {
        el.scrollTop = 0;
        el.dispatchEvent(new Event("scroll"));
      });
      await bob.page.waitForTimeout(500);
    }
    const all = (await bodies(bob.page)).filter((b) => b.startsWith("scroll-"));
    assert.deepEqual(all, [...Array(45).keys()].map((i) => `scroll-${i}`), "every message once, in order");
  } finally {
    await alice.context.close();
    await bob.context.close();
  }
});
