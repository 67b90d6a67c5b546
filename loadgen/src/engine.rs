//! The receiving side: one `mio` loop on one thread that connects the
//! WebSocket clients (at most `window` handshakes in flight), upgrades them
//! with their token in `?token=`, subscribes them once the `101` is in,
//! answers Pings, and then only reads: 256 KiB per `read`, frame headers
//! parsed by [`FrameReader`], payloads looked at only for sampled or
//! tracked frames. The [`Publisher`] (publish API) runs in the same loop.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use crate::frames::{self, client_frame, want, FrameReader, Handler};
use crate::publisher::{Publisher, PUBLISHER_TOKENS};
use crate::stats::{now_us, Tally};
use crate::Error;

/// Bytes per `read` call.
const READ_BUF: usize = 256 * 1024;
/// Full reads per connection per event before the others get a turn.
const READS_PER_EVENT: usize = 4;
/// The pacing timer.
const TIMER: Token = Token(PUBLISHER_TOKENS - 1);
/// The key every client sends (the hub's answer is checked against it).
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// One client to connect.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Its JWT (sent as `?token=`).
    pub token: String,
    /// Channels to subscribe to once upgraded.
    pub channels: Vec<String>,
    /// Check the `seq` of every frame it gets.
    pub tracked: bool,
    /// `SO_RCVBUF` to set before connecting (slow consumers: a small one,
    /// so that a client that stops reading fills up within a second
    /// instead of the megabytes loopback autotuning allows).
    pub rcvbuf: Option<u32>,
    /// Offer permessage-deflate (`--deflate`).
    pub deflate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientPhase {
    /// Queued, not connected yet.
    Waiting,
    /// TCP connect in progress.
    Connecting,
    /// Request sent, waiting for the `101`.
    Head,
    /// Upgraded.
    Open,
    /// Closed (failed, or closed by the hub).
    Closed,
}

/// Per-connection facts the frame handler updates.
#[derive(Debug, Default)]
struct Meta {
    tracked: bool,
    /// Not read any more (slow-consumer scenario).
    paused: bool,
    last_seq: u64,
    started_at: u64,
    subscribed_at: u64,
}

#[derive(Debug)]
struct BenchClient {
    stream: Option<TcpStream>,
    phase: ClientPhase,
    /// The upgrade request, then (once sent) empty.
    request: Vec<u8>,
    /// The subscribe frame, moved to `out` after the `101`.
    subscribe: Vec<u8>,
    rcvbuf: Option<u32>,
    head: Vec<u8>,
    out: Vec<u8>,
    reader: FrameReader,
    meta: Meta,
}

/// The frame handler of one connection for one batch of bytes.
struct Ctx<'a> {
    tally: &'a mut Tally,
    meta: &'a mut Meta,
    out: &'a mut Vec<u8>,
    now: u64,
}

impl Handler for Ctx<'_> {
    #[inline]
    fn want(&mut self) -> u8 {
        let sample = if self.tally.sample_tick() { want::SAMPLE } else { 0 };
        if self.meta.tracked {
            sample | want::SEQ
        } else {
            sample
        }
    }

    #[inline]
    fn log_entry(&mut self, payload: Option<&[u8]>, flags: u8) {
        self.tally.frames += 1;
        let Some(p) = payload else { return };
        if flags & want::SAMPLE != 0 {
            if let Some(stamp) = frames::stamp(p) {
                let latency = self.now.saturating_sub(stamp).min(u64::from(u32::MAX)) as u32;
                self.tally.samples.push((stamp, latency));
            }
        }
        if flags & want::SEQ != 0 {
            if let Some(seq) = frames::seq(p) {
                let last = self.meta.last_seq;
                if last != 0 && seq != last + 1 {
                    if seq > last {
                        self.tally.seq_missing += seq - last - 1;
                    } else {
                        self.tally.seq_disorder += 1;
                    }
                }
                self.meta.last_seq = seq;
            }
        }
    }

    fn other_text(&mut self, p: &[u8]) {
        if frames::contains(p, b"\"SUBSCRIBED\"") {
            if frames::contains(p, b"\"data\":[]") {
                self.tally.fail("SUBSCRIBED to nothing");
            } else if self.meta.subscribed_at == 0 {
                self.meta.subscribed_at = self.now;
                self.tally.subscribed += 1;
                self.tally.last_subscribed_at = self.now;
                let took = self.now.saturating_sub(self.meta.started_at).min(u64::from(u32::MAX));
                self.tally.sub_times.push(took as u32);
            }
            return;
        }
        if !frames::contains(p, b"\"type\":\"error\"") {
            return;
        }
        let parsed: serde_json::Value = serde_json::from_slice(p).unwrap_or_default();
        let code = parsed["data"]["code"].as_str().unwrap_or("unparsable error").to_string();
        if code == "MESSAGES_DROPPED" {
            self.tally.drop_reports += 1;
            self.tally.dropped += parsed["data"]["data"]["dropped"].as_u64().unwrap_or(0);
            // The report covers the gap the next frame will show.
            if let Some(to) = parsed["data"]["data"]["to_seq"].as_u64() {
                if self.meta.tracked && to > self.meta.last_seq {
                    self.meta.last_seq = 0;
                }
            }
        } else {
            *self.tally.errors.entry(code).or_insert(0) += 1;
        }
    }

    fn ping(&mut self, payload: &[u8]) {
        client_frame(self.out, 0xA, payload);
    }

    fn close(&mut self, code: Option<u16>) {
        *self.tally.closes.entry(code.unwrap_or(1005)).or_insert(0) += 1;
    }
}

/// A `timerfd` in the poll: `epoll_wait` only sleeps whole milliseconds,
/// which would make every line up to 1 ms late on its own.
#[derive(Debug)]
struct Timer {
    fd: OwnedFd,
    armed_at: u64,
}

impl Timer {
    fn new(registry: &Registry) -> io::Result<Timer> {
        // SAFETY: timerfd_create has no memory preconditions; the fd is
        // owned by the OwnedFd from here on.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), TIMER, Interest::READABLE)?;
        Ok(Timer { fd, armed_at: 0 })
    }

    /// Fires at `at` (µs of [`now_us`], the same `CLOCK_MONOTONIC`).
    fn arm(&mut self, at: u64) {
        if at == self.armed_at {
            return;
        }
        self.armed_at = at;
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: (at / 1_000_000) as i64, tv_nsec: (at % 1_000_000 * 1000) as i64 },
        };
        // SAFETY: the fd is ours; spec is a valid itimerspec.
        unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
    }

    /// Consumes an expiry so the next one is a new edge.
    fn clear(&mut self) {
        let mut n = [0u8; 8];
        // SAFETY: reads at most 8 bytes into n.
        unsafe { libc::read(self.fd.as_raw_fd(), n.as_mut_ptr().cast(), n.len()) };
        self.armed_at = 0;
    }
}

/// The loop. See the module docs.
pub struct Engine {
    poll: Poll,
    timer: Timer,
    events: Option<Events>,
    addr: SocketAddr,
    accept: String,
    clients: Vec<BenchClient>,
    /// What the clients received.
    pub tally: Tally,
    buf: Box<[u8]>,
    again: Vec<usize>,
    queue: VecDeque<usize>,
    in_flight: usize,
    /// Handshakes (connect to `SUBSCRIBED`) in flight at most.
    window: usize,
    /// The publish-API publisher, when the scenario has one.
    pub publisher: Option<Publisher>,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Engine {
    /// An engine for the hub at `addr`, sampling one frame in `sample_every`.
    ///
    /// # Errors
    /// The poll cannot be created.
    pub fn new(addr: SocketAddr, sample_every: u32, window: usize) -> Result<Engine, Error> {
        let poll = Poll::new()?;
        Ok(Engine {
            timer: Timer::new(poll.registry())?,
            poll,
            events: Some(Events::with_capacity(4096)),
            addr,
            accept: tungstenite::handshake::derive_accept_key(WS_KEY.as_bytes()),
            clients: Vec::new(),
            tally: Tally::new(sample_every),
            buf: vec![0; READ_BUF].into_boxed_slice(),
            again: Vec::new(),
            queue: VecDeque::new(),
            in_flight: 0,
            window: window.max(1),
            publisher: None,
        })
    }

    /// The registry, for the publisher's sockets.
    pub fn registry(&self) -> &mio::Registry {
        self.poll.registry()
    }

    /// Queues clients for connecting, in order: client `i` of all the
    /// clients added is the `i`th queued.
    pub fn add_clients(&mut self, specs: Vec<ClientSpec>) {
        for spec in specs {
            let offer = if spec.deflate { "Sec-WebSocket-Extensions: permessage-deflate\r\n" } else { "" };
            let request = format!(
                "GET /api/v1/ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n",
                spec.token, self.addr
            );
            let body = serde_json::json!({ "type": "subscribe", "data": { "channels": spec.channels } });
            let mut subscribe = Vec::new();
            client_frame(&mut subscribe, 1, body.to_string().as_bytes());
            self.queue.push_back(self.clients.len());
            self.clients.push(BenchClient {
                stream: None,
                phase: ClientPhase::Waiting,
                request: request.into_bytes(),
                subscribe,
                rcvbuf: spec.rcvbuf,
                head: Vec::new(),
                out: Vec::new(),
                reader: FrameReader::default(),
                meta: Meta { tracked: spec.tracked, ..Meta::default() },
            });
        }
    }

    /// True while some client is still queued or between connect and `SUBSCRIBED`.
    pub fn handshaking(&self) -> bool {
        !self.queue.is_empty() || self.in_flight > 0
    }

    /// Stops reading from client `i` (it stays connected).
    pub fn pause(&mut self, i: usize) {
        if let Some(c) = self.clients.get_mut(i) {
            c.meta.paused = true;
        }
    }

    /// Clients that are upgraded and not closed.
    pub fn open_clients(&self) -> usize {
        self.clients.iter().filter(|c| c.phase == ClientPhase::Open).count()
    }

    fn start_connects(&mut self) {
        while self.in_flight < self.window {
            let Some(i) = self.queue.pop_front() else { return };
            let c = &mut self.clients[i];
            c.meta.started_at = now_us();
            let connected = match c.rcvbuf {
                Some(bytes) => connect_with_rcvbuf(self.addr, bytes, true).map(TcpStream::from_std),
                None => TcpStream::connect(self.addr),
            };
            let mut stream = match connected {
                Ok(s) => s,
                Err(e) => {
                    self.tally.fail(format!("connect: {e}"));
                    c.phase = ClientPhase::Closed;
                    continue;
                }
            };
            if let Err(e) =
                self.poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)
            {
                self.tally.fail(format!("register: {e}"));
                c.phase = ClientPhase::Closed;
                continue;
            }
            c.stream = Some(stream);
            c.phase = ClientPhase::Connecting;
            self.in_flight += 1;
        }
    }

    /// One turn: start connects, wait for events (at most `max_wait`, less
    /// when the publisher has a line due), handle them, publish what is due.
    ///
    /// # Errors
    /// Only when `poll` fails.
    pub fn turn(&mut self, max_wait: Duration) -> Result<(), Error> {
        self.start_connects();
        let now = now_us();
        let mut timeout = if self.again.is_empty() { max_wait } else { Duration::ZERO };
        if let Some(due) = self.publisher.as_ref().and_then(Publisher::next_due) {
            if due <= now {
                timeout = Duration::ZERO;
            } else {
                self.timer.arm(due);
            }
        }
        let mut events = self.events.take().unwrap_or_else(|| Events::with_capacity(4096));
        let polled = self.poll.poll(&mut events, Some(timeout));
        let now = now_us();
        if let Err(e) = polled {
            self.events = Some(events);
            return if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e.into()) };
        }
        for event in events.iter() {
            let Token(t) = event.token();
            if event.token() == TIMER {
                self.timer.clear();
            } else if t >= PUBLISHER_TOKENS {
                if let Some(p) = &mut self.publisher {
                    p.on_event(t - PUBLISHER_TOKENS, self.poll.registry());
                }
            } else {
                self.on_client(t, now);
            }
        }
        self.events = Some(events);
        for i in std::mem::take(&mut self.again) {
            self.read_client(i, now);
        }
        if let Some(p) = &mut self.publisher {
            p.tick(self.poll.registry(), now_us());
        }
        Ok(())
    }

    /// Runs turns until `deadline` (µs of [`now_us`]) or until `done` is true.
    /// Returns true when `done` ended it.
    ///
    /// # Errors
    /// Only when `poll` fails.
    pub fn run_until(&mut self, deadline: u64, mut done: impl FnMut(&Engine) -> bool) -> Result<bool, Error> {
        loop {
            if done(self) {
                return Ok(true);
            }
            let now = now_us();
            if now >= deadline {
                return Ok(false);
            }
            self.turn(Duration::from_micros((deadline - now).min(5_000)))?;
        }
    }

    fn close(&mut self, i: usize, failure: Option<String>) {
        let c = &mut self.clients[i];
        if c.phase == ClientPhase::Closed {
            return;
        }
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        if c.meta.subscribed_at == 0 && c.phase != ClientPhase::Waiting {
            self.in_flight -= 1;
        }
        c.phase = ClientPhase::Closed;
        c.out = Vec::new();
        c.head = Vec::new();
        if let Some(reason) = failure {
            self.tally.fail(reason);
        }
    }

    fn on_client(&mut self, i: usize, now: u64) {
        let Some(c) = self.clients.get_mut(i) else { return };
        if c.phase == ClientPhase::Connecting {
            let Some(stream) = &c.stream else { return };
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.close(i, Some(format!("connect: {e}"))),
            }
            match stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.close(i, Some(format!("connect: {e}"))),
            }
            c.out = std::mem::take(&mut c.request);
            c.phase = ClientPhase::Head;
        }
        if !c.out.is_empty() {
            self.flush(i);
        }
        self.read_client(i, now);
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let Some(stream) = &mut c.stream else { return };
        while !c.out.is_empty() {
            match stream.write(&c.out) {
                Ok(0) => return self.close(i, Some("write: connection closed".into())),
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close(i, Some(format!("write: {e}"))),
            }
        }
    }

    fn read_client(&mut self, i: usize, now: u64) {
        for _ in 0..READS_PER_EVENT {
            let Some(c) = self.clients.get_mut(i) else { return };
            if c.meta.paused || !matches!(c.phase, ClientPhase::Head | ClientPhase::Open) {
                return;
            }
            let Some(stream) = &mut c.stream else { return };
            let n = match stream.read(&mut self.buf) {
                Ok(0) => {
                    let why = if c.meta.subscribed_at == 0 {
                        "closed by the hub during the handshake"
                    } else {
                        "closed by the hub"
                    };
                    return self.close(i, Some(why.into()));
                }
                Ok(n) => n,
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.close(i, Some(format!("read: {e}"))),
            };
            self.tally.bytes += n as u64;
            let was_subscribed = c.meta.subscribed_at != 0;
            let result = if c.phase == ClientPhase::Head {
                c.head.extend_from_slice(&self.buf[..n]);
                handshake(c, &self.accept, &mut self.tally, now)
            } else {
                let mut ctx = Ctx { tally: &mut self.tally, meta: &mut c.meta, out: &mut c.out, now };
                c.reader.feed(&self.buf[..n], &mut ctx).map_err(String::from)
            };
            if let Err(e) = result {
                return self.close(i, Some(e));
            }
            if !was_subscribed && c.meta.subscribed_at != 0 {
                self.in_flight -= 1;
            }
            if !c.out.is_empty() {
                self.flush(i);
            }
            if n < self.buf.len() {
                // A short read drained the socket; the next arrival is a new edge.
                return;
            }
        }
        self.again.push(i);
    }
}

/// A TCP connect to an IPv4 `addr` with `SO_RCVBUF` set to `bytes` first
/// (it must precede the handshake to bound the window the client
/// advertises, and it turns receive autotuning off), so a client that stops
/// reading fills up after a few KB instead of the megabytes loopback allows.
/// A `nonblocking` connect returns while it is still in progress; else it
/// returns connected. The hub's tests use it for their slow clients too.
///
/// # Errors
/// An IPv6 address, or what `socket`, `setsockopt` or `connect` says.
pub fn connect_with_rcvbuf(addr: SocketAddr, bytes: u32, nonblocking: bool) -> io::Result<std::net::TcpStream> {
    let SocketAddr::V4(v4) = addr else {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "a receive buffer size needs an IPv4 hub address"));
    };
    let flags = if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain socket calls on a descriptor this function owns (the
    // OwnedFd closes it on every error path); the structs are initialized.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | flags, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = OwnedFd::from_raw_fd(fd);
        let size = bytes as libc::c_int;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&size as *const libc::c_int).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let sa_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::connect(fd, (&sa as *const libc::sockaddr_in).cast(), sa_len) != 0 {
            let e = io::Error::last_os_error();
            if !nonblocking || e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(std::net::TcpStream::from(sock))
    }
}

/// Checks the `101` once the head is complete, sends the subscribe frame
/// and feeds what followed the head to the frame reader.
fn handshake(c: &mut BenchClient, accept: &str, tally: &mut Tally, now: u64) -> Result<(), String> {
    let Some(end) = c.head.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        return if c.head.len() > 16 * 1024 { Err("response head too large".into()) } else { Ok(()) };
    };
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&c.head[..end]).map_err(|e| format!("bad response head: {e}"))?;
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(format!("upgrade refused: {code}"));
    }
    let ok = resp
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept") && h.value == accept.as_bytes());
    if !ok {
        return Err("wrong Sec-WebSocket-Accept".into());
    }
    c.phase = ClientPhase::Open;
    let head = std::mem::take(&mut c.head);
    c.out.append(&mut c.subscribe);
    c.subscribe = Vec::new();
    let mut ctx = Ctx { tally, meta: &mut c.meta, out: &mut c.out, now };
    c.reader.feed(&head[end..], &mut ctx).map_err(String::from)
}
