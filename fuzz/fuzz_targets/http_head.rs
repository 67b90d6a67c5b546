//! `http::parse_head` on arbitrary bytes, then everything the hub derives
//! from a parsed head: the token (section 1's order), the origin check, the
//! route, keep-alive. Must never panic; a complete head is never longer
//! than the input and its path and query come from the input.
use aymc_hub::http::{self, HttpError, TokenSource};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        // The first byte picks small limits now and then, so the
        // TooLarge paths are reached too.
        let (max_bytes, max_headers) = match data.first() {
            Some(b) if b & 0x80 != 0 => (usize::from(b & 0x7f) * 4, usize::from(b & 0x0f)),
            _ => (8192, 64),
        };
        match http::parse_head(data, max_bytes, max_headers) {
            Ok(None) => assert!(data.len() <= max_bytes, "a partial head over the limit must be TooLarge"),
            Ok(Some((req, len))) => {
                assert!(len <= data.len() && len <= max_bytes);
                let head = &data[..len];
                let target =
                    if req.query.is_empty() { req.path.clone() } else { format!("{}?{}", req.path, req.query) };
                assert!(contains(head, target.as_bytes()) || contains(head, format!("{}?", req.path).as_bytes()));
                assert!(contains(head, req.method.as_bytes()));
                let token = req.token();
                let from_cookie = req.token_from_cookie();
                if from_cookie {
                    assert_eq!(token, TokenSource::Found(req.cookie_token().unwrap_or_default()));
                }
                if let Some(q) = req.query_param("token") {
                    assert_eq!(token, TokenSource::Found(q));
                }
                let _ = req.same_origin();
                let _ = req.wants_close();
                let _ = http::route(&req);
                for name in ["before_seq", "after_seq", "from", "to", "level", "q", "limit", ""] {
                    let _ = req.query_param(name);
                }
                if let Some(key) = &req.ws_key {
                    let _ = http::switching_protocols(key);
                }
            }
            Err(HttpError::BadRequest | HttpError::TooLarge) => {}
        }
    });
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
