//! Behind a reverse proxy (PROTOCOL.md section 1): which peers are trusted
//! proxies (`trusted_proxies`, a CIDR list), the client address they name
//! (the last `X-Forwarded-For` entry, or the source of a PROXY protocol
//! header with `proxy_protocol`), and how a connection's remote end is
//! written in log lines. Pure parsing: no IO, no state. Everything here
//! reads at most a bounded prefix of its input and never indexes out of
//! bounds.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// A v1 PROXY header is at most this long, `\r\n` included (the spec's
/// bound); without its end by then the connection is closed unanswered.
pub const V1_MAX: usize = 107;
/// A v2 PROXY header (16 fixed bytes, addresses and TLVs) is at most this
/// long here; a longer length field closes the connection unanswered.
pub const V2_MAX: usize = 536;
/// The first 12 bytes of a v2 PROXY header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The first 6 bytes of a v1 PROXY header.
const V1_PREFIX: &[u8] = b"PROXY ";

/// An IP network: an address and how many of its leading bits count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address
    /// (`::ffff:10.0.0.1`, how a dual-stack listener sees IPv4 peers) is
    /// compared as the IPv4 address it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(u32::from(ip), self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(u128::from(ip), self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

/// `bits` with every bit past the first `prefix` cleared.
fn mask_v4(bits: u32, prefix: u8) -> u32 {
    bits & u32::MAX.checked_shl(32u32.saturating_sub(u32::from(prefix))).unwrap_or(0)
}

/// `bits` with every bit past the first `prefix` cleared.
fn mask_v6(bits: u128, prefix: u8) -> u128 {
    bits & u128::MAX.checked_shl(128u32.saturating_sub(u32::from(prefix))).unwrap_or(0)
}

/// Why a `trusted_proxies` entry is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{entry}' is not a network like 10.0.0.0/8 or ::1/128 ({why})")]
pub struct CidrError {
    entry: String,
    why: &'static str,
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDRESS/PREFIX` (IPv4 or IPv6), or a bare address for that one
    /// host. Bits set past the prefix are refused (`10.1.2.3/8` is a typo
    /// for either `10.1.2.3/32` or `10.0.0.0/8`; guessing would trust the
    /// wrong hosts).
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let fail = |why| CidrError { entry: s.chars().take(64).collect::<String>().escape_debug().to_string(), why };
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| fail("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| fail("prefix out of range"))?
            }
            Some(_) => return Err(fail("the prefix is not a number")),
        };
        if prefix > max {
            return Err(fail("prefix out of range"));
        }
        let masked = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(mask_v4(u32::from(a), prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask_v6(u128::from(a), prefix))),
        };
        if masked != addr {
            return Err(fail("bits set past the prefix"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e: CidrError| serde::de::Error::custom(format!("trusted_proxies: {e}")))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// How a connection's client address is learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The peer is the client (not a trusted proxy).
    Direct,
    /// A trusted proxy: each request head's `X-Forwarded-For` names it.
    Forwarded,
    /// A trusted proxy with `proxy_protocol`: a PROXY header names it
    /// before the first request head.
    ProxyHeader,
}

impl Via {
    /// How the client of a connection from `peer` is learned.
    pub fn of(peer: IpAddr, trusted: &[Cidr], proxy_protocol: bool) -> Via {
        if !trusted.iter().any(|net| net.contains(peer)) {
            Via::Direct
        } else if proxy_protocol {
            Via::ProxyHeader
        } else {
            Via::Forwarded
        }
    }
}

/// The client's address as a proxy gave it (`X-Forwarded-For` names no
/// port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// The client's IP (an IPv4-mapped IPv6 address as the IPv4 one).
    pub ip: IpAddr,
    /// Its port, when the proxy said.
    pub port: Option<u16>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => SocketAddr::new(self.ip, port).fmt(f),
            None => self.ip.fmt(f),
        }
    }
}

/// A connection's remote end for log lines: `203.0.113.7 via
/// 127.0.0.1:40312` when a trusted proxy named the client, else the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client a trusted proxy named.
    pub source: Option<Source>,
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            Some(source) => write!(f, "{source} via {}", self.peer),
            None => self.peer.fmt(f),
        }
    }
}

/// The address in an `X-Forwarded-For` entry: an IP, or an IP with a port
/// (`198.51.100.7:4711`, `[2001:db8::1]:443`, as some proxies write it),
/// or a bracketed IPv6 address. `None` for anything else (`unknown`, an
/// obfuscated name, garbage).
pub fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse::<Ipv6Addr>().ok().map(IpAddr::V6))?;
    Some(ip.to_canonical())
}

/// What `/api/v1/stats` and `/metrics` show about proxied connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Request heads from a trusted proxy whose last `X-Forwarded-For`
    /// entry was not an address (the peer was taken as the client).
    pub forwarded_fallbacks: u64,
    /// Connections from a trusted proxy closed for a missing, malformed or
    /// too long PROXY header.
    pub headers_refused: u64,
}

/// A PROXY protocol header at the start of a connection's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preamble {
    /// Not complete yet (and not wrong so far).
    Partial,
    /// A whole header of `len` bytes. `source` is the client's address;
    /// `None` for `UNKNOWN`, `LOCAL` or an address family without one:
    /// the peer is the client.
    Done {
        /// The client's address.
        source: Option<Source>,
        /// Bytes of the header.
        len: usize,
    },
}

/// A refused PROXY protocol header. Every variant has the same policy: the
/// connection is closed without an answer (logged at debug, counted in
/// `/metrics`); the hub goes on serving the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes start as neither a v1 nor a v2 header (a trusted proxy
    /// sent a plain request; or nothing came within `head_timeout_s`).
    #[error("no PROXY protocol header")]
    Missing,
    /// A v1 line or v2 block that breaks the spec.
    #[error("malformed PROXY protocol header")]
    Malformed,
    /// A v1 line without its `\r\n` within [`V1_MAX`] bytes, or a v2 block
    /// longer than [`V2_MAX`].
    #[error("PROXY protocol header too long")]
    TooLong,
}

/// Reads a PROXY protocol header (v1 text or v2 binary) from the start of
/// `buf`. Only the first [`V2_MAX`] bytes are ever looked at.
///
/// # Errors
/// [`ProxyError`] as soon as the bytes cannot begin a valid header.
pub fn parse_preamble(buf: &[u8]) -> Result<Preamble, ProxyError> {
    let starts = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf.get(..n) == sig.get(..n)
    };
    if starts(&V2_SIGNATURE) {
        parse_v2(buf)
    } else if starts(V1_PREFIX) {
        parse_v1(buf)
    } else {
        Err(ProxyError::Missing)
    }
}

/// `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` or `PROXY UNKNOWN ...\r\n`.
fn parse_v1(buf: &[u8]) -> Result<Preamble, ProxyError> {
    let window = buf.get(..buf.len().min(V1_MAX)).unwrap_or_default();
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX { Err(ProxyError::TooLong) } else { Ok(Preamble::Partial) };
    };
    let line = window.get(..nl).and_then(|l| l.strip_suffix(b"\r")).ok_or(ProxyError::Malformed)?;
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed)?;
    let rest = line.strip_prefix("PROXY ").ok_or(ProxyError::Malformed)?;
    let len = nl + 1;
    if rest == "UNKNOWN" || rest.starts_with("UNKNOWN ") {
        return Ok(Preamble::Done { source: None, len });
    }
    let mut parts = rest.split(' ');
    let (Some(proto), Some(src), Some(dst), Some(sport), Some(dport), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProxyError::Malformed);
    };
    let ip = match proto {
        "TCP4" => {
            dst.parse::<Ipv4Addr>().map_err(|_| ProxyError::Malformed)?;
            IpAddr::V4(src.parse().map_err(|_| ProxyError::Malformed)?)
        }
        "TCP6" => {
            dst.parse::<Ipv6Addr>().map_err(|_| ProxyError::Malformed)?;
            IpAddr::V6(src.parse().map_err(|_| ProxyError::Malformed)?)
        }
        _ => return Err(ProxyError::Malformed),
    };
    let port = v1_port(sport).ok_or(ProxyError::Malformed)?;
    v1_port(dport).ok_or(ProxyError::Malformed)?;
    Ok(Preamble::Done { source: Some(Source { ip: ip.to_canonical(), port: Some(port) }), len })
}

/// A decimal port: 1 to 5 digits, at most 65535.
fn v1_port(s: &str) -> Option<u16> {
    (!s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

/// The 16-byte v2 header (signature, version and command, family and
/// transport, length), then `length` bytes of addresses and TLVs.
fn parse_v2(buf: &[u8]) -> Result<Preamble, ProxyError> {
    let Some(fixed) = buf.get(..16) else { return Ok(Preamble::Partial) };
    let &[.., ver_cmd, family, hi, lo] = fixed else { return Err(ProxyError::Malformed) };
    let len = 16 + usize::from(u16::from_be_bytes([hi, lo]));
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0f > 1 {
        return Err(ProxyError::Malformed);
    }
    if len > V2_MAX {
        return Err(ProxyError::TooLong);
    }
    let Some(block) = buf.get(16..len) else { return Ok(Preamble::Partial) };
    if ver_cmd & 0x0f == 0 {
        // LOCAL: the proxy's own connection (a health check); the family
        // is ignored and the peer is the client.
        return Ok(Preamble::Done { source: None, len });
    }
    let source = match family {
        // TCP or UDP over IPv4: source, destination, their ports.
        0x11 | 0x12 if block.len() >= 12 => {
            let ip: [u8; 4] = block.get(..4).and_then(|b| b.try_into().ok()).ok_or(ProxyError::Malformed)?;
            let port: [u8; 2] = block.get(8..10).and_then(|b| b.try_into().ok()).ok_or(ProxyError::Malformed)?;
            Some(Source { ip: IpAddr::from(ip), port: Some(u16::from_be_bytes(port)) })
        }
        // TCP or UDP over IPv6.
        0x21 | 0x22 if block.len() >= 36 => {
            let ip: [u8; 16] = block.get(..16).and_then(|b| b.try_into().ok()).ok_or(ProxyError::Malformed)?;
            let port: [u8; 2] = block.get(32..34).and_then(|b| b.try_into().ok()).ok_or(ProxyError::Malformed)?;
            Some(Source { ip: IpAddr::from(ip).to_canonical(), port: Some(u16::from_be_bytes(port)) })
        }
        // UNSPEC or a unix socket: no IP to name; the peer is the client.
        0x00 | 0x31 | 0x32 => None,
        // A block too short for its addresses, or a family the spec does
        // not define.
        _ => return Err(ProxyError::Malformed),
    };
    Ok(Preamble::Done { source, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_match_their_networks() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.0.0.0")) && net.contains(ip("10.255.255.255")));
        assert!(!net.contains(ip("11.0.0.0")) && !net.contains(ip("9.255.255.255")));
        assert!(net.contains(ip("::ffff:10.1.2.3")), "an IPv4-mapped peer is its IPv4 address");
        assert!(!net.contains(ip("::1")));
        let host = cidr("127.0.0.1/32");
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        assert_eq!(cidr("127.0.0.1"), host, "a bare address is one host");
        let any = cidr("0.0.0.0/0");
        assert!(any.contains(ip("1.2.3.4")) && any.contains(ip("255.255.255.255")));
        assert!(!any.contains(ip("2001:db8::1")), "an IPv4 network holds no IPv6 address");
        let v6 = cidr("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(cidr("::1/128").contains(ip("::1")) && !cidr("::1/128").contains(ip("::2")));
        assert!(cidr("::/0").contains(ip("fe80::1")) && !cidr("::/0").contains(ip("10.0.0.1")));
        assert!(
            cidr("172.16.0.0/12").contains(ip("172.31.255.1")) && !cidr("172.16.0.0/12").contains(ip("172.32.0.1"))
        );
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn malformed_cidrs_are_refused_naming_the_entry() {
        for bad in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "10.0.0/8",
            "10.0.0.0.0/8",
            "example.com/8",
            "10.0.0.0 /8",
            "10.0.0.0/ 8",
            "10.1.2.3/8",
            "2001:db8::1/32",
            "fe80::1%eth0/128",
            "10.0.0.0/0008",
            "256.0.0.0/8",
        ] {
            let e = bad.parse::<Cidr>().expect_err(bad);
            assert!(e.to_string().contains(&format!("'{bad}'")), "{e}");
        }
        let e = "x".repeat(10_000).parse::<Cidr>().unwrap_err().to_string();
        assert!(e.len() < 200, "the message quotes a bounded prefix: {} bytes", e.len());
    }

    #[test]
    fn the_peer_decides_how_the_client_is_learned() {
        let trusted = [cidr("127.0.0.1/32"), cidr("::1/128")];
        assert_eq!(Via::of(ip("127.0.0.1"), &trusted, false), Via::Forwarded);
        assert_eq!(Via::of(ip("::1"), &trusted, true), Via::ProxyHeader);
        assert_eq!(Via::of(ip("127.0.0.2"), &trusted, true), Via::Direct);
        assert_eq!(Via::of(ip("127.0.0.1"), &[], false), Via::Direct);
    }

    #[test]
    fn forwarded_entries_are_addresses_or_nothing() {
        assert_eq!(forwarded_ip(" 203.0.113.7 "), Some(ip("203.0.113.7")));
        assert_eq!(forwarded_ip("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(forwarded_ip("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(forwarded_ip("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(forwarded_ip("198.51.100.7:4711"), Some(ip("198.51.100.7")));
        assert_eq!(forwarded_ip("::ffff:198.51.100.7"), Some(ip("198.51.100.7")));
        for bad in ["", "unknown", "_hidden", "example.com", "1.2.3", "1.2.3.4.5", "[1.2.3.4]", "1.2.3.4:99999"] {
            assert_eq!(forwarded_ip(bad), None, "{bad}");
        }
    }

    #[test]
    fn remotes_name_the_client_and_the_proxy() {
        let peer: SocketAddr = "127.0.0.1:40312".parse().unwrap();
        assert_eq!(Remote { peer, source: None }.to_string(), "127.0.0.1:40312");
        let source = Some(Source { ip: ip("203.0.113.7"), port: None });
        assert_eq!(Remote { peer, source }.to_string(), "203.0.113.7 via 127.0.0.1:40312");
        let source = Some(Source { ip: ip("2001:db8::1"), port: Some(443) });
        assert_eq!(Remote { peer, source }.to_string(), "[2001:db8::1]:443 via 127.0.0.1:40312");
    }

    fn done(buf: &[u8]) -> (Option<Source>, usize) {
        match parse_preamble(buf) {
            Ok(Preamble::Done { source, len }) => (source, len),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn at(s: &str, port: u16) -> Option<Source> {
        Some(Source { ip: ip(s), port: Some(port) })
    }

    #[test]
    fn v1_headers_name_the_source() {
        let line = b"PROXY TCP4 192.0.2.10 192.0.2.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(done(line), (at("192.0.2.10", 56324), 43));
        let line = b"PROXY TCP6 2001:db8::10 2001:db8::1 65535 0\r\n";
        assert_eq!(done(line), (at("2001:db8::10", 65535), line.len()));
        assert_eq!(done(b"PROXY UNKNOWN\r\n"), (None, 15));
        assert_eq!(done(b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\nrest").1, 59);
        // The longest possible line fits.
        let longest = format!("PROXY UNKNOWN {0} {0} 65535 65535\r\n", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        assert_eq!(longest.len(), V1_MAX);
        assert_eq!(done(longest.as_bytes()).1, V1_MAX);
    }

    #[test]
    fn v1_partial_malformed_and_long_headers() {
        let full = b"PROXY TCP4 192.0.2.10 192.0.2.1 56324 443\r\n";
        for n in 0..full.len() {
            assert_eq!(parse_preamble(&full[..n]), Ok(Preamble::Partial), "{n} bytes");
        }
        for bad in [
            "PROXY TCP4 192.0.2.10 192.0.2.1 56324 443\n",
            "PROXY TCP4 192.0.2.10 192.0.2.1 56324\r\n",
            "PROXY TCP4 192.0.2.10 192.0.2.1 56324 443 9\r\n",
            "PROXY TCP4  192.0.2.10 192.0.2.1 56324 443\r\n",
            "PROXY TCP4 2001:db8::1 192.0.2.1 56324 443\r\n",
            "PROXY TCP6 192.0.2.10 2001:db8::1 56324 443\r\n",
            "PROXY TCP4 192.0.2.10 192.0.2.1 65536 443\r\n",
            "PROXY TCP4 192.0.2.10 192.0.2.1 +1 443\r\n",
            "PROXY TCP4 192.0.2.10 192.0.2.1 1 443 \r\n",
            "PROXY UDP4 192.0.2.10 192.0.2.1 56324 443\r\n",
            "PROXY tcp4 192.0.2.10 192.0.2.1 56324 443\r\n",
            "PROXY \r\n",
            "PROXY UNKNOWNX\r\n",
        ] {
            assert_eq!(parse_preamble(bad.as_bytes()), Err(ProxyError::Malformed), "{bad:?}");
        }
        assert_eq!(parse_preamble(b"PROXY TCP4 \xff\r\n"), Err(ProxyError::Malformed));
        let long = format!("PROXY UNKNOWN {}", "x".repeat(200));
        assert_eq!(parse_preamble(&long.as_bytes()[..V1_MAX - 1]), Ok(Preamble::Partial));
        assert_eq!(parse_preamble(&long.as_bytes()[..V1_MAX]), Err(ProxyError::TooLong));
        assert_eq!(parse_preamble(long.as_bytes()), Err(ProxyError::TooLong));
        let late = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX - 15));
        assert_eq!(late.len(), V1_MAX + 1);
        assert_eq!(parse_preamble(late.as_bytes()), Err(ProxyError::TooLong));
    }

    #[test]
    fn anything_else_is_missing_from_the_first_byte() {
        for other in ["GET / HTTP/1.1\r\n\r\n", "G", "PROXX", "proxy TCP4", "\r\n\r\n\0\r\nQUIX"] {
            assert_eq!(parse_preamble(other.as_bytes()), Err(ProxyError::Missing), "{other:?}");
        }
        assert_eq!(parse_preamble(b""), Ok(Preamble::Partial));
        assert_eq!(parse_preamble(b"PROX"), Ok(Preamble::Partial));
        assert_eq!(parse_preamble(b"\r\n\r\n\0"), Ok(Preamble::Partial));
    }

    fn v2(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend_from_slice(&[ver_cmd, family]);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    #[test]
    fn v2_headers_name_the_source() {
        let mut v4 = vec![192, 0, 2, 10, 192, 0, 2, 1];
        v4.extend_from_slice(&56324u16.to_be_bytes());
        v4.extend_from_slice(&443u16.to_be_bytes());
        let header = v2(0x21, 0x11, &v4);
        let mut with_request = header.clone();
        with_request.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(done(&with_request), (at("192.0.2.10", 56324), 28));
        for n in 0..header.len() {
            assert_eq!(parse_preamble(&header[..n]), Ok(Preamble::Partial), "{n} bytes");
        }
        // TLVs after the addresses are skipped.
        let mut tlvs = v4.clone();
        tlvs.extend_from_slice(&[0x04, 0, 3, 1, 2, 3]);
        assert_eq!(done(&v2(0x21, 0x11, &tlvs)), (at("192.0.2.10", 56324), 34));
        let mut v6 = ip_bytes("2001:db8::10");
        v6.extend_from_slice(&ip_bytes("2001:db8::1"));
        v6.extend_from_slice(&[0x12, 0x34, 0x01, 0xbb]);
        assert_eq!(done(&v2(0x21, 0x21, &v6)), (at("2001:db8::10", 0x1234), 52));
        // LOCAL, UNSPEC and unix sockets keep the peer.
        assert_eq!(done(&v2(0x20, 0x00, &[])), (None, 16));
        assert_eq!(done(&v2(0x20, 0x11, &v4)), (None, 28));
        assert_eq!(done(&v2(0x21, 0x00, &[1, 2, 3])), (None, 19));
        assert_eq!(done(&v2(0x21, 0x31, &[0; 216])), (None, 232));
        // The largest block allowed.
        assert_eq!(done(&v2(0x20, 0x00, &[0; V2_MAX - 16])), (None, V2_MAX));
    }

    fn ip_bytes(s: &str) -> Vec<u8> {
        s.parse::<Ipv6Addr>().unwrap().octets().to_vec()
    }

    #[test]
    fn v2_malformed_and_long_headers() {
        let v4 = [192, 0, 2, 10, 192, 0, 2, 1, 0, 80, 1, 187];
        assert_eq!(parse_preamble(&v2(0x11, 0x11, &v4)), Err(ProxyError::Malformed), "version 1");
        assert_eq!(parse_preamble(&v2(0x31, 0x11, &v4)), Err(ProxyError::Malformed), "version 3");
        assert_eq!(parse_preamble(&v2(0x22, 0x11, &v4)), Err(ProxyError::Malformed), "command 2");
        assert_eq!(done(&v2(0x20, 0x41, &v4)), (None, 28), "LOCAL ignores the family");
        assert_eq!(parse_preamble(&v2(0x21, 0x13, &v4)), Err(ProxyError::Malformed), "transport 3");
        assert_eq!(parse_preamble(&v2(0x21, 0x41, &v4)), Err(ProxyError::Malformed), "family 4");
        assert_eq!(parse_preamble(&v2(0x21, 0x11, &v4[..11])), Err(ProxyError::Malformed), "short IPv4 block");
        assert_eq!(parse_preamble(&v2(0x21, 0x21, &[0; 35])), Err(ProxyError::Malformed), "short IPv6 block");
        // Refused from the fixed header alone, before the block arrives.
        let long = v2(0x21, 0x11, &[0; V2_MAX - 15]);
        assert_eq!(parse_preamble(&long[..16]), Err(ProxyError::TooLong));
        let mut huge = v2(0x21, 0x11, &[]);
        huge[14] = 0xff;
        huge[15] = 0xff;
        assert_eq!(parse_preamble(&huge), Err(ProxyError::TooLong));
    }

    #[test]
    fn the_config_keys_parse_and_name_a_bad_entry() {
        let cfg: crate::config::Config = toml::from_str(
            "trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\", \"::1/128\"]\nproxy_protocol = true\n",
        )
        .unwrap();
        assert_eq!(cfg.trusted_proxies, [cidr("127.0.0.1/32"), cidr("10.0.0.0/8"), cidr("::1/128")]);
        assert!(cfg.proxy_protocol);
        let cfg: crate::config::Config = toml::from_str("").unwrap();
        assert!(cfg.trusted_proxies.is_empty() && !cfg.proxy_protocol);
        let e = toml::from_str::<crate::config::Config>("trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/80\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'10.0.0.0/80'"), "{e}");
    }
}
