//! The reactor: one `mio::Poll` loop on one thread that owns the listener,
//! every connection (a slab keyed by token), the [`Hub`] and all timers.
//!
//! Each turn: take every ready event (accepts, reads; a read may publish,
//! which only queues bytes), then write each connection that got output
//! once (one `writev`), then run the timers when due. Readiness is
//! edge-triggered, so reads drain to WouldBlock (bounded per turn, the rest
//! comes next turn) and WRITABLE interest is registered only while bytes
//! wait. Only a failure of `poll` itself stops the loop.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tungstenite::protocol::frame::coding::Control;
use uuid::Uuid;

use crate::auth::{AuthError, Authenticator, Role};
use crate::config::Config;
use crate::conn::{Conn, PendingBody, Phase, Rate, Reason, Session};
use crate::http::{self, HttpError, Request, Route, TokenSource};
use crate::hub::{describe, Hub};
use crate::link::{AgentState, Event, Link, Reply};
use crate::logs_api::{self, Queries};
use crate::protocol::{self, Channel, ClientMessage, ErrorCode, Publish};
use crate::store::{LogQuery, Recovered, Store};
use crate::ws::{self, Incoming};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);

/// Agent events waiting for the reactor at most; the agent thread waits
/// when the queue is full.
const EVENT_QUEUE: usize = 1024;
/// Agent events handled per loop turn; the rest wait for the next turn.
const EVENTS_PER_TURN: usize = 16_384;

/// Bytes read from a socket per `read` call, into the one shared buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Reads per connection per turn; a connection with more waiting is
/// read again next turn, so one sender cannot starve the others.
const READS_PER_TURN: usize = 16;
/// Timers run this often.
const TICK: Duration = Duration::from_millis(250);
/// How long a closing connection may take to close its side.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Replies (not counted in `client_queue`) queued for one connection above
/// which its input is not read until they drain: a client that sends but
/// never reads cannot grow its queue without bound.
const MAX_REPLY_BACKLOG: usize = 4096;
/// The heap is trimmed at most this often (and only after accepts).
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// Live messages wait at most this long to be written together: while
/// publishes keep arriving, each subscriber gets one `writev` for several
/// messages instead of one per message (fewer syscalls and wake-ups, the
/// hot path of a fan-out). When a turn publishes nothing, they go at once.
const FANOUT_DELAY: Duration = Duration::from_millis(2);
/// The listen backlog asked for.
const LISTEN_BACKLOG: libc::c_int = 4096;
/// Kernel send buffer per connection (Linux doubles it). Without a cap it
/// autotunes up to `tcp_wmem`'s maximum (4 MiB), which hides a stalled
/// client from the queue cap and the write timeout for tens of seconds.
const SEND_BUFFER: libc::c_int = 256 * 1024;
/// After `accept` fails for lack of descriptors, try again after this.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The loop and everything it owns. See the module docs.
pub struct Reactor {
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Signals,
    conns: Slab<Conn>,
    hub: Hub,
    auth: Authenticator,
    cfg: Config,
    scratch: Box<[u8]>,
    /// Open connections per IP (only when `max_connections_per_ip` is set).
    per_ip: HashMap<IpAddr, usize>,
    /// Connections counted toward the caps.
    counted: usize,
    /// Upgraded, not closing.
    clients: usize,
    accept_paused_until: Option<Instant>,
    shutdown_at: Option<Instant>,
    /// Connections with input left to read next turn.
    read_again: Vec<usize>,
    started: Instant,
    waker: Arc<Waker>,
    events_tx: SyncSender<Event>,
    events: Receiver<Event>,
    /// Events were left in the queue last turn.
    events_pending: bool,
    /// A sender has woken the reactor since it last drained (see [`Link`]).
    woken: Arc<AtomicBool>,
    /// Link state per configured agent, in config order.
    agents: Vec<AgentState>,
    /// The stored-logs query thread (with on-disk history).
    queries: Option<Queries>,
    /// Connections accepted so far (each one's serial).
    serials: u64,
    /// When the heap was last trimmed, and `serials` then.
    last_trim: Instant,
    trimmed_at_serial: u64,
}

/// Raises the soft limit of open files to the hard limit, so that
/// `max_connections` can be reached; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// Caps the socket's kernel send buffer at [`SEND_BUFFER`].
fn cap_send_buffer(stream: &mio::net::TcpStream) {
    let size = SEND_BUFFER;
    // SAFETY: setsockopt with a pointer to a c_int of the given length.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Reactor {
    /// Binds the listener and prepares the loop.
    ///
    /// # Errors
    /// The address cannot be bound, or the poll or signal handler cannot
    /// be created.
    pub fn bind(
        cfg: Config,
        auth: Authenticator,
        store: Option<Store>,
        recovered: Option<Recovered>,
    ) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(cfg.listen)?;
        // std listens with a backlog of 128: a storm of connects overflows
        // it and clients wait a second for a SYN retry. Listening again
        // raises it (the kernel caps it at net.core.somaxconn).
        // SAFETY: listen(2) on the socket this listener owns.
        unsafe {
            libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG);
        }
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let woken = Arc::new(AtomicBool::new(false));
        let (events_tx, events) = sync_channel(EVENT_QUEUE);
        let queries = match &store {
            Some(store) => {
                Some(Queries::spawn(store, Link::new(events_tx.clone(), Arc::clone(&waker), Arc::clone(&woken)))?)
            }
            None => None,
        };
        let hub = Hub::new(&cfg.limits, &cfg.history, store, recovered);
        let agents = cfg
            .agents
            .iter()
            .map(|a| AgentState {
                id: a.id,
                address: a.address.clone(),
                connected: false,
                since: None,
                last_error: None,
                streams: 0,
            })
            .collect();
        Ok(Reactor {
            poll,
            listener: Some(listener),
            signals,
            conns: Slab::new(),
            hub,
            auth,
            cfg,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            per_ip: HashMap::new(),
            counted: 0,
            clients: 0,
            accept_paused_until: None,
            shutdown_at: None,
            read_again: Vec::new(),
            started: Instant::now(),
            waker,
            events_tx,
            events,
            events_pending: false,
            woken,
            agents,
            queries,
            serials: 0,
            last_trim: Instant::now(),
            trimmed_at_serial: 0,
        })
    }

    /// A sending end for the agent thread (or any other publisher thread).
    pub fn link(&self) -> Link {
        Link::new(self.events_tx.clone(), Arc::clone(&self.waker), Arc::clone(&self.woken))
    }

    /// Handles queued agent events, at most [`EVENTS_PER_TURN`].
    fn drain_events(&mut self) {
        self.events_pending = false;
        self.woken.store(false, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..EVENTS_PER_TURN {
            match self.events.try_recv() {
                Ok(Event::Publish(msg)) => {
                    self.hub.publish(&mut self.conns, &self.auth, msg);
                }
                Ok(Event::Reply(reply)) => self.on_reply(reply),
                Ok(Event::Agent(state)) => match self.agents.iter_mut().find(|a| a.id == state.id) {
                    Some(slot) => *slot = state,
                    None => self.agents.push(state),
                },
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
        self.events_pending = true;
    }

    /// The bound address.
    ///
    /// # Errors
    /// When the listener is closed or the OS cannot tell.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Some(l) => l.local_addr(),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Runs until SIGTERM/SIGINT and the shutdown grace period end.
    ///
    /// # Errors
    /// Only when `poll` itself fails.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        let mut flush = Vec::new();
        loop {
            let now = Instant::now();
            let wake = match self.hub.fanout_since() {
                Some(since) => next_tick.min(since + FANOUT_DELAY),
                None => next_tick,
            };
            let timeout = if self.read_again.is_empty() && !self.events_pending {
                wake.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            let published = self.hub.counters.messages_in;
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => self.drain_events(),
                    SIGNALS => {
                        if self.signals.pending().next().is_some() {
                            self.begin_shutdown(now);
                        }
                    }
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(key, now);
                        }
                        if event.is_writable() {
                            if let Some(conn) = self.conns.get_mut(key) {
                                self.hub.touch(key, conn);
                            }
                        }
                    }
                }
            }
            for key in std::mem::take(&mut self.read_again) {
                self.on_readable(key, now);
            }
            if self.events_pending {
                self.drain_events();
            }
            self.flush_dirty(&mut flush, now);
            let busy = self.hub.counters.messages_in != published;
            if self.hub.fanout_since().is_some_and(|t| !busy || now.duration_since(t) >= FANOUT_DELAY) {
                self.hub.take_fanout(&mut flush);
                for key in flush.drain(..) {
                    self.flush(key, now);
                }
            }
            if now >= next_tick {
                next_tick = now + TICK;
                self.tick(now);
                self.flush_dirty(&mut flush, now);
            }
            if let Some(until) = self.shutdown_at {
                if self.conns.is_empty() || now >= until {
                    let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                    for key in keys {
                        self.remove(key, Reason::Shutdown);
                    }
                    self.hub.close_store();
                    info!("stopped");
                    return Ok(());
                }
            }
        }
    }

    fn flush_dirty(&mut self, list: &mut Vec<usize>, now: Instant) {
        self.hub.take_dirty(list);
        for key in list.drain(..) {
            self.flush(key, now);
        }
    }

    fn accept(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.accept_paused_until = None;
        let Some(listener) = &self.listener else { return };
        loop {
            let (mut stream, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::ConnectionAborted => {
                    continue
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: pause and retry on a timer.
                    warn!("accept failed ({e}); pausing accepts for {} ms", ACCEPT_PAUSE.as_millis());
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
            };
            let l = &self.cfg.limits;
            let ip_count = self.per_ip.get(&peer.ip()).copied().unwrap_or(0);
            let reject = self.counted >= l.max_connections
                || (l.max_connections_per_ip > 0 && ip_count >= l.max_connections_per_ip);
            let _ = stream.set_nodelay(true);
            cap_send_buffer(&stream);
            let entry = self.conns.vacant_entry();
            if let Err(e) = self.poll.registry().register(&mut stream, Token(entry.key()), Interest::READABLE) {
                warn!("cannot register connection from {peer}: {e}");
                continue;
            }
            self.serials += 1;
            entry.insert(Conn::new(stream, peer, self.serials, reject, now));
            if reject {
                debug!("connection from {peer} over the cap; it will get 503");
            } else {
                self.counted += 1;
                if l.max_connections_per_ip > 0 {
                    *self.per_ip.entry(peer.ip()).or_insert(0) += 1;
                }
            }
        }
    }

    /// Reads what the socket has, up to [`READS_PER_TURN`] chunks.
    fn on_readable(&mut self, key: usize, now: Instant) {
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.out.replies() > MAX_REPLY_BACKLOG {
                conn.read_paused = true;
                return;
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    let reason = match &conn.phase {
                        Phase::Closing(c) => c.reason.clone(),
                        _ => Reason::PeerClosed,
                    };
                    self.remove(key, reason);
                    return;
                }
                Ok(n) => {
                    conn.last_read = now;
                    self.on_bytes(key, n, now);
                }
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.remove(key, Reason::Io(e.to_string()));
                    return;
                }
            }
        }
        self.read_again.push(key);
    }

    fn on_bytes(&mut self, key: usize, n: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        match &mut conn.phase {
            Phase::Http(http) => {
                http.buf.extend_from_slice(&self.scratch[..n]);
                self.process_http(key, now);
            }
            Phase::WebSocket(session) => {
                let mut scratch = std::mem::take(&mut self.scratch);
                if session.partial.is_empty() {
                    if let Some(used) = self.process_frames(key, &mut scratch[..n], now) {
                        if let Some(session) = self.conns.get_mut(key).and_then(Conn::session_mut) {
                            session.partial.extend_from_slice(&scratch[used..n]);
                        }
                    }
                } else {
                    let mut partial = std::mem::take(&mut session.partial);
                    partial.extend_from_slice(&scratch[..n]);
                    if let Some(used) = self.process_frames(key, &mut partial, now) {
                        partial.drain(..used);
                        if let Some(session) = self.conns.get_mut(key).and_then(Conn::session_mut) {
                            session.partial = if partial.is_empty() { Vec::new() } else { partial };
                        }
                    }
                }
                self.scratch = scratch;
            }
            Phase::Closing { .. } => {}
        }
    }

    /// Parses and answers complete requests in the buffer (keep-alive and
    /// pipelining: one after the other).
    fn process_http(&mut self, key: usize, now: Instant) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            let Phase::Http(http) = &mut conn.phase else { return };
            if http.waiting.is_some() {
                return;
            }
            if let Some(body) = &http.body {
                let end = body.head_len + body.body_len;
                if http.buf.len() < end {
                    return;
                }
                let Some(body) = http.body.take() else { return };
                let buf = std::mem::take(&mut http.buf);
                let close = body.request.connection_close;
                let answer = match Publish::from_api(buf.get(body.head_len..end).unwrap_or_default()) {
                    Ok(msg) => {
                        let recipients = self.hub.publish(&mut self.conns, &self.auth, msg);
                        http::json(202, &json!({ "recipients": recipients }), close)
                    }
                    Err(reason) => http::error(400, &reason, &[], close),
                };
                if let Some(Phase::Http(http)) = self.conns.get_mut(key).map(|c| &mut c.phase) {
                    http.buf = buf;
                }
                self.respond(key, answer, close, end, now);
                continue;
            }
            if http.buf.is_empty() {
                return;
            }
            let l = &self.cfg.limits;
            let parsed = http::parse_head(&http.buf, l.head_max_bytes, l.head_max_headers);
            if http.reject && !matches!(parsed, Ok(None)) {
                self.refuse_503(key, now);
                return;
            }
            match parsed {
                Ok(None) => return,
                Err(HttpError::TooLarge) => {
                    return self.respond(key, http::error(431, "request head too large", &[], true), true, 0, now)
                }
                Err(HttpError::BadRequest) => {
                    return self.respond(key, http::error(400, "malformed HTTP/1.1 request", &[], true), true, 0, now)
                }
                Ok(Some((request, head_len))) => {
                    if !self.on_request(key, request, head_len, now) {
                        return;
                    }
                }
            }
        }
    }

    fn refuse_503(&mut self, key: usize, now: Instant) {
        let answer = http::error(503, "too many connections; retry later", &[("Retry-After", "5")], true);
        self.respond(key, answer, true, 0, now);
    }

    /// Queues an HTTP response. With `close`, the connection then closes;
    /// else `consumed` bytes leave the buffer and the next request may come.
    fn respond(&mut self, key: usize, answer: Vec<u8>, close: bool, consumed: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.out.push_control(Rc::from(answer));
        if close {
            conn.phase = Phase::closing(now + CLOSE_LINGER, Reason::HttpDone, None);
        } else if let Phase::Http(http) = &mut conn.phase {
            http.buf.drain(..consumed.min(http.buf.len()));
            if http.buf.is_empty() {
                http.buf = Vec::new();
            }
            http.served = true;
            http.since = now;
        }
        self.hub.touch(key, conn);
    }

    /// Routes one request head. Returns true when the next request on the
    /// connection may be parsed right away.
    fn on_request(&mut self, key: usize, req: Request, head_len: usize, now: Instant) -> bool {
        let close = req.wants_close();
        let route = match http::route(&req) {
            Ok(route) => route,
            Err(None) => {
                self.respond(key, http::error(404, "no such endpoint", &[], true), true, 0, now);
                return false;
            }
            Err(Some(allow)) => {
                self.respond(key, http::error(405, "method not allowed", &[("Allow", allow)], true), true, 0, now);
                return false;
            }
        };
        match route {
            Route::WebSocket => {
                self.upgrade(key, req, head_len, now);
                false
            }
            Route::Health => {
                self.respond(key, http::json(200, &json!({"status": "ok"}), close), close, head_len, now);
                !close
            }
            Route::Metrics => {
                let body = self.prometheus();
                let answer = http::response(200, "text/plain; version=0.0.4", &[], body.as_bytes(), close);
                self.respond(key, answer, close, head_len, now);
                !close
            }
            Route::Stats => {
                let answer = match self.admit(req.token(), false) {
                    Ok(()) => http::json(200, &self.stats(), close),
                    Err((status, msg)) => {
                        self.respond(key, http::error(status, &msg, &[], true), true, 0, now);
                        return false;
                    }
                };
                self.respond(key, answer, close, head_len, now);
                !close
            }
            Route::Publish => self.start_publish(key, req, head_len, now),
            Route::ServerLogs(server) => self.stored_logs(key, server, &req, head_len, now),
        }
    }

    /// `GET /api/v1/servers/{id}/logs`: token and ACL as for the logs
    /// channel; the query runs on the query thread (on-disk history) or
    /// here (the rings). Returns true when the next request may be parsed.
    fn stored_logs(&mut self, key: usize, server: Uuid, req: &Request, head_len: usize, now: Instant) -> bool {
        let close = req.wants_close();
        let identity = match req.token() {
            TokenSource::None => Err(AuthError::Missing),
            TokenSource::Found(t) => self.auth.validate(&t),
        };
        let refusal = match identity {
            Err(e) => Some((401, e.to_string())),
            Ok(who) if !self.auth.may_subscribe(&who, &Channel::logs(server)) => {
                Some((403, "this token may not read this server's logs".to_string()))
            }
            Ok(_) => None,
        };
        if let Some((status, msg)) = refusal {
            self.respond(key, http::error(status, &msg, &[], true), true, 0, now);
            return false;
        }
        let query = match LogQuery::from_params(server, |n| req.query_param(n)) {
            Ok(q) => q,
            Err(msg) => {
                self.respond(key, http::error(400, &msg, &[], true), true, 0, now);
                return false;
            }
        };
        let text = req.accept.as_deref().is_some_and(|a| a.contains("text/plain"));
        let Some(queries) = &self.queries else {
            let answer = logs_api::answer(&self.hub.memory_page(&query), text, close);
            self.respond(key, answer, close, head_len, now);
            return !close;
        };
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let serial = conn.serial;
        if let Phase::Http(http) = &mut conn.phase {
            http.waiting = Some((head_len, close));
        }
        if !queries.send(logs_api::Job { key, serial, query, text, close }) {
            let answer =
                http::error(503, "the log history cannot be read now; retry later", &[("Retry-After", "5")], true);
            self.respond(key, answer, true, 0, now);
        }
        false
    }

    /// A waited-for answer: sent if its connection is still the one waiting.
    fn on_reply(&mut self, reply: Reply) {
        let Some(conn) = self.conns.get_mut(reply.key) else { return };
        if conn.serial != reply.serial {
            return;
        }
        let Phase::Http(http) = &mut conn.phase else { return };
        let Some((consumed, close)) = http.waiting.take() else { return };
        let now = Instant::now();
        self.respond(reply.key, reply.response, close, consumed, now);
        if !close {
            self.process_http(reply.key, now);
        }
    }

    /// Checks a token for the admin endpoints (`publish`: service too).
    fn admit(&self, token: TokenSource, service_ok: bool) -> Result<(), (u16, String)> {
        let TokenSource::Found(token) = token else {
            return Err((401, AuthError::Missing.to_string()));
        };
        let identity = self.auth.validate(&token).map_err(|e| (401, e.to_string()))?;
        match identity.role {
            Role::Admin => Ok(()),
            Role::Service if service_ok => Ok(()),
            _ => Err((403, "this token's role may not use this endpoint".into())),
        }
    }

    fn start_publish(&mut self, key: usize, req: Request, head_len: usize, now: Instant) -> bool {
        let token = match req.bearer() {
            Some(t) => TokenSource::Found(t),
            None => TokenSource::None,
        };
        if let Err((status, msg)) = self.admit(token, true) {
            self.respond(key, http::error(status, &msg, &[], true), true, 0, now);
            return false;
        }
        let body_len = match req.content_length {
            Some(Ok(n)) if n > self.cfg.limits.publish_max_bytes => {
                let msg = format!("body over {} bytes", self.cfg.limits.publish_max_bytes);
                self.respond(key, http::error(413, &msg, &[], true), true, 0, now);
                return false;
            }
            Some(Ok(n)) if !req.chunked => n,
            _ => {
                self.respond(key, http::error(400, "a body with Content-Length is required", &[], true), true, 0, now);
                return false;
            }
        };
        let Some(Phase::Http(http)) = self.conns.get_mut(key).map(|c| &mut c.phase) else { return false };
        http.body = Some(Box::new(PendingBody { request: req, head_len, body_len }));
        true
    }

    fn upgrade(&mut self, key: usize, req: Request, head_len: usize, now: Instant) {
        let refuse = |status: u16, msg: &str, extra: &[(&str, &str)]| http::error(status, msg, extra, true);
        let allowed = match (&self.cfg.auth.allowed_origins, &req.origin) {
            (Some(list), Some(origin)) => list.iter().any(|o| o == origin),
            _ => true,
        };
        let answer = if !allowed {
            Err(refuse(403, "origin not allowed", &[]))
        } else {
            let identity = match req.token() {
                TokenSource::None => Err(AuthError::Missing),
                TokenSource::Found(t) => self.auth.validate(&t),
            };
            match (identity, &req.ws_key) {
                (Err(e), _) => Err(refuse(401, &e.to_string(), &[])),
                (Ok(_), None) => Err(refuse(400, "not a WebSocket upgrade", &[])),
                (Ok(_), Some(_)) if !req.upgrade_websocket || !req.connection_upgrade => {
                    Err(refuse(400, "not a WebSocket upgrade", &[]))
                }
                (Ok(_), Some(_)) if req.ws_version.as_deref() != Some("13") => {
                    Err(refuse(400, "unsupported WebSocket version", &[("Sec-WebSocket-Version", "13")]))
                }
                (Ok(identity), Some(ws_key)) => Ok((identity, ws_key.clone())),
            }
        };
        let (identity, ws_key) = match answer {
            Ok(pair) => pair,
            Err(answer) => return self.respond(key, answer, true, 0, now),
        };
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Phase::Http(http) = &mut conn.phase else { return };
        let leftover = http.buf.get(head_len..).unwrap_or_default().to_vec();
        info!("client connected: user {} from {}", describe(&identity), conn.peer);
        let session = Session::new(identity, &self.cfg.limits, self.cfg.auth.expiry_notice_s, now);
        conn.out.push_control(Rc::from(http::switching_protocols(&ws_key)));
        conn.phase = Phase::WebSocket(session);
        self.clients += 1;
        self.hub.touch(key, conn);
        self.token_timers(key, chrono::Utc::now().timestamp(), now);
        if !leftover.is_empty() {
            let mut buf = leftover;
            if let Some(used) = self.process_frames(key, &mut buf, now) {
                buf.drain(..used);
                if let Some(session) = self.conns.get_mut(key).and_then(Conn::session_mut) {
                    session.partial = buf;
                }
            }
        }
    }

    /// Decodes and handles the whole frames in `buf`. Returns the bytes
    /// used, or `None` when the connection left the WebSocket phase.
    fn process_frames(&mut self, key: usize, buf: &mut [u8], now: Instant) -> Option<usize> {
        let max = self.cfg.limits.max_message_bytes;
        let mut pos = 0;
        loop {
            let session = self.conns.get_mut(key).and_then(Conn::session_mut)?;
            let rest = buf.get_mut(pos..)?;
            match session.decoder.next(rest, max) {
                Ok(None) => return Some(pos),
                Ok(Some((used, message))) => {
                    pos += used;
                    if let Some(message) = message {
                        if !self.on_message(key, message, now) {
                            return None;
                        }
                    }
                }
                Err(e) => {
                    debug!("closing {key}: {e}");
                    self.close_ws(key, e.close_code(), &e.to_string(), now);
                    return None;
                }
            }
        }
    }

    /// Handles one message. Returns false when the connection is closing.
    fn on_message(&mut self, key: usize, message: Incoming<'_>, now: Instant) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let Some(session) = conn.session_mut() else { return false };
        let text = match message {
            Incoming::Ping(payload) => {
                conn.out.push_control(ws::control(Control::Pong, payload));
                self.hub.touch(key, conn);
                return true;
            }
            Incoming::Pong => return true,
            Incoming::Close(code) => {
                let valid = code.is_none_or(|c| matches!(c, 1000..=1003 | 1007..=1011 | 3000..=4999));
                if !valid {
                    self.close_ws(key, 1002, "invalid close code", now);
                    return false;
                }
                let reply = code.map_or_else(|| ws::control(Control::Close, &[]), |c| ws::close(c, ""));
                self.leave(key, reply, Reason::Closed(code.unwrap_or(1005)), now);
                return false;
            }
            Incoming::Text(text) => Some(text),
            Incoming::Binary => None,
        };
        let l = &self.cfg.limits;
        match session.rate.check(l.rate_per_s, l.rate_burst, now) {
            Rate::Allow => {}
            Rate::Refuse => return true,
            Rate::RefuseAndTell => {
                let e = protocol::error(ErrorCode::RateLimited, "Too many messages; slow down", None);
                self.hub.reply(key, conn, &e);
                return true;
            }
            Rate::Abuse => {
                warn!("closing {} from {}: sustained rate-limit abuse", describe(&session.identity), conn.peer);
                self.close_ws(key, 1008, "rate limit exceeded", now);
                return false;
            }
        }
        let parsed = match text {
            Some(text) => protocol::parse_client(&text),
            None => Err(protocol::Refusal {
                code: ErrorCode::InvalidMessage,
                message: "Binary frames are not supported".into(),
            }),
        };
        match parsed {
            Err(r) => {
                let e = protocol::error(r.code, &r.message, None);
                self.hub.reply(key, conn, &e);
            }
            Ok(ClientMessage::Ping) => {
                let pong = protocol::pong(protocol::Time::now());
                self.hub.reply(key, conn, &pong);
            }
            Ok(ClientMessage::Subscribe { channels, since }) => {
                self.hub.subscribe(key, &mut self.conns, &self.auth, &channels, since.as_deref());
            }
            Ok(ClientMessage::Unsubscribe { channels }) => self.hub.unsubscribe(key, &mut self.conns, &channels),
            Ok(ClientMessage::History { channel, limit, before_seq }) => {
                self.hub.history(key, &mut self.conns, &self.auth, &channel, limit, before_seq);
            }
            Ok(ClientMessage::Auth { token }) => {
                self.hub.reauth(key, &mut self.conns, &self.auth, &token);
                self.token_timers(key, chrono::Utc::now().timestamp(), now);
            }
        }
        true
    }

    /// Leaves the WebSocket phase: drops the subscriptions, queues `frame`
    /// (a Close) and lets the connection finish closing.
    fn leave(&mut self, key: usize, frame: Rc<[u8]>, reason: Reason, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let deadline = match self.shutdown_at {
            Some(t) => t.min(now + CLOSE_LINGER),
            None => now + CLOSE_LINGER,
        };
        let who = conn.session().map(|s| describe(&s.identity));
        let previous = std::mem::replace(&mut conn.phase, Phase::closing(deadline, reason, who));
        conn.out.push_control(frame);
        self.hub.touch(key, conn);
        if let Phase::WebSocket(session) = previous {
            self.clients -= 1;
            self.hub.remove_client(&mut self.conns, &session.subs);
        }
    }

    /// Sends a Close with `code` and closes.
    fn close_ws(&mut self, key: usize, code: u16, text: &str, now: Instant) {
        self.leave(key, ws::close(code, text), Reason::Closed(code), now);
    }

    /// Writes what is queued; registers WRITABLE only while bytes wait.
    fn flush(&mut self, key: usize, now: Instant) {
        let cap = self.cfg.limits.client_queue;
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.dirty = false;
        conn.fanout = false;
        let mut progress = false;
        loop {
            match conn.out.write_to(&mut conn.stream) {
                Ok(n) => progress |= n > 0,
                Err(e) => return self.remove(key, Reason::Io(e.to_string())),
            }
            let reports = conn.out.take_reports(cap);
            if reports.is_empty() {
                break;
            }
            for error in self.hub.drop_errors(reports) {
                conn.out.push_control(ws::text(&error));
            }
        }
        conn.stalled_since = match (conn.out.is_empty(), progress) {
            (true, _) => None,
            (false, true) => Some(now),
            (false, false) => conn.stalled_since.or(Some(now)),
        };
        if let Phase::Closing(closing) = &mut conn.phase {
            if conn.out.is_empty() && !closing.shut {
                let _ = conn.stream.shutdown(Shutdown::Write);
                closing.shut = true;
            }
        }
        let want_write = !conn.out.is_empty();
        if want_write != conn.writable_registered {
            let interest = if want_write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            if let Err(e) = self.poll.registry().reregister(&mut conn.stream, Token(key), interest) {
                return self.remove(key, Reason::Io(e.to_string()));
            }
            conn.writable_registered = want_write;
        }
        if conn.read_paused && conn.out.replies() <= MAX_REPLY_BACKLOG / 2 {
            conn.read_paused = false;
            self.read_again.push(key);
        }
    }

    /// `TOKEN_EXPIRING` when due, close `4001` at `exp` + leeway.
    fn token_timers(&mut self, key: usize, unix_now: i64, now: Instant) {
        let leeway = self.cfg.auth.leeway_s as i64;
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Some(session) = conn.session_mut() else { return };
        let exp = session.identity.exp;
        if unix_now >= exp + leeway {
            info!("closing {}: token expired", describe(&session.identity));
            return self.close_ws(key, 4001, "token expired", now);
        }
        if session.notice_at.is_some_and(|t| unix_now >= t) {
            session.notice_at = None;
            let notice = protocol::control("TOKEN_EXPIRING", "Token expiring", json!({ "expires_at": exp }), None);
            self.hub.reply(key, conn, &notice);
        }
    }

    /// The timers of every connection (run every [`TICK`]).
    fn tick(&mut self, now: Instant) {
        let l = &self.cfg.limits;
        let head_timeout = Duration::from_secs(l.head_timeout_s);
        let pong_timeout = Duration::from_secs(l.pong_timeout_s);
        let write_timeout = Duration::from_secs(l.write_timeout_s);
        let ping_interval = Duration::from_secs(l.ping_interval_s);
        let unix_now = chrono::Utc::now().timestamp();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.stalled_since.is_some_and(|t| now.duration_since(t) >= write_timeout) {
                if matches!(conn.phase, Phase::WebSocket(_)) && conn.out.at_frame_start() {
                    let _ = conn.stream.write(&ws::close(4008, "write timeout"));
                }
                self.remove(key, Reason::WriteStall);
                continue;
            }
            match &mut conn.phase {
                Phase::Http(http) if http.waiting.is_none() && now.duration_since(http.since) >= head_timeout => {
                    if http.reject {
                        self.refuse_503(key, now);
                    } else if http.served && http.buf.is_empty() {
                        self.remove(key, Reason::HttpDone);
                    } else {
                        self.respond(
                            key,
                            http::error(408, "request head not received in time", &[], true),
                            true,
                            0,
                            now,
                        );
                    }
                }
                Phase::Http(_) => {}
                Phase::WebSocket(session) => {
                    if now.duration_since(conn.last_read) >= pong_timeout {
                        self.remove(key, Reason::PongTimeout);
                        continue;
                    }
                    if now >= session.next_ping {
                        session.next_ping = now + ping_interval;
                        conn.out.push_control(ws::control(Control::Ping, &[]));
                        self.hub.touch(key, conn);
                    } else if conn.out.is_empty() {
                        conn.out.release();
                        session.release(now);
                    }
                    self.token_timers(key, unix_now, now);
                }
                Phase::Closing(closing) => {
                    if now >= closing.deadline {
                        let reason = closing.reason.clone();
                        self.remove(key, reason);
                    }
                }
            }
        }
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept(now);
        }
        self.hub.save_counters();
        self.trim_heap(now);
    }

    /// Returns the heap's free pages to the OS after connections came and
    /// went (handshake buffers, closed sessions), at most every
    /// [`TRIM_EVERY`], so idle RSS follows the connections that remain.
    fn trim_heap(&mut self, now: Instant) {
        if self.serials != self.trimmed_at_serial && now.duration_since(self.last_trim) >= TRIM_EVERY {
            self.last_trim = now;
            self.trimmed_at_serial = self.serials;
            // SAFETY: malloc_trim only gives free heap pages back to the OS.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    /// Frees a connection: deregisters it, drops its subscriptions, logs.
    fn remove(&mut self, key: usize, reason: Reason) {
        let Some(mut conn) = self.conns.try_remove(key) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if conn.counted {
            self.counted -= 1;
            if self.cfg.limits.max_connections_per_ip > 0 {
                if let Some(n) = self.per_ip.get_mut(&conn.peer.ip()) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_ip.remove(&conn.peer.ip());
                    }
                }
            }
        }
        match conn.phase {
            Phase::WebSocket(session) => {
                self.clients -= 1;
                self.hub.remove_client(&mut self.conns, &session.subs);
                info!("client disconnected: user {} from {}: {reason}", describe(&session.identity), conn.peer);
            }
            Phase::Closing(closing) if closing.who.is_some() => {
                let who = closing.who.unwrap_or_default();
                info!("client disconnected: user {who} from {}: {reason}", conn.peer)
            }
            _ => debug!("connection from {} closed: {reason}", conn.peer),
        }
    }

    fn begin_shutdown(&mut self, now: Instant) {
        if self.shutdown_at.is_some() {
            return;
        }
        info!("shutting down: closing {} clients", self.clients);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.shutdown_at = Some(now + Duration::from_secs(self.cfg.limits.shutdown_grace_s));
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            match self.conns.get(key).map(|c| &c.phase) {
                Some(Phase::WebSocket(_)) => self.close_ws(key, 1001, "going away", now),
                Some(Phase::Http(_)) => self.remove(key, Reason::Shutdown),
                _ => {}
            }
        }
    }

    fn stats(&self) -> serde_json::Value {
        let subscriptions: serde_json::Map<String, serde_json::Value> =
            self.hub.subscriptions().map(|(name, n)| (name.to_string(), json!(n))).collect();
        let (entries, bytes) = self.hub.history_size();
        let c = self.hub.counters;
        json!({
            "clients": self.clients,
            "connections": self.conns.len(),
            "channels": subscriptions.len(),
            "subscriptions": subscriptions,
            "messages": { "in": c.messages_in, "out": c.messages_out, "dropped": c.messages_dropped },
            "agents": self.agents.iter().map(|a| json!({
                "id": a.id,
                "address": a.address,
                "connected": a.connected,
                "since": a.since.map(|t| t.to_string()),
                "last_error": a.last_error,
                "streams": a.streams,
            })).collect::<Vec<_>>(),
            "history": { "entries": entries, "bytes": bytes, "disk": self.hub.store_stats().map(|d| json!({
                "entries": d.stored_entries,
                "bytes": d.stored_bytes,
                "pending": d.pending,
                "write_errors": d.write_errors,
                "dropped": d.dropped,
                "failing": d.failing,
                "last_error": d.last_error,
            })) },
            "epoch": self.hub.epoch(),
            "uptime_seconds": self.started.elapsed().as_secs(),
        })
    }

    fn prometheus(&self) -> String {
        let (entries, bytes) = self.hub.history_size();
        let c = self.hub.counters;
        let subscriptions: usize = self.hub.subscriptions().map(|(_, n)| n).sum();
        let metrics: [(&str, &str, &str, u64); 9] = [
            ("aymc_clients", "gauge", "Connected WebSocket clients.", self.clients as u64),
            ("aymc_connections", "gauge", "Open TCP connections.", self.conns.len() as u64),
            ("aymc_subscriptions", "gauge", "Channel subscriptions of all clients.", subscriptions as u64),
            ("aymc_messages_in_total", "counter", "Messages published.", c.messages_in),
            ("aymc_messages_out_total", "counter", "Message copies queued to clients.", c.messages_out),
            ("aymc_messages_dropped_total", "counter", "Message copies dropped for slow clients.", c.messages_dropped),
            ("aymc_history_entries", "gauge", "Log messages kept in memory.", entries as u64),
            ("aymc_history_bytes", "gauge", "Bytes of log messages kept in memory.", bytes as u64),
            ("aymc_uptime_seconds", "gauge", "Seconds since the hub started.", self.started.elapsed().as_secs()),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in metrics {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
        }
        if let Some(d) = self.hub.store_stats() {
            let disk: [(&str, &str, &str, u64); 6] = [
                ("aymc_history_disk_entries", "gauge", "Log lines stored on disk.", d.stored_entries),
                ("aymc_history_disk_bytes", "gauge", "Bytes of log lines stored on disk.", d.stored_bytes),
                ("aymc_history_disk_pending", "gauge", "Log lines waiting for the disk.", d.pending),
                ("aymc_history_disk_write_errors_total", "counter", "Failed disk writes.", d.write_errors),
                ("aymc_history_disk_dropped_total", "counter", "Log lines never written to disk.", d.dropped),
                ("aymc_history_disk_failing", "gauge", "Whether disk writes fail now.", u64::from(d.failing)),
            ];
            for (name, kind, help, value) in disk {
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
            }
        }
        out.push_str("# HELP aymc_agent_up Whether the agent answers (1) or not (0).\n# TYPE aymc_agent_up gauge\n");
        for a in &self.agents {
            out.push_str(&format!(
                "aymc_agent_up{{agent=\"{}\",address=\"{}\"}} {}\n",
                a.id,
                a.address.replace(['"', '\\', '\n'], "_"),
                u8::from(a.connected)
            ));
        }
        out
    }
}
