// The web console in a real browser: Debian's chromium, headless, driven by
// playwright-core, against a real hub, a real aymc-agent and the demo's
// stand-in Minecraft server (scripts/demo_server.py).
// Run: node --experimental-websocket --test tests/js/browser.test.js
// AYMC_UPDATE_SCREENSHOT=1 writes the screenshot to docs/console.png.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { Hub, OWNER, ROOT, SERVER, sleep, startDemo, userToken, waitFor } = require("./support.js");

const CHROMIUM = process.env.AYMC_CHROMIUM || "/usr/bin/chromium";
const XSS = "<img src=x onerror=alert(1)>";

/** The log lines the page shows: [{seq, epoch, text}], in page order. */
function pageLines(page) {
  return page.$$eval("#log .line", (rows) =>
    rows.map((r) => ({ seq: Number(r.dataset.seq), epoch: r.dataset.epoch, text: r.querySelector(".msg").textContent })),
  );
}

/** Nothing missing, nothing doubled: seqs and the numbered lines run on by one. */
function assertContinuous(lines, word = "soak") {
  const seqs = lines.map((l) => l.seq);
  assert.equal(new Set(lines.map((l) => l.epoch)).size, 1, "one epoch");
  for (let i = 1; i < seqs.length; i++) {
    assert.equal(seqs[i], seqs[i - 1] + 1, `seq ${seqs[i - 1]} is followed by ${seqs[i]}`);
  }
  const numbered = lines.map((l) => new RegExp(`^${word} (\\d+) `).exec(l.text)).filter(Boolean).map((m) => Number(m[1]));
  for (let i = 1; i < numbered.length; i++) {
    assert.equal(numbered[i], numbered[i - 1] + 1, `${word} ${numbered[i - 1]} is followed by ${numbered[i]}`);
  }
  return numbered;
}

async function launch(t) {
  const { chromium } = require("playwright-core");
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  t.after(() => browser.close());
  return browser;
}

async function signIn(page, hub, token) {
  await page.goto(hub.http + "/");
  await page.fill("#token", token);
  await page.click("#signin-go");
  await page.waitForSelector("#log .line", { timeout: 30000 });
}

async function lastSoak(page) {
  const lines = await pageLines(page);
  const soak = lines.map((l) => /^soak (\d+) /.exec(l.text)).filter(Boolean);
  return soak.length ? Number(soak[soak.length - 1][1]) : 0;
}

test("the console in chromium: live lines, blips without holes or doubles, charts, a crash toast, chat as text", {
  skip: !fs.existsSync(CHROMIUM) && `no chromium at ${CHROMIUM}`,
  timeout: 240000,
}, async (t) => {
  const demo = await startDemo({
    serverArgs: ["--cycle-seconds", "12", "--rate", "2", "--line-bytes", "40"],
    // Only the panel is listed: the console's own origin must pass anyway.
    auth: 'allowed_origins = ["https://panel.example"]',
  });
  t.after(() => demo.stop());
  const browser = await launch(t);
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const dialogs = [];
  const problems = [];
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    d.dismiss().catch(() => {});
  });
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  page.on("console", (m) => {
    // A refused WebSocket during the blips is expected; a CSP violation is not.
    if (m.type() === "error" && /Content.Security.Policy|Refused to/i.test(m.text())) problems.push(m.text());
  });
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));

  const token = userToken(OWNER, []); // the owner (hub config) may watch the server
  await signIn(page, demo.hub, token);
  await page.evaluate(() => {
    const badge = document.getElementById("badge");
    window.badges = [badge.textContent]; // every status the badge showed
    new MutationObserver(() => window.badges.push(badge.textContent)).observe(badge, { childList: true });
  });
  assert.equal(await page.$eval("#conn", (e) => e.textContent), "live");
  assert.match(await page.$eval("#server", (e) => e.selectedOptions[0].textContent), /^Survival/);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("aymc.token")), token);
  assert.equal(await page.evaluate(() => document.cookie), "", "the upgrade cookie is gone once connected");

  // Chat is untrusted: shown as text, runs nothing.
  const now = new Date().toTimeString().slice(0, 8);
  demo.writeLine(`[${now}] [Async Chat Thread - #0/INFO]: <Steve> ${XSS}`);
  await page.waitForFunction(
    (xss) => [...document.querySelectorAll("#log .msg")].some((m) => m.textContent === `<Steve> ${xss}`),
    XSS,
    { timeout: 20000 },
  );
  assert.equal(await page.$$eval("#log img", (imgs) => imgs.length), 0, "no element was made from the chat line");

  // Charts fill from history and move with live metrics (every second here).
  await page.waitForFunction(() => Number(document.getElementById("c-cpu").dataset.points) >= 2, null, {
    timeout: 20000,
  });
  const points = await page.$eval("#c-cpu", (c) => Number(c.dataset.points));
  const pixels = await page.$eval("#c-cpu", (c) => c.toDataURL());
  await page.waitForFunction((n) => Number(document.getElementById("c-cpu").dataset.points) > n, points, {
    timeout: 20000,
  });
  assert.notEqual(await page.$eval("#c-cpu", (c) => c.toDataURL()), pixels, "the chart was drawn again");
  assert.match(await page.$eval("#v-players", (e) => e.textContent), /^\d+ \/ \d+$/);

  // The crash (the demo server crashes at the end of its first cycle), before
  // the blips: a notification or alert sent while the page is away is not replayed.
  await page.waitForSelector(".toast.error, .toast.critical", { timeout: 60000 });
  const toasts = await page.$$eval(".toast strong", (s) => s.map((e) => e.textContent));
  assert.ok(toasts.includes("Server Crashed"), JSON.stringify(toasts));
  await page.waitForFunction(() => window.badges.includes("crashed"), null, { timeout: 20000 });
  const folded = await page.$$eval("#log details.exc", (d) => d.map((e) => [e.open, e.querySelector("pre").textContent]));
  assert.ok(folded.length > 0 && folded.every(([open]) => !open), "the stack trace is folded");
  assert.match(folded[0][1], /NullPointerException/);

  // The picture of the README: the crash, its folded trace, the toast.
  await sleep(1000);
  if (!(await page.$eval("#follow", (b) => b.getAttribute("aria-pressed") === "true"))) await page.click("#follow");
  await page.mouse.move(5, 5);
  const shot = process.env.AYMC_UPDATE_SCREENSHOT
    ? path.join(ROOT, "docs", "console.png")
    : path.join(demo.dir, "console.png");
  await page.screenshot({ path: shot });
  assert.ok(fs.statSync(shot).size > 10000);

  // Blip 1: the page's network goes away for 3 s.
  const before1 = await lastSoak(page);
  await context.setOffline(true);
  await page.waitForFunction(() => document.getElementById("conn").textContent !== "live", null, { timeout: 30000 });
  await sleep(3000);
  await context.setOffline(false);
  await page.waitForFunction(() => document.getElementById("conn").textContent === "live", null, { timeout: 40000 });
  await waitFor("lines after blip 1", async () => (await lastSoak(page)) > before1 + 8, 30000, 200);

  // Blip 2: the hub restarts (close 1001); lines written meanwhile are not lost.
  const before2 = await lastSoak(page);
  const closed = page.waitForFunction(() => /closed: 1001/.test(document.getElementById("conn").textContent), null, {
    timeout: 20000,
    polling: 10,
  });
  await demo.hub.restart();
  await closed;
  await waitFor("lines after the restart", async () => (await lastSoak(page)) > before2 + 8, 40000, 200);

  // Let the restarted server write a little, then check the whole log.
  await waitFor("the server back", async () => (await lastSoak(page)) > before2 + 20, 60000, 200);
  await sleep(1500);
  const lines = await pageLines(page);
  const soak = assertContinuous(lines);
  assert.ok(soak.length > 30, `filler lines seen: ${soak.length}`);
  assert.equal(await page.$$eval("#log .marker.gap", (m) => m.length), 0, "no hole left");

  // The filter hides what does not match; clearing it shows everything.
  await page.fill("#filter", "Steve> <img");
  const shown = await page.$$eval("#log .line:not([hidden])", (r) => r.length);
  assert.equal(shown, 1);
  await page.fill("#filter", "");

  // A second tab opens on the newest page of lines; scrolling up loads the
  // older ones with `history` until the start of what the hub keeps.
  const stamp = new Date().toTimeString().slice(0, 8);
  for (let i = 1; i <= 300; i++) demo.writeLine(`[${stamp}] [Server thread/INFO]: Saved chunk ${i} of region r.0.0`);
  await page.waitForFunction(
    () => [...document.querySelectorAll("#log .msg")].some((m) => m.textContent === "Saved chunk 300 of region r.0.0"),
    null,
    { timeout: 20000 },
  );
  const second = await context.newPage();
  second.on("dialog", (d) => dialogs.push(d.message()));
  await signIn(second, demo.hub, token);
  const firstSeq = () => second.$eval("#log .line", (r) => Number(r.dataset.seq));
  const startSeq = await firstSeq();
  assert.ok(startSeq > 1, `the first page starts at ${startSeq}`);
  await waitFor(
    "the start of the kept lines",
    async () => {
      await second.$eval("#log", (box) => (box.scrollTop = 0));
      return second.$(".marker.start");
    },
    30000,
    300,
  );
  assert.equal(await firstSeq(), 1, "older lines were loaded back to the first");
  const all = await pageLines(second);
  assertContinuous(all);
  assert.ok(all.length > lines.length, "the second tab holds the first one's lines and the 300 since");
  await second.close();

  assert.deepEqual(dialogs, [], "no script ran from the chat line");
  assert.deepEqual(problems, []);
  // The token never went into a URL (a reverse proxy's access log).
  assert.ok(!requests.some((u) => u.includes("token=")), requests.filter((u) => u.includes("token")).join("\n"));
});

test("lines evicted while a tab was stalled are shown as skipped, the rest arrive once and in order", {
  skip: !fs.existsSync(CHROMIUM) && `no chromium at ${CHROMIUM}`,
  timeout: 180000,
}, async (t) => {
  const demo = await startDemo({ serverArgs: ["--cycle-seconds", "600"] });
  t.after(() => demo.stop());
  const browser = await launch(t);
  const page = await browser.newPage();
  const consoleLines = [];
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  await signIn(page, demo.hub, userToken(OWNER, []));
  await page.evaluate(() => {
    window.gapMarkers = 0; // markers shown
    window.filled = 0; // lines put in place of a marker
    const isGap = (n) => n && n.classList && n.classList.contains("gap");
    new MutationObserver((changes) => {
      for (const c of changes) {
        for (const n of c.addedNodes) {
          if (isGap(n)) window.gapMarkers++;
          else if (isGap(c.nextSibling)) window.filled++;
        }
      }
    }).observe(document.getElementById("log"), { childList: true });
  });

  // The tab stops reading (its script is paused): the socket backs up and
  // the tab's cursor on the logs ring (1,000 lines) stays behind while the
  // ring keeps only the newest of the 4,000 burst lines; what was evicted
  // before the tab read it is reported dropped (PROTOCOL.md 5.6), once.
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Debugger.enable");
  // Debugger.pause takes effect at the page's next script (a metrics
  // message comes every second): wait until it has, or a resume sent
  // before would fail and the page would pause later, for good.
  const paused = new Promise((resolve) => cdp.once("Debugger.paused", resolve));
  await cdp.send("Debugger.pause");
  await Promise.race([paused, sleep(30000).then(() => Promise.reject(new Error("the page never paused")))]);
  const stamp = new Date().toTimeString().slice(0, 8);
  // Random text: chromium negotiates permessage-deflate, and repeated
  // letters would shrink to a few bytes a line and fit the socket buffers.
  const pad = require("node:crypto").randomBytes(2250).toString("base64");
  let burst = "";
  for (let i = 1; i <= 4000; i++) burst += `[${stamp}] [Server thread/INFO]: burst ${i} ${pad}\n`;
  const before = (await demo.hub.stats()).messages.in;
  fs.appendFileSync(path.join(demo.survival, "logs", "latest.log"), burst);
  // The hub has taken the whole burst (a drop is counted only once its
  // report reaches the socket, so the paused tab cannot be waited on).
  await waitFor("the burst", async () => (await demo.hub.stats()).messages.in >= before + 4000, 30000, 100);
  await cdp.send("Debugger.resume");

  await page
    .waitForFunction(
      () =>
        [...document.querySelectorAll("#log .marker.gap")].every((m) => m.dataset.missing) &&
        [...document.querySelectorAll("#log .msg")].some((m) => m.textContent.startsWith("burst 4000 ")),
      null,
      { timeout: 60000 },
    )
    .catch(async (e) => {
      // Say what the page shows, so a failure can be told from a slow machine.
      const shown = await page.evaluate(() => ({
        conn: document.getElementById("conn").textContent,
        markers: [...document.querySelectorAll("#log .marker")].map((m) => m.textContent),
        last: [...document.querySelectorAll("#log .line")].slice(-3).map((r) => r.dataset.seq + " " + r.textContent.slice(0, 60)),
      }));
      throw new Error(`${e.message}\npage: ${JSON.stringify(shown)}\nhub: ${JSON.stringify(await demo.hub.stats())}\nconsole: ${consoleLines.join("\n")}`);
    });
  const [markers, filled] = await page.evaluate(() => [window.gapMarkers, window.filled]);
  assert.ok(markers > 0, "markers were shown");
  // The page asked `history` for the skipped lines; the hub no longer keeps
  // any of them (they were dropped because they were evicted), so none came
  // back and the markers stay, counting them.
  assert.equal(filled, 0, "no line came from history for an evicted range");
  // Every seq is on the page once, in order, or counted by a marker that stays.
  const lines = await pageLines(page);
  const seqs = lines.map((l) => l.seq);
  for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `seq ${seqs[i - 1]} before ${seqs[i]}`);
  const missing = await page.$$eval("#log .marker.gap", (m) => m.map((e) => Number(e.dataset.missing)));
  const total = missing.reduce((a, b) => a + b, 0);
  assert.equal(seqs.length + total, seqs[seqs.length - 1] - seqs[0] + 1, `${missing.length} markers stay`);
  const numbered = lines.map((l) => /^burst (\d+) /.exec(l.text)).filter(Boolean).map((m) => Number(m[1]));
  for (let i = 1; i < numbered.length; i++) assert.ok(numbered[i] > numbered[i - 1]);
  // The ring's 1,000 lines, less the few the demo server wrote meanwhile.
  assert.ok(numbered.length >= 950, `the kept lines came back: ${numbered.length} of 4000`);
});

test("a token about to expire: the page asks for a new one and the connection stays", {
  skip: !fs.existsSync(CHROMIUM) && `no chromium at ${CHROMIUM}`,
  timeout: 120000,
}, async (t) => {
  const hub = await new Hub({ auth: "leeway_s = 0\nexpiry_notice_s = 60" }).start();
  t.after(() => hub.stop());
  await hub.publish({
    type: "server_status",
    channel: `server:${SERVER}:status`,
    data: { server_id: SERVER, server_name: "Survival", old_status: "unknown", new_status: "running" },
  });
  await hub.publishLog(SERVER, "before the renewal");
  const browser = await launch(t);
  const page = await browser.newPage();
  const user = "0b9f0c52-6a2e-4c55-9d7e-2f1d3c4b5a69";
  const sockets = [];
  page.on("websocket", (ws) => sockets.push(ws));
  // TOKEN_EXPIRING is due at once (exp is within expiry_notice_s).
  // A short token, but long enough for the renewal below on a busy machine.
  const exp = Math.floor(Date.now() / 1000) + 20;
  await signIn(page, hub, userToken(user, [SERVER], { exp }));
  await page.waitForSelector("#signin:not([hidden])");
  assert.equal(await page.$eval("#signin-title", (e) => e.textContent), "Renew your token");
  await page.fill("#token", userToken(OWNER, [SERVER]));
  await page.click("#signin-go");
  await page.waitForFunction(() => /another user/.test(document.getElementById("signin-error").textContent), null, {
    timeout: 10000,
  });
  const fresh = userToken(user, [SERVER]);
  await page.fill("#token", fresh);
  await page.click("#signin-go");
  await page.waitForSelector("#signin", { state: "hidden" });
  assert.equal(await page.evaluate(() => sessionStorage.getItem("aymc.token")), fresh);
  // Past the first token's exp: without the renewal the hub would close with 4001.
  await sleep(Math.max(0, exp * 1000 - Date.now()) + 1500);
  await hub.publishLog(SERVER, "after the renewal");
  await page.waitForFunction(
    () => [...document.querySelectorAll("#log .msg")].some((m) => m.textContent === "after the renewal"),
    null,
    { timeout: 10000 },
  );
  assert.equal(await page.$eval("#conn", (e) => e.textContent), "live");
  assert.equal(sockets.length, 1, "one connection all along");
  assert.ok(!sockets[0].isClosed());
  assert.deepEqual((await pageLines(page)).map((l) => l.seq), [1, 2]);
});
