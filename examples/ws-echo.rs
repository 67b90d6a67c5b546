//! A WebSocket echo server built from the hub's own pieces, so that
//! Autobahn|Testsuite's `fuzzingclient` can test them (the hub itself speaks
//! only JSON): request heads with [`http::parse_head`], the upgrade answer
//! with [`http::switching_protocols`], frames with [`ws::Decoder`] and the
//! `ws` encoders, writes through an [`OutQueue`], on one mio loop that
//! drains to WouldBlock the way the hub's reactor does.
//!
//! It accepts an upgrade on any path, negotiates permessage-deflate as the
//! hub does (`Request::deflate`, [`http::switching_protocols`]), echoes every text and binary message
//! with its opcode (compressed with [`ws::message`] when negotiated and at
//! least 256 bytes long, the hub's default threshold), answers Ping with
//! Pong and Close with Close, and fails the connection with the decoder's
//! close code (1002, 1007, 1009). The message limit is 16 MiB instead of
//! the hub's 512 KiB (Autobahn's case 9 sends up to 16 MiB). After a Close
//! it shuts its write side and waits up to [`LINGER`] for the peer to
//! close, as the hub does.
//!
//! ```text
//! cargo run --release --example ws-echo -- 127.0.0.1:9001
//! ```
//!
//! One thing is the example's own: a Close code is checked with the rule
//! of `dispatch.rs` (which the hub keeps private); and binary messages are
//! echoed, where the hub answers them with `INVALID_MESSAGE`.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aymc_hub::http;
use aymc_hub::outq::OutQueue;
use aymc_hub::ws::{self, Decoder, Incoming};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// The listener's token (connections use their slab key).
const LISTENER: Token = Token(usize::MAX);
/// Largest message, fragments joined: 16 MiB (Autobahn case 9).
const MAX_MESSAGE: usize = 16 << 20;
/// Request head limits, as the hub's defaults.
const HEAD_MAX_BYTES: usize = 8192;
const HEAD_MAX_HEADERS: usize = 64;
/// How long a closing connection waits for the peer's FIN.
const LINGER: Duration = Duration::from_secs(2);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Shorter messages are echoed uncompressed (the hub's default
/// `limits.compress_min_bytes`).
const COMPRESS_MIN: usize = 256;

enum Phase {
    /// Reading the upgrade request.
    Http,
    /// Upgraded; `deflate`: the negotiated window, if any.
    WebSocket { decoder: Decoder, deflate: Option<u8> },
    /// Our last frame is queued; after it the write side is shut and the
    /// socket dropped when the peer closes or `deadline` passes.
    Closing { deadline: Option<Instant> },
}

struct Conn {
    stream: TcpStream,
    phase: Phase,
    /// Received bytes not consumed yet (an incomplete head or frame).
    input: Vec<u8>,
    out: OutQueue,
    interest: Interest,
    /// The peer closed its side.
    eof: bool,
}

impl Conn {
    /// What the socket waits for: writable only while bytes wait.
    fn interest(&self) -> Interest {
        if self.out.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        }
    }

    fn closing(&mut self) {
        self.phase = Phase::Closing { deadline: None };
    }

    /// Reads until WouldBlock (or EOF).
    fn read(&mut self) -> io::Result<()> {
        let mut chunk = vec![0; READ_CHUNK];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    if !matches!(self.phase, Phase::Closing { .. }) {
                        self.input.extend_from_slice(&chunk[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Handles what `input` holds.
    fn on_input(&mut self) {
        if matches!(self.phase, Phase::Http) {
            match http::parse_head(&self.input, HEAD_MAX_BYTES, HEAD_MAX_HEADERS) {
                Ok(None) => return,
                Ok(Some((req, len))) => {
                    let upgrade = req.upgrade_websocket && req.connection_upgrade;
                    match (&req.ws_key, req.ws_version.as_deref()) {
                        (Some(key), Some("13")) if upgrade && req.method == "GET" => {
                            self.out.push_control(http::switching_protocols(key, req.deflate), 0);
                            self.input.drain(..len);
                            let deflate = req.deflate.map(|a| a.bits);
                            self.phase = Phase::WebSocket { decoder: Decoder::default(), deflate };
                        }
                        _ => {
                            let extra = [("Sec-WebSocket-Version", "13")];
                            self.out.push_control(http::error(400, "not a WebSocket upgrade", &extra, true).into(), 0);
                            self.closing();
                            return;
                        }
                    }
                }
                Err(e) => {
                    let status = if e == http::HttpError::TooLarge { 431 } else { 400 };
                    self.out.push_control(http::error(status, &e.to_string(), &[], true).into(), 0);
                    self.closing();
                    return;
                }
            }
        }
        let used = self.frames();
        self.input.drain(..used);
    }

    /// Decodes and answers the whole frames in `input`; returns the bytes
    /// used.
    fn frames(&mut self) -> usize {
        let Phase::WebSocket { decoder, deflate } = &mut self.phase else { return 0 };
        let deflate = *deflate;
        let mut pos = 0;
        let mut close = None;
        loop {
            let (used, reply) = match decoder.next_frame(&mut self.input[pos..], MAX_MESSAGE, deflate.is_some()) {
                Ok(None) => break,
                Ok(Some((used, message))) => (used, message.map(Reply::from)),
                Err(e) => {
                    close = Some(ws::close(e.close_code(), &e.to_string()));
                    break;
                }
            };
            pos += used;
            match reply {
                None | Some(Reply::Nothing) => {}
                Some(Reply::Data(opcode, payload)) => {
                    self.out.push_control(ws::message(opcode, &payload, deflate, COMPRESS_MIN), 0);
                }
                Some(Reply::Pong(payload)) => self.out.push_control(ws::control(Control::Pong, &payload), 0),
                Some(Reply::Close(code)) => {
                    // The rule of the hub's dispatch.rs.
                    let valid = code.is_none_or(|c| matches!(c, 1000..=1003 | 1007..=1011 | 3000..=4999));
                    close = Some(match code {
                        _ if !valid => ws::close(1002, "invalid close code"),
                        Some(c) => ws::close(c, ""),
                        None => ws::control(Control::Close, &[]),
                    });
                    break;
                }
            }
        }
        if let Some(frame) = close {
            self.out.push_control(frame, 0);
            self.closing();
        }
        pos
    }
}

/// What a decoded message asks for, owned (the message borrows the input).
enum Reply {
    Data(OpCode, Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
    Nothing,
}

impl From<Incoming<'_>> for Reply {
    fn from(m: Incoming<'_>) -> Reply {
        match m {
            Incoming::Text(t) => Reply::Data(OpCode::Data(Data::Text), t.into_owned()),
            Incoming::Binary(b) => Reply::Data(OpCode::Data(Data::Binary), b.into_owned()),
            Incoming::Ping(p) => Reply::Pong(p.to_vec()),
            Incoming::Pong => Reply::Nothing,
            Incoming::Close(c) => Reply::Close(c),
        }
    }
}

/// Handles an event on a connection; false when it is to be removed.
fn on_event(conn: &mut Conn, now: Instant) -> bool {
    if let Err(e) = conn.read() {
        log(&format!("read: {e}"));
        return false;
    }
    conn.on_input();
    match conn.out.write_to(&mut conn.stream) {
        Ok(_) => {}
        Err(e) => {
            log(&format!("write: {e}"));
            return false;
        }
    }
    conn.out.release();
    if let Phase::Closing { deadline } = &mut conn.phase {
        if conn.out.is_empty() && deadline.is_none() {
            let _ = conn.stream.shutdown(Shutdown::Write);
            *deadline = Some(now + LINGER);
        }
        return !conn.eof;
    }
    // The peer closed without a Close frame: nothing more can arrive.
    !conn.eof
}

fn log(line: &str) {
    if std::env::var_os("WS_ECHO_DEBUG").is_some() {
        eprintln!("ws-echo: {line}");
    }
}

fn run(addr: SocketAddr) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("ws-echo listening on {}", listener.local_addr()?);
    let mut conns: Slab<Conn> = Slab::new();
    let mut events = Events::with_capacity(256);
    loop {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(500))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let now = Instant::now();
        for event in &events {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let entry = conns.vacant_entry();
                            poll.registry().register(&mut stream, Token(entry.key()), Interest::READABLE)?;
                            entry.insert(Conn {
                                stream,
                                phase: Phase::Http,
                                input: Vec::new(),
                                out: OutQueue::default(),
                                interest: Interest::READABLE,
                                eof: false,
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            log(&format!("accept: {e}"));
                            break;
                        }
                    }
                }
                continue;
            }
            let key = event.token().0;
            // Unknown tokens (a slot freed earlier this turn) are ignored.
            let Some(conn) = conns.get_mut(key) else { continue };
            if on_event(conn, now) {
                let want = conn.interest();
                if want != conn.interest {
                    poll.registry().reregister(&mut conn.stream, Token(key), want)?;
                    conn.interest = want;
                }
            } else {
                let mut conn = conns.remove(key);
                let _ = poll.registry().deregister(&mut conn.stream);
            }
        }
        // Closing connections whose peer never closed.
        let expired: Vec<usize> = conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Closing { deadline: Some(d) } if d <= now))
            .map(|(k, _)| k)
            .collect();
        for key in expired {
            let mut conn = conns.remove(key);
            let _ = poll.registry().deregister(&mut conn.stream);
        }
    }
}

fn main() -> ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let addr: SocketAddr = match arg.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ws-echo: '{arg}' is not an address: {e}");
            return ExitCode::from(2);
        }
    };
    match run(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ws-echo: {e}");
            ExitCode::FAILURE
        }
    }
}
