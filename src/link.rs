//! How other threads talk to the reactor: they send an [`Event`] through a
//! [`Link`] (a bounded channel plus a `mio::Waker`); the reactor drains the
//! channel when woken. Nothing else crosses threads (DESIGN.md rule 2).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use uuid::Uuid;

use crate::protocol::{Publish, Time};

/// What another thread tells the reactor.
#[derive(Debug)]
pub enum Event {
    /// A message to publish (the agent thread).
    Publish(Publish),
    /// An agent's link state changed (for stats and `aymc_agent_up`).
    Agent(AgentState),
    /// The answer to a request that waited for another thread (the stored
    /// logs endpoint).
    Reply(Reply),
}

/// The link state of one agent, as `/api/v1/stats` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentState {
    /// Configured id.
    pub id: Uuid,
    /// Configured address.
    pub address: String,
    /// Answering pings.
    pub connected: bool,
    /// Since when `connected` has had its value.
    pub since: Option<Time>,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Streams open (`StreamLogs` and `WatchStatus`).
    pub streams: usize,
    /// Servers it listed that `[[servers]] agent` assigns to another agent,
    /// counted at every listing (they are not streamed).
    pub refused: u64,
}

/// An HTTP response for a connection that is waiting for it.
#[derive(Debug)]
pub struct Reply {
    /// The connection's slab key.
    pub key: usize,
    /// The connection's serial: a reused slab slot never gets someone
    /// else's reply.
    pub serial: u64,
    /// The whole response.
    pub response: Vec<u8>,
}

/// The sending half. When the reactor falls behind, the sender waits
/// (for the agent thread, gRPC flow control then slows the agents down);
/// nothing is dropped.
#[derive(Clone)]
pub struct Link {
    tx: SyncSender<Event>,
    waker: Arc<mio::Waker>,
    /// Set by the first sender after the reactor last looked; only that
    /// sender wakes it (one `eventfd` write per batch, not per event).
    woken: Arc<AtomicBool>,
}

impl Link {
    /// A link over `tx` that wakes `waker` when `woken` is not set yet; the
    /// reactor clears `woken` before it drains the channel.
    pub fn new(tx: SyncSender<Event>, waker: Arc<mio::Waker>, woken: Arc<AtomicBool>) -> Link {
        Link { tx, waker, woken }
    }

    /// Sends an event and wakes the reactor if no wake is pending (nothing
    /// happens once the reactor is gone).
    pub fn send(&self, event: Event) {
        if self.tx.send(event).is_ok() && !self.woken.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.waker.wake() {
                log::warn!("cannot wake the reactor: {e}");
            }
        }
    }

    /// Sends a message to publish.
    pub fn publish(&self, msg: Publish) {
        self.send(Event::Publish(msg));
    }
}
