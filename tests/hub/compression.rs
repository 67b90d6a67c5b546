//! PROTOCOL.md section 1, "Compression": permessage-deflate (RFC 7692)
//! through the real binary. The client side compresses and inflates with
//! flate2 directly (raw deflate, the `00 00 ff ff` tail handled as the RFC
//! says), not with the hub's own `deflate` module.

use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};

use crate::support::*;

const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
const WAIT: Duration = Duration::from_secs(10);

/// Inflates a compressed message's payload (tail appended).
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(input.len() * 20 + 1024);
    loop {
        let before = d.total_in() as usize;
        d.decompress_vec(&input[before..], &mut out, FlushDecompress::Sync).expect("valid deflate data");
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

/// Compresses a message as a client would (sync flush, tail removed).
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    c.compress_vec(payload, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]) && c.total_in() as usize == payload.len());
    out.truncate(out.len() - 4);
    out
}

/// A masked text frame with RSV1 set.
fn compressed_text(payload: &[u8]) -> Vec<u8> {
    let mut frame = masked(OP_TEXT, &deflate(payload));
    frame[0] |= 0x40;
    frame
}

/// The next text message (skipping Ping/Pong) and whether it came
/// compressed.
fn recv(ws: &mut RawWs) -> (bool, Value) {
    loop {
        match ws.next_event(WAIT) {
            RawEvent::Frame(f) if f.opcode == OP_TEXT => {
                assert!(f.fin, "the hub sends whole messages");
                let bytes = if f.rsv1 { inflate(&f.payload) } else { f.payload.clone() };
                let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"));
                return (f.rsv1, json);
            }
            RawEvent::Frame(f) if matches!(f.opcode, OP_PING | OP_PONG) => {
                assert!(!f.rsv1, "control frames are never compressed")
            }
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

fn deflate_client(hub: &Hub, offer: &str) -> (RawWs, String) {
    let (ws, resp) = RawWs::connect_offering(hub.addr, &admin_token(), offer);
    (ws, resp.header("sec-websocket-extensions").unwrap_or_default().to_string())
}

fn subscribe_raw(ws: &mut RawWs, channel: &str) {
    ws.send_text(&json!({"type": "subscribe", "data": {"channels": [channel]}}).to_string());
    let (_, answer) = recv(ws);
    assert_eq!(answer["data"]["code"], "SUBSCRIBED", "{answer}");
}

/// A log line with a stack trace: well over the 256-byte threshold.
fn trace_body(message: &str) -> Value {
    let trace: String =
        (0..30).map(|i| format!("\tat net.minecraft.server.level.ServerLevel.tick(ServerLevel.java:{i})\n")).collect();
    let mut body = log_body(SERVER_A, message);
    body["data"]["level"] = json!("ERROR");
    body["data"]["exception"] = json!(format!("java.lang.NullPointerException: boom\n{trace}"));
    body
}

#[test]
fn deflate_clients_get_compressed_frames_with_the_same_json_as_plain_ones() {
    // A short log line's envelope is about 290 bytes: under this threshold.
    let hub = Hub::start("compress_min_bytes = 400");
    let l = logs(SERVER_A);
    let mut plain = hub.connect_admin();
    plain.subscribe_ok(&[&l]);
    let (mut a, answer_a) = deflate_client(&hub, "permessage-deflate; client_max_window_bits");
    let (mut b, answer_b) = deflate_client(&hub, "permessage-deflate");
    let (mut small, answer_small) = deflate_client(&hub, "permessage-deflate; server_max_window_bits=9");
    assert_eq!(answer_a, ANSWER);
    assert_eq!(answer_b, ANSWER);
    assert_eq!(answer_small, format!("{ANSWER}; server_max_window_bits=9"));
    for ws in [&mut a, &mut b, &mut small] {
        subscribe_raw(ws, &l);
    }

    assert_eq!(hub.publish(&trace_body("Exception ticking world")), 4);
    let expected = plain.recv_json();
    for ws in [&mut a, &mut b, &mut small] {
        let (rsv1, got) = recv(ws);
        assert!(rsv1, "a large message comes compressed");
        assert_eq!(got, expected);
    }
    // The same bytes for the same window (compressed once, shared).
    assert_eq!(hub.publish(&trace_body("again")), 4);
    let mut compressed = Vec::new();
    for ws in [&mut a, &mut b] {
        match ws.next_event(WAIT) {
            RawEvent::Frame(f) if f.rsv1 => compressed.push(f.payload),
            other => panic!("expected a compressed frame, got {other:?}"),
        }
    }
    assert_eq!(compressed[0], compressed[1]);
    assert!(recv(&mut small).0);
    let _ = plain.recv_json();

    // Under the threshold: uncompressed, same JSON.
    assert_eq!(hub.publish(&log_body(SERVER_A, "Done (3.2s)!")), 4);
    let expected = plain.recv_json();
    for ws in [&mut a, &mut b, &mut small] {
        assert_eq!(recv(ws), (false, expected.clone()), "a small message goes plain");
    }

    // Replies large enough are compressed too: a history page.
    a.send_text(&json!({"type": "history", "channel": l, "data": {"limit": 10}}).to_string());
    let (rsv1, page) = recv(&mut a);
    assert!(rsv1);
    assert_eq!(page["type"], "history");
    assert_eq!(page["data"]["messages"].as_array().map(Vec::len), Some(3));
    assert_eq!(page["data"]["messages"][2], expected);
}

#[test]
fn a_compressed_client_message_is_accepted_whole_or_fragmented() {
    let hub = Hub::start("");
    let (mut ws, answer) = deflate_client(&hub, "permessage-deflate");
    assert_eq!(answer, ANSWER);
    let l = logs(SERVER_A);
    let subscribe = json!({"type": "subscribe", "data": {"channels": [l]}}).to_string();
    ws.send_bytes(&compressed_text(subscribe.as_bytes()));
    let (_, answer) = recv(&mut ws);
    assert_eq!(answer["data"]["code"], "SUBSCRIBED", "{answer}");
    assert_eq!(answer["data"]["data"], json!([l]));
    // In two frames: RSV1 on the first only.
    let z = deflate(br#"{"type":"ping"}"#);
    let (x, y) = z.split_at(z.len() / 2);
    let mut first = encode_frame(false, OP_TEXT, x, Some([1, 2, 3, 4]));
    first[0] |= 0x40;
    ws.send_bytes(&first);
    ws.send_bytes(&encode_frame(true, OP_CONT, y, Some([5, 6, 7, 8])));
    let (rsv1, pong) = recv(&mut ws);
    assert_eq!((rsv1, pong["type"].as_str()), (false, Some("pong")), "{pong}");
    // RSV1 on a control frame is a protocol error.
    let mut ping = masked(OP_PING, b"");
    ping[0] |= 0x40;
    ws.send_bytes(&ping);
    assert_eq!(ws.expect_close(WAIT), 1002);
}

#[test]
fn a_deflate_bomb_is_closed_1009_and_the_hub_carries_on() {
    let hub = Hub::start("");
    let (mut ws, _) = deflate_client(&hub, "permessage-deflate");
    // 64 MiB of spaces inside a JSON string: about 64 KiB compressed.
    let mut bomb = br#"{"type":"ping","data":""#.to_vec();
    bomb.resize(64 << 20, b' ');
    bomb.extend_from_slice(br#""}"#);
    let frame = compressed_text(&bomb);
    assert!(frame.len() < 512 * 1024, "the compressed frame itself is under the limit");
    drop(bomb);
    ws.send_bytes(&frame);
    assert_eq!(ws.expect_close(WAIT), 1009);
    // Just under the limit once inflated still passes.
    let (mut ok, _) = deflate_client(&hub, "permessage-deflate");
    let mut big = br#"{"type":"ping","data":""#.to_vec();
    big.resize(512 * 1024 - 2, b' ');
    big.extend_from_slice(br#""}"#);
    ok.send_bytes(&compressed_text(&big));
    assert_eq!(recv(&mut ok).1["type"], "pong");
    let mut other = hub.connect_admin();
    other.ping_pong();
    hub.wait_stats(WAIT, |s| s["clients"] == 2);
}

#[test]
fn rsv1_out_of_place_or_data_that_does_not_inflate_is_a_protocol_error() {
    let hub = Hub::start("");
    let with_rsv1 = |mut frame: Vec<u8>| {
        frame[0] |= 0x40;
        frame
    };
    let z = deflate(br#"{"type":"ping"}"#);
    let (x, y) = z.split_at(z.len() / 2);
    let cases: [(&str, Vec<u8>); 5] = [
        (
            "RSV1 on a continuation",
            [
                encode_frame(false, OP_TEXT, b"{\"type\"", Some([1, 2, 3, 4])),
                with_rsv1(encode_frame(true, OP_CONT, b":\"ping\"}", Some([1, 2, 3, 4]))),
            ]
            .concat(),
        ),
        (
            "RSV1 on every frame",
            [
                with_rsv1(encode_frame(false, OP_TEXT, x, Some([1, 2, 3, 4]))),
                with_rsv1(encode_frame(true, OP_CONT, y, Some([1, 2, 3, 4]))),
            ]
            .concat(),
        ),
        ("RSV1 on a Close", with_rsv1(masked(OP_CLOSE, &1000u16.to_be_bytes()))),
        ("not deflate data", with_rsv1(masked(OP_TEXT, &[0xff; 16]))),
        ("RSV2", {
            let mut f = compressed_text(br#"{"type":"ping"}"#);
            f[0] |= 0x20;
            f
        }),
    ];
    for (case, bytes) in cases {
        let (mut ws, answer) = deflate_client(&hub, "permessage-deflate");
        assert_eq!(answer, ANSWER);
        ws.send_bytes(&bytes);
        assert_eq!(ws.expect_close(WAIT), 1002, "{case}");
    }
    // Inflated text that is not UTF-8: 1007.
    let (mut ws, _) = deflate_client(&hub, "permessage-deflate");
    ws.send_bytes(&compressed_text(&[0xc3, 0x28, b'a', b'b']));
    assert_eq!(ws.expect_close(WAIT), 1007);
    let mut other = hub.connect_admin();
    other.ping_pong();
}

#[test]
fn with_compression_off_the_offer_is_not_taken() {
    let hub = Hub::start("compression = false");
    let (mut ws, answer) = deflate_client(&hub, "permessage-deflate; client_max_window_bits");
    assert_eq!(answer, "", "no Sec-WebSocket-Extensions");
    let l = logs(SERVER_A);
    subscribe_raw(&mut ws, &l);
    assert_eq!(hub.publish(&trace_body("Exception ticking world")), 1);
    let (rsv1, msg) = recv(&mut ws);
    assert!(!rsv1);
    assert_eq!(msg["data"]["level"], "ERROR");
    // A compressed frame on a connection without the extension: 1002.
    ws.send_bytes(&compressed_text(br#"{"type":"ping"}"#));
    assert_eq!(ws.expect_close(WAIT), 1002);
}

#[test]
fn offers_with_bad_parameters_are_declined_and_the_first_good_one_is_taken() {
    let hub = Hub::start("");
    for bad in [
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=5",
        "permessage-deflate; server_no_context_takeover=yes",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; mem_level=9",
        "x-webkit-deflate-frame",
    ] {
        let (mut ws, answer) = deflate_client(&hub, bad);
        assert_eq!(answer, "", "{bad}: declined");
        ws.send_text(r#"{"type":"ping"}"#);
        assert_eq!(recv(&mut ws).1["type"], "pong", "{bad}: the connection works without the extension");
    }
    let (_, answer) = deflate_client(
        &hub,
        "permessage-deflate; server_max_window_bits=20, permessage-deflate; server_max_window_bits=10, permessage-deflate",
    );
    // The hub uses one of four windows (8, 9, 12, 15), the largest not above
    // the offer, and names it (RFC 7692 7.1.2.1: the same or smaller).
    assert_eq!(answer, format!("{ANSWER}; server_max_window_bits=9"));
    for (offered, used) in [(8, 8), (11, 9), (14, 12)] {
        let (_, answer) = deflate_client(&hub, &format!("permessage-deflate; server_max_window_bits={offered}"));
        assert_eq!(answer, format!("{ANSWER}; server_max_window_bits={used}"), "offered {offered}");
    }
    let (_, answer) = deflate_client(&hub, "permessage-deflate; server_max_window_bits=15; client_max_window_bits=12");
    assert_eq!(answer, format!("{ANSWER}; server_max_window_bits=15"));
}

/// Node's built-in WebSocket (undici, the WHATWG API browsers have) as an
/// independent client: it negotiates the extension and reads the same JSON
/// as a plain client. Skipped, with a note, where `node` is not installed.
#[test]
fn nodes_websocket_negotiates_deflate_and_reads_the_same_json() {
    let Ok(version) = std::process::Command::new("node").arg("--version").output() else {
        eprintln!("skipped: no node on PATH");
        return;
    };
    let major: u32 = String::from_utf8_lossy(&version.stdout)
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        eprintln!("skipped: node {major} has no built-in WebSocket");
        return;
    }
    let hub = Hub::start("");
    let l = logs(SERVER_A);
    let mut plain = hub.connect_admin();
    plain.subscribe_ok(&[&l]);
    let script = format!(
        r#"const ws = new WebSocket("ws://{}/api/v1/ws?token={}");
ws.onopen = () => {{ console.log(JSON.stringify({{extensions: ws.extensions}})); ws.send(JSON.stringify({{type: "subscribe", data: {{channels: ["{l}"]}}}})); }};
ws.onmessage = (e) => {{ console.log(e.data); if (JSON.parse(e.data).type === "log_entry") ws.close(1000); }};
ws.onclose = (e) => {{ console.log(JSON.stringify({{closed: e.code}})); }};"#,
        hub.addr,
        admin_token()
    );
    let mut child = std::process::Command::new("node")
        .args(["--experimental-websocket", "--no-warnings", "-e", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut next = || -> Value { serde_json::from_str(&lines.next().expect("a line from node").unwrap()).unwrap() };
    assert_eq!(next(), json!({"extensions": ANSWER}));
    assert_eq!(next()["data"]["code"], "SUBSCRIBED");
    assert_eq!(hub.publish(&trace_body("Exception ticking world")), 2);
    assert_eq!(next(), plain.recv_json());
    assert_eq!(next(), json!({"closed": 1000}));
    assert!(child.wait().unwrap().success());
}
