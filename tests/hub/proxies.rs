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

/// A hub that trusts 127.0.0.1 with PROXY protocol headers.
fn hub_with_proxy_protocol(limits: &str) -> Hub {
    HubConfig::new().top("trusted_proxies = [\"127.0.0.1/32\"]\nproxy_protocol = true").limits(limits).start()
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

/// Sends `preamble` and an upgrade (admin token, `extra` headers) in one
/// write on a new connection and reads the answer.
fn proxied(hub: &Hub, preamble: &[u8], extra: &[(&str, &str)]) -> (HttpConn, HttpResponse) {
    let mut conn = HttpConn::connect(hub.addr);
    let mut bytes = preamble.to_vec();
    bytes.extend_from_slice(upgrade_request(&ws_path(&admin_token()), extra).as_bytes());
    let resp = conn.request(&bytes);
    (conn, resp)
}

/// A v2 PROXY header: `command` 0 (LOCAL) or 1 (PROXY), `family` byte,
/// then `block` (addresses and TLVs).
fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x20 | command, family]);
    out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    out.extend_from_slice(block);
    out
}

/// The address block of a v2 TCP over IPv4 header.
fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut block = src.to_vec();
    block.extend_from_slice(&[127, 0, 0, 1]);
    block.extend_from_slice(&sport.to_be_bytes());
    block.extend_from_slice(&443u16.to_be_bytes());
    block
}

/// Asserts the hub closes `conn` without writing a byte.
fn assert_closed_unanswered(conn: &mut HttpConn, what: &str) {
    match conn.wait_closed(WAIT) {
        Ok(bytes) => assert!(bytes.is_empty(), "{what}: answered {:?}", String::from_utf8_lossy(&bytes)),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// `/metrics` through a PROXY `UNKNOWN` header.
fn metrics_via_proxy(hub: &Hub) -> String {
    let mut conn = HttpConn::connect(hub.addr);
    let resp = conn.request(b"PROXY UNKNOWN\r\nGET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.text()
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
    let dir = temp_dir();
    let secret = format!("[auth]\njwt_secret = \"{SECRET}\"\n");
    let check = |toml: &str| {
        let path = write_file(&dir, "hub.toml", toml);
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

/// Upgrades through `preamble` (and `extra` headers) and asserts the
/// connect line ends with `from FROM` (`PEER` in it: the connection's own
/// address). Returns the open connection.
fn assert_named(hub: &Hub, preamble: &[u8], extra: &[(&str, &str)], from: &str) -> HttpConn {
    let (conn, resp) = proxied(hub, preamble, extra);
    assert_upgraded(&resp);
    let from = from.replace("PEER", &conn.stream.local_addr().unwrap().to_string());
    let line = hub.wait_for_log(WAIT, |l| l.contains("client connected") && l.ends_with(&format!(" from {from}")));
    assert!(line.is_some(), "no connect line from {from}:\n{}", hub.logs().join("\n"));
    conn
}

// Each test connects at most 5 clients: past 5 a second the connect lines
// are summed up (section 1).

#[test]
fn proxy_protocol_v1_headers_name_the_client() {
    let hub = hub_with_proxy_protocol("");
    let _a = assert_named(&hub, b"PROXY TCP4 192.0.2.10 192.0.2.1 56324 443\r\n", &[], "192.0.2.10:56324 via PEER");
    let _b =
        assert_named(&hub, b"PROXY TCP6 2001:db8::10 2001:db8::1 4000 443\r\n", &[], "[2001:db8::10]:4000 via PEER");
    // UNKNOWN: the proxy speaks for itself; the peer is the client.
    let _c = assert_named(&hub, b"PROXY UNKNOWN\r\n", &[], "PEER");
    // With a PROXY header, X-Forwarded-For is ignored.
    let xff = [("X-Forwarded-For", "203.0.113.99")];
    let _d = assert_named(&hub, b"PROXY TCP4 192.0.2.30 192.0.2.1 1234 443\r\n", &xff, "192.0.2.30:1234 via PEER");
    assert!(hub.logs().iter().all(|l| !l.contains("203.0.113.99")), "{}", hub.logs().join("\n"));
    // A header that arrives in pieces is waited for.
    let mut conn = HttpConn::connect(hub.addr);
    conn.send(b"PROXY TCP4 192.0.2");
    std::thread::sleep(QUIET);
    conn.send(b".40 192.0.2.1 5555 443\r");
    std::thread::sleep(QUIET);
    let resp = conn.request(format!("\n{}", upgrade_request(&ws_path(&admin_token()), &[])).as_bytes());
    assert_upgraded(&resp);
    connect_line(&hub, "192.0.2.40:5555 via 127.0.0.1:");
}

#[test]
fn proxy_protocol_v2_headers_name_the_client() {
    let hub = hub_with_proxy_protocol("");
    let _a = assert_named(&hub, &v2(1, 0x11, &v2_tcp4([192, 0, 2, 20], 40000)), &[], "192.0.2.20:40000 via PEER");
    // IPv6, with a TLV after the addresses.
    let mut v6 = "2001:db8::20".parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec();
    v6.extend_from_slice(&[0; 16]);
    v6.extend_from_slice(&[0x9c, 0x41, 0x01, 0xbb, 0x04, 0x00, 0x01, 0x00]);
    let _b = assert_named(&hub, &v2(1, 0x21, &v6), &[], "[2001:db8::20]:40001 via PEER");
    // LOCAL (a health check of the proxy's own): the peer is the client.
    let _c = assert_named(&hub, &v2(0, 0x00, &[]), &[], "PEER");
}

#[test]
fn proxy_header_addresses_are_counted_per_ip() {
    let hub = hub_with_proxy_protocol("max_connections_per_ip = 1");
    let (_a, resp) = proxied(&hub, b"PROXY TCP4 192.0.2.10 192.0.2.1 1000 443\r\n", &[]);
    assert_upgraded(&resp);
    let (_, resp) = proxied(&hub, b"PROXY TCP4 192.0.2.10 192.0.2.1 1001 443\r\n", &[]);
    assert_503(&resp);
    let (_, resp) = proxied(&hub, &v2(1, 0x11, &v2_tcp4([192, 0, 2, 10], 1002)), &[]);
    assert_503(&resp);
    let (_b, resp) = proxied(&hub, &v2(1, 0x11, &v2_tcp4([192, 0, 2, 11], 1003)), &[]);
    assert_upgraded(&resp);
    let (_c, resp) = proxied(&hub, b"PROXY TCP6 ::ffff:192.0.2.12 ::1 1004 443\r\n", &[]);
    assert_upgraded(&resp);
    let (_, resp) = proxied(&hub, b"PROXY TCP4 192.0.2.12 192.0.2.1 1005 443\r\n", &[]);
    assert_503(&resp);
}

#[test]
fn a_missing_or_bad_proxy_header_closes_the_connection_unanswered() {
    let hub = hub_with_proxy_protocol("head_timeout_s = 1");
    let upgrade = upgrade_request(&ws_path(&admin_token()), &[]);
    let mut bad_version = v2(1, 0x11, &v2_tcp4([192, 0, 2, 10], 1));
    bad_version[12] = 0x11;
    let mut too_long = v2(1, 0x11, &[]);
    too_long[14] = 0x02;
    too_long[15] = 0x10;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no header", upgrade.clone().into_bytes()),
        ("garbled v1", format!("PROXY TCP4 nonsense\r\n{upgrade}").into_bytes()),
        ("v1 without CRLF", format!("PROXY UNKNOWN {}", "x".repeat(200)).into_bytes()),
        ("v1 with LF only", format!("PROXY TCP4 192.0.2.10 192.0.2.1 1 443\n{upgrade}").into_bytes()),
        ("v2 version 1", bad_version),
        ("v2 over 536 bytes", too_long),
        ("v2 short address block", v2(1, 0x11, &[192, 0, 2, 10])),
        ("binary garbage", vec![0xff; 64]),
    ];
    for (what, bytes) in &cases {
        let mut conn = HttpConn::connect(hub.addr);
        conn.send(bytes);
        assert_closed_unanswered(&mut conn, what);
    }
    // A header that never completes is given up after head_timeout_s.
    let mut slow = HttpConn::connect(hub.addr);
    slow.send(b"PROXY TCP4 192.0.2.10");
    assert_closed_unanswered(&mut slow, "incomplete header");
    let mut silent = HttpConn::connect(hub.addr);
    assert_closed_unanswered(&mut silent, "nothing sent");
    // The hub goes on serving everyone else.
    let (_ok, resp) = proxied(&hub, b"PROXY TCP4 192.0.2.10 192.0.2.1 1 443\r\n", &[]);
    assert_upgraded(&resp);
    let metrics = metrics_via_proxy(&hub);
    let refused = cases.len() + 2;
    assert!(metrics.contains(&format!("\naymc_proxy_headers_refused_total {refused}\n")), "{metrics}");
}

#[test]
fn a_proxy_header_from_a_peer_that_is_not_trusted_is_a_bad_request() {
    let hub = HubConfig::new().top("trusted_proxies = [\"10.0.0.0/8\"]\nproxy_protocol = true").start();
    let (_, resp) = proxied(&hub, b"PROXY TCP4 192.0.2.10 192.0.2.1 1 443\r\n", &[]);
    assert_http_error(&resp, 400, "bad_request", None);
    // And a plain request from it needs none.
    let (_held, resp) = upgrade_with(&hub, &[]);
    assert_upgraded(&resp);
}
