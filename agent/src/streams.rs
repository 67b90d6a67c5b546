//! Who may hold how many `StreamLogs` and `WatchStatus` calls. Anyone who
//! reaches the agent's port can open streams, and the link has no
//! authentication (DESIGN.md), so the caps must not let a stranger lock the
//! hub out: a new stream is always admitted, and when it would pass a cap,
//! an older stream gives way (it is cancelled):
//!
//! - per server, kind and peer address: at most [`MAX_STREAMS_PER_PEER`];
//!   the peer's own oldest stream there gives way (a hub that reconnects
//!   after a network blip replaces its half-dead streams instead of being
//!   refused for them);
//! - per server and kind: at most [`MAX_STREAMS_PER_SERVER`]; the newest
//!   stream of a peer holding the most there gives way, so a peer with one
//!   long-lived stream (a hub) stays while strangers from many addresses
//!   only replace each other.
//!
//! Memory per stream is bounded elsewhere: a stream reads the ring through
//! its cursor (no queue of its own beyond one batch) and grpcio holds at most
//! a message or two per call.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::channel::oneshot;

/// Streams of one kind for one server from one peer address.
pub const MAX_STREAMS_PER_PEER: usize = 4;
/// Streams of one kind for one server in all.
pub const MAX_STREAMS_PER_SERVER: usize = 64;

/// The two streaming calls, capped separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// `StreamLogs`
    Logs,
    /// `WatchStatus`
    Status,
}

#[derive(Debug)]
struct Open {
    id: u64,
    server: String,
    kind: StreamKind,
    peer: String,
    /// Told (or dropped) when the stream must give way.
    give_way: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Oldest first.
    open: Vec<Open>,
    next_id: u64,
}

/// The open streams; shared by the service's clones.
#[derive(Debug, Default)]
pub struct StreamTable {
    inner: Mutex<Inner>,
}

/// One admitted stream: leaves the table when dropped.
#[derive(Debug)]
pub struct Admission {
    table: Arc<StreamTable>,
    id: u64,
    /// Resolves when the stream must give way to a newer one (or the table is gone).
    pub give_way: oneshot::Receiver<()>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.table.lock().open.retain(|o| o.id != self.id);
    }
}

/// The address part of grpcio's peer string (`ipv4:1.2.3.4:5`,
/// `ipv6:[::1]:5`), so that all connections from one host count together.
pub fn peer_address(peer: &str) -> &str {
    let addr = peer.split_once(':').map_or(peer, |(scheme, rest)| match scheme {
        "ipv4" | "ipv6" => rest,
        _ => peer,
    });
    if addr.len() == peer.len() {
        return peer;
    }
    let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl StreamTable {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new stream of `kind` for `server` from `peer` (an address,
    /// see [`peer_address`]), making an older one give way when a cap would
    /// be passed (see the module docs). Returns the admission and the peer
    /// whose stream gave way, if any.
    pub fn admit(self: &Arc<Self>, server: &str, kind: StreamKind, peer: &str) -> (Admission, Option<String>) {
        let mut inner = self.lock();
        let here = |o: &Open| o.server == server && o.kind == kind;
        let mine = inner.open.iter().filter(|o| here(o) && o.peer == peer).count();
        let victim = if mine >= MAX_STREAMS_PER_PEER {
            inner.open.iter().position(|o| here(o) && o.peer == peer)
        } else if inner.open.iter().filter(|o| here(o)).count() >= MAX_STREAMS_PER_SERVER {
            let mut held: HashMap<&str, usize> = HashMap::new();
            for o in inner.open.iter().filter(|o| here(o)) {
                *held.entry(o.peer.as_str()).or_default() += 1;
            }
            let most = held.values().copied().max().unwrap_or(0);
            inner.open.iter().rposition(|o| here(o) && held.get(o.peer.as_str()) == Some(&most))
        } else {
            None
        };
        let gave_way = victim.map(|i| {
            let old = inner.open.remove(i);
            let _ = old.give_way.send(());
            old.peer
        });
        inner.next_id += 1;
        let id = inner.next_id;
        let (give_way, rx) = oneshot::channel();
        inner.open.push(Open { id, server: server.to_string(), kind, peer: peer.to_string(), give_way });
        (Admission { table: Arc::clone(self), id, give_way: rx }, gave_way)
    }

    /// Open streams of `kind` for `server` (from `peer`, when given).
    pub fn count(&self, server: &str, kind: StreamKind, peer: Option<&str>) -> usize {
        let inner = self.lock();
        inner.open.iter().filter(|o| o.server == server && o.kind == kind && peer.is_none_or(|p| o.peer == p)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gave_way(a: &mut Admission) -> bool {
        matches!(a.give_way.try_recv(), Ok(Some(())) | Err(_))
    }

    #[test]
    fn peer_addresses() {
        assert_eq!(peer_address("ipv4:127.0.0.2:41234"), "127.0.0.2");
        assert_eq!(peer_address("ipv6:[::1]:41234"), "::1");
        assert_eq!(peer_address("ipv6:[2001:db8::7]:5"), "2001:db8::7");
        assert_eq!(peer_address("unix:/run/agent.sock"), "unix:/run/agent.sock");
        assert_eq!(peer_address("weird"), "weird");
    }

    #[test]
    fn a_peer_replaces_its_own_oldest_and_others_are_untouched() {
        let table = Arc::new(StreamTable::default());
        let (mut hub, _) = table.admit("s1", StreamKind::Logs, "10.0.0.1");
        let mut mine: Vec<Admission> =
            (0..MAX_STREAMS_PER_PEER).map(|_| table.admit("s1", StreamKind::Logs, "10.0.0.9").0).collect();
        // Other servers and the other kind have their own caps.
        let _other = table.admit("s2", StreamKind::Logs, "10.0.0.9");
        let _status = table.admit("s1", StreamKind::Status, "10.0.0.9");
        assert!(mine.iter_mut().all(|a| !gave_way(a)));
        let (_newest, who) = table.admit("s1", StreamKind::Logs, "10.0.0.9");
        assert_eq!(who.as_deref(), Some("10.0.0.9"));
        assert!(gave_way(&mut mine[0]) && !gave_way(&mut mine[1]) && !gave_way(&mut hub));
        assert_eq!(table.count("s1", StreamKind::Logs, Some("10.0.0.9")), MAX_STREAMS_PER_PEER);
        assert_eq!(table.count("s1", StreamKind::Logs, None), MAX_STREAMS_PER_PEER + 1);
        drop(mine);
        assert_eq!(table.count("s1", StreamKind::Logs, None), 2, "a dropped admission leaves the table");
    }

    #[test]
    fn at_the_server_cap_the_biggest_holder_gives_way_and_a_lone_hub_stays() {
        let table = Arc::new(StreamTable::default());
        let (mut hub, _) = table.admit("s", StreamKind::Logs, "hub");
        let mut many = Vec::new();
        for i in 0..MAX_STREAMS_PER_SERVER - 1 {
            // Peers with 1 to 4 streams each.
            many.push(table.admit("s", StreamKind::Logs, &format!("p{}", i % 20)).0);
        }
        assert_eq!(table.count("s", StreamKind::Logs, None), MAX_STREAMS_PER_SERVER);
        for i in 0..200 {
            let (a, who) = table.admit("s", StreamKind::Logs, &format!("q{i}"));
            assert!(who.is_some_and(|w| w != "hub"), "{i}");
            many.push(a);
            assert_eq!(table.count("s", StreamKind::Logs, None), MAX_STREAMS_PER_SERVER);
        }
        assert!(!gave_way(&mut hub));
    }
}
