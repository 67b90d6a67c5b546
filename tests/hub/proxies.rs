//! PROTOCOL.md section 1, behind a reverse proxy: for a peer in
//! `trusted_proxies` the client is the last `X-Forwarded-For` entry (or,
//! with `proxy_protocol`, the source of the PROXY header that starts the
//! connection); that address is what the connect/disconnect lines name and
//! what `limits.max_connections_per_ip` counts. Every test connects from
//! 127.0.0.1 and plays the proxy itself.

use crate::support::*;

/// A hub that trusts `trusted` (TOML array items) with these `[limits]`.
fn hub_trusting(trusted: &str, limits: &str) -> Hub {
    HubConfig::new().top(&format!("trusted_proxies = [{trusted}]")).limits(limits).start()
}

/// Sends an upgrade (admin token) with `extra` headers on a new connection
/// and reads the answer; the connection stays open.
fn upgrade_with(hub: &Hub, extra: &[(&str, &str)]) -> (HttpConn, HttpResponse) {
    let mut conn = HttpConn::connect(hub.addr);
    let resp = conn.request(upgrade_request(&ws_path(&admin_token()), extra).as_bytes());
    (conn, resp)
}

/// An upgrade whose request head carries `X-Forwarded-For: xff`.
fn forwarded(hub: &Hub, xff: &str) -> (HttpConn, HttpResponse) {
    upgrade_with(hub, &[("X-Forwarded-For", xff)])
}

fn assert_503(resp: &HttpResponse) {
    assert_http_error(resp, 503, "unavailable", None);
    assert_eq!(resp.header("retry-after").map(str::trim), Some("5"), "{:?}", resp.headers);
}

/// Waits for the connect line of a client from `from` (`ADDR via PEER` or
/// `PEER`, as the line writes it) and returns it.
fn connect_line(hub: &Hub, from: &str) -> String {
    hub.wait_for_log(WAIT, |l| l.contains("client connected") && l.contains(&format!("from {from}")))
        .unwrap_or_else(|| panic!("no connect line from {from}:\n{}", hub.logs().join("\n")))
}

#[test]
fn forwarded_addresses_are_counted_per_ip_behind_a_trusted_proxy() {
    let hub = hub_trusting("\"127.0.0.1/32\"", "max_connections_per_ip = 2");
    let mut held = Vec::new();
    for xff in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        let (conn, resp) = forwarded(&hub, xff);
        assert_upgraded(&resp);
        held.push(conn);
    }
    // A second client from 203.0.113.1 fits; a third does not.
    let (second, resp) = forwarded(&hub, "203.0.113.1");
    assert_upgraded(&resp);
    let (_, resp) = forwarded(&hub, "203.0.113.1");
    assert_503(&resp);
    // The proxy's own address is not used up by its clients.
    let resp = http_get(hub.addr, "/healthz", None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    // A closed client frees its slot under its forwarded address.
    drop(second);
    let ok = wait_until(WAIT, || forwarded(&hub, "203.0.113.1").1.status == 101);
    assert!(ok, "the slot of a closed 203.0.113.1 client was never freed");
    drop(held);
}

#[test]
fn the_log_lines_name_the_forwarded_address() {
    let hub = hub_trusting("\"10.0.0.0/8\", \"127.0.0.1/32\", \"::1/128\"", "");
    let (mut conn, resp) = forwarded(&hub, "198.51.100.23, 203.0.113.77");
    assert_upgraded(&resp);
    let peer = conn.stream.local_addr().unwrap().to_string();
    let line = connect_line(&hub, &format!("203.0.113.77 via {peer}"));
    assert!(!line.contains("198.51.100.23"), "only the last entry is the client: {line}");
    conn.send(&masked(0x8, &1000u16.to_be_bytes()));
    let _ = conn.wait_closed(WAIT);
    let line = hub.wait_for_log(WAIT, |l| l.contains("client disconnected") && l.contains(&peer));
    let line = line.unwrap_or_else(|| panic!("no disconnect line:\n{}", hub.logs().join("\n")));
    assert!(line.contains(&format!("from 203.0.113.77 via {peer}")), "{line}");
}

#[test]
fn forwarded_for_is_ignored_from_a_peer_that_is_not_trusted() {
    // 127.0.0.1 is not in the list: all three clients count as 127.0.0.1.
    let hub = hub_trusting("\"10.0.0.0/8\"", "max_connections_per_ip = 2");
    let (a, resp) = forwarded(&hub, "203.0.113.1");
    assert_upgraded(&resp);
    let (_b, resp) = forwarded(&hub, "203.0.113.2");
    assert_upgraded(&resp);
    let (_, resp) = forwarded(&hub, "203.0.113.3");
    assert_503(&resp);
    let peer = a.stream.local_addr().unwrap().to_string();
    let line = connect_line(&hub, &peer);
    assert!(!line.contains("203.0.113") && !line.contains(" via "), "{line}");
    // Without the key at all, the same.
    let hub = Hub::start("max_connections_per_ip = 2");
    let (_a, resp) = forwarded(&hub, "203.0.113.1");
    assert_upgraded(&resp);
    let (_b, resp) = forwarded(&hub, "203.0.113.2");
    assert_upgraded(&resp);
    let (_, resp) = forwarded(&hub, "203.0.113.3");
    assert_503(&resp);
    assert!(hub.logs().iter().all(|l| !l.contains("203.0.113")), "{}", hub.logs().join("\n"));
}

#[test]
fn an_unparseable_last_forwarded_entry_counts_as_the_peer() {
    let hub = hub_trusting("\"127.0.0.1/32\"", "max_connections_per_ip = 2");
    let (a, resp) = forwarded(&hub, "unknown");
    assert_upgraded(&resp);
    let (_b, resp) = forwarded(&hub, "203.0.113.9, not-an-address");
    assert_upgraded(&resp);
    // Both count as 127.0.0.1, so a client without X-Forwarded-For is over.
    let (_, resp) = upgrade_with(&hub, &[]);
    assert_503(&resp);
    // The last entry of all the headers is the client, not the first.
    let (_c, resp) = upgrade_with(&hub, &[("X-Forwarded-For", "127.0.0.1"), ("X-Forwarded-For", "203.0.113.9")]);
    assert_upgraded(&resp);
    let (_d, resp) = forwarded(&hub, "127.0.0.1, [2001:db8::9]:443");
    assert_upgraded(&resp);
    connect_line(&hub, "2001:db8::9 via 127.0.0.1:");
    // The fallbacks are counted.
    drop(a);
    let mut metrics = None;
    wait_until(WAIT, || {
        let resp = http_get(hub.addr, "/metrics", None);
        let ok = resp.status == 200;
        metrics = Some(resp.text());
        ok
    });
    let metrics = metrics.unwrap_or_default();
    assert!(metrics.contains("\naymc_forwarded_for_fallbacks_total 2\n"), "{metrics}");
}

#[test]
fn a_keep_alive_connection_is_counted_under_each_request_s_client() {
    let hub = hub_trusting("\"127.0.0.1/32\"", "max_connections_per_ip = 1");
    let health = |xff: &str| format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: {xff}\r\n\r\n");
    let mut keep = HttpConn::connect(hub.addr);
    assert_eq!(keep.request(health("203.0.113.1").as_bytes()).status, 200);
    let (_, resp) = forwarded(&hub, "203.0.113.1");
    assert_503(&resp);
    // The next request names another client: 203.0.113.1 is free again.
    assert_eq!(keep.request(health("203.0.113.2").as_bytes()).status, 200);
    let (_held, resp) = forwarded(&hub, "203.0.113.1");
    assert_upgraded(&resp);
    // And a request naming a client at its cap is answered 503.
    let resp = keep.request(health("203.0.113.1").as_bytes());
    assert_503(&resp);
}

#[test]
fn a_malformed_trusted_proxy_is_a_config_error_naming_it() {
    let dir = TempDir::new();
    let secret = format!("[auth]\njwt_secret = \"{SECRET}\"\n");
    let check = |toml: &str| {
        let path = dir.write("hub.toml", toml);
        run_cli(&["check-config", "--config", path.to_str().unwrap()], &[])
    };
    let out = check(&format!("trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\", \"::1/128\"]\n{secret}"));
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = check(&format!("trusted_proxies = [\"127.0.0.1\"]\nproxy_protocol = true\n{secret}"));
    assert_eq!(out.code, Some(0), "{out:?}");
    for bad in ["10.0.0.0/33", "10.0.0/8", "localhost", "10.1.2.3/8", "::1/129"] {
        let out = check(&format!("trusted_proxies = [\"127.0.0.1/32\", \"{bad}\"]\n{secret}"));
        assert_eq!(out.code, Some(2), "{bad}: {out:?}");
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{bad}: {out:?}");
        assert!(lines[0].contains(&format!("'{bad}'")) && lines[0].contains("trusted_proxies"), "{bad}: {out:?}");
    }
    let out = check(&format!("proxy_protocol = true\n{secret}"));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("trusted_proxies"), "{out:?}");
}
