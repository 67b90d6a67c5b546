//! One connection: its socket, its outgoing queue and its state machine
//! (`Http` -> `WebSocket` -> `Closing`). The reactor drives it; this module
//! holds the per-connection state and the small policies that need nothing
//! else (rate limit, timers of one connection). It never reaches into other
//! connections.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::auth::Identity;
use crate::http::Request;
use crate::hub::Sub;
use crate::outq::OutQueue;
use crate::ws::Decoder;
use smallvec::SmallVec;

/// Why a connection ends; logged at disconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The peer closed the socket.
    PeerClosed,
    /// The Close handshake finished (or the peer went away after ours).
    Closed(u16),
    /// No frame for `pong_timeout_s`.
    PongTimeout,
    /// A write made no progress for `write_timeout_s` (close `4008`).
    WriteStall,
    /// A socket error.
    Io(String),
    /// The hub is shutting down and the grace period ended.
    Shutdown,
    /// An HTTP exchange ended (response sent with `Connection: close`, or
    /// an idle keep-alive connection timed out).
    HttpDone,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::PeerClosed => f.write_str("peer closed the connection"),
            Reason::Closed(code) => write!(f, "closed with code {code}"),
            Reason::PongTimeout => f.write_str("no frame within pong_timeout_s"),
            Reason::WriteStall => f.write_str("write stalled (4008)"),
            Reason::Io(e) => write!(f, "socket error: {e}"),
            Reason::Shutdown => f.write_str("hub shutting down"),
            Reason::HttpDone => f.write_str("http exchange done"),
        }
    }
}

/// A request whose body is still arriving (`POST /api/v1/publish`).
#[derive(Debug)]
pub struct PendingBody {
    /// The parsed head.
    pub request: Request,
    /// Length of the head in the buffer.
    pub head_len: usize,
    /// `Content-Length`.
    pub body_len: usize,
}

/// The HTTP phase: a request head (and maybe a body) arriving.
#[derive(Debug)]
pub struct HttpState {
    /// Bytes received and not yet consumed.
    pub buf: Vec<u8>,
    /// When the current head started to be awaited (`408` after
    /// `head_timeout_s`; an idle keep-alive connection is closed then).
    pub since: Instant,
    /// Accepted over a connection cap: answer `503` once the head is read.
    pub reject: bool,
    /// At least one request was answered on this connection.
    pub served: bool,
    /// A publish body being read.
    pub body: Option<Box<PendingBody>>,
    /// A request waits for another thread's answer: `(bytes to consume,
    /// close after it)`. Nothing more is parsed meanwhile.
    pub waiting: Option<(usize, bool)>,
}

/// The token bucket of section 7 and the window of refusals.
#[derive(Debug)]
pub struct RateLimit {
    tokens: f32,
    last: Instant,
    /// Times of refused messages within the last 10 s (allocated only
    /// while a client is being refused).
    #[allow(clippy::box_collection)] // 8 bytes per idle connection instead of 32
    refusals: Option<Box<VecDeque<Instant>>>,
    /// When the last `RATE_LIMITED` error was sent.
    last_error: Option<Instant>,
}

/// What the rate limiter says about one incoming data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// Handle it.
    Allow,
    /// Ignore it and send `RATE_LIMITED`.
    RefuseAndTell,
    /// Ignore it silently (an error went out less than a second ago).
    Refuse,
    /// Close with `1008`.
    Abuse,
}

impl RateLimit {
    fn new(burst: u32, now: Instant) -> RateLimit {
        RateLimit { tokens: burst as f32, last: now, refusals: None, last_error: None }
    }

    /// Takes a token for one data message.
    pub fn check(&mut self, rate: u32, burst: u32, now: Instant) -> Rate {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate as f32).min(burst as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Rate::Allow;
        }
        let window = Duration::from_secs(10);
        let refusals = self.refusals.get_or_insert_with(Box::default);
        while refusals.front().is_some_and(|t| now.saturating_duration_since(*t) > window) {
            refusals.pop_front();
        }
        refusals.push_back(now);
        if refusals.len() > 10 * rate as usize {
            return Rate::Abuse;
        }
        match self.last_error {
            Some(t) if now.saturating_duration_since(t) < Duration::from_secs(1) => Rate::Refuse,
            _ => {
                self.last_error = Some(now);
                Rate::RefuseAndTell
            }
        }
    }

    fn release(&mut self, now: Instant) {
        let quiet = |r: &VecDeque<Instant>| {
            r.back().is_none_or(|t| now.saturating_duration_since(*t) > Duration::from_secs(10))
        };
        if self.refusals.as_deref().is_some_and(quiet) {
            self.refusals = None;
        }
    }
}

/// An upgraded connection's session.
#[derive(Debug)]
pub struct Session {
    /// The token's identity.
    pub identity: Identity,
    /// Subscriptions (up to four without an allocation of their own).
    pub subs: SmallVec<[Sub; 4]>,
    /// Fragments of a message in progress.
    pub decoder: Decoder,
    /// An incomplete frame (empty and unallocated between frames).
    pub partial: Vec<u8>,
    /// Rate limit state.
    pub rate: RateLimit,
    /// When the next Ping goes out.
    pub next_ping: Instant,
    /// When `TOKEN_EXPIRING` is due (unix s); `None` once sent.
    pub notice_at: Option<i64>,
    expiry_notice_s: i64,
}

impl Session {
    /// A new session for a validated identity.
    pub fn new(identity: Identity, limits: &crate::config::Limits, expiry_notice_s: u64, now: Instant) -> Session {
        let mut s = Session {
            identity,
            subs: SmallVec::new(),
            decoder: Decoder::default(),
            partial: Vec::new(),
            rate: RateLimit::new(limits.rate_burst, now),
            next_ping: now + Duration::from_secs(limits.ping_interval_s),
            notice_at: None,
            expiry_notice_s: expiry_notice_s as i64,
        };
        s.schedule_notice();
        s
    }

    /// Replaces the identity (in-band `auth`): a new token gets its own
    /// `TOKEN_EXPIRING`.
    pub fn set_identity(&mut self, identity: Identity) {
        self.identity = identity;
        self.schedule_notice();
    }

    fn schedule_notice(&mut self) {
        self.notice_at = Some(self.identity.exp - self.expiry_notice_s);
    }

    /// Frees buffers an idle session does not need.
    pub fn release(&mut self, now: Instant) {
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            self.partial = Vec::new();
        }
        self.rate.release(now);
    }
}

/// The state machine.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // the session inline is the point: most connections are upgraded
pub enum Phase {
    /// Reading a request head or body.
    Http(Box<HttpState>),
    /// Upgraded. Held inline: an idle client costs its slab slot and
    /// nothing else (per-connection memory, DESIGN.md rule 6).
    WebSocket(Session),
    /// Output being flushed, then the write side shut, then waiting for
    /// the peer to close. Input is discarded.
    Closing(Box<Closing>),
}

/// The end of a connection's life.
#[derive(Debug)]
pub struct Closing {
    /// Give up waiting then.
    pub deadline: Instant,
    /// Why, for the disconnect log.
    pub reason: Reason,
    /// The write side has been shut down.
    pub shut: bool,
    /// Who the upgraded client was, for the disconnect log.
    pub who: Option<String>,
}

impl Phase {
    /// The closing phase.
    pub fn closing(deadline: Instant, reason: Reason, who: Option<String>) -> Phase {
        Phase::Closing(Box::new(Closing { deadline, reason, shut: false, who }))
    }
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// The peer.
    pub peer: SocketAddr,
    /// Unique for the life of the process (slab keys are reused).
    pub serial: u64,
    /// Bytes waiting for the socket.
    pub out: OutQueue,
    /// Where it is in its life.
    pub phase: Phase,
    /// Counted toward the connection caps (not marked for `503`).
    pub counted: bool,
    /// Listed in the hub's list of replies to flush.
    pub dirty: bool,
    /// Listed in the hub's list of live messages to flush.
    pub fanout: bool,
    /// WRITABLE is registered.
    pub writable_registered: bool,
    /// Last time bytes arrived.
    pub last_read: Instant,
    /// Since when bytes have waited without any progress.
    pub stalled_since: Option<Instant>,
    /// Reading paused because too many replies wait (resumed after a flush).
    pub read_paused: bool,
}

impl Conn {
    /// A freshly accepted connection.
    pub fn new(stream: TcpStream, peer: SocketAddr, serial: u64, reject: bool, now: Instant) -> Conn {
        Conn {
            stream,
            peer,
            serial,
            out: OutQueue::default(),
            phase: Phase::Http(Box::new(HttpState {
                buf: Vec::new(),
                since: now,
                reject,
                served: false,
                body: None,
                waiting: None,
            })),
            counted: !reject,
            dirty: false,
            fanout: false,
            writable_registered: false,
            last_read: now,
            stalled_since: None,
            read_paused: false,
        }
    }

    /// The session, when upgraded and not closing.
    pub fn session(&self) -> Option<&Session> {
        match &self.phase {
            Phase::WebSocket(s) => Some(s),
            _ => None,
        }
    }

    /// The session, mutably.
    pub fn session_mut(&mut self) -> Option<&mut Session> {
        match &mut self.phase {
            Phase::WebSocket(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_refuses_over_burst_tells_once_per_second_and_closes_on_abuse() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(2, t0);
        assert_eq!(r.check(1, 2, t0), Rate::Allow);
        assert_eq!(r.check(1, 2, t0), Rate::Allow);
        assert_eq!(r.check(1, 2, t0), Rate::RefuseAndTell);
        assert_eq!(r.check(1, 2, t0), Rate::Refuse);
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(r.check(1, 2, t1), Rate::Allow, "refilled");
        let mut last = Rate::Allow;
        for _ in 0..10 {
            last = r.check(1, 2, t1);
        }
        assert_eq!(last, Rate::Abuse, "more than 10 x rate refused within 10 s");
    }
}
