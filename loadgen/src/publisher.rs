//! The publish-API publisher: `POST /api/v1/publish` over a fixed number of
//! keep-alive connections (one request in flight on each), paced at a
//! constant rate. Line `i` of a run is due at `t0 + i / rate` and carries
//! that intended time as its stamp, so a publisher held up by a slow hub
//! shows as latency instead of hiding it (no coordinated omission).

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::bench_line;

/// Tokens at and above this, in the poll the publisher shares with the
/// client engine, are the publisher's (connection `j` has this plus `j`).
pub const PUBLISHER_TOKENS: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PublishState {
    Connecting,
    Idle,
    Busy,
}

#[derive(Debug)]
struct PublishConn {
    stream: Option<TcpStream>,
    state: PublishState,
    out: Vec<u8>,
    inbuf: Vec<u8>,
}

/// The publisher. See the module docs.
#[derive(Debug)]
pub struct Publisher {
    addr: SocketAddr,
    conns: Vec<PublishConn>,
    /// Free connections, used in turn (first freed, first used) so that
    /// none sits idle long enough for the hub's head timeout.
    idle: VecDeque<usize>,
    head: String,
    channel: String,
    server: String,
    rate: f64,
    t0: u64,
    total: u64,
    next: u64,
    /// Lines sent.
    pub sent: u64,
    /// Lines answered `202`.
    pub accepted: u64,
    /// Sum of the `recipients` of the `202` answers.
    pub recipients: u64,
    /// Other answers, by status (0: the connection broke mid-request).
    pub refused: BTreeMap<u16, u64>,
    /// Most lines that were due but not yet sent (all connections busy).
    pub max_behind: u64,
    /// Requests sent and not yet answered.
    in_flight: usize,
    /// Most requests in flight at once during the run.
    pub max_in_flight: usize,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Publisher {
    /// A publisher of `server`'s logs channel over `conns` connections,
    /// with a service token.
    pub fn new(addr: SocketAddr, token: &str, server: &str, conns: usize) -> Publisher {
        let head = format!(
            "POST /api/v1/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: "
        );
        Publisher {
            addr,
            conns: (0..conns.max(1))
                .map(|_| PublishConn {
                    stream: None,
                    state: PublishState::Connecting,
                    out: Vec::new(),
                    inbuf: Vec::new(),
                })
                .collect(),
            idle: VecDeque::new(),
            head,
            channel: format!("server:{server}:logs"),
            server: server.to_string(),
            rate: 0.0,
            t0: 0,
            total: 0,
            next: 0,
            sent: 0,
            accepted: 0,
            recipients: 0,
            refused: BTreeMap::new(),
            max_behind: 0,
            in_flight: 0,
            max_in_flight: 0,
        }
    }

    /// Opens every connection.
    ///
    /// # Errors
    /// A socket cannot be created or registered.
    pub fn connect(&mut self, registry: &Registry) -> io::Result<()> {
        for j in 0..self.conns.len() {
            self.reconnect(j, registry)?;
        }
        Ok(())
    }

    fn reconnect(&mut self, j: usize, registry: &Registry) -> io::Result<()> {
        let c = &mut self.conns[j];
        if let Some(mut old) = c.stream.take() {
            let _ = registry.deregister(&mut old);
        }
        self.idle.retain(|&k| k != j);
        let mut stream = TcpStream::connect(self.addr)?;
        registry.register(&mut stream, Token(PUBLISHER_TOKENS + j), Interest::READABLE | Interest::WRITABLE)?;
        *c = PublishConn { stream: Some(stream), state: PublishState::Connecting, out: Vec::new(), inbuf: Vec::new() };
        Ok(())
    }

    /// Connections ready to send.
    pub fn ready(&self) -> usize {
        self.idle.len()
    }

    /// Starts a run of `lines` lines at `rate` lines/s, the first due at `t0`.
    pub fn start(&mut self, rate: f64, lines: u64, t0: u64) {
        self.rate = rate;
        self.t0 = t0;
        self.total = lines;
        self.next = 0;
        self.max_in_flight = self.in_flight;
    }

    /// When the next line is due (µs), while the run has lines left and a
    /// connection is free to send it (else the next answer wakes the loop).
    pub fn next_due(&self) -> Option<u64> {
        (self.next < self.total && !self.idle.is_empty()).then(|| self.due(self.next))
    }

    fn due(&self, i: u64) -> u64 {
        self.t0 + (i as f64 * 1e6 / self.rate) as u64
    }

    /// True when every line of the run is sent and answered.
    pub fn finished(&self) -> bool {
        self.next >= self.total && self.conns.iter().all(|c| c.state != PublishState::Busy)
    }

    /// Sends what is due on idle connections.
    pub fn tick(&mut self, registry: &Registry, now: u64) {
        while self.next < self.total && self.due(self.next) <= now {
            let Some(j) = self.idle.pop_front() else {
                let due_by_now = (((now - self.t0) as f64 * self.rate / 1e6) as u64 + 1).min(self.total);
                self.max_behind = self.max_behind.max(due_by_now - self.next);
                return;
            };
            let body = format!(
                "{{\"type\":\"log_entry\",\"channel\":\"{}\",\"data\":{{\"server_id\":\"{}\",\"level\":\"INFO\",\
                 \"source\":\"server\",\"message\":\"{}\"}}}}",
                self.channel,
                self.server,
                bench_line(self.due(self.next), self.next)
            );
            let c = &mut self.conns[j];
            c.out.clear();
            c.out.extend_from_slice(self.head.as_bytes());
            c.out.extend_from_slice(format!("{}\r\n\r\n", body.len()).as_bytes());
            c.out.extend_from_slice(body.as_bytes());
            c.state = PublishState::Busy;
            self.in_flight += 1;
            self.max_in_flight = self.max_in_flight.max(self.in_flight);
            self.next += 1;
            self.sent += 1;
            self.write(j, registry);
        }
    }

    fn write(&mut self, j: usize, registry: &Registry) {
        let c = &mut self.conns[j];
        let Some(stream) = &mut c.stream else { return };
        while !c.out.is_empty() {
            match stream.write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.broken(j, registry),
            }
        }
    }

    fn broken(&mut self, j: usize, registry: &Registry) {
        if self.conns[j].state == PublishState::Busy {
            *self.refused.entry(0).or_insert(0) += 1;
            self.in_flight -= 1;
        }
        if let Err(e) = self.reconnect(j, registry) {
            log::warn!("publisher connection {j} cannot reconnect: {e}");
        }
    }

    /// Handles readiness of connection `j`.
    pub fn on_event(&mut self, j: usize, registry: &Registry) {
        let Some(c) = self.conns.get_mut(j) else { return };
        let Some(stream) = &mut c.stream else { return };
        if c.state == PublishState::Connecting {
            match stream.peer_addr() {
                Ok(_) => {
                    c.state = PublishState::Idle;
                    self.idle.push_back(j);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => return self.broken(j, registry),
            }
        }
        if !self.conns[j].out.is_empty() {
            self.write(j, registry);
        }
        let mut buf = [0u8; 4096];
        loop {
            let c = &mut self.conns[j];
            let Some(stream) = &mut c.stream else { return };
            match stream.read(&mut buf) {
                Ok(0) => return self.broken(j, registry),
                Ok(n) => {
                    c.inbuf.extend_from_slice(&buf[..n]);
                    self.answers(j, registry);
                }
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.broken(j, registry),
            }
        }
    }

    /// Takes a complete response off connection `j`'s buffer, if there is one.
    fn answers(&mut self, j: usize, registry: &Registry) {
        let c = &mut self.conns[j];
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&c.inbuf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return,
            Err(_) => return self.broken(j, registry),
        };
        let length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let close = resp.headers.iter().any(|h| h.name.eq_ignore_ascii_case("connection") && h.value == b"close");
        if c.inbuf.len() < head_len + length {
            return;
        }
        let code = resp.code.unwrap_or(0);
        let body = &c.inbuf[head_len..head_len + length];
        if c.state != PublishState::Busy {
            // An answer to no request: the hub timing out an idle connection.
            log::debug!("publisher connection {j} got {code} while idle; reconnecting");
            return self.broken(j, registry);
        }
        if code == 202 {
            self.accepted += 1;
            let text = String::from_utf8_lossy(body);
            if let Some(n) = text.split("\"recipients\":").nth(1) {
                let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
                self.recipients += digits.parse::<u64>().unwrap_or(0);
            }
        } else {
            if self.refused.is_empty() {
                log::warn!("publish refused: {code} {}", String::from_utf8_lossy(body));
            }
            *self.refused.entry(code).or_insert(0) += 1;
        }
        c.inbuf.drain(..head_len + length);
        c.state = PublishState::Idle;
        self.in_flight -= 1;
        if close {
            if let Err(e) = self.reconnect(j, registry) {
                log::warn!("publisher connection {j} cannot reconnect: {e}");
            }
        } else {
            self.idle.push_back(j);
        }
    }
}
