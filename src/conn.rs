//! One connection's socket side: the stream, the peer, and the state of the
//! bytes that cross it (`Http` → `WebSocket` → `Closing`): a request head
//! being read, the frames of a message in progress, the close handshake.
//! What the client *is* (queue, session) lives in [`crate::client`]; the
//! [`Outcome`] of every handler tells the reactor whether the connection
//! stays, and only the reactor removes one. [`Conn::interest`] is the one
//! place that decides what the socket is registered for.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::net::TcpStream;
use mio::Interest;

use crate::caps::Counted;
use crate::http::Request;
use crate::proxy::{ProxyError, Remote, Source, Via};
use crate::ws::Decoder;

/// Kernel send buffer per connection (Linux doubles it). Without a cap it
/// autotunes up to `tcp_wmem`'s maximum (4 MiB), which hides a stalled
/// client from the queue cap and the write timeout for tens of seconds.
const SEND_BUFFER: libc::c_int = 256 * 1024;

/// Sets a new connection's socket options: no Nagle delay (frames are
/// written whole and coalesced by the hub), and the send buffer capped at
/// [`SEND_BUFFER`].
pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
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
    /// A trusted proxy's PROXY protocol header was missing (also: not
    /// complete within `head_timeout_s`), malformed or too long; closed
    /// without an answer.
    ProxyHeader(ProxyError),
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
            Reason::ProxyHeader(e) => e.fmt(f),
        }
    }
}

/// What a handler decided about its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Outcome {
    /// It goes on.
    Keep,
    /// It ends gracefully: what the handler queued (a response, a Close
    /// frame) is written, the write side is shut, then the peer gets a
    /// moment to close.
    Close(Reason),
    /// It ends now, without writing anything more.
    Drop(Reason),
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
    /// A PROXY protocol header must come first (a trusted proxy with
    /// `proxy_protocol`); at most [`V2_MAX`](crate::proxy::V2_MAX) bytes
    /// are looked at for it.
    pub preamble: bool,
    /// At least one request was answered on this connection.
    pub served: bool,
    /// A publish body being read.
    pub body: Option<Box<PendingBody>>,
    /// A request waits for another thread's answer: `(bytes to consume,
    /// close after it)`. Nothing more is parsed meanwhile.
    pub waiting: Option<(usize, bool)>,
}

/// The WebSocket phase: framing state only (the session is the hub's).
#[derive(Debug, Default)]
pub struct WsState {
    /// Fragments of a message in progress.
    pub decoder: Decoder,
    /// Bytes not decoded yet: an incomplete frame, or frames left while
    /// input is paused (empty and unallocated otherwise).
    pub partial: Vec<u8>,
    /// Since when a message has been arriving (`limits.message_timeout_s`).
    pub message_since: Option<Instant>,
}

/// Output that waits: the bytes that waited when the window opened must be
/// written within `write_timeout_s`, so a trickle of progress does not keep
/// a stalled queue alive (PROTOCOL.md 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// When the window opened.
    pub since: Instant,
    /// Bytes of it still to write.
    pub owed: usize,
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

/// The state machine.
#[derive(Debug)]
pub enum Phase {
    /// Reading a request head or body.
    Http(Box<HttpState>),
    /// Upgraded.
    WebSocket(WsState),
    /// Output being flushed, then the write side shut, then waiting for
    /// the peer to close. Input is discarded.
    Closing(Box<Closing>),
}

/// One connection's socket side.
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// How its client's address is learned (the peer may be a trusted
    /// proxy).
    pub via: Via,
    /// The client a trusted proxy named (`None`: the peer is the client;
    /// boxed, as most connections have none).
    pub source: Option<Box<Source>>,
    /// Unique for the life of the process (slab keys are reused).
    pub serial: u64,
    /// Where it is in its life.
    pub phase: Phase,
    /// What it holds of the connection caps' counts (`None`: marked for
    /// `503`).
    pub counted: Option<Counted>,
    /// The interest registered now.
    pub registered: Interest,
    /// Last time bytes arrived.
    pub last_read: Instant,
    /// Output waiting, if any (the write timeout's window).
    pub stall: Option<Stall>,
    /// Input is not read (too many reply bytes wait, or a request waits for
    /// another thread); resumed when that ends.
    pub paused: bool,
}

impl Conn {
    /// A freshly accepted connection, registered READABLE; without
    /// `counted` it is over a cap and gets `503` after its head.
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        via: Via,
        serial: u64,
        counted: Option<Counted>,
        now: Instant,
    ) -> Conn {
        Conn {
            stream,
            peer,
            via,
            source: None,
            serial,
            phase: Phase::Http(Box::new(HttpState {
                buf: Vec::new(),
                since: now,
                reject: counted.is_none(),
                preamble: via == Via::ProxyHeader,
                served: false,
                body: None,
                waiting: None,
            })),
            counted,
            registered: Interest::READABLE,
            last_read: now,
            stall: None,
            paused: false,
        }
    }

    /// Who it is from, for log lines.
    pub fn remote(&self) -> Remote {
        Remote { peer: self.peer, source: self.source.as_deref().copied() }
    }

    /// Still sending a request head (also an idle keep-alive connection).
    pub fn awaits_head(&self) -> bool {
        matches!(&self.phase, Phase::Http(http) if http.waiting.is_none() && http.body.is_none())
    }

    /// Whether input is read now: not while `reply_bytes` (what waits for
    /// this client) exceed `max_reply_bytes`, nor while a request waits for
    /// another thread's answer (PROTOCOL.md 6).
    pub fn takes_input(&self, reply_bytes: usize, max_reply_bytes: usize) -> bool {
        let waiting = matches!(&self.phase, Phase::Http(http) if http.waiting.is_some());
        reply_bytes <= max_reply_bytes && !waiting
    }

    /// Accounts for a write: `written` bytes went out, and something still
    /// waits or not; `pending` counts the bytes waiting when a new window
    /// opens.
    pub fn wrote(&mut self, written: usize, waiting: bool, pending: impl FnOnce() -> usize, now: Instant) {
        self.stall = match self.stall {
            _ if !waiting => None,
            Some(s) if s.owed > written => Some(Stall { since: s.since, owed: s.owed - written }),
            _ => Some(Stall { since: now, owed: pending() }),
        };
    }

    /// Output has waited for the write timeout without draining its window.
    pub fn stalled(&self, now: Instant, timeout: std::time::Duration) -> bool {
        self.stall.is_some_and(|s| now.duration_since(s.since) >= timeout)
    }

    /// What the socket should be registered for: READABLE always (a paused
    /// reader is resumed by the reactor, not by readiness), WRITABLE only
    /// while bytes wait.
    pub fn interest(&self, bytes_waiting: bool) -> Interest {
        if bytes_waiting {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }

    /// Ends the connection gracefully (see [`Outcome::Close`]).
    pub fn begin_closing(&mut self, deadline: Instant, reason: Reason, who: Option<String>) {
        self.phase = Phase::Closing(Box::new(Closing { deadline, reason, shut: false, who }));
    }
}
