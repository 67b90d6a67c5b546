//! Bugs the properties and the fuzzers found, pinned as regression tests
//! named after them (both fixed: times are refused outside 0000-9999 UTC,
//! `Content-Length` takes digits only).

use aymc_hub::http::parse_head;
use aymc_hub::protocol::{Publish, Time};

const SERVER: &str = "550e8400-e29b-41d4-a716-446655440000";

fn log_at(ts: &str) -> String {
    format!(
        r#"{{"type":"log_entry","channel":"server:{SERVER}:logs","data":{{"server_id":"{SERVER}","level":"INFO","source":"server","message":"m","timestamp":"{ts}"}}}}"#
    )
}

/// PROTOCOL.md section 2: every time on the wire is RFC 3339. A publish
/// body whose time is in year 0 or 9999 with an offset that moves it out of
/// 0000-9999 in UTC is accepted, and the hub then sends
/// `-0001-12-31T23:59:00.000Z` or `+10000-01-01T00:59:59.000Z`, which no
/// RFC 3339 parser (the hub's own included) accepts. The fix belongs in
/// `protocol::Time`'s deserializer: refuse a UTC year outside 0..=9999.
#[test]
fn publish_time_out_of_rfc3339_range_is_refused() {
    for ts in ["0000-01-01T00:00:00+00:01", "9999-12-31T23:59:59-01:00"] {
        let Ok(p) = Publish::from_api(log_at(ts).as_bytes()) else { continue };
        let out = String::from_utf8(p.encode(Time::from_unix_ms(0).unwrap(), None)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let sent = v["data"]["timestamp"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(sent).is_ok(), "{ts} was published as {sent}");
    }
}

/// RFC 9110 section 8.6: `Content-Length = 1*DIGIT`. `usize::from_str`
/// also takes a leading `+`, so `Content-Length: +5` is read as 5 where a
/// proxy in front may read it differently (request smuggling needs the two
/// to disagree). `http::parse_head` should accept digits only.
#[test]
fn content_length_with_a_plus_sign_is_invalid() {
    let (req, _) =
        parse_head(b"POST /api/v1/publish HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 8192, 64).unwrap().unwrap();
    assert_eq!(req.content_length, Some(Err(())));
}
