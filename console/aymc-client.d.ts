// Types of aymc-client.js, the JavaScript client of aymc-hub.
// The wire format is docs/PROTOCOL.md; the client is described in
// docs/CONSOLE.md. In a browser the script defines `window.Aymc`; in node,
// require("aymc-client.js") returns the same object.

export type Channel = string; // server:{uuid}:logs|metrics|status, user:{uuid}:notifications

export interface Envelope<T extends string, D> {
  type: T;
  channel?: Channel;
  data: D;
  timestamp: string;
  /** Per-channel counter (log_entry, metrics, server_status, user notification). */
  seq?: number;
  /** Opaque; a new one means the numbering started over. */
  epoch?: string;
}

export interface LogEntry {
  server_id: string;
  timestamp: string;
  level: "DEBUG" | "INFO" | "WARN" | "ERROR";
  source: string;
  message: string;
  exception?: string;
}

export interface Metrics {
  server_id: string;
  timestamp: string;
  cpu_percent: number;
  memory_used: number;
  memory_total: number;
  memory_percent: number;
  players_online: number;
  max_players: number;
  /** Absent when not measured. */
  tps?: number;
  uptime_seconds: number;
}

export type Status = "unknown" | "starting" | "running" | "stopping" | "stopped" | "crashed" | "unreachable";

export interface ServerStatus {
  server_id: string;
  server_name: string;
  old_status: Status;
  new_status: Status;
  timestamp: string;
  reason?: string;
}

export interface UserNotification {
  type: "info" | "success" | "warning" | "error";
  title: string;
  message: string;
  link?: string;
}

export interface Alert {
  id: string;
  severity: "info" | "warning" | "error" | "critical";
  title: string;
  message: string;
  source: "server" | "agent" | "system";
  source_id?: string;
  timestamp: string;
  data?: Record<string, unknown>;
}

export type LogMessage = Envelope<"log_entry", LogEntry>;
export type MetricsMessage = Envelope<"metrics", Metrics>;
export type StatusMessage = Envelope<"server_status", ServerStatus>;
export type NotificationMessage = Envelope<"notification", UserNotification>;
export type AlertMessage = Envelope<"alert", Alert>;
export type ChannelMessage = LogMessage | MetricsMessage | StatusMessage | NotificationMessage;

export type State = "idle" | "connecting" | "open" | "waiting" | "closed";

/** What the client does after a close code: see CLOSE_POLICY. */
export type ClosePolicy = "retry" | "pause" | "token" | "stop" | "fatal";

export interface TokenRequest {
  /** "expiring": TOKEN_EXPIRING came (the client then sends `auth`); "expired": closed with 4001, or the token's exp has passed (the client reconnects). */
  reason: "expiring" | "expired";
  /** The current token's exp, unix seconds, when known. */
  expiresAt?: number | null;
}

export interface ClientOptions {
  /** ws://host/api/v1/ws or wss://... */
  url: string;
  /** The JWT, or a function giving it at each connect. */
  token: string | (() => string | null | Promise<string | null>);
  /** Asked for a new token; return null when there is none (the client then stops with `auth_required`). */
  refreshToken?: (req: TokenRequest) => string | null | Promise<string | null>;
  /**
   * How the token reaches the hub at the upgrade: "query" (default; works
   * from any page, but is in the URL), "cookie" (same-origin pages only: a
   * short-lived `token` cookie scoped to /api/v1/ws), "header" (node only:
   * `Authorization: Bearer`).
   */
  tokenTransport?: "query" | "cookie" | "header";
  /** A WebSocket constructor (default: globalThis.WebSocket). */
  WebSocket?: unknown;
  /** Reconnection delay: min(maxMs, initialMs * 2^attempt), minus up to `jitter` of it at random. Defaults 500, 30000, 0.5. */
  backoff?: { initialMs?: number; maxMs?: number; jitter?: number };
  /** App-level `ping` every this many ms (0: never); default 20000. */
  heartbeatMs?: number;
  /** A `ping` unanswered this long closes the socket and reconnects; default 10000. */
  pongTimeoutMs?: number;
  /** How long a request (subscribe, history, auth) may wait for its answer; default 15000. */
  requestTimeoutMs?: number;
  /** A connection open this long resets the backoff; default 5000. */
  stableMs?: number;
}

export interface SubscribeResult {
  /** Every requested channel subscribed after the request. */
  channels: Channel[];
  /** Per `since` entry used: were the missed messages replayed? */
  recovered: Record<Channel, boolean>;
  /** Refusals by code (FORBIDDEN, INVALID_CHANNEL, TOO_MANY_SUBSCRIPTIONS). */
  refused: Record<string, Channel[]>;
}

export interface HistoryPage<M = ChannelMessage> {
  /** Oldest first. */
  messages: M[];
  /** True when the first message is the oldest the channel had in this epoch. */
  complete: boolean;
}

export interface Gap {
  channel: Channel;
  epoch: string;
  /** The missing seqs, both included. */
  fromSeq: number;
  toSeq: number;
}

export interface Fill extends Gap {
  /** The missing messages that history still had, oldest first. */
  messages: ChannelMessage[];
  /** How many of the gap could not be had (evicted, or a channel without history). */
  missing: number;
  /** False when a history request failed. */
  complete: boolean;
}

export interface ClientEvents {
  state: { state: State; code?: number; reason?: string; delayMs?: number; attempt?: number; resumed?: boolean };
  open: { resumed: boolean };
  close: { code: number; reason: string; policy: ClosePolicy };
  reconnecting: { delayMs: number; attempt: number; code?: number };
  /** Every channel message that arrives live or replayed, once per seq; the messages of a hole come in `fill` instead. */
  message: ChannelMessage;
  log_entry: LogMessage;
  metrics: MetricsMessage;
  server_status: StatusMessage;
  notification: NotificationMessage;
  alert: AlertMessage;
  /** Messages of a channel are missing (a seq jump, MESSAGES_DROPPED, a `since` not honoured); a fill follows. */
  gap: Gap;
  fill: Fill;
  /** The channel's epoch changed: the old position means nothing (epoch null: no message kept yet). */
  reset: { channel: Channel; oldEpoch: string; epoch: string | null; seq: number | null };
  /** The hub's MESSAGES_DROPPED details. */
  dropped: { channel: Channel | null; dropped: number; from_seq?: number; to_seq?: number };
  token_expiring: { expiresAt: number };
  token_refreshed: { expiresAt: number; revoked: Channel[] };
  revoked: { channels: Channel[] };
  /** `reason` "no token" when the `token` option gave none at connect. */
  auth_required: { reason: TokenRequest["reason"] | "no token"; expiresAt?: number | null };
  error: AymcError;
  listener_error: { event: string; error: unknown };
}

export declare class AymcError extends Error {
  constructor(code: string, message?: string, data?: unknown);
  /** A PROTOCOL.md error code, or TIMEOUT, DISCONNECTED, CLOSED, NOT_CONNECTED, TOKEN, URL, CLOSED_<code>. */
  code: string;
  data?: unknown;
}

export declare class AymcClient {
  constructor(options: ClientOptions);
  readonly state: State;
  connect(): void;
  /** Closes with 1000; the client does not reconnect. */
  close(): void;
  /** Resolves when the connection is open; rejects if the client closes first. */
  ready(): Promise<void>;
  on<E extends keyof ClientEvents>(event: E, fn: (payload: ClientEvents[E]) => void): () => void;
  off<E extends keyof ClientEvents>(event: E, fn: (payload: ClientEvents[E]) => void): void;
  /** Kept across reconnects; logs channels resume with `since`. Waits for the connection when it is not open. */
  subscribe(channels: Channel[]): Promise<SubscribeResult>;
  unsubscribe(channels: Channel[]): Promise<{ channels: Channel[] }>;
  /** One page of a logs or metrics channel (limit 1..1000, default 100). */
  history(channel: Channel, opts?: { limit?: number; beforeSeq?: number }): Promise<HistoryPage>;
  /** An in-band token refresh (same user). */
  auth(token: string): Promise<{ expiresAt: number; revoked: Channel[] }>;
  position(channel: Channel): { seq: number; epoch: string } | undefined;
  /** E.g. the last message of a history page: the next subscribe asks `since` it. */
  setPosition(channel: Channel, seq: number, epoch: string): void;
}

/** Close code -> what the client does (PROTOCOL.md section 7); codes not listed: "retry". */
export declare const CLOSE_POLICY: Record<number, ClosePolicy>;
/** The `exp` of a JWT (unix s), unverified; null when unreadable. */
export declare function tokenExpiry(token: string): number | null;
/** "logs" | "metrics" | "status" | "notifications", or null for a malformed channel. */
export declare function channelKind(channel: string): string | null;
