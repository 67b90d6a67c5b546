//! A Minecraft Server List Ping client (the modern protocol, 1.7+): a
//! handshake with next state 1, a status request, and the JSON status
//! response, of which only `players.online` and `players.max` are used.
//! Every step shares one deadline, so a server that accepts and says nothing
//! costs at most the timeout.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A status response larger than this is refused (a favicon is a few KiB).
pub const MAX_RESPONSE: usize = 1024 * 1024;

/// Why a ping gave no player counts. Normal while a server is starting or
/// stopped; metrics then report 0 players.
#[derive(Debug, thiserror::Error)]
pub enum SlpError {
    /// Connecting, writing or reading failed, or the deadline passed.
    #[error("server list ping: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a status response.
    #[error("server list ping: {0}")]
    Protocol(String),
}

/// Players as the server reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Players {
    /// `players.online`
    pub online: i32,
    /// `players.max`
    pub max: i32,
}

/// Pings `addr` and returns its player counts, all within `timeout`.
///
/// # Errors
/// [`SlpError`] on a connection problem, the deadline, or a bad response.
pub fn query(addr: SocketAddr, timeout: Duration) -> Result<Players, SlpError> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    let mut request = handshake(&addr.ip().to_string(), addr.port());
    request.extend_from_slice(&[1, 0]); // status request: length 1, id 0
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    stream.write_all(&request)?;
    let mut reader = DeadlineReader { stream, deadline };
    let len = read_varint(&mut reader)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|l| (1..=MAX_RESPONSE).contains(l))
        .ok_or_else(|| SlpError::Protocol(format!("response length {len}")))?;
    let mut packet = vec![0; len];
    reader.read_exact(&mut packet)?;
    parse_response(&packet)
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    } else {
        Ok(left)
    }
}

struct DeadlineReader {
    stream: TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(remaining(self.deadline)?))?;
        self.stream.read(buf)
    }
}

/// The handshake packet (length-prefixed): protocol version -1 (the
/// convention for a status ping), address, port, next state 1 (status).
pub fn handshake(host: &str, port: u16) -> Vec<u8> {
    let mut body = vec![0x00];
    write_varint(&mut body, -1);
    write_varint(&mut body, host.len() as i32);
    body.extend_from_slice(host.as_bytes());
    body.extend_from_slice(&port.to_be_bytes());
    write_varint(&mut body, 1);
    let mut packet = Vec::with_capacity(body.len() + 5);
    write_varint(&mut packet, body.len() as i32);
    packet.extend_from_slice(&body);
    packet
}

/// Appends a protocol VarInt (7 bits a byte, low bits first).
pub fn write_varint(out: &mut Vec<u8>, value: i32) {
    let mut v = value as u32;
    loop {
        if v & !0x7f == 0 {
            out.push(v as u8);
            return;
        }
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
}

/// Reads a protocol VarInt (at most 5 bytes).
///
/// # Errors
/// IO errors, or `InvalidData` for a VarInt longer than 5 bytes.
pub fn read_varint(r: &mut impl Read) -> io::Result<i32> {
    let mut value: u32 = 0;
    for i in 0..5 {
        let mut b = [0u8];
        r.read_exact(&mut b)?;
        value |= u32::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(value as i32);
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "VarInt longer than 5 bytes"))
}

/// Parses a status response packet (after its length): id 0, then the JSON string.
///
/// # Errors
/// [`SlpError::Protocol`] when it is not one.
pub fn parse_response(packet: &[u8]) -> Result<Players, SlpError> {
    let bad = |what: &str| SlpError::Protocol(what.to_string());
    let mut r = packet;
    if read_varint(&mut r).map_err(|_| bad("no packet id"))? != 0 {
        return Err(bad("not a status response"));
    }
    let len = read_varint(&mut r).map_err(|_| bad("no string length"))?;
    let json = usize::try_from(len).ok().and_then(|l| r.get(..l)).ok_or_else(|| bad("short status string"))?;
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| SlpError::Protocol(e.to_string()))?;
    let count = |key: &str| {
        value
            .get("players")
            .and_then(|p| p.get(key))
            .and_then(serde_json::Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
    };
    match (count("online"), count("max")) {
        (Some(online), Some(max)) => Ok(Players { online, max }),
        _ => Err(bad("no players.online/players.max")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        for (v, bytes) in [
            (0, vec![0x00]),
            (1, vec![0x01]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (25565, vec![0xdd, 0xc7, 0x01]),
            (-1, vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
        ] {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            assert_eq!(out, bytes, "{v}");
            assert_eq!(read_varint(&mut bytes.as_slice()).unwrap(), v);
        }
        assert!(read_varint(&mut [0xff; 6].as_slice()).is_err());
    }

    #[test]
    fn handshake_bytes() {
        let p = handshake("127.0.0.1", 25565);
        let mut want = vec![0x00, 0xff, 0xff, 0xff, 0xff, 0x0f, 9];
        want.extend_from_slice(b"127.0.0.1");
        want.extend_from_slice(&[0x63, 0xdd, 0x01]);
        let mut framed = vec![want.len() as u8];
        framed.extend(want);
        assert_eq!(p, framed);
    }

    #[test]
    fn responses() {
        let packet = |json: &str| {
            let mut p = vec![0];
            write_varint(&mut p, json.len() as i32);
            p.extend_from_slice(json.as_bytes());
            p
        };
        let ok = r#"{"version":{"name":"1.21.1","protocol":767},"players":{"max":20,"online":3},"description":"hi"}"#;
        assert_eq!(parse_response(&packet(ok)).unwrap(), Players { online: 3, max: 20 });
        assert!(parse_response(&packet(r#"{"players":{}}"#)).is_err());
        assert!(parse_response(&packet("not json")).is_err());
        assert!(parse_response(&[1, 0]).is_err());
        assert!(parse_response(&[0, 50, b'{']).is_err());
    }

    #[test]
    fn a_closed_port_is_an_error_quickly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let started = Instant::now();
        assert!(query(addr, Duration::from_millis(500)).is_err());
        assert!(started.elapsed() < Duration::from_millis(600));
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        let e = query(addr, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, SlpError::Io(_)), "{e}");
        assert!(started.elapsed() < Duration::from_millis(400));
        drop(listener);
    }
}
