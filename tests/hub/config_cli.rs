//! DESIGN.md "Configuration surface": `check-config`, `token`, `serve` as the
//! default subcommand, config errors (one stderr line, exit 2), and the
//! precedence flag > `AYMC_*` environment > file.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use crate::support::*;

/// A config using every key of DESIGN.md's [auth], [limits] and [[servers]].
fn full_config() -> String {
    format!(
        r#"listen = "127.0.0.1:0"

[auth]
jwt_secret = "{SECRET}"
issuer = "aymc-backend"
audience = "aymc-hub"
allowed_origins = ["https://panel.example.com"]
leeway_s = 60
expiry_notice_s = 60

[limits]
ping_interval_s = 54
pong_timeout_s = 60
write_timeout_s = 10
max_message_bytes = 524288
client_queue = 256
max_connections = 10000
max_connections_per_ip = 0
max_subscriptions = 256
rate_per_s = 20
rate_burst = 40
head_max_bytes = 8192
head_max_headers = 64
head_timeout_s = 10
publish_max_bytes = 1048576
shutdown_grace_s = 5

{SERVERS_TOML}"#
    )
}

#[test]
fn check_config_accepts_a_valid_config() {
    let dir = temp_dir();
    let path = write_file(&dir, "full.toml", &full_config());
    let out = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let minimal = write_file(&dir, "minimal.toml", &format!("[auth]\njwt_secret = \"{SECRET}\"\n"));
    let out = run_cli(&["check-config", "--config", minimal.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
}

#[test]
fn config_errors_print_one_line_and_exit_2() {
    let dir = temp_dir();
    let keys = temp_dir();
    let (_, public) = openssl_keypair(&keys, "ec", "ec");
    let garbage_key = write_file(&keys, "garbage.pem", "not a key\n");
    let secret = format!("[auth]\njwt_secret = \"{SECRET}\"\n");
    let cases: Vec<(&str, String)> = vec![
        ("both keys", format!("[auth]\njwt_secret = \"{SECRET}\"\njwt_public_key = \"{}\"\n", public.display())),
        ("no key", "listen = \"127.0.0.1:0\"\n[auth]\nleeway_s = 5\n".to_string()),
        ("bad TOML", format!("listen = \"127.0.0.1:0\n{secret}")),
        ("unknown top-level key", format!("colour = \"blue\"\n{secret}")),
        ("unknown [auth] key", format!("{secret}jwt_secrets = \"x\"\n")),
        ("unknown [limits] key", format!("{secret}[limits]\nmax_conections = 5\n")),
        ("invalid listen", format!("listen = \"not-an-address\"\n{secret}")),
        ("listen without port", format!("listen = \"127.0.0.1\"\n{secret}")),
        ("zero duration", format!("{secret}[limits]\nping_interval_s = 0\n")),
        ("wrong type", format!("{secret}[limits]\nclient_queue = \"many\"\n")),
        ("negative number", format!("{secret}[limits]\nmax_subscriptions = -1\n")),
        ("empty secret", "[auth]\njwt_secret = \"\"\n".to_string()),
        ("missing key file", format!("[auth]\njwt_public_key = \"{}\"\n", dir.path().join("nope.pem").display())),
        ("key file that is no key", format!("[auth]\njwt_public_key = \"{}\"\n", garbage_key.display())),
        ("server id not a UUID", format!("{secret}[[servers]]\nid = \"survival\"\nname = \"Survival\"\n")),
    ];
    for (i, (what, toml)) in cases.iter().enumerate() {
        let path = write_file(&dir, &format!("bad{i}.toml"), toml);
        let out = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
        assert_eq!(out.code, Some(2), "check-config, {what}: {out:?}");
        assert_eq!(out.stderr_lines().len(), 1, "check-config, {what}: stderr must be one line: {:?}", out.stderr);
    }
    let out = run_cli(&["check-config", "--config", dir.path().join("missing.toml").to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(2), "missing file: {out:?}");
    assert_eq!(out.stderr_lines().len(), 1, "missing file: {:?}", out.stderr);
}

#[test]
fn serve_with_a_bad_config_exits_2_with_one_line() {
    let dir = temp_dir();
    let both = write_file(
        &dir,
        "both.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\n[auth]\njwt_secret = \"{SECRET}\"\njwt_public_key = \"/nonexistent.pem\"\n"
        ),
    );
    let bad_toml = write_file(&dir, "bad.toml", "listen = [\n");
    for args in [
        vec!["serve", "--config", both.to_str().unwrap()],
        vec!["--config", both.to_str().unwrap()],
        vec!["serve", "--config", bad_toml.to_str().unwrap()],
    ] {
        let out = run_cli(&args, &[("AYMC_LOG", "info")]);
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert_eq!(out.stderr_lines().len(), 1, "{args:?}: stderr must be one line: {:?}", out.stderr);
    }
}

fn mint(config: &str, args: &[&str]) -> String {
    let mut all = vec!["token", "--config", config];
    all.extend_from_slice(args);
    let out = run_cli(&all, &[]);
    assert_eq!(out.code, Some(0), "{all:?}: {out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "token must print one line: {:?}", out.stdout);
    lines[0].trim().to_string()
}

fn verify(token: &str) -> Value {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_aud = false;
    let key = DecodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("minted token does not verify with the configured secret: {e}"))
        .claims
}

#[test]
fn token_command_mints_tokens_the_hub_accepts() {
    let hub = Hub::start_with_servers("");
    let config = hub.config_path.to_str().unwrap().to_string();
    let admin_id = new_id();
    let servers = format!("{SERVER_A},{SERVER_B}");
    let token = mint(&config, &["--sub", &admin_id, "--role", "admin", "--servers", &servers, "--ttl", "120"]);
    let claims = verify(&token);
    assert_eq!(claims["sub"], json!(admin_id), "{claims}");
    assert_eq!(claims["role"], "admin", "{claims}");
    assert_eq!(claims["servers"], json!([SERVER_A, SERVER_B]), "{claims}");
    let exp = claims["exp"].as_i64().unwrap_or_else(|| panic!("no integer exp: {claims}"));
    assert!((exp - (now() + 120)).abs() <= 5, "exp {exp} is not now + 120");
    let mut admin = hub.connect(&token);
    admin.subscribe_ok(&[&logs(SERVER_C), &notifications(&new_id())]);

    let user_id = new_id();
    let token = mint(&config, &["--sub", &user_id, "--role", "user", "--servers", SERVER_A]);
    let claims = verify(&token);
    assert_eq!(claims["servers"], json!([SERVER_A]), "{claims}");
    let exp = claims["exp"].as_i64().unwrap();
    assert!((exp - (now() + 3600)).abs() <= 5, "default TTL is 3600 s; exp {exp}");
    let mut user = hub.connect(&token);
    user.subscribe(&[&logs(SERVER_A), &logs(SERVER_B), &notifications(&user_id)]);
    assert_json(&user.recv_json(), &error_msg("FORBIDDEN", json!([logs(SERVER_B)])));
    assert_json(&user.recv_json(), &subscribed(&[&logs(SERVER_A), &notifications(&user_id)]));

    let token = mint(&config, &["--sub", &new_id(), "--role", "service"]);
    assert_eq!(recipients(&publish(hub.addr, &token, &log_body(SERVER_A, "minted")), &json!("service")), 1);
    assert_eq!(user.recv_json()["data"]["message"], "minted");
}

#[test]
fn token_command_adds_issuer_and_audience_when_configured() {
    let hub = HubConfig::new().auth("issuer = \"aymc-backend\"\naudience = \"aymc-hub\"").start();
    let token = mint(hub.config_path.to_str().unwrap(), &["--sub", &new_id(), "--role", "admin"]);
    let payload = jwt_payload(&token);
    assert_eq!(payload["iss"], "aymc-backend", "{payload}");
    assert_eq!(payload["aud"], "aymc-hub", "{payload}");
    hub.connect(&token).ping_pong();
}

#[test]
fn token_command_without_a_secret_exits_2() {
    let dir = temp_dir();
    let (_, public) = openssl_keypair(&dir, "ed25519", "ed");
    let config = write_file(&dir, "pk.toml", &format!("[auth]\njwt_public_key = \"{}\"\n", public.display()));
    let out = run_cli(&["token", "--config", config.to_str().unwrap(), "--sub", &new_id()], &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.trim().is_empty(), "printed a token anyway: {out:?}");
    assert_eq!(out.stderr_lines().len(), 1, "{:?}", out.stderr);
}

/// A file `listen` that cannot be bound (TEST-NET-1 is not local).
const UNBINDABLE: &str = "192.0.2.1:9";

#[test]
fn aymc_listen_overrides_the_file() {
    let cfg = HubConfig { listen: Some(UNBINDABLE.to_string()), ..HubConfig::new() };
    // Without the override the hub cannot start, so the test can tell.
    assert!(cfg.clone().try_start_with_args(&["serve", "--config", "{config}"]).is_err());
    let hub = cfg.env("AYMC_LISTEN", "127.0.0.1:0").start();
    assert!(hub.addr.ip().is_loopback(), "{}", hub.addr);
    hub.connect_admin().ping_pong();
}

#[test]
fn the_listen_flag_overrides_aymc_listen() {
    let cfg = HubConfig { listen: Some(UNBINDABLE.to_string()), ..HubConfig::new() }.env("AYMC_LISTEN", "192.0.2.1:10");
    let hub = cfg.start_with_args(&["serve", "--config", "{config}", "--listen", "127.0.0.1:0"]);
    assert!(hub.addr.ip().is_loopback(), "{}", hub.addr);
    hub.connect_admin().ping_pong();
}

#[test]
fn aymc_config_names_the_config_file_and_serve_is_the_default() {
    let hub = HubConfig::new().env("AYMC_CONFIG", "{config}").start_with_args(&[]);
    hub.connect_admin().ping_pong();
    let hub = HubConfig::new().start_with_args(&["--config", "{config}"]);
    hub.connect_admin().ping_pong();
}

#[test]
fn aymc_jwt_secret_overrides_the_file() {
    let file_secret = "file-secret-0123456789";
    let cfg = HubConfig { secret: Some(file_secret.to_string()), ..HubConfig::new() }.env("AYMC_JWT_SECRET", SECRET);
    let hub = cfg.start();
    hub.connect(&admin_token()).ping_pong();
    let stale = sign_hs(&claims(&new_id(), "admin", &[]), file_secret, Algorithm::HS256);
    let resp = raw_http(hub.addr, upgrade_request(&ws_path(&stale), &[]).as_bytes());
    assert_http_error(&resp, 401, "unauthorized", Some("invalid token"));
}
