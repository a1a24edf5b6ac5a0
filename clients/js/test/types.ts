// Compiled (not run) by `tsc -p test` in tests/tests/js_client.rs: the
// types in src/index.d.ts describe how an app uses the client.
import { connect, ChatError, LocalStorage, MemoryStorage, type RoomEvent, type ClientOptions } from "chatmq-client";

const options: ClientOptions = { username: "alice", password: "pw", storage: new MemoryStorage() };
const client = connect("ws://localhost:8083/mqtt", options);
const off = client.on("message", ({ room, event }: { room: string; event: RoomEvent }) => {
  const text: string | undefined = event.body;
  console.log(room, event.seq + 1, text);
});
off();
client.on("state", ({ state }) => state === "online");
client.on("error", ({ error }) => error instanceof ChatError && error.code === "not_member");

async function app(): Promise<number> {
  await client.ready();
  const created = await client.createRoom({ room: "r1", kind: "group", members: ["bob"], title: "R1" });
  const id: string = created.room.id;
  const sending = client.send(id, "hello", { meta: { lang: "en" } });
  const msgId: string = sending.msgId;
  const { seq } = await sending;
  await client.react(id, seq, "👍");
  const page = await client.history(id, { before: seq, limit: 20 });
  const unread: number = client.unread(id);
  const marks = await client.read(id, seq);
  client.typing(id);
  await client.watchPresence("bob");
  const rooms = await client.listRooms();
  const blocked: boolean = (await client.block("mallory")).blocked;
  const blockedUsers: string[] = (await client.blocks()).users;
  client.on("truncated", ({ room: r, from }) => r.length + (from ?? 0));
  void (page.truncated === true || blocked || blockedUsers.length);
  void new LocalStorage();
  return page.events.length + unread + marks.read + rooms.rooms.length + msgId.length;
}
void app;
