// The web console (docs/CONSOLE.md): sign in with a pasted token, pick a
// server, watch its log, charts, status and alerts live through
// aymc-client.js. Everything from the hub is shown as text (textContent,
// never innerHTML): player chat is untrusted.
"use strict";
(function () {
  const TOKEN_KEY = "aymc.token";
  const MAX_LINES = 5000; // lines kept in the page; older ones go (and come back with history)
  const PAGE = 200; // lines per history page
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  let client = null;
  let user = null; // the token's user id
  let server = null; // the server watched: {id, name, status}
  let renew = null; // {promise, resolve} while a new token is asked for

  // ---- sign in -------------------------------------------------------------

  function claims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part));
    } catch (_) {
      return null;
    }
  }

  async function listServers(token) {
    const res = await fetch("/api/v1/servers", { headers: { Authorization: "Bearer " + token } });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.message || `the hub answered ${res.status}`);
    return body.servers || [];
  }

  function showSignIn(title, help, error) {
    $("signin-title").textContent = title;
    $("signin-help").textContent = help;
    $("signin-error").textContent = error || "";
    $("signin").hidden = false;
    $("token").focus();
  }

  async function submitToken() {
    const token = $("token").value.trim();
    $("token").value = "";
    if (!token) return;
    const c = claims(token);
    if (!c) return showSignIn($("signin-title").textContent, $("signin-help").textContent, "That is not a JWT.");
    if (renew) {
      // A fresh token for the running session: the client sends `auth` (or reconnects).
      if (user && (c.sub || c.user_id) !== user) {
        return showSignIn("Renew your token", "Paste a new token of the same user.", "That token is another user's.");
      }
      sessionStorage.setItem(TOKEN_KEY, token);
      $("signin").hidden = true;
      const r = renew;
      renew = null;
      r.resolve(token);
      if (client && client.state === "closed") client.connect(); // it had given up waiting
      return;
    }
    try {
      await start(token);
    } catch (e) {
      showSignIn("Sign in", "Paste a token.", "The hub refused it: " + e.message);
    }
  }

  /** refreshToken of the client: asks the user for a new token. */
  function askToken({ reason, expiresAt }) {
    const when = expiresAt ? new Date(expiresAt * 1000).toLocaleTimeString() : "now";
    showSignIn(
      "Renew your token",
      reason === "expiring"
        ? `Your token expires at ${when}. Paste a new one to stay connected.`
        : "Your token has expired. Paste a new one to reconnect.",
    );
    if (!renew) {
      let resolve;
      const promise = new Promise((r) => (resolve = r));
      renew = { promise, resolve };
    }
    return renew.promise;
  }

  async function start(token) {
    const servers = await listServers(token);
    sessionStorage.setItem(TOKEN_KEY, token);
    const c = claims(token) || {};
    user = c.sub || c.user_id || null;
    $("signin").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = false;
    const select = $("server");
    select.replaceChildren();
    for (const s of servers) {
      const o = el("option", null, `${s.name} (${s.status})`);
      o.value = s.id;
      select.append(o);
    }
    select.hidden = servers.length === 0;
    if (!servers.length) {
      append(el("div", "marker", "This token may watch no server."));
      return;
    }
    const wanted = new URLSearchParams(location.hash.slice(1)).get("server");
    const first = servers.find((s) => s.id === wanted) || servers[0];
    select.value = first.id;
    const show = () =>
      watch(servers.find((s) => s.id === select.value)).catch((e) =>
        logs.marker(`Could not load this server's history: ${e.message}`),
      );
    select.onchange = show;
    connect();
    show();
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    if (client) client.close();
    client = null;
    server = null;
    $("app").hidden = true;
    $("server").hidden = true;
    $("badge").hidden = true;
    $("signout").hidden = true;
    $("conn").textContent = "signed out";
    showSignIn("Sign in", "Paste a token (a JWT the panel or aymc-hub token gave you). It stays in this tab only.");
  }

  // ---- the connection ------------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    client = new window.Aymc.AymcClient({
      url: `${scheme}//${location.host}/api/v1/ws`,
      token: () => sessionStorage.getItem(TOKEN_KEY),
      tokenTransport: "cookie",
      refreshToken: askToken,
      heartbeatMs: 15000,
      pongTimeoutMs: 5000,
    });
    client.on("state", showState);
    client.on("reconnecting", ({ delayMs, code }) => {
      $("conn").textContent = `reconnecting in ${Math.ceil(delayMs / 1000)} s (closed: ${code})`;
    });
    client.on("auth_required", () => askToken({ reason: "expired" }));
    client.on("log_entry", (m) => m.channel === logsChannel() && logs.add(m));
    client.on("metrics", (m) => m.channel === channel("metrics") && metrics(m.data));
    client.on("server_status", (m) => m.channel === channel("status") && status(m.data));
    client.on("notification", (m) => toast(m.data.type, m.data.title, m.data.message));
    client.on("alert", (m) => toast(m.data.severity, m.data.title, m.data.message, true));
    client.on("gap", (g) => g.channel === logsChannel() && logs.gap(g));
    client.on("fill", (f) => f.channel === logsChannel() && logs.fill(f));
    client.on("reset", (r) => r.channel === logsChannel() && logs.marker("The hub restarted without its history: earlier lines may be missing."));
    client.on("error", (e) => console.warn("aymc:", e.code, e.message));
    client.connect();
  }

  function showState({ state }) {
    const conn = $("conn");
    conn.dataset.state = state;
    if (state === "open") conn.textContent = "live";
    else if (state === "connecting") conn.textContent = "connecting...";
    else if (state === "closed") conn.textContent = "disconnected";
  }

  const channel = (kind) => server && `server:${server.id}:${kind}`;
  const logsChannel = () => channel("logs");

  /** Switches the page to server `s`: history first, then live from there. */
  async function watch(s) {
    if (!s) return;
    if (server) await client.unsubscribe(["logs", "metrics", "status"].map(channel)).catch(() => {});
    server = s;
    location.hash = "server=" + s.id;
    logs.clear();
    charts.forEach((c) => c.clear());
    badge(s.status);
    await client.ready();
    if (server !== s) return; // another server was picked meanwhile
    const [page, points] = await Promise.all([
      client.history(logsChannel(), { limit: PAGE }),
      client.history(channel("metrics"), { limit: 1000 }),
    ]);
    if (server !== s) return; // its channels are not this view's any more
    logs.prepend(page);
    const last = page.messages[page.messages.length - 1];
    if (last) client.setPosition(logsChannel(), last.seq, last.epoch);
    for (const m of points.messages) metrics(m.data, true);
    const newest = points.messages[points.messages.length - 1];
    if (newest) client.setPosition(channel("metrics"), newest.seq, newest.epoch);
    drawCharts();
    const wanted = ["logs", "metrics", "status"].map(channel);
    if (user) wanted.push(`user:${user.toLowerCase()}:notifications`);
    await client.subscribe(wanted);
  }

  // ---- the log view ----------------------------------------------------------

  const logs = {
    seen: new Set(), // "epoch:seq" of the lines in the page
    paused: [], // the newest messages held while paused: MAX_LINES at most, as the log keeps no more
    held: 0, // how many came while paused
    loading: false,
    complete: false,

    clear() {
      this.seen.clear();
      this.paused = [];
      this.held = 0;
      this.complete = false;
      $("log").replaceChildren();
      pendingText();
    },

    key: (m) => `${m.epoch}:${m.seq}`,

    render(m) {
      const row = el("div", "line lvl-" + String(m.data.level || "INFO"));
      row.dataset.seq = String(m.seq);
      row.dataset.epoch = String(m.epoch);
      const t = new Date(m.data.timestamp || m.timestamp);
      row.append(
        el("time", "ts", isNaN(t) ? "" : t.toLocaleTimeString([], { hour12: false })),
        el("span", "lvl", String(m.data.level || "")),
        el("span", "src", `[${m.data.source || "server"}]`),
        el("span", "msg", String(m.data.message || "")),
      );
      if (m.data.exception) {
        const lines = String(m.data.exception).split("\n");
        const fold = el("details", "exc");
        fold.append(el("summary", null, `${lines[0]} (${lines.length} lines)`), el("pre", null, m.data.exception));
        row.append(fold);
      }
      row.hidden = !matches(row);
      return row;
    },

    /** A live message. */
    add(m) {
      if (this.seen.has(this.key(m))) return;
      if ($("pause").getAttribute("aria-pressed") === "true") {
        this.held += 1;
        if (this.paused.push(m) > MAX_LINES) this.paused.shift();
        return pendingText();
      }
      this.seen.add(this.key(m));
      append(this.render(m));
    },

    /** Older lines, put on top, keeping what the reader sees in place. */
    prepend(page) {
      const box = $("log");
      const before = box.scrollHeight;
      const frag = document.createDocumentFragment();
      for (const m of page.messages) {
        if (this.seen.has(this.key(m))) continue;
        this.seen.add(this.key(m));
        frag.append(this.render(m));
      }
      if (page.complete || !page.messages.length) {
        this.complete = true;
        frag.prepend(el("div", "marker start", "Start of the lines the hub keeps in memory."));
      }
      box.prepend(frag);
      if (following()) box.scrollTop = box.scrollHeight;
      else box.scrollTop += box.scrollHeight - before;
    },

    async older() {
      const first = $("log").querySelector(".line");
      if (this.loading || this.complete || !first || !client) return;
      this.loading = true;
      try {
        this.prepend(await client.history(logsChannel(), { limit: PAGE, beforeSeq: Number(first.dataset.seq) }));
      } catch (e) {
        console.warn("aymc: older lines:", e.message);
      } finally {
        this.loading = false;
      }
    },

    gap(g) {
      const n = g.toSeq - g.fromSeq + 1;
      const m = el("div", "marker gap", `${n} line${n === 1 ? "" : "s"} skipped; loading them...`);
      m.dataset.from = String(g.fromSeq);
      m.dataset.to = String(g.toSeq);
      append(m);
    },

    /** The lines of a gap came: they take the marker's place. */
    fill(f) {
      const m = $("log").querySelector(`.marker.gap[data-from="${f.fromSeq}"][data-to="${f.toSeq}"]`);
      if (!m) return;
      for (const msg of f.messages) {
        if (this.seen.has(this.key(msg))) continue;
        this.seen.add(this.key(msg));
        m.before(this.render(msg));
      }
      if (f.missing > 0) {
        m.textContent = `${f.missing} line${f.missing === 1 ? "" : "s"} no longer kept by the hub.`;
        m.dataset.missing = String(f.missing);
      } else {
        m.remove();
      }
    },

    marker(text) {
      append(el("div", "marker", text));
    },
  };

  /** Appends `row` to the log, trims the top, follows when asked. */
  function append(row) {
    const box = $("log");
    box.append(row);
    while (box.childElementCount > MAX_LINES) {
      const gone = box.firstElementChild;
      if (gone.dataset.seq) logs.seen.delete(`${gone.dataset.epoch}:${gone.dataset.seq}`);
      gone.remove();
      logs.complete = false;
    }
    if (following()) box.scrollTop = box.scrollHeight;
  }

  const following = () => $("follow").getAttribute("aria-pressed") === "true";

  function matches(row) {
    const q = $("filter").value.trim().toLowerCase();
    return !q || row.textContent.toLowerCase().includes(q);
  }

  function pendingText() {
    const n = logs.held;
    $("pending").textContent = n ? `${n} new line${n === 1 ? "" : "s"} while paused` : "";
  }

  function toggle(button, on) {
    button.setAttribute("aria-pressed", String(on));
  }

  function wireLogControls() {
    $("filter").addEventListener("input", () => {
      const follow = following();
      for (const row of $("log").querySelectorAll(".line")) row.hidden = !matches(row);
      if (follow) $("log").scrollTop = $("log").scrollHeight;
    });
    $("pause").addEventListener("click", () => {
      const on = $("pause").getAttribute("aria-pressed") !== "true";
      toggle($("pause"), on);
      $("pause").textContent = on ? "Resume" : "Pause";
      if (!on) {
        const held = logs.paused.splice(0);
        logs.held = 0;
        held.forEach((m) => logs.add(m));
        pendingText();
      }
    });
    $("follow").addEventListener("click", () => {
      const on = !following();
      toggle($("follow"), on);
      $("follow").textContent = on ? "Following" : "Follow";
      if (on) $("log").scrollTop = $("log").scrollHeight;
    });
    $("log").addEventListener("scroll", () => {
      const box = $("log");
      const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 4;
      if (following() !== atEnd) {
        toggle($("follow"), atEnd);
        $("follow").textContent = atEnd ? "Following" : "Follow";
      }
      if (box.scrollTop < 40) logs.older();
    });
  }

  // ---- charts, status, toasts --------------------------------------------------

  const { Chart } = window.AymcCharts;
  const pct = (v) => `${Math.round(v)}%`;
  const charts = [];

  function makeCharts() {
    const make = (id, opts) => {
      const c = new Chart($("c-" + id), $("v-" + id), opts);
      charts.push(c);
      return c;
    };
    return {
      cpu: make("cpu", { format: pct }),
      ram: make("ram", { max: 100, format: pct }),
      players: make("players", { format: (v) => String(Math.round(v)) }),
      tps: make("tps", { max: 20, format: (v) => (Math.round(v * 10) / 10).toString() }),
    };
  }
  let chart = null;

  function metrics(d, quiet) {
    const t = Date.parse(d.timestamp);
    chart.cpu.push(t, d.cpu_percent);
    chart.ram.push(t, d.memory_percent);
    chart.players.push(t, d.players_online);
    chart.tps.push(t, d.tps);
    if (typeof d.tps !== "number") $("v-tps").textContent = "not measured";
    if (d.memory_used) $("v-ram").textContent = `${pct(d.memory_percent)} (${(d.memory_used / 2 ** 30).toFixed(1)} GiB)`;
    if (d.max_players) $("v-players").textContent = `${d.players_online} / ${d.max_players}`;
    if (!quiet) drawCharts();
  }

  const drawCharts = () => charts.forEach((c) => c.draw());

  function status(d) {
    badge(d.new_status);
    const o = $("server").querySelector(`option[value="${server.id}"]`);
    if (o) o.textContent = `${d.server_name || server.name} (${d.new_status})`;
  }

  function badge(s) {
    const b = $("badge");
    b.hidden = false;
    b.textContent = s;
    b.dataset.status = s;
  }

  /** A toast; an alert that says what a toast on screen says is not shown twice (a crash sends both). */
  function toast(kind, title, message, alert) {
    const same = [...$("toasts").children].some(
      (t) => t.querySelector("strong").textContent === String(title) && t.querySelector("p").textContent === String(message),
    );
    if (alert && same) return;
    const t = el("div", "toast " + String(kind));
    t.append(el("strong", null, String(title || "")), el("p", null, String(message || "")));
    const close = el("button", "close", "\u00d7");
    close.type = "button";
    close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", () => t.remove());
    t.append(close);
    $("toasts").append(t);
    while ($("toasts").childElementCount > 6) $("toasts").firstElementChild.remove();
    if (!["error", "critical"].includes(kind)) setTimeout(() => t.remove(), 15000);
  }

  // ---- start -----------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    chart = makeCharts();
    wireLogControls();
    $("signin-go").addEventListener("click", submitToken);
    $("token").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        submitToken();
      }
    });
    $("signout").addEventListener("click", signOut);
    window.addEventListener("resize", drawCharts);
    setInterval(drawCharts, 30000); // the hour window slides
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return signOut();
    start(token).catch((e) => {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn("Sign in", "Paste a token.", "The hub refused the saved token: " + e.message);
    });
  });
})();
