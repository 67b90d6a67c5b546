//! The connection caps of PROTOCOL.md section 1, row 1: open connections
//! in all (`limits.max_connections`) and per client IP
//! (`limits.max_connections_per_ip`, 0 = off). Every connection counts from
//! its accept, except one over a cap, which is marked for `503` instead.
//! A connection from a trusted proxy is counted per IP only once its
//! client's address is known (its PROXY header or a request head), and may
//! move to another IP with the next request head. Each count is a
//! [`Counted`] the connection holds, so releasing it uncounts exactly what
//! was counted. Counting only: no sockets, no answers.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::HashMap;
use std::net::IpAddr;

use crate::config::Limits;

/// What one connection holds of the counts; given back with
/// [`Caps::release`]. Neither `Clone` nor `Copy`, so it is released once.
#[derive(Debug, PartialEq, Eq)]
pub struct Counted {
    /// The IP it is counted under (none yet, or the per-IP cap is off).
    ip: Option<IpAddr>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Caps {
    max_total: usize,
    /// 0 = no per-IP cap.
    max_per_ip: usize,
    total: usize,
    /// Open connections per IP (only while the per-IP cap is on); an IP
    /// leaves the map when its count drops to 0.
    per_ip: HashMap<IpAddr, usize>,
}

impl Caps {
    /// Caps as the limits set them, nothing counted.
    pub fn new(limits: &Limits) -> Caps {
        Caps {
            max_total: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            total: 0,
            per_ip: HashMap::new(),
        }
    }

    /// Takes reloaded caps: connections already counted stay; new ones are
    /// admitted against the new caps.
    pub fn set_limits(&mut self, limits: &Limits) {
        self.max_total = limits.max_connections;
        self.max_per_ip = limits.max_connections_per_ip;
    }

    /// Counts a new connection toward the total and, when `ip` is given
    /// (the peer is the client), toward that IP. `None` when either cap is
    /// reached: nothing is counted and the connection gets `503`.
    pub fn admit(&mut self, ip: Option<IpAddr>) -> Option<Counted> {
        let ip = ip.filter(|_| self.max_per_ip > 0);
        if self.total >= self.max_total || ip.is_some_and(|ip| self.count(ip) >= self.max_per_ip) {
            return None;
        }
        self.total += 1;
        if let Some(ip) = ip {
            *self.per_ip.entry(ip).or_insert(0) += 1;
        }
        Some(Counted { ip })
    }

    /// Counts `counted` under `ip` instead of where it was counted (once a
    /// trusted proxy named the client). `false` when `ip` is at its cap:
    /// nothing changes, and the caller releases `counted` and answers `503`.
    pub fn move_to(&mut self, counted: &mut Counted, ip: IpAddr) -> bool {
        if self.max_per_ip == 0 || counted.ip == Some(ip) {
            return true;
        }
        if self.count(ip) >= self.max_per_ip {
            return false;
        }
        if let Some(old) = counted.ip.take() {
            self.uncount(old);
        }
        *self.per_ip.entry(ip).or_insert(0) += 1;
        counted.ip = Some(ip);
        true
    }

    /// Uncounts a connection that ends (or is marked for `503` after all).
    pub fn release(&mut self, counted: Counted) {
        self.total = self.total.saturating_sub(1);
        if let Some(ip) = counted.ip {
            self.uncount(ip);
        }
    }

    /// Connections counted in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Connections counted under `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    fn uncount(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(total: usize, per_ip: usize) -> Caps {
        Caps::new(&Limits { max_connections: total, max_connections_per_ip: per_ip, ..Limits::default() })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_total_and_per_ip_caps_refuse_without_counting() {
        let mut c = caps(3, 2);
        let a1 = c.admit(Some(ip("10.0.0.1"))).unwrap();
        let a2 = c.admit(Some(ip("10.0.0.1"))).unwrap();
        assert_eq!(c.admit(Some(ip("10.0.0.1"))), None, "per-IP cap");
        assert_eq!((c.total(), c.count(ip("10.0.0.1"))), (2, 2), "a refusal counts nothing");
        let b = c.admit(Some(ip("10.0.0.2"))).unwrap();
        assert_eq!(c.admit(Some(ip("10.0.0.3"))), None, "total cap");
        assert_eq!(c.admit(None), None, "total cap, client not known yet");
        c.release(a1);
        c.release(a2);
        c.release(b);
        assert_eq!((c.total(), c.count(ip("10.0.0.1"))), (0, 0));
        assert!(c.per_ip.is_empty(), "released IPs leave the map");
    }

    #[test]
    fn a_proxied_connection_is_counted_per_ip_once_its_client_is_known() {
        let mut c = caps(10, 1);
        let mut proxied = c.admit(None).unwrap();
        assert_eq!((c.total(), c.per_ip.len()), (1, 0), "not counted under the proxy");
        assert!(c.move_to(&mut proxied, ip("203.0.113.1")));
        assert!(c.move_to(&mut proxied, ip("203.0.113.1")), "the same IP again is no second count");
        assert_eq!(c.count(ip("203.0.113.1")), 1);
        let mut other = c.admit(None).unwrap();
        assert!(!c.move_to(&mut other, ip("203.0.113.1")), "that IP is at its cap");
        assert_eq!(c.count(ip("203.0.113.1")), 1, "a refused move changes nothing");
        // A keep-alive connection's next request names another client.
        assert!(c.move_to(&mut proxied, ip("203.0.113.2")));
        assert_eq!((c.count(ip("203.0.113.1")), c.count(ip("203.0.113.2"))), (0, 1));
        assert!(c.move_to(&mut other, ip("203.0.113.1")));
        c.release(proxied);
        c.release(other);
        assert_eq!(c.total(), 0);
        assert!(c.per_ip.is_empty());
    }

    #[test]
    fn without_a_per_ip_cap_only_the_total_counts() {
        let mut c = caps(2, 0);
        let mut a = c.admit(Some(ip("10.0.0.1"))).unwrap();
        let _b = c.admit(Some(ip("10.0.0.1"))).unwrap();
        assert!(c.move_to(&mut a, ip("10.0.0.9")));
        assert!(c.per_ip.is_empty());
        assert_eq!(c.admit(Some(ip("10.0.0.2"))), None);
    }
}
