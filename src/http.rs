//! HTTP/1.1 request heads (parsed with `httparse`), routing and responses:
//! PROTOCOL.md sections 1, 8 and 9. A partial head is "not yet", never an
//! error; every refusal is the JSON error body of section 1. No IO here.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::fmt::Write as _;
use std::rc::Rc;

use crate::deflate;

/// A refusal of a request head, with the status it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Not an HTTP/1.1 request line or malformed headers: `400`.
    #[error("malformed HTTP/1.1 request")]
    BadRequest,
    /// Over `head_max_bytes` or `head_max_headers`: `431`.
    #[error("request head too large")]
    TooLarge,
}

/// The parts of a request head the hub uses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The query string without `?`.
    pub query: String,
    /// `Upgrade` contains the token `websocket`.
    pub upgrade_websocket: bool,
    /// `Connection` contains the token `upgrade`.
    pub connection_upgrade: bool,
    /// `Connection` contains the token `close`.
    pub connection_close: bool,
    /// `Sec-WebSocket-Key`.
    pub ws_key: Option<String>,
    /// `Sec-WebSocket-Version`.
    pub ws_version: Option<String>,
    /// The first acceptable `permessage-deflate` offer of the
    /// `Sec-WebSocket-Extensions` headers, in order.
    pub deflate: Option<deflate::Accepted>,
    /// `Origin`.
    pub origin: Option<String>,
    /// `Host`.
    pub host: Option<String>,
    /// `Authorization`.
    pub authorization: Option<String>,
    /// `Cookie` (all of them, joined with `; `).
    pub cookie: Option<String>,
    /// `Content-Length`, when present and valid; `Err` when present and invalid.
    pub content_length: Option<Result<usize, ()>>,
    /// `Transfer-Encoding` present.
    pub chunked: bool,
    /// `Accept`.
    pub accept: Option<String>,
    /// The last entry of `X-Forwarded-For` (all of them joined), trimmed;
    /// bytes that are not UTF-8 are kept garbled, so they name no address.
    pub forwarded_for: Option<String>,
}

fn has_token(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Parses a request head from the start of `buf`. `Ok(None)` means
/// incomplete; `Ok(Some((request, head_len)))` a whole head.
///
/// # Errors
/// [`HttpError`] for a malformed or oversized head.
pub fn parse_head(buf: &[u8], max_bytes: usize, max_headers: usize) -> Result<Option<(Request, usize)>, HttpError> {
    let mut headers = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_bytes => return Err(HttpError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooLarge),
        Err(_) => return Err(HttpError::BadRequest),
    };
    if len > max_bytes {
        return Err(HttpError::TooLarge);
    }
    if req.version != Some(1) {
        return Err(HttpError::BadRequest);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut out = Request {
        method: req.method.unwrap_or_default().to_string(),
        path: path.to_string(),
        query: query.to_string(),
        ..Request::default()
    };
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("x-forwarded-for") {
            let value = String::from_utf8_lossy(h.value);
            out.forwarded_for = value.rsplit(',').next().map(|last| last.trim().to_string());
            continue;
        }
        let Ok(value) = std::str::from_utf8(h.value) else { continue };
        let value = value.trim();
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            out.upgrade_websocket |= has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            out.connection_upgrade |= has_token(value, "upgrade");
            out.connection_close |= has_token(value, "close");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            out.ws_key = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            out.ws_version = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            out.deflate = out.deflate.or_else(|| deflate::negotiate(value));
        } else if name.eq_ignore_ascii_case("origin") {
            out.origin = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("host") {
            out.host = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("authorization") {
            out.authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("cookie") {
            out.cookie = Some(match out.cookie.take() {
                Some(prev) => format!("{prev}; {value}"),
                None => value.to_string(),
            });
        } else if name.eq_ignore_ascii_case("content-length") {
            // RFC 9110: 1*DIGIT (`usize::from_str` would take a `+` too).
            let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
            let parsed = if digits { value.parse::<usize>().map_err(|_| ()) } else { Err(()) };
            out.content_length = match out.content_length {
                Some(prev) if prev != parsed => Some(Err(())),
                _ => Some(parsed),
            };
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            out.chunked = true;
        } else if name.eq_ignore_ascii_case("accept") {
            out.accept = Some(value.to_string());
        }
    }
    Ok(Some((out, len)))
}

/// Where a token was found, in section 1's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// No source present.
    None,
    /// The first present source's value (possibly empty).
    Found(String),
}

impl Request {
    /// The value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    }

    /// The first of `names` that the query gives more than once.
    pub fn repeated_param<'a>(&self, names: &[&'a str]) -> Option<&'a str> {
        let key = |pair: &str| pair.split_once('=').map_or(pair, |(k, _)| k).to_string();
        names.iter().copied().find(|n| self.query.split('&').filter(|p| key(p) == *n).nth(1).is_some())
    }

    /// The `Authorization: Bearer` token, if that scheme is used.
    pub fn bearer(&self) -> Option<String> {
        let value = self.authorization.as_deref()?;
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim().to_string())
    }

    /// The `token` cookie.
    pub fn cookie_token(&self) -> Option<String> {
        self.cookie
            .as_deref()?
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.trim_matches('"').to_string())
    }

    /// The token as `/api/v1/ws` takes it: query, then Bearer, then cookie.
    pub fn token(&self) -> TokenSource {
        match self.query_param("token").or_else(|| self.bearer()).or_else(|| self.cookie_token()) {
            Some(t) => TokenSource::Found(t),
            None => TokenSource::None,
        }
    }

    /// The token comes from the `token` cookie (no query or Bearer token;
    /// an empty cookie is no token).
    pub fn token_from_cookie(&self) -> bool {
        self.query_param("token").is_none()
            && self.bearer().is_none()
            && self.cookie_token().is_some_and(|t| !t.is_empty())
    }

    /// `Origin` is the hub's own origin: `http://` or `https://` (behind a
    /// TLS proxy) followed by exactly the request's `Host`.
    pub fn same_origin(&self) -> bool {
        let (Some(origin), Some(host)) = (&self.origin, &self.host) else { return false };
        let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
        rest.is_some_and(|h| h.eq_ignore_ascii_case(host))
    }

    /// The connection closes after this response: the client asked, or the
    /// request carries a body the route does not read (so the next request
    /// could not be found reliably).
    pub fn wants_close(&self) -> bool {
        self.connection_close || self.chunked || !matches!(self.content_length, None | Some(Ok(0)))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The routes of the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /api/v1/ws`
    WebSocket,
    /// `POST /api/v1/publish`
    Publish,
    /// `GET /healthz`
    Health,
    /// `GET /api/v1/stats`
    Stats,
    /// `GET /metrics`
    Metrics,
    /// `GET /api/v1/servers/{id}/logs`
    ServerLogs(uuid::Uuid),
    /// `GET /api/v1/servers/{id}/metrics`
    ServerMetrics(uuid::Uuid),
    /// `GET /api/v1/servers`
    Servers,
    /// `GET /` and the console's other files (`console::asset`): an
    /// embedded console file.
    Console(crate::console::Asset),
}

/// Routes a request: `Ok(route)`, or `Err(None)` for an unknown path
/// (`404`), `Err(Some(allow))` for a wrong method (`405` with `Allow`).
pub fn route(req: &Request) -> Result<Route, Option<&'static str>> {
    let (route, allow) = match req.path.as_str() {
        "/api/v1/ws" => (Route::WebSocket, "GET"),
        "/api/v1/publish" => (Route::Publish, "POST"),
        "/healthz" => (Route::Health, "GET"),
        "/api/v1/stats" => (Route::Stats, "GET"),
        "/metrics" => (Route::Metrics, "GET"),
        "/api/v1/servers" => (Route::Servers, "GET"),
        path => match (server_path(path, "/logs"), server_path(path, "/metrics"), crate::console::asset(path)) {
            (Some(id), _, _) => (Route::ServerLogs(id), "GET"),
            (None, Some(id), _) => (Route::ServerMetrics(id), "GET"),
            (None, None, Some(asset)) => (Route::Console(asset), "GET"),
            (None, None, None) => return Err(None),
        },
    };
    if req.method == allow {
        Ok(route)
    } else {
        Err(Some(allow))
    }
}

/// The server id of `/api/v1/servers/{id}{suffix}`.
fn server_path(path: &str, suffix: &str) -> Option<uuid::Uuid> {
    let id = path.strip_prefix("/api/v1/servers/")?.strip_suffix(suffix)?;
    (id.len() == 36).then(|| uuid::Uuid::try_parse(id).ok()).flatten()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A whole response. `close` adds `Connection: close`.
pub fn response(status: u16, content_type: &str, extra: &[(&str, &str)], body: &[u8], close: bool) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A JSON response.
pub fn json(status: u16, body: &serde_json::Value, close: bool) -> Vec<u8> {
    response(status, "application/json", &[], body.to_string().as_bytes(), close)
}

/// The error code of section 1 for a status.
fn error_code(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        431 => "headers_too_large",
        _ => "unavailable",
    }
}

/// An error response: `{"error": code, "message": message}`. Errors close the
/// connection unless `close` is false.
pub fn error(status: u16, message: &str, extra: &[(&str, &str)], close: bool) -> Vec<u8> {
    let body = serde_json::json!({ "error": error_code(status), "message": message });
    response(status, "application/json", extra, body.to_string().as_bytes(), close)
}

/// The `101` answer to a WebSocket upgrade: no subprotocol, and
/// permessage-deflate when an offer was accepted. One allocation, the
/// answer itself (an upgrade storm leaves no scraps on the heap).
pub fn switching_protocols(key: &str, deflate: Option<deflate::Accepted>) -> Rc<[u8]> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let parts = [
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        &accept,
        "\r\n",
        if deflate.is_some() { "Sec-WebSocket-Extensions: " } else { "" },
        deflate.map_or("", deflate::Accepted::response),
        if deflate.is_some() { "\r\n" } else { "" },
        "\r\n",
    ];
    let mut buf = [0u8; 320];
    let mut n = 0;
    for p in parts {
        if let Some(slot) = buf.get_mut(n..n + p.len()) {
            slot.copy_from_slice(p.as_bytes());
        }
        n += p.len();
    }
    match buf.get(..n) {
        Some(bytes) => Rc::from(bytes),
        None => Rc::from(parts.concat().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<(Request, usize)>, HttpError> {
        parse_head(s.as_bytes(), 8192, 64)
    }

    #[test]
    fn the_first_acceptable_deflate_offer_of_any_extensions_header_is_kept() {
        let head = "GET / HTTP/1.1\r\nSec-WebSocket-Extensions: foo, permessage-deflate; x=1\r\n\
                    Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=12\r\n\
                    Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
        let (r, _) = parse(head).unwrap().unwrap();
        assert_eq!(r.deflate.map(|a| a.bits), Some(12));
        let answer = switching_protocols("dGhlIHNhbXBsZSBub25jZQ==", r.deflate);
        assert_eq!(
            std::str::from_utf8(&answer).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: permessage-deflate; \
             server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12\r\n\r\n"
        );
        assert!(!switching_protocols("dGhlIHNhbXBsZSBub25jZQ==", None).windows(9).any(|w| w == b"Extension"));
    }

    #[test]
    fn partial_heads_are_not_errors() {
        assert_eq!(parse("GET /api/v1/ws HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(parse("GET / HTTP/1.0\r\n\r\n"), Err(HttpError::BadRequest));
        assert_eq!(parse("HELLO\r\n\r\n"), Err(HttpError::BadRequest));
        let many: String = (0..70).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Err(HttpError::TooLarge));
        assert_eq!(parse_head(&[b'a'; 100], 50, 64), Err(HttpError::TooLarge));
    }

    #[test]
    fn upgrade_headers_are_token_lists() {
        let (r, len) = parse(
            "GET /api/v1/ws?a=1&token=abc%2Edef HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\nxx",
        )
        .unwrap()
        .unwrap();
        assert!(r.connection_upgrade && r.upgrade_websocket);
        assert_eq!(r.path, "/api/v1/ws");
        assert_eq!(r.query_param("token").as_deref(), Some("abc.def"));
        assert_eq!(len + 2, "GET /api/v1/ws?a=1&token=abc%2Edef HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\nxx".len());
    }

    #[test]
    fn the_first_present_token_source_wins() {
        let (r, _) = parse("GET /api/v1/ws?token= HTTP/1.1\r\nAuthorization: Bearer good\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.token(), TokenSource::Found(String::new()));
        let (r, _) =
            parse("GET / HTTP/1.1\r\nAuthorization: Basic x\r\nCookie: a=b; token=c\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.token(), TokenSource::Found("c".into()));
        let (r, _) = parse("GET / HTTP/1.1\r\nauthorization: bEaReR t1\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.token(), TokenSource::Found("t1".into()));
        let (r, _) = parse("GET / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.token(), TokenSource::None);
    }

    #[test]
    fn the_last_forwarded_for_entry_of_all_headers_is_kept() {
        let last = |headers: &str| parse(&format!("GET / HTTP/1.1\r\n{headers}\r\n")).unwrap().unwrap().0.forwarded_for;
        assert_eq!(last(""), None);
        assert_eq!(last("X-Forwarded-For: 203.0.113.7\r\n").as_deref(), Some("203.0.113.7"));
        assert_eq!(last("x-forwarded-for: 1.1.1.1 ,  203.0.113.7 \r\n").as_deref(), Some("203.0.113.7"));
        let two = "X-Forwarded-For: 1.1.1.1, 2.2.2.2\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\n";
        assert_eq!(last(two).as_deref(), Some("203.0.113.7"));
        assert_eq!(last("X-Forwarded-For: 203.0.113.7,\r\n").as_deref(), Some(""));
        assert_eq!(last("X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For:\r\n").as_deref(), Some(""));
        let garbled = parse_head(b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1, 9.9.9.\xff9\r\n\r\n", 8192, 64);
        let garbled = garbled.unwrap().unwrap().0.forwarded_for.unwrap();
        assert!(garbled.starts_with("9.9.9.") && garbled.parse::<std::net::IpAddr>().is_err(), "{garbled}");
    }

    #[test]
    fn routes_and_methods() {
        let req = |m: &str, p: &str| Request { method: m.into(), path: p.into(), ..Request::default() };
        assert_eq!(route(&req("GET", "/api/v1/ws")), Ok(Route::WebSocket));
        assert_eq!(route(&req("GET", "/api/v1/publish")), Err(Some("POST")));
        assert_eq!(route(&req("GET", "/nope")), Err(None));
        let logs = "/api/v1/servers/550e8400-e29b-41d4-a716-446655440000/logs";
        assert!(matches!(route(&req("GET", logs)), Ok(Route::ServerLogs(_))));
        assert_eq!(route(&req("GET", "/api/v1/servers/nope/logs")), Err(None));
        let metrics = "/api/v1/servers/550e8400-e29b-41d4-a716-446655440000/metrics";
        assert!(matches!(route(&req("GET", metrics)), Ok(Route::ServerMetrics(_))));
        assert_eq!(route(&req("POST", metrics)), Err(Some("GET")));
        assert_eq!(route(&req("GET", "/api/v1/servers")), Ok(Route::Servers));
        assert_eq!(route(&req("POST", "/api/v1/servers")), Err(Some("GET")));
        assert_eq!(route(&req("GET", "/api/v1/servers/")), Err(None));
        assert!(matches!(route(&req("GET", "/")), Ok(Route::Console(a)) if a.html));
        assert_eq!(route(&req("HEAD", "/")), Err(Some("GET")));
        assert_eq!(route(&req("GET", "/console.xyz")), Err(None));
    }
}
