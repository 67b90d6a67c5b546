//! The harness every hub test uses: it runs the real `aymc-hub` binary on
//! `127.0.0.1:0` with a per-test TOML config in a temp dir, mints real JWTs,
//! and talks to the hub over real loopback sockets (tungstenite's blocking
//! client, a raw frame-level WebSocket client, and raw HTTP/1.1).
//!
//! Every wait is bounded: helpers poll with a deadline instead of sleeping a
//! fixed time, and a hub that never comes up fails the test after 20 s with
//! its stderr in the panic message.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aymc_loadgen::tokens::{self, Signer};
use aymc_loadgen::{engine, frames};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
pub use tempfile::TempDir;
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// HS256 secret of every test hub (unless a test configures another key).
pub const SECRET: &str = "aymc-hub-test-secret-0123456789abcdef";
/// The seed's example server.
pub const SERVER_A: &str = "550e8400-e29b-41d4-a716-446655440000";
/// A second server, watched by nobody unless a token says so.
pub const SERVER_B: &str = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
/// A server that `OWNER` owns through the hub's `[[servers]]` config.
pub const SERVER_C: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
/// The seed's example user, owner of `SERVER_C` in `SERVERS_TOML`.
pub const OWNER: &str = "123e4567-e89b-12d3-a456-426614174000";

/// `[[servers]]` table that makes `OWNER` the owner of `SERVER_C`.
pub const SERVERS_TOML: &str = "[[servers]]\n\
id = \"7c9e6679-7425-40de-944b-e07fc1f90ae7\"\n\
name = \"Creative\"\n\
owner = \"123e4567-e89b-12d3-a456-426614174000\"\n";

/// Default bound on a wait for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched by default.
pub const QUIET: Duration = Duration::from_millis(300);

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_aymc-hub")
}

// ---------------------------------------------------------------------------
// Temp dirs and time
// ---------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new().prefix("aymc-hub-test-").tempdir().expect("create temp dir")
}

/// Writes `contents` to `name` inside `dir` and returns its path.
pub fn write_file(dir: &TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// Unix time in whole seconds.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

/// Unix time in fractional seconds.
pub fn now_f64() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs_f64()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sleeps until unix time `t` (fractional seconds); returns at once when past.
pub fn sleep_until_unix(t: f64) {
    let left = t - now_f64();
    if left > 0.0 {
        thread::sleep(Duration::from_secs_f64(left));
    }
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

// ---------------------------------------------------------------------------
// The hub process
// ---------------------------------------------------------------------------

/// A hub config, written as TOML for each test.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Top-level `listen`; `None` leaves it out.
    pub listen: Option<String>,
    /// Further top-level lines (`trusted_proxies`, ...).
    pub top: String,
    /// `[auth] jwt_secret`; `None` leaves it out.
    pub secret: Option<String>,
    /// Further lines of `[auth]`.
    pub auth: String,
    /// Lines of `[limits]`.
    pub limits: String,
    /// Further tables (`[[servers]]`, ...).
    pub extra: String,
    /// Extra environment variables for the process (a value `{config}`
    /// becomes the path of the config file).
    pub env: Vec<(String, String)>,
    /// `RLIMIT_FSIZE` for the process, with SIGXFSZ ignored, so writes past
    /// it fail with EFBIG (a full disk).
    pub fsize_limit: Option<u64>,
    /// `RLIMIT_NOFILE` (soft and hard) for the process.
    pub nofile_limit: Option<u64>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: Some("127.0.0.1:0".to_string()),
            top: String::new(),
            secret: Some(SECRET.to_string()),
            auth: String::new(),
            limits: String::new(),
            extra: String::new(),
            env: Vec::new(),
            fsize_limit: None,
            nofile_limit: None,
        }
    }
}

impl HubConfig {
    pub fn new() -> HubConfig {
        HubConfig::default()
    }

    /// Adds top-level lines (before the first table).
    pub fn top(mut self, lines: &str) -> HubConfig {
        self.top.push_str(lines);
        self.top.push('\n');
        self
    }

    pub fn auth(mut self, lines: &str) -> HubConfig {
        self.auth.push_str(lines);
        self.auth.push('\n');
        self
    }

    pub fn limits(mut self, lines: &str) -> HubConfig {
        self.limits.push_str(lines);
        self.limits.push('\n');
        self
    }

    pub fn extra(mut self, tables: &str) -> HubConfig {
        self.extra.push_str(tables);
        self.extra.push('\n');
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> HubConfig {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn toml(&self) -> String {
        let mut s = String::new();
        if let Some(listen) = &self.listen {
            s.push_str(&format!("listen = \"{listen}\"\n"));
        }
        s.push_str(&self.top);
        s.push_str("\n[auth]\n");
        if let Some(secret) = &self.secret {
            s.push_str(&format!("jwt_secret = \"{secret}\"\n"));
        }
        s.push_str(&self.auth);
        s.push_str("\n[limits]\n");
        s.push_str(&self.limits);
        s.push('\n');
        s.push_str(&self.extra);
        s
    }

    /// Starts `aymc-hub serve --config FILE`.
    pub fn start(self) -> Hub {
        self.start_with_args(&["serve", "--config", "{config}"])
    }

    /// Starts the hub with `args`; an argument `{config}` becomes the path of
    /// the config file.
    pub fn start_with_args(self, args: &[&str]) -> Hub {
        match self.try_start_with_args(args) {
            Ok(hub) => hub,
            Err(e) => panic!("{e}"),
        }
    }

    /// As `start_with_args`, but a hub that exits (or never says where it
    /// listens) is an `Err` with its exit status and stderr.
    pub fn try_start_with_args(self, args: &[&str]) -> Result<Hub, String> {
        let dir = temp_dir();
        let config_path = write_file(&dir, "hub.toml", &self.toml());
        let args: Vec<String> = args
            .iter()
            .map(|a| if *a == "{config}" { config_path.display().to_string() } else { a.to_string() })
            .collect();
        let mut cmd = hub_command();
        cmd.args(&args).env("AYMC_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in &self.env {
            if v == "{config}" {
                cmd.env(k, &config_path);
            } else {
                cmd.env(k, v);
            }
        }
        let (fsize, nofile) = (self.fsize_limit, self.nofile_limit);
        if fsize.is_some() || nofile.is_some() {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if let Some(limit) = fsize {
                        libc::setrlimit(libc::RLIMIT_FSIZE, &libc::rlimit { rlim_cur: limit, rlim_max: limit });
                        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    }
                    if let Some(limit) = nofile {
                        libc::setrlimit(libc::RLIMIT_NOFILE, &libc::rlimit { rlim_cur: limit, rlim_max: limit });
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn aymc-hub");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                let reader = BufReader::new(stderr);
                for line in reader.split(b'\n') {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&String::from_utf8_lossy(&line));
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut hub = Hub { addr: "127.0.0.1:1".parse().unwrap(), child, log, config_path, dir };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = parse_listening(&line) {
                        hub.addr = addr;
                        return Ok(hub);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "aymc-hub did not log `listening on ADDR` within 20 s; config:\n{}\nstderr:\n{}",
                        std::fs::read_to_string(&hub.config_path).unwrap_or_default(),
                        hub.logs().join("\n")
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = hub.wait_exit(Duration::from_secs(5));
                    return Err(format!(
                        "aymc-hub exited ({status:?}) before listening; config:\n{}\nstderr:\n{}",
                        std::fs::read_to_string(&hub.config_path).unwrap_or_default(),
                        hub.logs().join("\n")
                    ));
                }
            }
        }
    }
}

/// A `Command` for the binary with the `AYMC_*` environment of the test run
/// removed, so only what a test sets applies.
pub fn hub_command() -> Command {
    let mut cmd = Command::new(bin());
    for key in [
        "AYMC_CONFIG",
        "AYMC_LISTEN",
        "AYMC_JWT_SECRET",
        "AYMC_LOG",
        "AYMC_LOG_STYLE",
        "RUST_LOG",
        "CREDENTIALS_DIRECTORY",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
    ] {
        cmd.env_remove(key);
    }
    cmd
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The socket address after `listening on ` in a log line.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let addr: String = rest.chars().take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':' | '[' | ']')).collect();
    addr.parse().ok()
}

/// A running hub; killed on drop.
pub struct Hub {
    pub addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    pub config_path: PathBuf,
    pub dir: TempDir,
}

impl Hub {
    /// A hub with the default config plus these `[limits]` lines.
    pub fn start(limits: &str) -> Hub {
        HubConfig::new().limits(limits).start()
    }

    /// A hub whose config also holds `SERVERS_TOML` (OWNER owns SERVER_C).
    pub fn start_with_servers(limits: &str) -> Hub {
        HubConfig::new().limits(limits).extra(SERVERS_TOML).start()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a stderr line matching `pred` and returns it.
    pub fn wait_for_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let mut found = None;
        wait_until(timeout, || {
            found = self.log.lock().unwrap().iter().find(|l| pred(l)).cloned();
            found.is_some()
        });
        found
    }

    pub fn signal(&self, sig: i32) {
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `GET /api/v1/stats` with an admin token; asserts `200`.
    pub fn stats(&self) -> Value {
        let resp = http_get(self.addr, "/api/v1/stats", Some(&admin_token()));
        assert_eq!(resp.status, 200, "stats: {}", resp.text());
        resp.json()
    }

    /// Polls the stats until `pred` holds; returns the last stats seen.
    pub fn wait_stats(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let ok = wait_until(timeout, || {
            last = self.stats();
            pred(&last)
        });
        assert!(ok, "stats never reached the expected state; last: {last}");
        last
    }

    pub fn connect(&self, token: &str) -> Client {
        ws_connect(self.addr, token)
    }

    /// Connects with an admin token of a fresh user.
    pub fn connect_admin(&self) -> Client {
        ws_connect(self.addr, &admin_token())
    }

    /// Publishes with a service token and asserts `202`; returns recipients.
    pub fn publish(&self, body: &Value) -> u64 {
        publish_ok(self.addr, body)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Output of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| !l.trim().is_empty()).collect()
    }
}

/// Runs the binary to completion (killed after 15 s) with `env` added.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let dir = temp_dir();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = hub_command();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn aymc-hub");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let out = CliOutput {
        code: status.and_then(|s| s.code()),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    };
    assert!(status.is_some(), "`aymc-hub {args:?}` did not exit within 15 s: {out:?}");
    out
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

/// Claims of a token valid for an hour.
pub fn claims(sub: &str, role: &str, servers: &[&str]) -> Value {
    json!({
        "sub": sub,
        "role": role,
        "servers": servers,
        "iat": now(),
        "exp": now() + 3600,
    })
}

/// HS256 with the test secret.
pub fn sign(claims: &Value) -> String {
    sign_hs(claims, SECRET, Algorithm::HS256)
}

/// HMAC with `secret`.
pub fn sign_hs(claims: &Value, secret: &str, alg: Algorithm) -> String {
    Signer::hmac(secret.as_bytes(), alg).expect("HMAC key").sign(claims).expect("encode JWT")
}

/// Signs with a PEM private key (`alg` must fit the key).
pub fn sign_pem(claims: &Value, alg: Algorithm, private_pem: &Path) -> String {
    Signer::pem(alg, private_pem).expect("parse private key").sign(claims).expect("encode JWT")
}

/// A token with `alg: none` and an empty signature.
pub fn unsigned_token(claims: &Value) -> String {
    format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), b64url(claims.to_string().as_bytes()))
}

pub fn token(sub: &str, role: &str, servers: &[&str]) -> String {
    sign(&claims(sub, role, servers))
}

pub fn admin_token() -> String {
    token(&new_id(), "admin", &[])
}

pub fn service_token() -> String {
    token(&new_id(), "service", &[])
}

pub fn user_token(sub: &str, servers: &[&str]) -> String {
    token(sub, "user", servers)
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded base64url.
pub fn b64url(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(B64URL[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes unpadded (or padded) base64url.
pub fn b64url_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = B64URL.iter().position(|&x| x == c).expect("base64url digit") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// The payload of a JWT, unverified.
pub fn jwt_payload(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("JWT has a payload");
    serde_json::from_slice(&b64url_decode(part)).expect("JWT payload is JSON")
}

/// Generates a key pair with the `openssl` CLI; returns (private, public) PEM
/// paths. `kind` is `rsa`, `ec` (P-256) or `ed25519`.
pub fn openssl_keypair(dir: &TempDir, kind: &str, name: &str) -> (PathBuf, PathBuf) {
    tokens::openssl_keypair(dir.path(), kind, name).unwrap_or_else(|e| panic!("{kind} key pair: {e}"))
}

// ---------------------------------------------------------------------------
// Channels and publish bodies
// ---------------------------------------------------------------------------

pub fn logs(server: &str) -> String {
    format!("server:{server}:logs")
}

pub fn metrics(server: &str) -> String {
    format!("server:{server}:metrics")
}

pub fn status(server: &str) -> String {
    format!("server:{server}:status")
}

pub fn notifications(user: &str) -> String {
    format!("user:{user}:notifications")
}

pub fn log_body(server: &str, message: &str) -> Value {
    json!({
        "type": "log_entry",
        "channel": logs(server),
        "data": {"server_id": server, "level": "INFO", "source": "server", "message": message},
    })
}

pub fn metrics_body(server: &str, players: i64, tps: Option<f64>) -> Value {
    let mut body = json!({
        "type": "metrics",
        "channel": metrics(server),
        "data": {
            "server_id": server,
            "cpu_percent": 45.2,
            "memory_used": 2147483648u64,
            "memory_total": 4294967296u64,
            "memory_percent": 50.0,
            "players_online": players,
            "max_players": 20,
            "uptime_seconds": 300,
        },
    });
    if let Some(tps) = tps {
        body["data"]["tps"] = json!(tps);
    }
    body
}

pub fn status_body(server: &str, old: &str, new: &str, reason: Option<&str>) -> Value {
    let mut body = json!({
        "type": "server_status",
        "channel": status(server),
        "data": {"server_id": server, "server_name": "MyServer", "old_status": old, "new_status": new},
    });
    if let Some(reason) = reason {
        body["data"]["reason"] = json!(reason);
    }
    body
}

pub fn notification_body(user: &str, title: &str) -> Value {
    json!({
        "type": "notification",
        "channel": notifications(user),
        "data": {"type": "info", "title": title, "message": "Backup finished"},
    })
}

/// An alert; `source_id` is given for `server` alerts (and may be for others).
pub fn alert_body(source: &str, source_id: Option<&str>, title: &str) -> Value {
    let mut body = json!({
        "type": "alert",
        "data": {"severity": "warning", "title": title, "message": "Something happened", "source": source},
    });
    if let Some(id) = source_id {
        body["data"]["source_id"] = json!(id);
    }
    body
}

// ---------------------------------------------------------------------------
// JSON assertions
// ---------------------------------------------------------------------------

/// `2026-11-28T15:30:00.000Z`: UTC RFC 3339 with exactly three fraction digits.
pub fn is_time(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 24 {
        return false;
    }
    let pattern = b"dddd-dd-ddTdd:dd:dd.dddZ";
    b.iter().zip(pattern.iter()).all(|(&c, &p)| if p == b'd' { c.is_ascii_digit() } else { c == p })
}

pub fn assert_time(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("time is not a string: {v}"));
    assert!(is_time(s), "time {s:?} is not UTC RFC 3339 with three fraction digits");
}

/// A canonical lower-case hyphenated UUID.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok() && s == s.to_lowercase() && s.as_bytes()[8] == b'-'
}

/// Compares `actual` with `expected`. Objects must have exactly the same
/// keys; numbers compare by value (so `50` equals `50.0`). In `expected`, the
/// string `"<time>"` matches a section-2 time, `"<uuid>"` a canonical UUID,
/// `"<string>"` any non-empty string, `"<u64>"` any non-negative integer and
/// `"<any>"` any value.
pub fn assert_json(actual: &Value, expected: &Value) {
    let mut errors = Vec::new();
    json_match(actual, expected, "$", &mut errors);
    assert!(errors.is_empty(), "JSON mismatch:\n  {}\nactual:   {actual}\nexpected: {expected}", errors.join("\n  "));
}

fn json_match(a: &Value, e: &Value, path: &str, errors: &mut Vec<String>) {
    match (a, e) {
        (_, Value::String(p)) if p == "<any>" => {}
        (Value::String(s), Value::String(p)) if p == "<time>" => {
            if !is_time(s) {
                errors.push(format!("{path}: {s:?} is not a 3-digit UTC time"));
            }
        }
        (Value::String(s), Value::String(p)) if p == "<uuid>" => {
            if !is_uuid(s) {
                errors.push(format!("{path}: {s:?} is not a lower-case UUID"));
            }
        }
        (Value::String(s), Value::String(p)) if p == "<string>" => {
            if s.is_empty() {
                errors.push(format!("{path}: empty string"));
            }
        }
        (Value::Number(n), Value::String(p)) if p == "<u64>" => {
            if n.as_u64().is_none() {
                errors.push(format!("{path}: {n} is not a non-negative integer"));
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let same = match (x.as_i64(), y.as_i64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            };
            if !same {
                errors.push(format!("{path}: {x} != {y}"));
            }
        }
        (Value::Object(ao), Value::Object(eo)) => {
            for k in eo.keys() {
                if !ao.contains_key(k) {
                    errors.push(format!("{path}: missing key {k:?}"));
                }
            }
            for (k, v) in ao {
                match eo.get(k) {
                    Some(ev) => json_match(v, ev, &format!("{path}.{k}"), errors),
                    None => errors.push(format!("{path}: unexpected key {k:?} = {v}")),
                }
            }
        }
        (Value::Array(aa), Value::Array(ea)) => {
            if aa.len() != ea.len() {
                errors.push(format!("{path}: {} elements, expected {}", aa.len(), ea.len()));
            } else {
                for (i, (x, y)) in aa.iter().zip(ea).enumerate() {
                    json_match(x, y, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {
            if a != e {
                errors.push(format!("{path}: {a} != {e}"));
            }
        }
    }
}

/// The expected `data` of a `metrics_body(SERVER_A, 3, tps)` publish.
pub fn metrics_data(tps: Option<f64>) -> Value {
    let mut data = json!({
        "server_id": SERVER_A,
        "timestamp": "<time>",
        "cpu_percent": 45.2,
        "memory_used": 2147483648u64,
        "memory_total": 4294967296u64,
        "memory_percent": 50.0,
        "players_online": 3,
        "max_players": 20,
        "uptime_seconds": 300,
    });
    if let Some(tps) = tps {
        data["tps"] = json!(tps);
    }
    data
}

/// Receives messages until `n` log entries came (other types are
/// skipped); returns their `message`s.
pub fn recv_log_messages(client: &mut Client, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let msg = client.recv_json_within(Duration::from_secs(15));
        if msg["type"] == "log_entry" {
            got.push(msg["data"]["message"].as_str().unwrap_or_default().to_string());
        }
    }
    got
}

/// `["{prefix} {i}" for i in range]`.
pub fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i}")).collect()
}

/// The expected shape of a control notification.
pub fn control(code: &str, message: &str, data: Value) -> Value {
    json!({"type": "notification", "data": {"code": code, "message": message, "data": data}, "timestamp": "<time>"})
}

pub fn subscribed(channels: &[&str]) -> Value {
    control("SUBSCRIBED", "Successfully subscribed to channels", json!(channels))
}

pub fn unsubscribed(channels: &[&str]) -> Value {
    control("UNSUBSCRIBED", "Successfully unsubscribed from channels", json!(channels))
}

/// The expected shape of an `error` with details.
pub fn error_msg(code: &str, data: Value) -> Value {
    json!({"type": "error", "data": {"code": code, "message": "<string>", "data": data}, "timestamp": "<time>"})
}

/// Asserts `msg` is an `error` with `code` (details, if any, not checked).
pub fn assert_error_code(msg: &Value, code: &str) {
    assert_eq!(msg["type"], "error", "expected an error {code}, got {msg}");
    assert_eq!(msg["data"]["code"], code, "expected error {code}, got {msg}");
    assert!(msg["data"]["message"].as_str().is_some_and(|m| !m.is_empty()), "error without message: {msg}");
    assert!(msg.get("channel").is_none(), "error with a channel: {msg}");
    assert!(msg.get("seq").is_none() && msg.get("epoch").is_none(), "error with seq/epoch: {msg}");
    assert_time(&msg["timestamp"]);
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body of {} is not JSON ({e}): {:?}", self.status, self.text()))
    }
}

/// One HTTP/1.1 client connection (keeps bytes read past a response).
pub struct HttpConn {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl HttpConn {
    pub fn connect(addr: SocketAddr) -> HttpConn {
        let stream = TcpStream::connect(addr).expect("connect to hub");
        HttpConn::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> HttpConn {
        stream.set_nodelay(true).ok();
        HttpConn { stream, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to hub");
    }

    /// Sends and reads one response.
    pub fn request(&mut self, bytes: &[u8]) -> HttpResponse {
        self.send(bytes);
        self.read_response(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Reads more bytes into `buf`; Ok(0) on EOF.
    fn fill(&mut self, deadline: Instant) -> std::io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(ErrorKind::TimedOut, "deadline"));
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16384];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one response: the head, then `Content-Length` bytes (or, without
    /// it, everything up to EOF; nothing for `101`).
    pub fn read_response(&mut self, timeout: Duration) -> Result<HttpResponse, String> {
        let deadline = Instant::now() + timeout;
        let (status, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hs);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers = resp
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect::<Vec<_>>();
                    break (resp.code.unwrap_or(0), headers, n);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(format!("bad response head ({e}): {:?}", String::from_utf8_lossy(&self.buf))),
            }
            match self.fill(deadline) {
                Ok(0) => {
                    return Err(format!(
                        "connection closed before a full response head; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ))
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(format!("no full response head ({e}); got {:?}", String::from_utf8_lossy(&self.buf)))
                }
            }
        };
        self.buf.drain(..head_len);
        let mut resp = HttpResponse { status, headers, body: Vec::new() };
        if status == 101 || status == 204 || status == 304 {
            return Ok(resp);
        }
        match resp.header("content-length") {
            Some(len) => {
                let len: usize = len.trim().parse().map_err(|_| format!("bad Content-Length {len:?}"))?;
                while self.buf.len() < len {
                    match self.fill(deadline) {
                        Ok(0) => return Err(format!("EOF inside a {len}-byte body")),
                        Ok(_) => {}
                        Err(e) => return Err(format!("body not complete: {e}")),
                    }
                }
                resp.body = self.buf.drain(..len).collect();
            }
            None => {
                if resp.header("transfer-encoding").is_some() {
                    return Err("chunked responses are not handled by this harness".to_string());
                }
                loop {
                    match self.fill(deadline) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                        Err(e) => return Err(format!("body without Content-Length not ended: {e}")),
                    }
                }
                resp.body = std::mem::take(&mut self.buf);
            }
        }
        Ok(resp)
    }

    /// Waits for the hub to close the connection. Ok(bytes received first).
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(0) => return Ok(std::mem::take(&mut self.buf)),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(std::mem::take(&mut self.buf)),
                Err(e) => return Err(format!("still open ({e}); received {:?}", String::from_utf8_lossy(&self.buf))),
            }
        }
    }
}

/// Sends `request` on a fresh connection and reads one response.
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    HttpConn::connect(addr).request(request)
}

/// `GET path` with an optional Bearer token, `Connection: close`.
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> HttpResponse {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n");
    raw_http(addr, req.as_bytes())
}

/// The bytes of `POST /api/v1/publish` (keep-alive).
pub fn publish_request(token: Option<&str>, body: &[u8]) -> Vec<u8> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let mut req = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

pub fn publish(addr: SocketAddr, token: &str, body: &Value) -> HttpResponse {
    raw_http(addr, &publish_request(Some(token), body.to_string().as_bytes()))
}

/// Publishes with a service token; asserts `202 {"recipients": N}`, returns N.
pub fn publish_ok(addr: SocketAddr, body: &Value) -> u64 {
    let resp = publish(addr, &service_token(), body);
    recipients(&resp, body)
}

/// Checks a publish answer is `202 {"recipients": N}` and returns N.
pub fn recipients(resp: &HttpResponse, body: &Value) -> u64 {
    assert_eq!(resp.status, 202, "publish of {body} answered {} {}", resp.status, resp.text());
    let v = resp.json();
    let obj = v.as_object().unwrap_or_else(|| panic!("publish answer is not an object: {v}"));
    assert_eq!(obj.len(), 1, "publish answer has other keys: {v}");
    v["recipients"].as_u64().unwrap_or_else(|| panic!("no integer recipients: {v}"))
}

/// Asserts an HTTP error answer: status, `Content-Type: application/json`,
/// body exactly `{"error": code, "message": text}` (and `message` equal to
/// `message` when given).
pub fn assert_http_error(resp: &HttpResponse, status: u16, code: &str, message: Option<&str>) {
    assert_eq!(resp.status, status, "expected {status} {code}, got {} {:?} {}", resp.status, resp.headers, resp.text());
    let ct = resp.header("content-type").unwrap_or("");
    assert!(
        ct.to_ascii_lowercase().starts_with("application/json"),
        "{status} without Content-Type application/json: {:?}",
        resp.headers
    );
    let v = resp.json();
    let obj = v.as_object().unwrap_or_else(|| panic!("error body is not an object: {v}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "message"], "error body keys: {v}");
    assert_eq!(v["error"], code, "error code in {v}");
    let text = v["message"].as_str().unwrap_or_else(|| panic!("message is not a string: {v}"));
    if let Some(m) = message {
        assert_eq!(text, m, "error message in {v}");
    }
}

// ---------------------------------------------------------------------------
// WebSocket: raw upgrade requests
// ---------------------------------------------------------------------------

/// The sample key of RFC 6455 section 1.3.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// Its accept value.
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// An upgrade request head for `path` (with query) plus `extra` header lines.
pub fn upgrade_request(path: &str, extra: &[(&str, &str)]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// A request head written line by line (no defaults).
pub fn head(lines: &[&str]) -> String {
    let mut req = lines.join("\r\n");
    req.push_str("\r\n\r\n");
    req
}

pub fn ws_path(token: &str) -> String {
    format!("/api/v1/ws?token={token}")
}

/// Asserts a `101` that completes the RFC 6455 handshake without a
/// subprotocol or extension.
pub fn assert_upgraded(resp: &HttpResponse) {
    assert_switched(resp);
    assert!(!resp.has_header("sec-websocket-extensions"), "101 carries extensions: {:?}", resp.headers);
}

/// Asserts a `101` that completes the RFC 6455 handshake without a
/// subprotocol (extensions are the caller's to check).
pub fn assert_switched(resp: &HttpResponse) {
    assert_eq!(resp.status, 101, "expected 101, got {} {:?} {}", resp.status, resp.headers, resp.text());
    assert!(resp.header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")), "{:?}", resp.headers);
    assert!(
        resp.header("connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{:?}",
        resp.headers
    );
    assert_eq!(resp.header("sec-websocket-accept"), Some(WS_ACCEPT), "{:?}", resp.headers);
    assert!(!resp.has_header("sec-websocket-protocol"), "101 carries a subprotocol: {:?}", resp.headers);
}

// ---------------------------------------------------------------------------
// WebSocket: tungstenite client
// ---------------------------------------------------------------------------

/// What a client saw next.
#[derive(Debug)]
pub enum Event {
    Json(Value),
    Binary(Vec<u8>),
    /// A Close frame: its code (None when it had no payload) and reason.
    Close(Option<u16>, String),
    /// The connection ended without a Close frame (or errored).
    Ended(String),
    Timeout,
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

/// Connects with `?token=`; panics unless upgraded.
pub fn ws_connect(addr: SocketAddr, token: &str) -> Client {
    ws_connect_request(addr, format!("ws://{addr}{}", ws_path(token))).unwrap_or_else(|e| panic!("{e}"))
}

/// Connects with any tungstenite request (URL or `ClientRequestBuilder`).
pub fn ws_connect_request(addr: SocketAddr, req: impl IntoClientRequest) -> Result<Client, String> {
    ws_connect_stream(TcpStream::connect(addr).expect("connect to hub"), req)
}

pub fn ws_connect_stream(stream: TcpStream, req: impl IntoClientRequest) -> Result<Client, String> {
    stream.set_nodelay(true).ok();
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    match tungstenite::client(req, stream) {
        Ok((ws, _resp)) => Ok(Client { ws }),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => Err(format!(
            "upgrade refused: {} {}",
            resp.status(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
        )),
        Err(e) => Err(format!("upgrade failed: {e}")),
    }
}

impl Client {
    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send text");
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// Sends, ignoring errors (for tests that expect the hub to close).
    pub fn try_send_text(&mut self, text: &str) -> bool {
        self.ws.send(Message::text(text)).is_ok()
    }

    pub fn subscribe(&mut self, channels: &[&str]) {
        self.send_json(&json!({"type": "subscribe", "data": {"channels": channels}}));
    }

    pub fn unsubscribe(&mut self, channels: &[&str]) {
        self.send_json(&json!({"type": "unsubscribe", "data": {"channels": channels}}));
    }

    /// Subscribes and asserts the answer is exactly `SUBSCRIBED` with
    /// `expected` (no refusal before it).
    pub fn subscribe_ok(&mut self, channels: &[&str]) {
        self.subscribe(channels);
        let msg = self.recv_json();
        let expected: Vec<String> = channels.iter().map(|c| c.to_lowercase()).fold(Vec::new(), |mut v, c| {
            if !v.contains(&c) {
                v.push(c);
            }
            v
        });
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        assert_json(&msg, &subscribed(&expected));
    }

    /// The next event within `timeout`, skipping Ping and Pong frames.
    pub fn next_event(&mut self, timeout: Duration) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Event::Timeout;
            }
            self.ws.get_mut().set_read_timeout(Some(left)).ok();
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return Event::Json(
                        serde_json::from_str(t.as_str())
                            .unwrap_or_else(|e| panic!("hub sent a text frame that is not JSON ({e}): {t:?}")),
                    )
                }
                Ok(Message::Binary(b)) => return Event::Binary(b.to_vec()),
                Ok(Message::Close(frame)) => {
                    let _ = self.ws.flush();
                    return match frame {
                        Some(f) => Event::Close(Some(u16::from(f.code)), f.reason.as_str().to_string()),
                        None => Event::Close(None, String::new()),
                    };
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(e) => return Event::Ended(e.to_string()),
            }
        }
    }

    /// The next JSON message within `timeout`; panics on anything else.
    pub fn recv_json_within(&mut self, timeout: Duration) -> Value {
        match self.next_event(timeout) {
            Event::Json(v) => v,
            other => panic!("expected a JSON message within {timeout:?}, got {other:?}"),
        }
    }

    /// The next JSON message within `WAIT`.
    pub fn recv_json(&mut self) -> Value {
        self.recv_json_within(WAIT)
    }

    /// Asserts nothing but Ping/Pong arrives for `d`.
    pub fn expect_no_message(&mut self, d: Duration) {
        match self.next_event(d) {
            Event::Timeout => {}
            other => panic!("expected nothing for {d:?}, got {other:?}"),
        }
    }

    /// Reads until a Close frame; returns its code and the JSON messages
    /// seen before it. Panics when the connection ends otherwise.
    pub fn expect_close(&mut self, timeout: Duration) -> (u16, Vec<Value>) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Event::Json(v) => seen.push(v),
                Event::Binary(_) => {}
                Event::Close(Some(code), _) => return (code, seen),
                other => panic!("expected a Close frame within {timeout:?}, got {other:?} after {seen:?}"),
            }
        }
    }

    /// Sends a `ping` message and asserts a `pong` answer.
    pub fn ping_pong(&mut self) {
        self.send_text(r#"{"type":"ping"}"#);
        let msg = self.recv_json();
        assert_eq!(msg["type"], "pong", "expected pong, got {msg}");
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.ws.get_ref().local_addr().unwrap()
    }
}

// ---------------------------------------------------------------------------
// WebSocket: raw frames
// ---------------------------------------------------------------------------

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One frame, masked with `mask` when given (clients must mask).
pub fn encode_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::new();
    frames::encode_frame(&mut out, fin, opcode, payload, mask);
    out
}

/// One complete frame, masked as a client's.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(true, opcode, payload, Some([0x37, 0xfa, 0x21, 0x3d]))
}

#[derive(Debug, Clone)]
pub struct RawFrame {
    pub fin: bool,
    /// RSV1: a compressed message (permessage-deflate).
    pub rsv1: bool,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.payload)))
    }
}

#[derive(Debug)]
pub enum RawEvent {
    Frame(RawFrame),
    /// Orderly EOF.
    Eof,
    /// Reset or another socket error.
    Reset(String),
    Timeout,
}

/// A WebSocket client that reads and writes frames itself.
pub struct RawWs {
    pub conn: HttpConn,
}

impl RawWs {
    /// Upgrades with `?token=`; panics unless `101`.
    pub fn connect(addr: SocketAddr, token: &str) -> RawWs {
        RawWs::connect_stream(TcpStream::connect(addr).expect("connect to hub"), token)
    }

    pub fn connect_stream(stream: TcpStream, token: &str) -> RawWs {
        let mut conn = HttpConn::from_stream(stream);
        let resp = conn.request(upgrade_request(&ws_path(token), &[]).as_bytes());
        assert_upgraded(&resp);
        RawWs { conn }
    }

    /// Upgrades with `?token=` and `Sec-WebSocket-Extensions: {offer}`;
    /// panics unless `101`. Returns the hub's answer too.
    pub fn connect_offering(addr: SocketAddr, token: &str, offer: &str) -> (RawWs, HttpResponse) {
        let mut conn = HttpConn::connect(addr);
        let resp = conn.request(upgrade_request(&ws_path(token), &[("Sec-WebSocket-Extensions", offer)]).as_bytes());
        assert_switched(&resp);
        (RawWs { conn }, resp)
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.conn.send(bytes);
    }

    pub fn try_send_bytes(&mut self, bytes: &[u8]) -> bool {
        self.conn.stream.write_all(bytes).is_ok()
    }

    /// A masked text frame.
    pub fn send_text(&mut self, text: &str) {
        self.send_bytes(&masked(OP_TEXT, text.as_bytes()));
    }

    pub fn next_event(&mut self, timeout: Duration) -> RawEvent {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.parse_frame() {
                return RawEvent::Frame(frame);
            }
            match self.conn.fill(deadline) {
                Ok(0) => return RawEvent::Eof,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return RawEvent::Timeout,
                Err(e) => return RawEvent::Reset(e.to_string()),
            }
        }
    }

    fn parse_frame(&mut self) -> Option<RawFrame> {
        let b = &self.conn.buf;
        if b.len() < 2 {
            return None;
        }
        let fin = b[0] & 0x80 != 0;
        let rsv1 = b[0] & 0x40 != 0;
        let opcode = b[0] & 0x0f;
        let is_masked = b[1] & 0x80 != 0;
        let (len, mut pos) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        let mask = if is_masked {
            if b.len() < pos + 4 {
                return None;
            }
            let m = [b[pos], b[pos + 1], b[pos + 2], b[pos + 3]];
            pos += 4;
            Some(m)
        } else {
            None
        };
        if b.len() < pos + len {
            return None;
        }
        let mut payload = b[pos..pos + len].to_vec();
        if let Some(m) = mask {
            for (i, x) in payload.iter_mut().enumerate() {
                *x ^= m[i % 4];
            }
        }
        self.conn.buf.drain(..pos + len);
        Some(RawFrame { fin, rsv1, opcode, masked: is_masked, payload })
    }

    /// Reads frames until a Close frame and returns its code; panics if the
    /// connection ends without one.
    pub fn expect_close(&mut self, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                RawEvent::Frame(f) if f.opcode == OP_CLOSE => {
                    return f.close_code().unwrap_or_else(|| panic!("Close frame without a code: {f:?}"))
                }
                RawEvent::Frame(_) => {}
                other => panic!("expected a Close frame within {timeout:?}, got {other:?}"),
            }
        }
    }

    /// The next text frame as JSON, skipping control frames.
    pub fn recv_json(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                RawEvent::Frame(f) if f.opcode == OP_TEXT => return f.json(),
                RawEvent::Frame(f) if matches!(f.opcode, OP_PING | OP_PONG) => {}
                other => panic!("expected a text frame within {timeout:?}, got {other:?}"),
            }
        }
    }
}

/// A TCP connection whose receive buffer is fixed small before `connect`
/// (which turns off receive autotuning), so a client that stops reading
/// fills the kernel buffers after a few MB instead of tens of MB.
pub fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: u32) -> TcpStream {
    engine::connect_with_rcvbuf(addr, rcvbuf, false).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}
