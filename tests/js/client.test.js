// Unit tests of console/aymc-client.js against a real aymc-hub (the debug
// binary in $CARGO_TARGET_DIR/debug): real sockets, real HS256 JWTs, lines
// published through the hub's HTTP publish API.
// Run: node --experimental-websocket --test tests/js/client.test.js
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const { spawnSync } = require("node:child_process");
const path = require("node:path");
const { AymcClient, tokenExpiry } = require("../../console/aymc-client.js");
const { Hub, OWNER, SERVER, sign, sleep, userToken, waitFor } = require("./support.js");

const LOGS = `server:${SERVER}:logs`;
const METRICS = `server:${SERVER}:metrics`;
const OTHER = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";

function client(t, hub, opts) {
  const c = new AymcClient(
    Object.assign({ url: hub.ws, token: userToken(OWNER, [SERVER]), backoff: { initialMs: 100, maxMs: 1000 } }, opts),
  );
  c.seen = []; // every log line delivered, live or filled: [seq, message]
  c.events = [];
  c.on("log_entry", (m) => c.seen.push([m.seq, m.data.message]));
  c.on("fill", (f) => {
    c.events.push(["fill", f.fromSeq, f.toSeq, f.missing]);
    for (const m of f.messages) c.seen.push([m.seq, m.data.message]);
  });
  for (const ev of ["close", "reconnecting", "gap", "reset", "dropped", "token_expiring", "auth_required"]) {
    c.on(ev, (e) => c.events.push([ev, e]));
  }
  t.after(() => c.close()); // closed when the test ends, whatever happens
  return c;
}

/** The seqs seen, sorted; asserts none twice. */
function seqs(c) {
  const list = c.seen.map(([s]) => s).sort((a, b) => a - b);
  assert.equal(new Set(list).size, list.length, `a line was delivered twice: ${list}`);
  return list;
}

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

async function publishLines(hub, from, to) {
  for (let i = from; i <= to; i++) await hub.publishLog(SERVER, `line ${i}`);
}

test("connect, subscribe and receive typed, numbered messages", async (t) => {
  const hub = await new Hub().start();
  t.after(() => hub.stop());
  const c = client(t, hub);
  c.connect();
  const res = await c.subscribe([LOGS, `server:${OTHER}:logs`]);
  assert.deepEqual(res.channels, [LOGS]);
  assert.deepEqual(res.refused, { FORBIDDEN: [`server:${OTHER}:logs`] });
  await publishLines(hub, 1, 3);
  await waitFor("3 lines", () => c.seen.length === 3);
  assert.deepEqual(c.seen, [
    [1, "line 1"],
    [2, "line 2"],
    [3, "line 3"],
  ]);
  assert.equal(c.position(LOGS).seq, 3);
  const un = await c.unsubscribe([LOGS]);
  assert.deepEqual(un.channels, [LOGS]);
  assert.equal(c.position(LOGS), undefined);
});

test("history pages back, and setPosition + subscribe continues with no hole and no double", async (t) => {
  const hub = await new Hub().start();
  t.after(() => hub.stop());
  await publishLines(hub, 1, 5);
  for (let p = 1; p <= 3; p++) await hub.publishMetrics(SERVER, p);
  const c = client(t, hub);
  c.connect();
  await c.ready();
  const page = await c.history(LOGS, { limit: 3 });
  assert.deepEqual(
    page.messages.map((m) => m.data.message),
    ["line 3", "line 4", "line 5"],
  );
  assert.equal(page.complete, false);
  const older = await c.history(LOGS, { beforeSeq: 3 });
  assert.deepEqual(
    older.messages.map((m) => m.seq),
    [1, 2],
  );
  assert.equal(older.complete, true);
  const chart = await c.history(METRICS);
  assert.deepEqual(
    chart.messages.map((m) => m.data.players_online),
    [1, 2, 3],
  );

  // The console's start: a page, its last seq as the position, then live.
  const last = page.messages[2];
  c.setPosition(LOGS, last.seq - 2, last.epoch); // pretend line 4 and 5 were not seen
  c.setPosition(METRICS, chart.messages[2].seq, chart.messages[2].epoch);
  let latest = 0;
  c.on("metrics", () => latest++);
  const res = await c.subscribe([LOGS, METRICS]);
  assert.deepEqual(res.recovered, { [LOGS]: true });
  await publishLines(hub, 6, 7);
  await waitFor("lines 4 to 7", () => c.seen.length === 4);
  assert.deepEqual(seqs(c), [4, 5, 6, 7]);
  assert.equal(latest, 0, "the latest metrics value was already seen: dropped as a copy");
  await expectHistoryError(c);
});

async function expectHistoryError(c) {
  await assert.rejects(c.history(`server:${OTHER}:logs`), { code: "FORBIDDEN" });
  await assert.rejects(c.history(`server:${SERVER}:status`), { code: "INVALID_MESSAGE" });
}

test("a line in flight when unsubscribe() is called is not delivered and leaves no position behind", async (t) => {
  const hub = await new Hub().start();
  t.after(() => hub.stop());
  // Frames are held while `hold` is set, as on a busy page: the hub has sent
  // them, the client has not read them yet.
  const held = [];
  let hold = false;
  class HeldWebSocket extends WebSocket {
    set onmessage(fn) {
      super.onmessage = fn && ((ev) => (hold ? held.push(() => fn(ev)) : fn(ev)));
    }
  }
  const c = client(t, hub, { WebSocket: HeldWebSocket });
  c.connect();
  await c.subscribe([LOGS]);
  await publishLines(hub, 1, 1);
  await waitFor("line 1", () => c.seen.length === 1);
  hold = true;
  await publishLines(hub, 2, 2);
  await waitFor("line 2 held", () => held.length === 1);
  const done = c.unsubscribe([LOGS]);
  await waitFor("UNSUBSCRIBED held", () => held.length === 2);
  hold = false;
  held.splice(0).forEach((deliver) => deliver());
  assert.deepEqual(await done, { channels: [LOGS] });
  assert.deepEqual(seqs(c), [1], "a line after unsubscribe() was delivered");
  assert.equal(c.position(LOGS), undefined, "the position unsubscribe() forgot came back");
});

test("a hub restart (close 1001) is recovered with since: nothing missing, nothing doubled", async (t) => {
  const hub = new Hub();
  hub.extra = `[history]\ndb_path = "${path.join(hub.dir, "history.db")}"\n`;
  await hub.start();
  t.after(() => hub.stop());
  const c = client(t, hub, { backoff: { initialMs: 2000, maxMs: 4000, jitter: 0 } });
  c.connect();
  await c.subscribe([LOGS]);
  await publishLines(hub, 1, 5);
  await waitFor("5 lines", () => c.seen.length === 5);

  await hub.restart();
  // Published while the client waits out its backoff: replayed by `since`.
  await publishLines(hub, 6, 10);
  const closes = c.events.filter(([e]) => e === "close");
  assert.equal(closes[0][1].code, 1001);
  assert.equal(closes[0][1].policy, "retry");
  await waitFor("10 lines", () => c.seen.length >= 10, 15000);
  await publishLines(hub, 11, 12);
  await waitFor("12 lines", () => c.seen.length >= 12);
  await sleep(200);
  assert.deepEqual(seqs(c), range(1, 12));
  assert.deepEqual(
    c.seen.map(([, m]) => m),
    range(1, 12).map((i) => `line ${i}`),
    "in order",
  );
  assert.ok(!c.events.some(([e]) => e === "gap" || e === "reset"), JSON.stringify(c.events));
});

test("a fill cut by a hub restart asks again once reconnected: the hole's lines still arrive", async (t) => {
  const hub = new Hub();
  hub.extra = `[history]\ndb_path = "${path.join(hub.dir, "history.db")}"\n`;
  await hub.start();
  t.after(() => hub.stop());
  const c = client(t, hub, { backoff: { initialMs: 300, maxMs: 1000, jitter: 0 } });
  c.connect();
  await c.subscribe([LOGS]);
  await publishLines(hub, 1, 5);
  await waitFor("5 lines", () => c.seen.length === 5);
  // Pretend lines 3 to 5 were missed; the fill's request meets a restart.
  const pos = c.position(LOGS);
  c.setPosition(LOGS, 2, pos.epoch);
  c.seen = c.seen.filter(([s]) => s <= 2);
  const history = c.history.bind(c);
  let restart = null;
  c.history = (channel, opts) => {
    if (!restart) restart = hub.restart();
    return restart.then(() => history(channel, opts));
  };
  await publishLines(hub, 6, 6);
  await waitFor("a fill", () => c.events.some(([e]) => e === "fill"), 20000);
  await publishLines(hub, 7, 7);
  await waitFor("line 7", () => c.seen.some(([s]) => s === 7), 15000);
  await sleep(200);
  assert.deepEqual(
    c.events.filter(([e]) => e === "fill"),
    [["fill", 3, 5, 0]],
  );
  assert.deepEqual(seqs(c), range(1, 7));
});

test("a hub restart without stored history is a new epoch: reset, then the new numbering", async (t) => {
  const hub = await new Hub().start();
  t.after(() => hub.stop());
  const c = client(t, hub);
  c.connect();
  await c.subscribe([LOGS]);
  await publishLines(hub, 1, 2);
  await waitFor("2 lines", () => c.seen.length === 2);
  const epoch = c.position(LOGS).epoch;
  await hub.restart();
  // The new hub has no lines: `since` is not recovered and the position goes.
  await waitFor("the reset", () => c.events.some(([e]) => e === "reset"), 15000);
  assert.equal(c.position(LOGS), undefined);
  await publishLines(hub, 3, 3);
  await waitFor("line 3", () => c.seen.length === 3);
  assert.notEqual(c.position(LOGS).epoch, epoch);
  assert.deepEqual(c.events.find(([e]) => e === "reset")[1], { channel: LOGS, oldEpoch: epoch, epoch: null, seq: null });
  assert.deepEqual(c.seen[2], [1, "line 3"], "seq 1 of the new epoch is not taken for a copy");
});

test("lines dropped for a slow reader are filled from history; what was evicted is counted, none twice", async (t) => {
  const hub = new Hub({
    extra: "[limits]\nclient_queue = 4\nwrite_timeout_s = 120\n\n[history]\nlog_lines = 40\n",
  });
  await hub.start();
  t.after(() => hub.stop());
  const c = client(t, hub);
  c.connect();
  await c.subscribe([LOGS]);
  await publishLines(hub, 1, 1);
  await waitFor("line 1", () => c.seen.length === 1);

  // This process reads nothing while another publishes 150 lines of 90 KB:
  // more than the socket buffers hold, so the client falls behind the ring
  // of 40 and the hub reports what was evicted. Random text: node's
  // WebSocket negotiates permessage-deflate, and repeated letters would
  // shrink to a few bytes a line and fit the buffers.
  const big = require("node:crypto").randomBytes(67500).toString("base64");
  const script = `
    (async () => {
      for (let i = 2; i <= 151; i++) {
        const r = await fetch(${JSON.stringify(hub.http + "/api/v1/publish")}, {
          method: "POST",
          headers: { Authorization: ${JSON.stringify("Bearer " + sign({ sub: OWNER, role: "service" }))} },
          body: JSON.stringify({ type: "log_entry", channel: ${JSON.stringify(LOGS)},
            data: { server_id: ${JSON.stringify(SERVER)}, level: "INFO", source: "server", message: "line " + i + " ${big}" } }),
        });
        if (r.status !== 202) { console.error(await r.text()); process.exit(1); }
      }
    })();`;
  const out = spawnSync(process.execPath, ["-e", script], { encoding: "utf8", timeout: 100000 });
  assert.equal(out.status, 0, out.stderr);
  await publishLines(hub, 152, 152);
  await waitFor(
    "every seq delivered or counted missing",
    () => {
      const missing = c.events.filter(([e]) => e === "fill").reduce((n, f) => n + f[3], 0);
      return c.seen.some(([s]) => s === 152) && c.seen.length + missing >= 152;
    },
    30000,
  );
  await sleep(300);
  const fills = c.events.filter(([e]) => e === "fill");
  assert.ok(c.events.some(([e]) => e === "dropped"), "the hub reported drops");
  assert.ok(fills.length > 0, "holes were filled");
  const missing = fills.reduce((n, f) => n + f[3], 0);
  const got = seqs(c);
  assert.equal(got.length + missing, 152, `delivered ${got.length}, missing ${missing}`);
  assert.ok(got.length > 40, `history filled some: ${got.length}`);
  for (const [seq, msg] of c.seen) assert.ok(msg.startsWith(`line ${seq}`), `seq ${seq} holds ${msg.slice(0, 20)}`);
});

test("TOKEN_EXPIRING asks refreshToken, and the in-band auth keeps the connection past the old exp", async (t) => {
  const hub = await new Hub({ auth: "leeway_s = 0\nexpiry_notice_s = 60" }).start();
  t.after(() => hub.stop());
  const short = userToken(OWNER, [SERVER], { exp: Math.floor(Date.now() / 1000) + 3 });
  const asked = [];
  const c = client(t, hub, {
    token: short,
    refreshToken: (info) => {
      asked.push(info);
      return userToken(OWNER, [SERVER]);
    },
  });
  const refreshed = new Promise((r) => c.on("token_refreshed", r));
  c.connect();
  await c.subscribe([LOGS]);
  const res = await refreshed;
  assert.deepEqual(asked, [{ reason: "expiring", expiresAt: tokenExpiry(short) }]);
  assert.ok(res.expiresAt > tokenExpiry(short));
  await sleep(4500); // past the old exp
  await publishLines(hub, 1, 1);
  await waitFor("line 1", () => c.seen.length === 1);
  assert.ok(!c.events.some(([e]) => e === "close"), JSON.stringify(c.events));
});

test("close 4001 asks for a new token and reconnects with it; without one the client stops", async (t) => {
  const hub = await new Hub({ auth: "leeway_s = 0\nexpiry_notice_s = 0" }).start();
  t.after(() => hub.stop());
  const exp = () => Math.floor(Date.now() / 1000) + 2;
  const reasons = [];
  const c = client(t, hub, {
    token: userToken(OWNER, [SERVER], { exp: exp() }),
    refreshToken: ({ reason }) => {
      reasons.push(reason);
      return reason === "expired" && reasons.length === 1 ? userToken(OWNER, [SERVER], { exp: exp() }) : null;
    },
  });
  c.connect();
  await c.subscribe([LOGS]);
  await publishLines(hub, 1, 1);
  await waitFor("the first 4001", () => c.events.some(([e, d]) => e === "close" && d.code === 4001), 10000);
  await waitFor("the reconnection", () => c.state === "open", 5000);
  await publishLines(hub, 2, 2);
  await waitFor("line 2 after the reconnection", () => c.seen.length === 2);
  await waitFor("the second 4001 and a stop", () => c.state === "closed", 10000);
  assert.deepEqual(reasons, ["expired", "expired"]);
  assert.ok(c.events.some(([e]) => e === "auth_required"));
  assert.deepEqual(seqs(c), [1, 2]);
});

test("an in-band auth with another user's token is refused and the old one stays", async (t) => {
  const hub = await new Hub().start();
  t.after(() => hub.stop());
  const c = client(t, hub);
  c.connect();
  await c.subscribe([LOGS]);
  await assert.rejects(c.auth(userToken(OTHER, [SERVER])), { code: "UNAUTHORIZED" });
  const res = await c.auth(userToken(OWNER, []));
  assert.deepEqual(res.revoked, [LOGS], "the new claims no longer allow the server");
  await publishLines(hub, 1, 1);
  await sleep(300);
  assert.equal(c.seen.length, 0);
});

test("close 1008 (rate-limit abuse) waits at least 30 s, even when the network comes back; close() stops for good", async (t) => {
  const hub = await new Hub({ extra: "[limits]\nrate_per_s = 1\nrate_burst = 1\n" }).start();
  t.after(() => hub.stop());
  // As in a browser: the client listens for the window's "online" event.
  const net = new EventTarget();
  globalThis.window = globalThis;
  globalThis.addEventListener = net.addEventListener.bind(net);
  t.after(() => {
    delete globalThis.window;
    delete globalThis.addEventListener;
  });
  const c = client(t, hub, { requestTimeoutMs: 500 });
  c.connect();
  await c.ready();
  for (let i = 0; i < 30 && c.state === "open"; i++) {
    c.history(LOGS).catch(() => {});
    await sleep(20); // paced: a burst would reach the hub's RST before its Close
  }
  await waitFor("the 1008", () => c.events.some(([e, d]) => e === "reconnecting" && d.code === 1008), 10000);
  const wait = c.events.find(([e]) => e === "reconnecting")[1];
  assert.ok(wait.delayMs >= 30000, `waits ${wait.delayMs} ms`);
  net.dispatchEvent(new Event("online"));
  await sleep(500);
  assert.equal(c.state, "waiting", "the network coming back cut the pause short");
  c.close();
  assert.equal(c.state, "closed");
});

test("the token can travel in the Authorization header (node) and a bad one is retried, not fatal", async (t) => {
  const hub = await new Hub().start();
  t.after(() => hub.stop());
  const c = client(t, hub, { tokenTransport: "header" });
  c.connect();
  const res = await c.subscribe([LOGS]);
  assert.deepEqual(res.channels, [LOGS]);

  const bad = client(t, hub, { token: userToken(OWNER, [SERVER]) + "x" });
  bad.connect();
  await waitFor("two failed attempts", () => bad.events.filter(([e]) => e === "reconnecting").length >= 2);
  assert.equal(bad.events.find(([e]) => e === "close")[1].code, 1006, "a refused upgrade looks like 1006");
});
