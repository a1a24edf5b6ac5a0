// Types of chatmq-client (src/index.js). The wire types follow PROTOCOL.md
// and the server's `schema` crate.

import type { IClientOptions, MqttClient } from "mqtt";

/** PROTOCOL.md's error codes, plus the client's own `offline` and `timeout`. */
export type ErrorCode =
  | "bad_request"
  | "unauthorized"
  | "forbidden"
  | "not_member"
  | "banned"
  | "muted"
  | "rate_limited"
  | "too_large"
  | "not_found"
  | "conflict"
  | "unavailable"
  | "offline"
  | "timeout";

export class ChatError extends Error {
  readonly code: ErrorCode;
  readonly detail: string;
  constructor(code: ErrorCode, message: string);
}

/** Where cursors and the outbox are kept (synchronous, string values). */
export interface StorageAdapter {
  get(key: string): string | null;
  set(key: string, value: string): void;
  remove(key: string): void;
}

export class MemoryStorage implements StorageAdapter {
  get(key: string): string | null;
  set(key: string, value: string): void;
  remove(key: string): void;
}

export class LocalStorage implements StorageAdapter {
  constructor(storage?: Storage);
  get(key: string): string | null;
  set(key: string, value: string): void;
  remove(key: string): void;
}

export type EventType = "message" | "edit" | "delete" | "reaction" | "member";

/** A room event (`{prefix}/rooms/{room}/events`, `history`, `sync`). */
export interface RoomEvent {
  room: string;
  seq: number;
  ts: number;
  from: string;
  msg_id?: string;
  type: EventType;
  body?: string;
  reply_to?: number;
  target?: number;
  emoji?: string;
  remove?: boolean;
  deleted?: boolean;
  /** readable view: edited, reactions added up, reply count */
  edited?: boolean;
  reactions?: { emoji: string; count: number; mine: boolean }[];
  replies?: number;
  action?: "join" | "leave" | "invite" | "kick" | "ban" | "unban" | "mute" | "role";
  user?: string;
  meta?: Record<string, unknown>;
  [key: string]: unknown;
}

export type RoomKind = "direct" | "group" | "channel";

export interface RoomInfo {
  id: string;
  kind: RoomKind;
  title?: string | null;
  [key: string]: unknown;
}

export interface HistoryResult {
  room: string;
  events: RoomEvent[];
  head: number;
  has_more: boolean;
  /** Retention removed older events (or, for `after`, events after the cursor). */
  truncated?: boolean;
}

export interface ListEntry {
  room: string;
  kind: RoomKind | null;
  title: string | null;
  state: "joined" | "invited" | "left" | "banned";
  role: string;
  head: number;
  read: number;
  unread: number;
  last: RoomEvent | null;
}

export interface ListResult {
  rooms: ListEntry[];
  has_more: boolean;
  next?: string;
}

export interface MemberEntry {
  user: string;
  role: string;
  state: string;
  muted: boolean;
  read: number;
  delivered: number;
}

export interface MarkerResult {
  read: number;
  delivered: number;
  moved: boolean;
}

export interface SeqResult {
  seq: number;
  already?: boolean;
}

export interface Sent {
  seq: number;
  msg_id: string;
}

/** A send: resolves once its echo came back; `msgId` is known at once. */
export interface SendPromise extends Promise<Sent> {
  msgId: string;
}

export interface RoomSummary {
  room: string;
  title: string;
  kind: RoomKind | null;
  unread: number;
  cursor: number;
}

export type ConnectionState = "idle" | "connecting" | "syncing" | "online" | "offline" | "closed";

export interface InboxNotice {
  type: "error" | "invited" | "kick" | "ban" | "unban";
  room: string;
  [key: string]: unknown;
}

export interface ClientEvents {
  state: { state: ConnectionState };
  event: { room: string; event: RoomEvent };
  message: { room: string; event: RoomEvent };
  typing: { room: string; user: string; typing: boolean };
  receipt: { room: string; user: string; read: number; delivered: number };
  presence: { user: string; online: boolean; ts: number };
  unread: { room: string; unread: number };
  rooms: { rooms: RoomSummary[] };
  inbox: { notice: InboxNotice };
  sent: { room: string; msg_id: string; seq: number };
  outbox: { pending: { room: string; msg_id: string; payload: Record<string, unknown> }[] };
  error: { error: Error | ChatError; room?: string; msg_id?: string };
  /** Retention removed events after the cursor; the room goes on from `from`. */
  truncated: { room: string; from?: number };
}

export interface ClientOptions {
  username: string;
  /** A password or a JWT. */
  password?: string;
  /** Default: `{username}-web-{random}`. */
  clientId?: string;
  /** The server's topic prefix, default `chat`. */
  prefix?: string;
  /** Default: MemoryStorage; in the browser use LocalStorage to survive reloads. */
  storage?: StorageAdapter;
  /** The MQTT.js module to use (default: the `mqtt` import). */
  mqtt?: { connect(url: string, opts: IClientOptions): MqttClient };
  /** A send without its echo is sent again after this long, ms (3000). */
  retryMs?: number;
  requestTimeoutMs?: number;
  typingThrottleMs?: number;
  /** Events loaded when a room is opened (50). */
  historyPage?: number;
  mqttOptions?: IClientOptions;
}

export class ChatClient {
  constructor(url: string, options: ClientOptions);
  readonly user: string;
  readonly clientId: string;
  readonly state: ConnectionState;
  start(): this;
  /** `force`: drop the connection at once (as a reload does). */
  close(force?: boolean): Promise<void>;
  ready(): Promise<void>;
  on<K extends keyof ClientEvents>(type: K, fn: (detail: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(type: K, fn: (detail: ClientEvents[K]) => void): void;

  request<T = unknown>(method: string, params?: Record<string, unknown>): Promise<T>;
  createRoom(opts: { room?: string; kind?: RoomKind; members?: string[]; title?: string }): Promise<{
    room: RoomInfo;
    created: boolean;
  }>;
  join(room: string): Promise<SeqResult>;
  leave(room: string): Promise<SeqResult>;
  invite(room: string, user: string): Promise<SeqResult>;
  kick(room: string, user: string): Promise<SeqResult>;
  ban(room: string, user: string): Promise<SeqResult>;
  block(user: string): Promise<{ user: string; blocked: boolean }>;
  unblock(user: string): Promise<{ user: string; blocked: boolean }>;
  blocks(): Promise<{ users: string[] }>;
  listRooms(params?: { after?: string; limit?: number }): Promise<ListResult>;
  members(room: string, params?: { after?: string; limit?: number }): Promise<{ members: MemberEntry[]; has_more: boolean }>;
  refreshRooms(): Promise<ListEntry[]>;
  roomList(): RoomSummary[];
  unread(room: string): number;
  history(
    room: string,
    page?: { before?: number; after?: number; limit?: number; view?: "events" | "readable" },
  ): Promise<HistoryResult & { folded_to?: number }>;
  thread(
    room: string,
    seq: number,
    page?: { after?: number; limit?: number },
  ): Promise<{ room: string; root: RoomEvent; replies: RoomEvent[]; has_more: boolean; scanned_to: number }>;

  send(room: string, body: string, opts?: { replyTo?: number; meta?: Record<string, unknown>; msgId?: string }): SendPromise;
  edit(room: string, target: number, body: string): SendPromise;
  remove(room: string, target: number): SendPromise;
  react(room: string, target: number, emoji: string, opts?: { remove?: boolean }): SendPromise;
  pendingSends(room?: string): Array<Record<string, unknown> & { room: string; msg_id: string }>;

  typing(room: string, typing?: boolean): boolean;
  read(room: string, seq: number): Promise<MarkerResult>;
  delivered(room: string, seq: number): Promise<MarkerResult>;
  watchPresence(user: string): Promise<void>;
}

export function connect(url: string, options: ClientOptions): ChatClient;

declare const _default: {
  connect: typeof connect;
  ChatClient: typeof ChatClient;
  ChatError: typeof ChatError;
  MemoryStorage: typeof MemoryStorage;
  LocalStorage: typeof LocalStorage;
};
export default _default;
