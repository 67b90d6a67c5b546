// aymc-client.js: the JavaScript client of aymc-hub (docs/PROTOCOL.md,
// docs/CONSOLE.md). No dependencies; a browser loads it with <script> (it
// defines `window.Aymc`), node 20 with require() (node 20 needs
// --experimental-websocket for its WebSocket, or pass one in `WebSocket`).
//
// It keeps a WebSocket to the hub open: subscribes, tracks `seq`/`epoch` per
// channel, recovers with `since` after a reconnect, fills holes with
// `history` (a seq jump or MESSAGES_DROPPED), reconnects with backoff and
// jitter as the close-code table says, and refreshes the token in-band on
// TOKEN_EXPIRING through a callback. See aymc-client.d.ts for the API.
(function (root, factory) {
  "use strict";
  if (typeof module === "object" && module.exports) {
    module.exports = factory();
  } else {
    root.Aymc = factory();
  }
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  /** What the client does after each close code (PROTOCOL.md section 7). */
  const CLOSE_POLICY = {
    1000: "stop", // normal close: do not reconnect
    1001: "retry", // hub shutting down or restarting
    1002: "fatal", // protocol error: fix the client
    1006: "retry", // no Close frame: network, silent drop, refused upgrade
    1007: "fatal", // invalid UTF-8: fix the client
    1008: "pause", // rate-limit abuse: wait >= 30 s
    1009: "fatal", // message too big: fix the client
    1011: "retry",
    1012: "retry",
    1013: "retry",
    4001: "token", // token expired: get a new one, reconnect
    4008: "retry", // too slow: reconnect, recover with since
  };
  const PAUSE_MS = 30000;
  const HISTORY_MAX = 1000;

  function channelKind(channel) {
    const m = /^(server|user):[0-9a-fA-F-]{36}:(logs|metrics|status|notifications)$/.exec(channel);
    return m ? m[2] : null;
  }
  const hasHistory = (channel) => ["logs", "metrics"].includes(channelKind(channel));
  const canonical = (channel) => String(channel).toLowerCase();

  /** The `exp` claim of a JWT (unix s), or null; the signature is not checked. */
  function tokenExpiry(token) {
    try {
      const part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const json =
        typeof atob === "function" ? atob(part) : Buffer.from(part, "base64").toString("binary");
      const exp = JSON.parse(json).exp;
      return typeof exp === "number" ? exp : null;
    } catch (_) {
      return null;
    }
  }

  class AymcError extends Error {
    constructor(code, message, data) {
      super(message || code);
      this.code = code;
      this.data = data;
    }
  }

  class AymcClient {
    constructor(options) {
      const o = options || {};
      if (!o.url) throw new TypeError("AymcClient: `url` is required (ws://host/api/v1/ws)");
      this.url = o.url;
      this._token = o.token;
      this.refreshToken = o.refreshToken || null;
      this.tokenTransport = o.tokenTransport || "query";
      this.WebSocket = o.WebSocket || globalThis.WebSocket;
      if (typeof this.WebSocket !== "function") {
        throw new TypeError("AymcClient: no WebSocket (node 20: run with --experimental-websocket)");
      }
      this.backoff = Object.assign({ initialMs: 500, maxMs: 30000, jitter: 0.5 }, o.backoff);
      this.heartbeatMs = o.heartbeatMs === undefined ? 20000 : o.heartbeatMs;
      this.pongTimeoutMs = o.pongTimeoutMs || 10000;
      this.requestTimeoutMs = o.requestTimeoutMs || 15000;
      this.stableMs = o.stableMs || 5000;
      this.state = "idle";
      this.subscriptions = new Set(); // canonical channels wanted
      this.positions = new Map(); // channel -> {seq, epoch}
      this.filling = new Map(); // channel -> highest seq a fill is under way for
      this.listeners = new Map();
      this.pending = []; // requests awaiting their answer, in send order
      this.openWaiters = []; // subscribe() calls made while not connected
      this.ws = null;
      this.attempt = 0;
      this.timer = null;
      this.heartbeat = null;
      this.openedAt = 0;
      this.pauseUntil = 0; // no reconnect before (close 1008), not even when the network comes back
      if (typeof addEventListener === "function" && typeof window !== "undefined") {
        addEventListener("online", () => {
          if (this.state === "waiting" && Date.now() >= this.pauseUntil) this._reconnectNow();
        });
      }
    }

    // ---- events -----------------------------------------------------------

    on(event, fn) {
      if (!this.listeners.has(event)) this.listeners.set(event, new Set());
      this.listeners.get(event).add(fn);
      return () => this.off(event, fn);
    }

    off(event, fn) {
      const set = this.listeners.get(event);
      if (set) set.delete(fn);
    }

    _emit(event, payload) {
      const set = this.listeners.get(event);
      if (!set) return;
      for (const fn of [...set]) {
        try {
          fn(payload);
        } catch (e) {
          if (event !== "listener_error") this._emit("listener_error", { event, error: e });
        }
      }
    }

    _setState(state, info) {
      if (this.state === state) return;
      this.state = state;
      if (state === "closed") {
        const err = new AymcError("CLOSED", "the client closed");
        this.openWaiters.splice(0).forEach((w) => w.reject(err));
      }
      this._emit("state", Object.assign({ state }, info));
    }

    // ---- connection -------------------------------------------------------

    /** Opens the connection (and keeps it open until close()). */
    connect() {
      if (this.state === "connecting" || this.state === "open") return;
      clearTimeout(this.timer);
      this._open();
    }

    /** Closes with 1000 and stops reconnecting. */
    close() {
      clearTimeout(this.timer);
      this._setState("closed", { code: 1000 });
      if (this.ws) {
        const ws = this.ws;
        this._detach();
        try {
          ws.close(1000);
        } catch (_) {
          /* already closed */
        }
      }
      this._failPending(new AymcError("CLOSED", "client closed"));
    }

    async _currentToken() {
      const t = this._token;
      return typeof t === "function" ? await t() : t;
    }

    async _open() {
      this._setState("connecting", { attempt: this.attempt });
      let token;
      try {
        token = await this._currentToken();
      } catch (e) {
        this._emit("error", new AymcError("TOKEN", "the token callback failed: " + e.message));
      }
      if (this.state !== "connecting") return;
      if (!token) {
        this._setState("closed", { reason: "no token" });
        this._emit("auth_required", { reason: "no token" });
        return;
      }
      const exp = tokenExpiry(token);
      if (exp !== null && exp * 1000 < Date.now()) {
        // Not worth a refused upgrade: ask for a new one first.
        if (!(await this._refresh("expired", exp)) || this.state !== "connecting") return;
        token = this._token;
      }
      const ws = this._socket(token);
      if (!ws) return;
      this.ws = ws;
      ws.onopen = () => this._onOpen(ws);
      ws.onmessage = (ev) => this._onFrame(ws, ev.data);
      ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
      // A close follows an error, except in node 20's WebSocket after a
      // refused upgrade: there the error is the last word.
      ws.onerror = () => setTimeout(() => this._onClose(ws, 1006, "connection failed"), 100);
    }

    _socket(token) {
      let url = this.url;
      let init;
      if (this.tokenTransport === "query") {
        url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
      } else if (this.tokenTransport === "cookie") {
        // Same-origin pages only: a short-lived cookie scoped to the upgrade
        // path, removed once the socket is open or failed (docs/CONSOLE.md).
        const secure = typeof location !== "undefined" && location.protocol === "https:" ? "; Secure" : "";
        document.cookie = `token=${encodeURIComponent(token)}; Path=/api/v1/ws; Max-Age=30; SameSite=Strict${secure}`;
      } else if (this.tokenTransport === "header") {
        init = { headers: { Authorization: "Bearer " + token } }; // node's WebSocket only
      }
      try {
        return init ? new this.WebSocket(url, init) : new this.WebSocket(url);
      } catch (e) {
        this._setState("closed", { reason: e.message });
        this._emit("error", new AymcError("URL", e.message));
        return null;
      }
    }

    _clearCookie() {
      if (this.tokenTransport === "cookie" && typeof document !== "undefined") {
        document.cookie = "token=; Path=/api/v1/ws; Max-Age=0; SameSite=Strict";
      }
    }

    _detach() {
      const ws = this.ws;
      if (ws) ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      this.ws = null;
      clearInterval(this.heartbeat);
      this._clearCookie();
    }

    _onOpen(ws) {
      if (ws !== this.ws) return;
      this._clearCookie();
      this.openedAt = Date.now();
      const resumed = this.attempt > 0 || this.positions.size > 0;
      this._setState("open", { resumed });
      this._emit("open", { resumed });
      if (this.heartbeatMs > 0) {
        this.heartbeat = setInterval(() => this._beat(ws), this.heartbeatMs);
      }
      const waiters = this.openWaiters.splice(0);
      if (this.subscriptions.size === 0) return waiters.forEach((w) => w.resolve(this._noSubscription()));
      this._subscribe([...this.subscriptions]).then(
        (res) => waiters.forEach((w) => w.resolve(res)),
        (e) => waiters.forEach((w) => w.reject(e)),
      );
    }

    _noSubscription() {
      return { channels: [], recovered: {}, refused: {} };
    }

    /** Resolves once the connection is open (at once when it is). */
    ready() {
      if (this.state === "open") return Promise.resolve();
      return new Promise((resolve, reject) => {
        const offState = this.on("state", (s) => {
          if (s.state === "open" || s.state === "closed") {
            offState();
            if (s.state === "open") resolve();
            else reject(new AymcError("CLOSED", "the client closed: " + (s.reason || s.code)));
          }
        });
      });
    }

    /** An app-level ping; a missing pong means a dead socket (no FIN seen). */
    _beat(ws) {
      this._request({ kind: "ping", msg: { type: "ping" } }, this.pongTimeoutMs).catch(() => {
        if (ws === this.ws) this._drop(ws, 4000, "no pong");
      });
    }

    _drop(ws, code, reason) {
      try {
        ws.close();
      } catch (_) {
        /* closed */
      }
      this._onClose(ws, code, reason);
    }

    _onClose(ws, code, reason) {
      if (ws !== this.ws) return;
      const lived = this.openedAt && Date.now() - this.openedAt >= this.stableMs;
      this.openedAt = 0;
      this._detach();
      this._failPending(new AymcError("DISCONNECTED", `connection closed (${code})`));
      if (lived) this.attempt = 0;
      const policy = code === 4000 ? "retry" : CLOSE_POLICY[code] || "retry";
      this._emit("close", { code, reason: reason || "", policy });
      if (this.state === "closed") return;
      if (policy === "stop" || policy === "fatal") {
        this._setState("closed", { code, reason });
        if (policy === "fatal") this._emit("error", new AymcError("CLOSED_" + code, reason || "protocol error"));
        return;
      }
      if (policy === "token") {
        this._setState("waiting", { code, delayMs: 0 });
        const exp = typeof this._token === "string" ? tokenExpiry(this._token) : null;
        this._refresh("expired", exp).then((ok) => ok && this.state === "waiting" && this._schedule(0));
        return;
      }
      const delay = this._delay() + (policy === "pause" ? PAUSE_MS : 0);
      this.pauseUntil = policy === "pause" ? Date.now() + delay : 0;
      this._schedule(delay, code);
    }

    _delay() {
      const b = this.backoff;
      const base = Math.min(b.maxMs, b.initialMs * Math.pow(2, this.attempt));
      this.attempt += 1;
      return Math.round(base * (1 - b.jitter * Math.random()));
    }

    _schedule(delayMs, code) {
      clearTimeout(this.timer);
      this._setState("waiting", { code, delayMs });
      this._emit("reconnecting", { delayMs, attempt: this.attempt, code });
      this.timer = setTimeout(() => this.state === "waiting" && this._open(), delayMs);
    }

    _reconnectNow() {
      clearTimeout(this.timer);
      this._open();
    }

    /** Asks refreshToken for a new token; true when one came. */
    async _refresh(reason, expiresAt) {
      let fresh = null;
      if (this.refreshToken) {
        try {
          fresh = await this.refreshToken({ reason, expiresAt });
        } catch (e) {
          this._emit("error", new AymcError("TOKEN", "refreshToken failed: " + e.message));
        }
      }
      if (!fresh) {
        this._setState("closed", { reason: "token " + reason });
        this._emit("auth_required", { reason, expiresAt });
        return false;
      }
      this._token = fresh;
      return true;
    }

    // ---- requests -----------------------------------------------------------

    _send(msg) {
      if (!this.ws || this.state !== "open") throw new AymcError("NOT_CONNECTED", "not connected");
      this.ws.send(JSON.stringify(msg));
    }

    /** Sends `req.msg` and resolves with its answer (PROTOCOL.md 4). */
    _request(req, timeoutMs) {
      return new Promise((resolve, reject) => {
        try {
          this._send(req.msg);
        } catch (e) {
          reject(e);
          return;
        }
        req.resolve = resolve;
        req.reject = reject;
        req.errors = [];
        req.timer = setTimeout(() => {
          this.pending = this.pending.filter((r) => r !== req);
          reject(new AymcError("TIMEOUT", `no answer to ${req.kind} in time`));
        }, timeoutMs || this.requestTimeoutMs);
        this.pending.push(req);
      });
    }

    _settle(req, error, value) {
      clearTimeout(req.timer);
      this.pending = this.pending.filter((r) => r !== req);
      if (error) req.reject(error);
      else req.resolve(value);
    }

    _failPending(error) {
      for (const req of this.pending.splice(0)) {
        clearTimeout(req.timer);
        req.reject(error);
      }
    }

    /**
     * Subscribes to `channels` (kept across reconnects). Resolves with
     * {channels, recovered, refused}.
     */
    subscribe(channels) {
      const list = channels.map(canonical);
      for (const c of list) this.subscriptions.add(c);
      if (this.state === "closed") return Promise.reject(new AymcError("CLOSED", "the client is closed"));
      if (this.state !== "open") return new Promise((resolve, reject) => this.openWaiters.push({ resolve, reject }));
      return this._subscribe(list);
    }

    _subscribe(channels) {
      const since = {};
      for (const c of channels) {
        const pos = this.positions.get(c);
        if (pos && channelKind(c) === "logs") since[c] = { seq: pos.seq, epoch: pos.epoch };
      }
      const data = { channels };
      if (Object.keys(since).length) data.since = since;
      return this._request({ kind: "subscribe", channels, msg: { type: "subscribe", data } }).then((res) => {
        for (const [channel, ok] of Object.entries(res.recovered)) {
          if (!ok) this._unrecovered(channel);
        }
        return res;
      });
    }

    /** Unsubscribes and forgets the channels' positions. */
    unsubscribe(channels) {
      const list = channels.map(canonical);
      for (const c of list) {
        this.subscriptions.delete(c);
        this.positions.delete(c);
        this.filling.delete(c);
      }
      if (this.state !== "open") return Promise.resolve({ channels: [] });
      const msg = { type: "unsubscribe", data: { channels: list } };
      return this._request({ kind: "unsubscribe", channels: list, msg });
    }

    /**
     * One page of a logs or metrics channel's kept messages, oldest first:
     * {messages, complete}. `beforeSeq` pages back.
     */
    history(channel, opts) {
      const o = opts || {};
      const data = { limit: Math.max(1, Math.min(HISTORY_MAX, o.limit || 100)) };
      if (o.beforeSeq !== undefined && o.beforeSeq !== null) data.before_seq = o.beforeSeq;
      const c = canonical(channel);
      return this._request({ kind: "history", channels: [c], msg: { type: "history", channel: c, data } });
    }

    /** Sends an in-band `auth` with `token`; resolves with {expiresAt, revoked}. */
    auth(token) {
      return this._request({ kind: "auth", msg: { type: "auth", data: { token } } }).then((res) => {
        this._token = token;
        for (const c of res.revoked) {
          this.subscriptions.delete(c);
          this.positions.delete(c);
        }
        return res;
      });
    }

    /** Where the client stands on `channel`: {seq, epoch} or undefined. */
    position(channel) {
      return this.positions.get(canonical(channel));
    }

    /**
     * Sets the position of a channel, e.g. from the last message of a
     * history page, so the next subscribe asks `since` it and drops copies.
     */
    setPosition(channel, seq, epoch) {
      this.positions.set(canonical(channel), { seq, epoch });
    }

    // ---- incoming ----------------------------------------------------------

    _onFrame(ws, text) {
      if (ws !== this.ws) return;
      let msg;
      try {
        msg = JSON.parse(text);
      } catch (_) {
        return;
      }
      if (!msg || typeof msg !== "object") return;
      const data = msg.data || {};
      switch (msg.type) {
        case "log_entry":
        case "metrics":
        case "server_status":
          this._channelMessage(msg);
          return;
        case "notification":
          if (msg.channel) this._channelMessage(msg);
          else this._control(data);
          return;
        case "alert":
          this._emit("alert", msg);
          return;
        case "history":
          this._answer("history", (r) => r.channels[0] === msg.channel, {
            messages: data.messages || [],
            complete: !!data.complete,
          });
          return;
        case "pong":
          this._answer("ping", () => true, data.timestamp);
          return;
        case "error":
          this._error(data);
          return;
        default:
          return;
      }
    }

    _answer(kind, match, value, error) {
      const req = this.pending.find((r) => r.kind === kind && match(r));
      if (req) this._settle(req, error, value);
    }

    _control(data) {
      const d = data.data;
      switch (data.code) {
        case "SUBSCRIBED": {
          const req = this.pending.find((r) => r.kind === "subscribe");
          const refused = {};
          if (req) for (const e of req.errors) refused[e.code] = e.data || [];
          if (req) this._settle(req, null, { channels: d || [], recovered: data.recovered || {}, refused });
          return;
        }
        case "UNSUBSCRIBED":
          this._answer("unsubscribe", () => true, { channels: d || [] });
          return;
        case "AUTHENTICATED":
          this._answer("auth", () => true, { expiresAt: d.expires_at, revoked: d.revoked || [] });
          if (d.revoked && d.revoked.length) this._emit("revoked", { channels: d.revoked });
          return;
        case "TOKEN_EXPIRING":
          this._emit("token_expiring", { expiresAt: d.expires_at });
          this._expiring(d.expires_at);
          return;
        default:
          return;
      }
    }

    async _expiring(expiresAt) {
      if (!this.refreshToken) return;
      let fresh = null;
      try {
        fresh = await this.refreshToken({ reason: "expiring", expiresAt });
      } catch (e) {
        this._emit("error", new AymcError("TOKEN", "refreshToken failed: " + e.message));
      }
      if (!fresh || this.state !== "open") return;
      this.auth(fresh).then(
        (res) => this._emit("token_refreshed", res),
        (e) => this._emit("error", e),
      );
    }

    _error(data) {
      const code = data.code;
      if (code === "MESSAGES_DROPPED") {
        const d = data.data || {};
        this._emit("dropped", d);
        if (d.channel && typeof d.to_seq === "number") this._hole(canonical(d.channel), d.to_seq);
        return;
      }
      if (code === "RATE_LIMITED") {
        this._emit("error", new AymcError(code, data.message));
        return;
      }
      const listed = Array.isArray(data.data) ? data.data.map(canonical) : [];
      const err = new AymcError(code, data.message, data.data);
      if (code === "UNAUTHORIZED") return this._answer("auth", () => true, null, err);
      // A refusal of some of a subscribe's channels comes before its SUBSCRIBED.
      const sub = this.pending.find((r) => r.kind === "subscribe" && listed.some((c) => r.channels.includes(c)));
      if (sub) {
        sub.errors.push({ code, data: data.data });
        for (const c of listed) this.subscriptions.delete(c);
        return;
      }
      const req = this.pending.find(
        (r) => (r.kind === "history" || r.kind === "unsubscribe") && listed.some((c) => r.channels.includes(c)),
      );
      if (req && req.kind === "history") return this._settle(req, err);
      if (!req) this._emit("error", err);
    }

    /** A channel message: drop copies, spot holes, keep the position. */
    _channelMessage(msg) {
      const channel = canonical(msg.channel);
      if (!this.subscriptions.has(channel)) return; // sent before an unsubscribe (or revocation) took effect
      const seq = msg.seq;
      if (typeof seq !== "number") return this._deliver(msg);
      const pos = this.positions.get(channel);
      if (pos && pos.epoch !== msg.epoch) {
        this.filling.delete(channel);
        this._emit("reset", { channel, oldEpoch: pos.epoch, epoch: msg.epoch, seq });
      } else if (pos && seq <= pos.seq) {
        return; // a copy (replay overlap, latest value already seen)
      } else if (pos && seq > pos.seq + 1) {
        this._hole(channel, seq - 1);
      }
      this.positions.set(channel, { seq, epoch: msg.epoch });
      this._deliver(msg);
    }

    _deliver(msg) {
      this._emit("message", msg);
      this._emit(msg.type, msg);
    }

    /**
     * Messages after the position up to `toSeq` are missing: say so
     * (`gap`), then fetch them with `history` (`fill`), once per range.
     */
    _hole(channel, toSeq) {
      const pos = this.positions.get(channel);
      if (!pos) return;
      const from = Math.max(pos.seq, this.filling.get(channel) || 0) + 1;
      if (toSeq < from) return;
      this.filling.set(channel, toSeq);
      const gap = { channel, epoch: pos.epoch, fromSeq: from, toSeq };
      this._emit("gap", gap);
      // Live messages go on past the hole; copies below it are dropped.
      if (pos.seq < toSeq) this.positions.set(channel, { seq: toSeq, epoch: pos.epoch });
      this._fill(gap);
    }

    async _fill(gap) {
      const messages = [];
      let before = gap.toSeq + 1;
      let complete = false;
      while (hasHistory(gap.channel) && !complete) {
        try {
          while (before > gap.fromSeq) {
            const limit = Math.min(HISTORY_MAX, before - gap.fromSeq);
            const page = await this.history(gap.channel, { limit, beforeSeq: before });
            const got = page.messages.filter((m) => m.epoch === gap.epoch && m.seq >= gap.fromSeq);
            messages.unshift(...got);
            if (!got.length || page.complete) break;
            before = got[0].seq;
          }
          complete = true;
        } catch (e) {
          // Cut by a reconnect: `since` resumes after the hole, so only
          // history can bring its lines; ask again once the socket is back.
          if (!(await this._refillable(gap, e))) {
            this._emit("error", e);
            break;
          }
        }
      }
      const missing = gap.toSeq - gap.fromSeq + 1 - messages.length;
      this._emit("fill", Object.assign({}, gap, { messages, missing, complete }));
    }

    /** After a failed fill request: true once reconnected to the same epoch. */
    async _refillable(gap, error) {
      if (this.state === "closed" || (error.code !== "DISCONNECTED" && error.code !== "NOT_CONNECTED")) return false;
      try {
        await this.ready();
      } catch (_) {
        return false; // closed for good
      }
      const pos = this.positions.get(gap.channel);
      return !!pos && pos.epoch === gap.epoch;
    }

    /** `since` could not be honoured: fetch what is kept after the position. */
    _unrecovered(channel) {
      const pos = this.positions.get(channel);
      if (!pos) return;
      this.history(channel, { limit: 1 }).then(
        (page) => {
          const last = page.messages[page.messages.length - 1];
          if (this.positions.get(channel) !== pos) return; // live messages said it first
          if (!last || last.epoch !== pos.epoch) {
            // A new epoch: the old position means nothing any more.
            this.positions.delete(channel);
            this.filling.delete(channel);
            this._emit("reset", { channel, oldEpoch: pos.epoch, epoch: last ? last.epoch : null, seq: null });
          } else if (last.seq > pos.seq) {
            this._hole(channel, last.seq);
          }
        },
        (e) => this._emit("error", e),
      );
    }
  }

  return { AymcClient, AymcError, CLOSE_POLICY, tokenExpiry, channelKind };
});
