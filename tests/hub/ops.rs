//! Running as a systemd service: the JWT secret from a file or a systemd
//! credential, the notify protocol (`READY=1`, `WATCHDOG=1`,
//! `STOPPING=1`), journal and JSON log lines, and `--help` of every
//! subcommand.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::support::*;

const FILE_SECRET: &str = "secret-from-a-file-0123456789abcdef";

/// The secret `token` signs with must be `secret`.
fn assert_signed_with(out: &CliOutput, secret: &str) {
    assert_eq!(out.code, Some(0), "{out:?}");
    let mut v = Validation::new(Algorithm::HS256);
    v.validate_aud = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(out.stdout.trim(), &DecodingKey::from_secret(secret.as_bytes()).unwrap(), &v)
        .unwrap_or_else(|e| panic!("token not signed with {secret}: {e}; {out:?}"));
}

fn private_file(dir: &tempfile::TempDir, name: &str, contents: &str, mode: u32) -> std::path::PathBuf {
    let path = write_file(dir, name, contents);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn jwt_secret_file_is_read_with_one_newline_stripped() {
    let dir = temp_dir();
    let secret = private_file(&dir, "jwt.secret", &format!("{FILE_SECRET}\n"), 0o600);
    let config = write_file(&dir, "hub.toml", &format!("[auth]\njwt_secret_file = \"{}\"\n", secret.display()));
    let config = config.to_str().unwrap();
    let out = run_cli(&["token", "--sub", OWNER, "--config", config], &[]);
    assert_signed_with(&out, FILE_SECRET);
    let out = run_cli(&["check-config", "--config", config], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr_lines().is_empty(), "a 0600 file gives no warning: {out:?}");
    // The environment wins over the file, as for every other key.
    let out = run_cli(&["token", "--sub", OWNER, "--config", config], &[("AYMC_JWT_SECRET", "env-secret")]);
    assert_signed_with(&out, "env-secret");
    // Only one trailing newline goes.
    let two = private_file(&dir, "two.secret", "abc\n\n", 0o600);
    let two = write_file(&dir, "two.toml", &format!("[auth]\njwt_secret_file = \"{}\"\n", two.display()));
    assert_signed_with(&run_cli(&["token", "--sub", OWNER, "--config", two.to_str().unwrap()], &[]), "abc\n");
}

#[test]
fn the_hub_serves_with_a_secret_file() {
    let dir = temp_dir();
    let secret = private_file(&dir, "jwt.secret", &format!("{FILE_SECRET}\n"), 0o600);
    let mut cfg = HubConfig::new().auth(&format!("jwt_secret_file = \"{}\"", secret.display()));
    cfg.secret = None;
    let hub = cfg.start();
    let token = sign_hs(&claims(&new_id(), "admin", &[]), FILE_SECRET, Algorithm::HS256);
    let resp = http_get(hub.addr, "/api/v1/stats", Some(&token));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = http_get(hub.addr, "/api/v1/stats", Some(&admin_token()));
    assert_eq!(resp.status, 401, "the config's usual secret is not the one in use");
}

#[test]
fn secret_file_errors_and_warnings() {
    let dir = temp_dir();
    let empty = private_file(&dir, "empty.secret", "\n", 0o600);
    let open = private_file(&dir, "open.secret", "open-secret", 0o644);
    let missing = dir.path().join("missing.secret");
    let file_key = |p: &std::path::Path| format!("jwt_secret_file = \"{}\"\n", p.display());
    let cases = [
        ("empty.toml", format!("[auth]\n{}", file_key(&empty)), "empty"),
        ("missing.toml", format!("[auth]\n{}", file_key(&missing)), "missing.secret"),
        ("both.toml", format!("[auth]\njwt_secret = \"x\"\n{}", file_key(&open)), "both"),
    ];
    for (name, toml, expect) in cases {
        let path = write_file(&dir, name, &toml);
        let out = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
        assert_eq!(out.code, Some(2), "{name}: {out:?}");
        let lines = out.stderr_lines();
        assert!(lines.len() == 1 && lines[0].contains(expect), "{name}: {out:?}");
    }
    let open = write_file(&dir, "open.toml", &format!("[auth]\n{}", file_key(&open)));
    let out = run_cli(&["check-config", "--config", open.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(0), "a warning keeps exit 0: {out:?}");
    let lines = out.stderr_lines();
    assert!(lines.len() == 1 && lines[0].contains("warning") && lines[0].contains("644"), "{out:?}");
}

#[test]
fn systemd_credential_is_the_fallback_secret() {
    let creds = temp_dir();
    private_file(&creds, "jwt_secret", "credential-secret\n", 0o400);
    let dir = temp_dir();
    let empty = write_file(&dir, "hub.toml", "listen = \"127.0.0.1:0\"\n");
    let creds_dir = creds.path().to_str().unwrap();
    let out = run_cli(
        &["token", "--sub", OWNER, "--config", empty.to_str().unwrap()],
        &[("CREDENTIALS_DIRECTORY", creds_dir)],
    );
    assert_signed_with(&out, "credential-secret");
    // A configured secret wins over the credential.
    let with = write_file(&dir, "with.toml", "[auth]\njwt_secret = \"configured\"\n");
    let out = run_cli(
        &["token", "--sub", OWNER, "--config", with.to_str().unwrap()],
        &[("CREDENTIALS_DIRECTORY", creds_dir)],
    );
    assert_signed_with(&out, "configured");
    // Without the credential file: no key at all.
    let none = temp_dir();
    let out = run_cli(
        &["check-config", "--config", empty.to_str().unwrap()],
        &[("CREDENTIALS_DIRECTORY", none.path().to_str().unwrap())],
    );
    assert_eq!(out.code, Some(2), "{out:?}");
}

/// Datagrams received on `sock` until `until` holds for the list or
/// `timeout` passes.
fn recv_until(sock: &UnixDatagram, timeout: Duration, until: impl Fn(&[String]) -> bool) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !until(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

fn notify_cycle(sock: &UnixDatagram, notify_socket: &str) {
    let mut hub = HubConfig::new().env("NOTIFY_SOCKET", notify_socket).env("WATCHDOG_USEC", "200000").start();
    let got = recv_until(sock, WAIT, |g| g.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3);
    assert_eq!(got.first().map(String::as_str), Some("READY=1"), "{got:?}");
    assert!(got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3, "watchdog every 100 ms: {got:?}");
    hub.signal(libc::SIGTERM);
    let got = recv_until(sock, WAIT, |g| g.iter().any(|m| m == "STOPPING=1"));
    assert!(got.iter().any(|m| m == "STOPPING=1"), "{got:?}");
    assert!(hub.wait_exit(WAIT).is_some_and(|s| s.success()));
}

#[test]
fn notify_ready_watchdog_stopping_on_a_path_socket() {
    let dir = temp_dir();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    notify_cycle(&sock, path.to_str().unwrap());
}

#[test]
fn notify_on_an_abstract_socket() {
    let name = format!("aymc-hub-test-notify-{}-{}", std::process::id(), new_id());
    let sock = UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    notify_cycle(&sock, &format!("@{name}"));
}

#[test]
fn without_watchdog_usec_only_ready_and_stopping() {
    let dir = temp_dir();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut hub = HubConfig::new().env("NOTIFY_SOCKET", path.to_str().unwrap()).start();
    hub.signal(libc::SIGTERM);
    let got = recv_until(&sock, WAIT, |g| g.iter().any(|m| m == "STOPPING=1"));
    assert_eq!(got, ["READY=1", "STOPPING=1"]);
    assert!(hub.wait_exit(WAIT).is_some());
}

#[test]
fn journal_lines_have_priorities_and_no_timestamp() {
    let mut hub = HubConfig::new().env("AYMC_LOG_STYLE", "journal").start();
    hub.signal(libc::SIGTERM);
    assert!(hub.wait_exit(WAIT).is_some());
    let logs = hub.logs();
    assert!(logs.iter().any(|l| l.starts_with("<6>listening on ")), "{logs:?}");
    assert!(logs.iter().any(|l| l == "<6>stopped"), "{logs:?}");
    for line in logs.iter().filter(|l| !l.is_empty()) {
        assert!(["<3>", "<4>", "<6>", "<7>"].iter().any(|p| line.starts_with(p)), "{line}");
    }
}

/// The `level` the reactor's `stopped` line is hidden by.
const HIDE_STOPPED: &str = "info,aymc_hub::reactor=warn";

#[test]
fn json_log_lines_parse() {
    // An empty AYMC_LOG counts as unset (the harness sets it to info).
    let mut hub = HubConfig::new()
        .extra(&format!("[log]\nformat = \"json\"\nlevel = \"{HIDE_STOPPED}\""))
        .env("AYMC_LOG", "")
        .start();
    hub.signal(libc::SIGTERM);
    assert!(hub.wait_exit(WAIT).is_some());
    let logs = hub.logs();
    for line in logs.iter().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(is_time(v["ts"].as_str().unwrap()), "{line}");
        assert!(v["target"].is_string() && v["msg"].is_string(), "{line}");
        assert!(["error", "warn", "info", "debug", "trace"].contains(&v["level"].as_str().unwrap()), "{line}");
    }
    assert!(logs.iter().any(|l| l.contains("\"msg\":\"listening on ")), "{logs:?}");
    assert!(!logs.iter().any(|l| l.contains("\"msg\":\"stopped\"")), "log.level applies: {logs:?}");
}

#[test]
fn aymc_log_wins_over_log_level() {
    let mut hub = HubConfig::new().extra(&format!("[log]\nlevel = \"{HIDE_STOPPED}\"")).env("AYMC_LOG", "info").start();
    hub.signal(libc::SIGTERM);
    assert!(hub.wait_exit(WAIT).is_some());
    // The last lines may still be in the pipe when the process is gone.
    let stopped = hub.wait_for_log(WAIT, |l| l.ends_with("stopped"));
    assert!(stopped.is_some(), "{:?}", hub.logs());
}

#[test]
fn every_subcommand_has_help() {
    for (args, expect) in [
        (&["--help"][..], "aymc-hub check-config"),
        (&["serve", "--help"][..], "--listen ADDR"),
        (&["token", "--help"][..], "--sub UUID"),
        (&["check-config", "--help"][..], "Validates"),
        (&["token", "-h"][..], "--ttl SECONDS"),
    ] {
        let out = run_cli(args, &[]);
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        assert!(out.stdout.starts_with("usage: ") && out.stdout.contains(expect), "{args:?}: {out:?}");
        assert!(out.stderr.is_empty(), "{args:?}: {out:?}");
    }
}

/// Sends SIGHUP and waits for the reload's line (the `n`-th with `marker`).
fn sighup(hub: &Hub, marker: &str, n: usize) -> String {
    hub.signal(libc::SIGHUP);
    let mut line = None;
    let ok = wait_until(WAIT, || {
        let logs: Vec<String> = hub.logs().into_iter().filter(|l| l.contains(marker)).collect();
        line = logs.get(n - 1).cloned();
        line.is_some()
    });
    assert!(ok, "no {marker:?} line #{n}: {:?}", hub.logs());
    line.unwrap()
}

#[test]
fn sighup_reloads_limits_and_owners_and_keeps_the_hub_on_a_broken_file() {
    let config = HubConfig::new().limits("max_subscriptions = 2").extra(SERVERS_TOML);
    let hub = config.clone().start();
    let line = sighup(&hub, "config reloaded", 1);
    assert!(line.ends_with("config reloaded: applied nothing; needs a restart: nothing"), "{line}");

    let mut old = hub.connect_admin();
    let (l, m, s) = (logs(SERVER_A), metrics(SERVER_A), status(SERVER_A));
    old.subscribe_ok(&[&l, &m]);
    let new_owner = new_id();
    let mut changed = HubConfig::new().limits("max_subscriptions = 3").extra(&SERVERS_TOML.replace(OWNER, &new_owner));
    changed.listen = Some("127.0.0.1:1".into());
    std::fs::write(&hub.config_path, changed.toml()).unwrap();
    let line = sighup(&hub, "config reloaded", 2);
    assert!(line.contains("applied limits.max_subscriptions, servers.owner;"), "{line}");
    assert!(line.contains("needs a restart: listen, servers ("), "{line}");
    // The open connection goes on, under the new cap.
    old.subscribe_ok(&[&s]);
    // The new owner may watch SERVER_C; the old one no more.
    let mut owner = hub.connect(&user_token(&new_owner, &[]));
    owner.subscribe_ok(&[&logs(SERVER_C)]);
    let mut former = hub.connect(&user_token(OWNER, &[]));
    former.subscribe(&[&logs(SERVER_C)]);
    assert_json(&former.recv_json(), &error_msg("FORBIDDEN", serde_json::json!([logs(SERVER_C)])));
    assert_json(&former.recv_json(), &subscribed(&[]));

    // A broken file: one error line, the running config stays.
    std::fs::write(&hub.config_path, changed.clone().limits("max_subscriptions = 0").toml()).unwrap();
    sighup(&hub, "config reload failed", 1);
    let mut fresh = hub.connect_admin();
    fresh.subscribe(&[&l, &m, &s, &logs(SERVER_B)]);
    assert_json(&fresh.recv_json(), &error_msg("TOO_MANY_SUBSCRIPTIONS", serde_json::json!([logs(SERVER_B)])));
    assert_json(&fresh.recv_json(), &subscribed(&[&l, &m, &s]));
    std::fs::write(&hub.config_path, "[limits\n").unwrap();
    let line = sighup(&hub, "config reload failed", 2);
    assert!(line.contains("line 1"), "{line}");
    let errors = hub.logs().iter().filter(|l| l.contains("ERROR")).count();
    assert_eq!(errors, 2, "one error line per failed reload: {:?}", hub.logs());
    for client in [&mut old, &mut owner, &mut former, &mut fresh] {
        client.ping_pong();
    }
}
