//! What the web console needs from the hub: metrics history through
//! `history` on metrics channels (PROTOCOL.md 6.1, 6.4), the server list
//! `GET /api/v1/servers` and the embedded console files (section 11).

use serde_json::{json, Value};

use crate::support::*;

fn players(page: &Value) -> Vec<i64> {
    let messages = page["data"]["messages"].as_array().unwrap_or_else(|| panic!("no messages in {page}"));
    messages.iter().map(|m| m["data"]["players_online"].as_i64().unwrap()).collect()
}

#[test]
fn history_on_a_metrics_channel_pages_the_last_metrics_points() {
    let hub = HubConfig::new().extra("[history]\nmetrics_points = 5").start();
    for p in 1..=8 {
        hub.publish(&metrics_body(SERVER_A, p, Some(20.0)));
    }
    let mut c = hub.connect(&user_token(&new_id(), &[SERVER_A]));
    let channel = metrics(SERVER_A);
    c.send_json(&json!({"type": "history", "channel": channel, "data": {"limit": 3}}));
    let page = c.recv_json();
    assert_eq!(page["type"], "history");
    assert_eq!(page["channel"], channel);
    assert_eq!(players(&page), [6, 7, 8]);
    assert_eq!(page["data"]["complete"], false);
    let first = page["data"]["messages"][0]["seq"].as_u64().unwrap();
    c.send_json(&json!({"type": "history", "channel": channel, "data": {"before_seq": first}}));
    let page = c.recv_json();
    assert_eq!(players(&page), [4, 5], "only metrics_points are kept");
    assert_eq!(page["data"]["complete"], false, "1 to 3 were evicted");

    // Subscribing still sends the latest value at once.
    c.subscribe_ok(&[&channel]);
    assert_eq!(c.recv_json()["data"]["players_online"], 8);

    // Same ACL as subscribe; status channels have no history.
    for (channel, code) in [(metrics(SERVER_B), "FORBIDDEN"), (status(SERVER_A), "INVALID_MESSAGE")] {
        c.send_json(&json!({"type": "history", "channel": channel}));
        let msg = c.recv_json();
        assert_error_code(&msg, code);
        assert_eq!(msg["data"]["data"], json!([channel]));
    }
}

#[test]
fn a_metrics_channel_that_never_evicted_is_complete_and_config_refuses_too_many_points() {
    let hub = Hub::start("");
    for p in 1..=3 {
        hub.publish(&metrics_body(SERVER_A, p, None));
    }
    let mut c = hub.connect_admin();
    c.send_json(&json!({"type": "history", "channel": metrics(SERVER_A)}));
    let page = c.recv_json();
    assert_eq!((players(&page), &page["data"]["complete"]), (vec![1, 2, 3], &json!(true)));
    let stats = hub.stats();
    assert_eq!(stats["history"]["entries"], 3, "metrics rings count in the history size: {stats}");

    let dir = temp_dir();
    let toml = format!("[auth]\njwt_secret = \"{SECRET}\"\n[history]\nmetrics_points = 100001\n");
    let path = write_file(&dir, "points.toml", &toml);
    let out = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("history.metrics_points must be from 0 to 100000"), "{out:?}");
}

const AGENT: &str = "0c8f2a9e-0000-4000-8000-000000000001";

/// A hub that knows SERVER_A ("Alpha", run by AGENT) and SERVER_C
/// ("Creative", owned by OWNER) from its config; AGENT's address answers
/// nothing.
fn hub_with_servers() -> Hub {
    HubConfig::new()
        .extra(&format!(
            "[[agents]]\nid = \"{AGENT}\"\naddress = \"127.0.0.1:1\"\n\n\
             [[servers]]\nid = \"{SERVER_A}\"\nname = \"Alpha\"\nagent = \"{AGENT}\"\n\n{SERVERS_TOML}"
        ))
        .start()
}

fn servers_get(hub: &Hub, token: Option<&str>) -> HttpResponse {
    http_get(hub.addr, "/api/v1/servers", token)
}

#[test]
fn servers_lists_what_the_token_may_watch_sorted_by_name() {
    let hub = hub_with_servers();
    // SERVER_B is known only from its status; SERVER_A's config name wins
    // over the one its status carries.
    hub.publish(&status_body(SERVER_B, "starting", "running", None));
    hub.publish(&status_body(SERVER_A, "unknown", "starting", None));
    hub.publish(&status_body(SERVER_A, "starting", "stopped", None));

    let resp = servers_get(&hub, Some(&admin_token()));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{:?}", resp.headers);
    assert_eq!(
        resp.json(),
        json!({"servers": [
            {"id": SERVER_A, "name": "Alpha", "status": "stopped", "agent_id": AGENT},
            {"id": SERVER_C, "name": "Creative", "status": "unknown", "agent_id": null},
            {"id": SERVER_B, "name": "MyServer", "status": "running", "agent_id": null},
        ]})
    );

    let user = servers_get(&hub, Some(&user_token(&new_id(), &[SERVER_B, "1b4e28ba-2fa1-11d2-883f-0016d3cca427"])));
    assert_eq!(user.status, 200, "{}", user.text());
    assert_eq!(
        user.json(),
        json!({"servers": [{"id": SERVER_B, "name": "MyServer", "status": "running", "agent_id": null}]})
    );
    let owner = servers_get(&hub, Some(&user_token(OWNER, &[])));
    assert_eq!(
        owner.json()["servers"],
        json!([{"id": SERVER_C, "name": "Creative", "status": "unknown", "agent_id": null}])
    );
    assert_eq!(servers_get(&hub, Some(&user_token(&new_id(), &[]))).json(), json!({"servers": []}));
}

#[test]
fn servers_takes_the_token_as_the_websocket_does_with_the_cookie_origin_rule() {
    let hub = Hub::start("");
    hub.publish(&status_body(SERVER_A, "starting", "running", None));
    assert_http_error(&servers_get(&hub, None), 401, "unauthorized", Some("missing token"));
    assert_http_error(&servers_get(&hub, Some("not.a.token")), 401, "unauthorized", None);
    let token = user_token(&new_id(), &[SERVER_A]);
    let one = json!({"servers": [{"id": SERVER_A, "name": "MyServer", "status": "running", "agent_id": null}]});
    let resp = http_get(hub.addr, &format!("/api/v1/servers?token={token}"), None);
    assert_eq!(resp.json(), one);

    let cookie = |origin: Option<&str>| {
        let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
        let req = format!(
            "GET /api/v1/servers HTTP/1.1\r\nHost: 127.0.0.1\r\n{origin}Cookie: token={token}\r\nConnection: close\r\n\r\n"
        );
        raw_http(hub.addr, req.as_bytes())
    };
    assert_eq!(cookie(None).json(), one, "a same-site GET sends no Origin");
    assert_eq!(cookie(Some("http://127.0.0.1")).json(), one, "the hub's own origin");
    assert_http_error(&cookie(Some("https://evil.example")), 403, "forbidden", Some("origin not allowed"));
    let post = raw_http(hub.addr, b"POST /api/v1/servers HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_http_error(&post, 405, "method_not_allowed", None);
    assert_eq!(post.header("allow"), Some("GET"));
}

const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

#[test]
fn the_console_files_are_served_without_a_token_with_their_types_and_the_page_with_a_strict_policy() {
    let hub = Hub::start("");
    let cases = [
        ("/", "text/html; charset=utf-8", "aymc-hub console"),
        ("/console.js", "text/javascript; charset=utf-8", "use strict"),
        ("/console.css", "text/css; charset=utf-8", "body"),
        ("/charts.js", "text/javascript; charset=utf-8", "AymcCharts"),
        ("/aymc-client.js", "text/javascript; charset=utf-8", "AymcClient"),
        ("/aymc-client.d.ts", "text/plain; charset=utf-8", "export declare class AymcClient"),
    ];
    for (path, content_type, contains) in cases {
        let resp = http_get(hub.addr, path, None);
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        assert_eq!(resp.header("content-type"), Some(content_type), "{path}");
        assert_eq!(resp.header("cache-control"), Some("no-cache"), "{path}");
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(resp.header("referrer-policy"), Some("no-referrer"), "{path}");
        assert_eq!(resp.header("content-length"), Some(resp.body.len().to_string().as_str()), "{path}");
        assert!(resp.text().contains(contains), "{path}: {}", resp.text());
        let csp = resp.header("content-security-policy");
        assert_eq!(csp, (path == "/").then_some(CSP), "{path}");
    }
    let page = http_get(hub.addr, "/", None).text();
    for src in ["/console.js", "/charts.js", "/console.css", "/aymc-client.js"] {
        assert!(page.contains(&format!("\"{src}\"")), "the page loads {src}: {page}");
    }
    assert!(!page.contains("<script>") && !page.contains("<style"), "nothing inline, the policy forbids it");
}

#[test]
fn unknown_console_paths_are_404_and_head_is_405() {
    let hub = Hub::start("");
    for path in ["/console.xyz", "/index.html", "/console.js/", "/aymc-client.js.map"] {
        assert_http_error(&http_get(hub.addr, path, None), 404, "not_found", Some("no such endpoint"));
    }
    let resp = raw_http(hub.addr, b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("GET"));

    // Keep-alive: the files and an API answer on one connection.
    let mut conn = HttpConn::connect(hub.addr);
    for path in ["/", "/aymc-client.js", "/healthz"] {
        let resp = conn.request(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes());
        assert_eq!(resp.status, 200, "{path}");
    }
}

#[test]
fn metrics_history_after_a_clean_restart_says_what_came_before_is_gone() {
    let dir = temp_dir();
    let db = dir.path().join("history.db");
    let start = || HubConfig::new().extra(&format!("[history]\ndb_path = \"{}\"", db.display())).start();
    let mut hub = start();
    for p in 1..=3 {
        hub.publish(&metrics_body(SERVER_A, p, None));
    }
    let epoch = hub.stats()["epoch"].as_str().unwrap().to_string();
    hub.signal(libc::SIGTERM);
    assert!(hub.wait_exit(std::time::Duration::from_secs(8)).is_some_and(|s| s.success()), "clean exit");

    let hub = start();
    assert_eq!(hub.stats()["epoch"], epoch.as_str(), "the same epoch");
    hub.publish(&metrics_body(SERVER_A, 4, None));
    let mut c = hub.connect_admin();
    c.send_json(&json!({"type": "history", "channel": metrics(SERVER_A)}));
    let page = c.recv_json();
    assert_eq!(players(&page), [4], "metrics rings are not stored");
    assert_eq!(page["data"]["messages"][0]["seq"], 4, "the seq goes on");
    assert_eq!(page["data"]["complete"], false, "seqs 1 to 3 are gone");
}

#[test]
fn the_consoles_own_origin_passes_when_allowed_origins_lists_only_the_panel() {
    let hub = HubConfig::new().auth("allowed_origins = [\"https://panel.example\"]").start();
    hub.publish(&status_body(SERVER_A, "starting", "running", None));
    let token = user_token(&new_id(), &[SERVER_A]);
    let cookie = format!("Cookie: token={token}");
    let bearer = format!("Authorization: Bearer {token}");
    // The console at https://hub.example (a proxy forwards the Host) talks
    // to the hub as the page does: the upgrade with its cookie or a query
    // token, the server list with a Bearer header.
    let ask = |path: &str, origin: &str, token: &str, upgrade: bool| {
        let origin = format!("Origin: {origin}");
        let mut lines = vec![format!("GET {path} HTTP/1.1"), "Host: hub.example".into(), origin, token.into()];
        if upgrade {
            lines.extend(["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"].map(String::from));
            lines.push(format!("Sec-WebSocket-Key: {WS_KEY}"));
        } else {
            lines.push("Connection: close".into());
        }
        raw_http(hub.addr, head(&lines.iter().map(String::as_str).collect::<Vec<_>>()).as_bytes())
    };
    let query = ws_path(&token);
    for origin in ["https://hub.example", "http://hub.example", "https://panel.example"] {
        assert_upgraded(&ask("/api/v1/ws", origin, &cookie, true));
        assert_upgraded(&ask(&query, origin, "X-Nothing: 1", true));
        let list = ask("/api/v1/servers", origin, &bearer, false);
        assert_eq!(list.status, 200, "{origin}: {}", list.text());
        assert_eq!(list.json()["servers"][0]["id"], SERVER_A);
    }
    for origin in ["https://evil.example", "https://hub.example.evil.example", "https://hub.example:8443"] {
        assert_http_error(&ask("/api/v1/ws", origin, &cookie, true), 403, "forbidden", Some("origin not allowed"));
        assert_http_error(&ask(&query, origin, "X-Nothing: 1", true), 403, "forbidden", Some("origin not allowed"));
        let list = ask("/api/v1/servers", origin, &bearer, false);
        assert_http_error(&list, 403, "forbidden", Some("origin not allowed"));
    }
}
