//! The HTTP side of a connection (PROTOCOL.md sections 1, 8, 9): request
//! heads one after the other (keep-alive, pipelining), publish bodies,
//! requests that wait for the query thread, routing, the endpoint handlers
//! and the checks of an upgrade. Responses are queued on the connection's
//! client in the hub; each entry point returns the connection's
//! [`Outcome`].
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use log::debug;
use serde_json::json;
use uuid::Uuid;

use crate::app::App;
use crate::auth::{AuthError, Identity, Role};
use crate::client::Session;
use crate::conn::{Conn, HttpState, Outcome, PendingBody, Phase, Reason, WsState};
use crate::http::{self, HttpError, Request, Route, TokenSource};
use crate::logs_api;
use crate::metrics_api::{self, MetricsQuery};
use crate::protocol::{Channel, Publish, Status};
use crate::proxy::{self, Preamble, ProxyError, Source, Via};
use crate::store::LogQuery;
use crate::{console, dispatch, stats};

/// Bytes arrived on a connection in the HTTP phase.
pub fn on_bytes(app: &mut App, key: usize, conn: &mut Conn, bytes: &[u8], now: Instant) -> Outcome {
    let Phase::Http(http) = &mut conn.phase else { return Outcome::Keep };
    http.buf.extend_from_slice(bytes);
    if http.preamble {
        if let Some(outcome) = preamble(app, conn) {
            return outcome;
        }
    }
    process(app, key, conn, now)
}

/// A trusted proxy with `proxy_protocol` starts the connection with a
/// PROXY header naming the client (then `X-Forwarded-For` is ignored);
/// the connection is counted under the client's IP from then on. `None`
/// once the header is read (request heads may follow), else the outcome
/// for now: `Keep` while it is incomplete, `Drop` without an answer when
/// it is refused.
fn preamble(app: &mut App, conn: &mut Conn) -> Option<Outcome> {
    let Phase::Http(http) = &mut conn.phase else { return Some(Outcome::Keep) };
    match proxy::parse_preamble(&http.buf) {
        Ok(Preamble::Partial) => Some(Outcome::Keep),
        Err(e) => {
            app.proxied.headers_refused += 1;
            Some(Outcome::Drop(Reason::ProxyHeader(e)))
        }
        Ok(Preamble::Done { source, len }) => {
            http.buf.drain(..len.min(http.buf.len()));
            http.preamble = false;
            conn.source = source.map(Box::new);
            count_client(app, conn);
            None
        }
    }
}

/// The answer of the query thread for a request that waits for it.
pub fn on_reply(app: &mut App, key: usize, conn: &mut Conn, response: Vec<u8>, now: Instant) -> Outcome {
    let Phase::Http(http) = &mut conn.phase else { return Outcome::Keep };
    let Some((consumed, close)) = http.waiting.take() else { return Outcome::Keep };
    match respond(app, key, http, response, close, consumed, now) {
        Outcome::Keep => process(app, key, conn, now),
        outcome => outcome,
    }
}

/// The head timer (every tick): a connection whose request head has not
/// arrived within `head_timeout_s` is answered `408` (`503` when it was
/// accepted over a cap); an idle keep-alive connection is closed quietly.
pub fn on_tick(app: &mut App, key: usize, conn: &mut Conn, now: Instant) -> Outcome {
    let Phase::Http(http) = &mut conn.phase else { return Outcome::Keep };
    let timeout = std::time::Duration::from_secs(app.cfg.limits.head_timeout_s);
    if now.duration_since(http.since) < timeout {
        return Outcome::Keep;
    }
    if http.preamble {
        app.proxied.headers_refused += 1;
        return Outcome::Drop(Reason::ProxyHeader(ProxyError::Missing));
    }
    if http.waiting.is_some() {
        return refuse(app, key, 503, "the log history cannot be read now; retry later", &[("Retry-After", "5")])
            .into_outcome();
    }
    if http.reject {
        refuse_503(app, key)
    } else if http.served && http.buf.is_empty() {
        Outcome::Drop(Reason::HttpDone)
    } else {
        let answer = http::error(408, "request head not received in time", &[], true);
        respond(app, key, http, answer, true, 0, now)
    }
}

/// Makes room for a new connection: this one, the oldest still sending its
/// request head, is answered `408` and closed (PROTOCOL.md 6, slowloris).
/// One marked for `503` (section 1 row 1) gets that answer instead.
pub fn evict(app: &mut App, key: usize, conn: &Conn) -> Outcome {
    if matches!(&conn.phase, Phase::Http(http) if http.reject) {
        return refuse_503(app, key);
    }
    refuse(app, key, 408, "too many connections are sending their request head", &[]).into_outcome()
}

/// Parses and answers the complete requests in the buffer, one after the
/// other.
fn process(app: &mut App, key: usize, conn: &mut Conn, now: Instant) -> Outcome {
    loop {
        if app.hub.reply_bytes(key) > app.cfg.limits.max_reply_bytes {
            // The rest waits until the answers drain (the reactor pauses
            // reading too).
            return Outcome::Keep;
        }
        let Phase::Http(http) = &mut conn.phase else { return Outcome::Keep };
        if http.waiting.is_some() {
            return Outcome::Keep;
        }
        if let Some(body) = http.body.as_deref() {
            let (start, end, close) = (body.head_len, body.head_len + body.body_len, body.request.connection_close);
            if http.buf.len() < end {
                return Outcome::Keep;
            }
            http.body = None;
            let answer = match Publish::from_api(http.buf.get(start..end).unwrap_or_default()) {
                Ok(msg) => {
                    let recipients = app.publish(msg, now);
                    http::json(202, &json!({ "recipients": recipients }), close)
                }
                Err(reason) => http::error(400, &reason, &[], close),
            };
            match respond(app, key, http, answer, close, end, now) {
                Outcome::Keep => continue,
                outcome => return outcome,
            }
        }
        if http.buf.is_empty() {
            return Outcome::Keep;
        }
        let l = &app.cfg.limits;
        let parsed = http::parse_head(&http.buf, l.head_max_bytes, l.head_max_headers);
        if let (Ok(Some((request, _))), Via::Forwarded) = (&parsed, conn.via) {
            forwarded(app, conn, request);
        }
        let Phase::Http(http) = &mut conn.phase else { return Outcome::Keep };
        if http.reject && !matches!(parsed, Ok(None)) {
            return refuse_503(app, key);
        }
        let (request, head_len) = match parsed {
            Ok(None) => return Outcome::Keep,
            Err(HttpError::TooLarge) => {
                return respond(app, key, http, http::error(431, "request head too large", &[], true), true, 0, now)
            }
            Err(HttpError::BadRequest) => {
                let answer = http::error(400, "malformed HTTP/1.1 request", &[], true);
                return respond(app, key, http, answer, true, 0, now);
            }
            Ok(Some(head)) => head,
        };
        match on_request(app, key, conn, request, head_len, now) {
            Next::Parse => {}
            Next::Stop(outcome) => return outcome,
        }
    }
}

/// What comes after a request.
enum Next {
    /// The next request on the connection may be parsed now.
    Parse,
    /// Stop parsing (waiting for a body or another thread, upgraded, or
    /// the connection ends).
    Stop(Outcome),
}

impl Next {
    /// The connection's outcome (parsing on means it stays).
    fn into_outcome(self) -> Outcome {
        match self {
            Next::Parse => Outcome::Keep,
            Next::Stop(outcome) => outcome,
        }
    }
}

impl From<Outcome> for Next {
    /// After a response: parse on while the connection stays.
    fn from(outcome: Outcome) -> Next {
        match outcome {
            Outcome::Keep => Next::Parse,
            other => Next::Stop(other),
        }
    }
}

/// A trusted proxy's request head names the client: the last
/// `X-Forwarded-For` entry, or the peer when there is none or it is no
/// address (counted, logged at debug). Each head of a keep-alive
/// connection names its own client.
fn forwarded(app: &mut App, conn: &mut Conn, req: &Request) {
    let ip = req.forwarded_for.as_deref().and_then(|entry| {
        let ip = proxy::forwarded_ip(entry);
        if ip.is_none() {
            app.proxied.forwarded_fallbacks += 1;
            let entry: String = entry.chars().take(64).collect();
            debug!("X-Forwarded-For from {}: last entry {entry:?} is no address; the peer is the client", conn.peer);
        }
        ip
    });
    conn.source = ip.map(|ip| Box::new(Source { ip, port: None }));
    count_client(app, conn);
}

/// Counts a proxied connection under its client's IP from now on; when
/// that IP is at its cap, the connection is uncounted and marked for
/// `503` (section 1 row 1).
fn count_client(app: &mut App, conn: &mut Conn) {
    let ip = conn.source.as_deref().map_or(conn.peer.ip(), |s| s.ip);
    let Some(counted) = &mut conn.counted else { return };
    if app.caps.move_to(counted, ip) {
        return;
    }
    if let Some(counted) = conn.counted.take() {
        app.caps.release(counted);
    }
    if let Phase::Http(http) = &mut conn.phase {
        http.reject = true;
    }
    debug!("connection from {} over the per-IP cap; it will get 503", conn.remote());
}

fn refuse_503(app: &mut App, key: usize) -> Outcome {
    let answer = http::error(503, "too many connections; retry later", &[("Retry-After", "5")], true);
    app.hub.queue(key, Rc::from(answer));
    Outcome::Close(Reason::HttpDone)
}

/// Queues an HTTP response. With `close`, the connection then closes; else
/// `consumed` bytes leave the buffer and the next request may come.
fn respond(
    app: &mut App,
    key: usize,
    http: &mut HttpState,
    answer: Vec<u8>,
    close: bool,
    consumed: usize,
    now: Instant,
) -> Outcome {
    app.hub.queue(key, Rc::from(answer));
    if close {
        return Outcome::Close(Reason::HttpDone);
    }
    http.buf.drain(..consumed.min(http.buf.len()));
    if http.buf.is_empty() {
        http.buf = Vec::new();
    }
    http.served = true;
    http.since = now;
    Outcome::Keep
}

/// Answers a request with an error response that closes the connection.
fn refuse(app: &mut App, key: usize, status: u16, message: &str, extra: &[(&str, &str)]) -> Next {
    app.hub.queue(key, Rc::from(http::error(status, message, extra, true)));
    Next::Stop(Outcome::Close(Reason::HttpDone))
}

/// Routes one request head.
fn on_request(app: &mut App, key: usize, conn: &mut Conn, req: Request, head_len: usize, now: Instant) -> Next {
    let close = req.wants_close();
    let route = match http::route(&req) {
        Ok(route) => route,
        Err(None) => return refuse(app, key, 404, "no such endpoint", &[]),
        Err(Some(allow)) => return refuse(app, key, 405, "method not allowed", &[("Allow", allow)]),
    };
    let Phase::Http(http) = &mut conn.phase else { return Next::Stop(Outcome::Keep) };
    let answer = match route {
        Route::WebSocket => return Next::Stop(upgrade(app, key, conn, req, head_len, now)),
        Route::Publish => return start_publish(app, key, http, req, head_len),
        Route::Stats | Route::ServerLogs(_) | Route::ServerMetrics(_) | Route::Servers
            if !origin_allowed(app, &req, false) =>
        {
            return refuse(app, key, 403, "origin not allowed", &[])
        }
        Route::ServerLogs(server) => return stored_logs(app, key, conn, server, &req, head_len, now),
        Route::ServerMetrics(server) => return stored_metrics(app, key, conn, server, &req, head_len, now),
        Route::Health => http::json(200, &json!({"status": "ok"}), close),
        Route::Metrics => {
            http::response(200, "text/plain; version=0.0.4", &[], stats::prometheus(app).as_bytes(), close)
        }
        Route::Stats => match admit(app, req.token(), false) {
            Ok(()) => http::json(200, &stats::json(app), close),
            Err((status, msg)) => return refuse(app, key, status, &msg, &[]),
        },
        Route::Console(asset) => http::response(200, asset.content_type, &console::headers(&asset), asset.body, close),
        Route::Servers => match identify(app, req.token()) {
            Ok(who) => http::json(200, &servers(app, &who), close),
            Err(e) => return refuse(app, key, 401, &e.to_string(), &[]),
        },
    };
    respond(app, key, http, answer, close, head_len, now).into()
}

/// Section 1 row 4: an `Origin` passes when it is listed in
/// `auth.allowed_origins` or is the hub's own; with no list, any `Origin`
/// passes, except that a token from the `token` cookie always needs an
/// allowed `Origin` (`required`: also when the request has none, as for an
/// upgrade, which browsers always send it with), so a page on another site
/// cannot ride a user's cookie.
fn origin_allowed(app: &App, req: &Request, required: bool) -> bool {
    let listed = |origin: &String| {
        app.cfg.auth.allowed_origins.as_deref().unwrap_or_default().iter().any(|o| o == origin) || req.same_origin()
    };
    let open = app.cfg.auth.allowed_origins.as_deref().is_none_or(<[String]>::is_empty);
    match &req.origin {
        None => !(required && req.token_from_cookie()),
        Some(origin) if req.token_from_cookie() => listed(origin),
        Some(origin) => open || listed(origin),
    }
}

/// `GET /api/v1/servers`: the servers `who` may watch among those the hub
/// knows (the config's `[[servers]]` and every kept status channel's),
/// sorted by name, then id. The name is the config's, else the latest
/// `server_status` message's, else the id; the status the latest
/// message's `new_status`, else `unknown`. Bounded by what the hub keeps.
fn servers(app: &App, who: &Identity) -> serde_json::Value {
    struct Known<'a> {
        name: Option<&'a str>,
        status: Status,
        agent: Option<Uuid>,
    }
    let mut known: HashMap<Uuid, Known> = HashMap::new();
    for s in &app.cfg.servers {
        known.insert(s.id, Known { name: s.name.as_deref(), status: Status::Unknown, agent: s.agent });
    }
    for (id, name, status) in app.hub.servers() {
        let entry = known.entry(id).or_insert(Known { name: None, status, agent: None });
        entry.name = entry.name.or(Some(name));
        entry.status = status;
    }
    let mut list: Vec<(String, Uuid, Known)> = known
        .into_iter()
        .filter(|(id, _)| app.auth.may_watch(who, *id))
        .map(|(id, k)| (k.name.map_or_else(|| id.to_string(), str::to_string), id, k))
        .collect();
    list.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let servers: Vec<serde_json::Value> = list
        .into_iter()
        .map(|(name, id, k)| json!({ "id": id, "name": name, "status": k.status, "agent_id": k.agent }))
        .collect();
    json!({ "servers": servers })
}

/// Validates the token of a request.
fn identify(app: &App, token: TokenSource) -> Result<Identity, AuthError> {
    match token {
        TokenSource::None => Err(AuthError::Missing),
        TokenSource::Found(t) => app.auth.validate(&t),
    }
}

/// Checks a token for the admin endpoints (`publish`: service too).
fn admit(app: &App, token: TokenSource, service_ok: bool) -> Result<(), (u16, String)> {
    let identity = identify(app, token).map_err(|e| (401, e.to_string()))?;
    match identity.role {
        Role::Admin => Ok(()),
        Role::Service if service_ok => Ok(()),
        _ => Err((403, "this token's role may not use this endpoint".into())),
    }
}

/// `POST /api/v1/publish`: checks the token and the length, then waits
/// for the body.
fn start_publish(app: &mut App, key: usize, http: &mut HttpState, req: Request, head_len: usize) -> Next {
    let token = req.bearer().map_or(TokenSource::None, TokenSource::Found);
    if let Err((status, msg)) = admit(app, token, true) {
        return refuse(app, key, status, &msg, &[]);
    }
    let max = app.cfg.limits.publish_max_bytes;
    let body_len = match req.content_length {
        Some(Ok(n)) if n > max => return refuse(app, key, 413, &format!("body over {max} bytes"), &[]),
        Some(Ok(n)) if !req.chunked => n,
        _ => return refuse(app, key, 400, "a body with Content-Length is required", &[]),
    };
    http.body = Some(Box::new(PendingBody { request: req, head_len, body_len }));
    Next::Parse
}

/// The token of a stored-data request, allowed to subscribe to `channel`
/// (`401` without a valid one, `403` naming `what` otherwise).
fn may_read(app: &mut App, key: usize, req: &Request, channel: &Channel, what: &str) -> Result<(), Next> {
    match identify(app, req.token()) {
        Err(e) => Err(refuse(app, key, 401, &e.to_string(), &[])),
        Ok(who) if !app.auth.may_subscribe(&who, channel) => {
            Err(refuse(app, key, 403, &format!("this token may not read this server's {what}"), &[]))
        }
        Ok(_) => Ok(()),
    }
}

/// `GET /api/v1/servers/{id}/logs`: token and ACL as for the logs channel;
/// the query runs on the query thread (on-disk history) or here (the
/// rings).
fn stored_logs(
    app: &mut App,
    key: usize,
    conn: &mut Conn,
    server: Uuid,
    req: &Request,
    head_len: usize,
    now: Instant,
) -> Next {
    let close = req.wants_close();
    if let Err(refused) = may_read(app, key, req, &Channel::logs(server), "logs") {
        return refused;
    }
    let query = match LogQuery::from_params(server, |n| req.query_param(n)) {
        Ok(q) => q,
        Err(msg) => return refuse(app, key, 400, &msg, &[]),
    };
    let text = req.accept.as_deref().is_some_and(|a| a.contains("text/plain"));
    if app.queries.is_none() {
        let answer = logs_api::answer(&app.hub.memory_page(&query), text, close);
        return answer_now(app, key, conn, answer, close, head_len, now);
    }
    run_query(app, key, conn, logs_api::Work::Logs { query, text }, close, head_len, now)
}

/// `GET /api/v1/servers/{id}/metrics`: token and ACL as for the metrics
/// channel; from the memory ring here, or from the store on the query
/// thread ([`crate::metrics_api`]).
fn stored_metrics(
    app: &mut App,
    key: usize,
    conn: &mut Conn,
    server: Uuid,
    req: &Request,
    head_len: usize,
    now: Instant,
) -> Next {
    let close = req.wants_close();
    if let Err(refused) = may_read(app, key, req, &Channel::metrics(server), "metrics") {
        return refused;
    }
    if let Some(name) = req.repeated_param(&["from", "to", "step"]) {
        return refuse(app, key, 400, &format!("'{name}' is given more than once"), &[]);
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let query = match MetricsQuery::from_params(server, now_ms, |n| req.query_param(n)) {
        Ok(q) => q,
        Err(msg) => return refuse(app, key, 400, &msg, &[]),
    };
    if app.queries.is_none() {
        let answer = http::json(200, &metrics_api::from_memory(&query, app.hub.metrics_ring(server)), close);
        return answer_now(app, key, conn, answer, close, head_len, now);
    }
    run_query(app, key, conn, logs_api::Work::Metrics(query), close, head_len, now)
}

/// Answers a request at once.
fn answer_now(
    app: &mut App,
    key: usize,
    conn: &mut Conn,
    answer: Vec<u8>,
    close: bool,
    head_len: usize,
    now: Instant,
) -> Next {
    let Phase::Http(http) = &mut conn.phase else { return Next::Stop(Outcome::Keep) };
    respond(app, key, http, answer, close, head_len, now).into()
}

/// Hands `work` to the query thread; the connection waits for its reply.
fn run_query(
    app: &mut App,
    key: usize,
    conn: &mut Conn,
    work: logs_api::Work,
    close: bool,
    head_len: usize,
    now: Instant,
) -> Next {
    let serial = conn.serial;
    let Phase::Http(http) = &mut conn.phase else { return Next::Stop(Outcome::Keep) };
    let Some(queries) = &app.queries else { return Next::Stop(Outcome::Keep) };
    if !queries.send(logs_api::Job { key, serial, work, close }) {
        return refuse(app, key, 503, "the log history cannot be read now; retry later", &[("Retry-After", "5")]);
    }
    http.waiting = Some((head_len, close));
    http.since = now;
    Next::Stop(Outcome::Keep)
}

/// `GET /api/v1/ws`: section 1's checks in order, then `101` and the
/// session; frames that came with the head are handled at once.
fn upgrade(app: &mut App, key: usize, conn: &mut Conn, req: Request, head_len: usize, now: Instant) -> Outcome {
    let allowed = origin_allowed(app, &req, true);
    let checked = if !allowed {
        Err((403, "origin not allowed", None))
    } else {
        match (identify(app, req.token()), &req.ws_key) {
            (Err(e), _) => return refuse(app, key, 401, &e.to_string(), &[]).into_outcome(),
            (Ok(_), None) => Err((400, "not a WebSocket upgrade", None)),
            (Ok(_), Some(_)) if !req.upgrade_websocket || !req.connection_upgrade => {
                Err((400, "not a WebSocket upgrade", None))
            }
            (Ok(_), Some(_)) if req.ws_version.as_deref() != Some("13") => {
                Err((400, "unsupported WebSocket version", Some(("Sec-WebSocket-Version", "13"))))
            }
            (Ok(identity), Some(ws_key)) => Ok((identity, ws_key.clone())),
        }
    };
    let (identity, ws_key) = match checked {
        Ok(pair) => pair,
        Err((status, msg, extra)) => return refuse(app, key, status, msg, extra.as_slice()).into_outcome(),
    };
    let Phase::Http(http) = &mut conn.phase else { return Outcome::Keep };
    let mut leftover = http.buf.get(head_len..).unwrap_or_default().to_vec();
    let mut session = Session::new(identity, &app.cfg.limits, app.cfg.auth.expiry_notice_s, now);
    let deflate = req.deflate.filter(|_| app.cfg.limits.compression);
    session.deflate = deflate.map(|d| d.bits);
    let remote = conn.remote();
    app.connlog.connected(now, || format!("client connected: user {} from {remote}", session.describe()));
    app.hub.queue(key, http::switching_protocols(&ws_key, deflate));
    app.hub.open_session(key, session);
    conn.phase = Phase::WebSocket(WsState::default());
    if let Some(outcome) = dispatch::check_token(app, key, chrono::Utc::now().timestamp()) {
        return outcome;
    }
    if leftover.is_empty() {
        return Outcome::Keep;
    }
    dispatch::on_bytes(app, key, conn, &mut leftover, now)
}
