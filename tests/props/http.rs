//! `http::parse_head`: never a panic on any input; a partial head is "not
//! yet", a complete one is a `Request` made of the input's own bytes, and
//! a head over the limits is `TooLarge`.

use aymc_hub::http::{parse_head, route, HttpError, Request};
use proptest::prelude::*;

use crate::support::contains;

/// A valid request line and headers, without the final blank line.
fn head() -> impl Strategy<Value = (String, String, String, Vec<(String, String)>)> {
    let method = prop::sample::select(&["GET", "POST", "PUT", "DELETE", "OPTIONS"][..]).prop_map(str::to_string);
    let path = "(/[A-Za-z0-9._~%-]{0,12}){1,4}";
    let query = prop_oneof![Just(String::new()), "[A-Za-z0-9_.~%=&+-]{0,40}"];
    let name = prop_oneof![
        prop::sample::select(
            &[
                "Host",
                "Upgrade",
                "Connection",
                "Sec-WebSocket-Key",
                "Sec-WebSocket-Version",
                "Origin",
                "Authorization",
                "Cookie",
                "Content-Length",
                "Transfer-Encoding",
                "Accept",
            ][..]
        )
        .prop_map(str::to_string),
        "[A-Za-z][A-Za-z0-9-]{0,15}",
    ];
    let value = "[ -~]{0,40}";
    (method, path, query, prop::collection::vec((name, value), 0..12))
}

fn render(method: &str, path: &str, query: &str, headers: &[(String, String)]) -> String {
    let mut s = format!("{method} {path}{}{query} HTTP/1.1\r\n", if query.is_empty() { "" } else { "?" });
    for (n, v) in headers {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    s
}

/// An edit of a byte string: replace, insert or delete at a position.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![any::<u8>(), prop::sample::select(&b"\r\n :?\0\x7f\xff"[..])];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
    ]
}

fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for e in edits {
        let n = bytes.len();
        match *e {
            Edit::Set(i, b) if n > 0 => bytes[i % n] = b,
            Edit::Insert(i, b) => bytes.insert(i % (n + 1), b),
            Edit::Delete(i) if n > 0 => {
                bytes.remove(i % n);
            }
            _ => {}
        }
    }
}

/// What must hold for any answer of `parse_head(buf, max_bytes, ..)`.
fn check_any(buf: &[u8], max_bytes: usize, max_headers: usize) -> Result<Option<(Request, usize)>, HttpError> {
    let out = parse_head(buf, max_bytes, max_headers);
    match &out {
        Ok(None) => assert!(buf.len() <= max_bytes, "a partial head over the limit is TooLarge"),
        Ok(Some((req, len))) => {
            assert!(*len <= buf.len() && *len <= max_bytes);
            let head = &buf[..*len];
            assert!(head.ends_with(b"\n"), "a head ends with its blank line");
            assert!(contains(head, req.method.as_bytes()));
            let target = if req.query.is_empty() { req.path.clone() } else { format!("{}?{}", req.path, req.query) };
            assert!(contains(head, target.as_bytes()), "{target:?} is not in the head");
            // What the handlers derive from any head must not panic either.
            let _ = (route(req), req.token(), req.token_from_cookie(), req.same_origin(), req.wants_close());
        }
        Err(_) => {}
    }
    out
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..512), max_bytes in 0usize..600, max_headers in 0usize..70) {
        check_any(&buf, max_bytes, max_headers).ok();
    }

    #[test]
    fn mutated_valid_heads_never_panic((m, p, q, h) in head(), edits in prop::collection::vec(edit(), 1..8)) {
        let mut buf = format!("{}\r\n", render(&m, &p, &q, &h)).into_bytes();
        apply(&mut buf, &edits);
        check_any(&buf, 8192, 64).ok();
        check_any(&buf, buf.len() / 2, 4).ok();
    }

    #[test]
    fn a_complete_head_is_parsed_from_its_own_bytes((m, p, q, h) in head(), tail in prop::collection::vec(any::<u8>(), 0..32)) {
        let text = format!("{}\r\n", render(&m, &p, &q, &h));
        let mut buf = text.clone().into_bytes();
        buf.extend_from_slice(&tail);
        let (req, len) = check_any(&buf, 8192, 64).unwrap().expect("a complete head");
        prop_assert_eq!(len, text.len(), "the head ends at its blank line, not in the body");
        prop_assert_eq!(&req.method, &m);
        prop_assert_eq!(&req.path, &p);
        prop_assert_eq!(&req.query, &q);
        let target = format!("{m} {p}{}{q} ", if q.is_empty() { "" } else { "?" });
        prop_assert!(text.starts_with(&target));
    }

    #[test]
    fn a_cut_head_is_not_yet((m, p, q, h) in head(), cut in any::<prop::sample::Index>()) {
        let text = format!("{}\r\n", render(&m, &p, &q, &h));
        let cut = cut.index(text.len() - 1);
        prop_assert_eq!(parse_head(&text.as_bytes()[..cut], 8192, 64), Ok(None));
    }

    #[test]
    fn oversize_heads_are_too_large((m, p, q, h) in head(), pad in 0usize..200, extra_headers in 1usize..8) {
        let base = render(&m, &p, &q, &h);
        // Over the byte limit: complete or cut short, either way TooLarge.
        let padded = format!("{base}X-Pad: {}\r\n\r\n", "a".repeat(pad));
        let limit = padded.len() - 1 - pad / 2;
        prop_assert_eq!(parse_head(padded.as_bytes(), limit, 64), Err(HttpError::TooLarge));
        let cut = &padded.as_bytes()[..padded.len() - 2];
        prop_assert_eq!(parse_head(cut, limit.min(cut.len() - 1), 64), Err(HttpError::TooLarge));
        // Over the header count.
        let more: String = (0..h.len() + extra_headers).map(|i| format!("X-{i}: y\r\n")).collect();
        let many = format!("{}{more}\r\n", render(&m, &p, &q, &[]));
        prop_assert_eq!(parse_head(many.as_bytes(), 8192, h.len() + extra_headers - 1), Err(HttpError::TooLarge));
    }
}
