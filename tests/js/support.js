// The harness of the JavaScript tests: runs the real debug aymc-hub (and,
// for the browser tests, aymc-agent with scripts/demo_server.py) with a temp
// config on 127.0.0.1, signs real HS256 JWTs with node's crypto, publishes
// through the hub's HTTP publish API. Every wait is bounded.
"use strict";

const { spawn } = require("node:child_process");
const crypto = require("node:crypto");
const fs = require("node:fs");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");

const ROOT = path.resolve(__dirname, "..", "..");
const TARGET = process.env.CARGO_TARGET_DIR || path.join(os.homedir(), ".cache", "aymc-hub", "target");
const BIN = path.join(TARGET, "debug");
const SECRET = "aymc-js-test-secret-0123456789abcdef";
const SERVER = "550e8400-e29b-41d4-a716-446655440000";
const OWNER = "123e4567-e89b-12d3-a456-426614174000";
const AGENT = "6f1c2a9e-0000-4000-8000-000000000001";

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** An HS256 JWT of `claims` (exp defaults to an hour from now). */
function sign(claims, secret = SECRET) {
  const body = Object.assign({ exp: Math.floor(Date.now() / 1000) + 3600 }, claims);
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" })) + "." + b64url(JSON.stringify(body));
  return head + "." + b64url(crypto.createHmac("sha256", secret).update(head).digest());
}

const userToken = (sub, servers, extra) => sign(Object.assign({ sub, servers }, extra));
const serviceToken = () => sign({ sub: AGENT, role: "service" });

async function waitFor(what, cond, timeoutMs = 10000, everyMs = 25) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on 127.0.0.1 (for processes that need one up front). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function tempDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), "aymc-js-test-"));
}

/** A child process whose stderr is collected; killed by stop(). */
class Proc {
  constructor(cmd, args, opts) {
    this.log = "";
    this.child = spawn(cmd, args, Object.assign({ stdio: ["ignore", "ignore", "pipe"] }, opts));
    this.child.stderr.on("data", (d) => (this.log += d.toString()));
    this.exited = new Promise((r) => this.child.once("exit", (code, sig) => r({ code, sig })));
  }

  async stop(signal = "SIGTERM") {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    const t = setTimeout(() => this.child.kill("SIGKILL"), 8000);
    const res = await this.exited;
    clearTimeout(t);
    return res;
  }
}

/**
 * A running aymc-hub. `toml` holds extra config after [auth]; `listen`
 * defaults to 127.0.0.1:0 (restart() keeps the address it got).
 */
class Hub {
  constructor(opts = {}) {
    this.dir = opts.dir || tempDir();
    this.extra = opts.extra || "";
    this.auth = opts.auth || "";
    this.listen = opts.listen || "127.0.0.1:0";
  }

  config() {
    return `listen = "${this.listen}"\n\n[auth]\njwt_secret = "${SECRET}"\n${this.auth}\n\n${this.extra}\n`;
  }

  async start() {
    const file = path.join(this.dir, "hub.toml");
    fs.writeFileSync(file, this.config());
    const env = Object.assign({}, process.env, { AYMC_LOG: "info" });
    for (const k of ["AYMC_CONFIG", "AYMC_LISTEN", "AYMC_JWT_SECRET", "RUST_LOG", "JOURNAL_STREAM", "NOTIFY_SOCKET"]) {
      delete env[k];
    }
    this.proc = new Proc(path.join(BIN, "aymc-hub"), ["serve", "--config", file], { env });
    const m = await waitFor(
      "the hub to listen",
      () => {
        if (this.proc.child.exitCode !== null) throw new Error("aymc-hub exited:\n" + this.proc.log);
        return /listening on (\d+\.\d+\.\d+\.\d+:\d+)/.exec(this.proc.log);
      },
      20000,
    );
    this.addr = m[1];
    this.listen = this.addr;
    this.http = `http://${this.addr}`;
    this.ws = `ws://${this.addr}/api/v1/ws`;
    return this;
  }

  async stop(signal) {
    if (this.proc) return this.proc.stop(signal);
  }

  /** Stops the hub cleanly and starts it again on the same address. */
  async restart() {
    await this.stop("SIGTERM");
    return this.start();
  }

  async publish(body) {
    const res = await fetch(this.http + "/api/v1/publish", {
      method: "POST",
      headers: { Authorization: "Bearer " + serviceToken(), "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    if (res.status !== 202) throw new Error(`publish answered ${res.status}: ${text}`);
    return JSON.parse(text).recipients;
  }

  publishLog(server, message, level = "INFO") {
    return this.publish({
      type: "log_entry",
      channel: `server:${server}:logs`,
      data: { server_id: server, level, source: "server", message },
    });
  }

  publishMetrics(server, players) {
    return this.publish({
      type: "metrics",
      channel: `server:${server}:metrics`,
      data: {
        server_id: server,
        cpu_percent: 12.5,
        memory_used: 2147483648,
        memory_total: 8589934592,
        memory_percent: 25,
        players_online: players,
        max_players: 20,
        tps: 19.9,
        uptime_seconds: 60,
      },
    });
  }

  async stats() {
    const res = await fetch(this.http + "/api/v1/stats", {
      headers: { Authorization: "Bearer " + sign({ sub: AGENT, role: "admin" }) },
    });
    return res.json();
  }
}

/**
 * The demo's whole path: scripts/demo_server.py writing a log, aymc-agent
 * tailing it, and a hub (with on-disk history, so a clean restart keeps the
 * epoch) that owns SERVER for OWNER.
 */
async function startDemo(opts = {}) {
  const dir = tempDir();
  const survival = path.join(dir, "survival");
  fs.mkdirSync(survival);
  const [agentPort, mcPort] = [await freePort(), await freePort()];
  fs.writeFileSync(
    path.join(dir, "agent.toml"),
    `listen = "127.0.0.1:${agentPort}"\nid = "${AGENT}"\nhistory_lines = 10000\n` +
      `state_file = "${dir}/agent-state.toml"\n\n[[servers]]\nid = "${SERVER}"\nname = "Survival"\n` +
      `dir = "${survival}"\npid_file = "${survival}/server.pid"\nport = ${mcPort}\n`,
  );
  const server = new Proc(
    "python3",
    [path.join(ROOT, "scripts", "demo_server.py"), survival, "--port", String(mcPort)].concat(opts.serverArgs || []),
  );
  const agent = new Proc(path.join(BIN, "aymc-agent"), ["--config", path.join(dir, "agent.toml")], {
    env: Object.assign({}, process.env, { AYMC_LOG: "info" }),
  });
  const hub = new Hub({
    dir,
    auth: opts.auth || "",
    extra:
      `[limits]\n${opts.limits || ""}\n\n[monitor]\nhealth_interval_s = 1\n\n[history]\ndb_path = "${dir}/history.db"\n${opts.history || ""}\n\n` +
      `[[agents]]\nid = "${AGENT}"\naddress = "127.0.0.1:${agentPort}"\n\n` +
      `[[servers]]\nid = "${SERVER}"\nname = "Survival"\nagent = "${AGENT}"\nowner = "${OWNER}"\n`,
  });
  await hub.start();
  return {
    dir,
    hub,
    server,
    agent,
    survival,
    /** Appends a raw line to the server's latest.log, as the server would. */
    writeLine(line) {
      fs.appendFileSync(path.join(survival, "logs", "latest.log"), line + "\n");
    },
    async stop() {
      await Promise.all([hub.stop(), agent.stop(), server.stop()]);
    },
  };
}

module.exports = {
  AGENT,
  BIN,
  Hub,
  OWNER,
  ROOT,
  SECRET,
  SERVER,
  freePort,
  serviceToken,
  sign,
  sleep,
  startDemo,
  userToken,
  waitFor,
};
