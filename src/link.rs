//! How other threads talk to the reactor: they send an [`Event`] through a
//! [`Link`] (a bounded channel plus a `mio::Waker`); the reactor drains the
//! channel when woken. Nothing else crosses threads (DESIGN.md rule 2).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

use uuid::Uuid;

use crate::protocol::{Publish, Time};

/// What another thread tells the reactor.
#[derive(Debug)]
pub enum Event {
    /// Messages to publish, in order (the agent thread: what one of its
    /// turns produced, at most [`BATCH`]).
    Batch(Vec<Publish>),
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
    /// happens once the reactor is gone). Waits while the channel is full.
    pub fn send(&self, event: Event) {
        if self.tx.send(event).is_ok() {
            self.wake();
        }
    }

    /// Sends an event unless the channel is full (then it is handed back).
    ///
    /// # Errors
    /// The channel is full: the event comes back.
    pub fn try_send(&self, event: Event) -> Result<(), Event> {
        match self.tx.try_send(event) {
            Ok(()) => {
                self.wake();
                Ok(())
            }
            Err(TrySendError::Full(event)) => Err(event),
            Err(TrySendError::Disconnected(_)) => Ok(()),
        }
    }

    fn wake(&self) {
        if !self.woken.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.waker.wake() {
                log::warn!("cannot wake the reactor: {e}");
            }
        }
    }
}

/// Messages in one [`Event::Batch`] at most: the channel holds at most its
/// capacity times this many messages.
pub const BATCH: usize = 64;

/// The agent thread's sending end: what it publishes during one turn (all
/// its tasks run until none can progress) goes to the reactor as one
/// [`Event::Batch`] when the turn ends ([`Outbox::flush`]), or every
/// [`BATCH`] messages. One channel send and at most one wake per batch,
/// not per log line; order is kept.
#[derive(Clone)]
pub struct Outbox {
    link: Link,
    pending: Rc<RefCell<Vec<Publish>>>,
}

impl Outbox {
    /// An outbox sending through `link`.
    pub fn new(link: Link) -> Outbox {
        Outbox { link, pending: Rc::default() }
    }

    /// Keeps a message for the batch; sends the batch once it is full.
    pub fn publish(&self, msg: Publish) {
        let full = {
            let mut pending = self.pending.borrow_mut();
            pending.push(msg);
            pending.len() >= BATCH
        };
        if full {
            self.flush();
        }
    }

    /// Sends what was kept, waiting while the channel is full.
    pub fn flush(&self) {
        let batch = std::mem::take(&mut *self.pending.borrow_mut());
        if !batch.is_empty() {
            self.link.send(Event::Batch(batch));
        }
    }

    /// Sends what was kept (the turn ended) without waiting; false when the
    /// channel is full (it stays kept, for the next try).
    pub fn try_flush(&self) -> bool {
        let batch = std::mem::take(&mut *self.pending.borrow_mut());
        if batch.is_empty() {
            return true;
        }
        match self.link.try_send(Event::Batch(batch)) {
            Ok(()) => true,
            Err(Event::Batch(batch)) => {
                let mut pending = self.pending.borrow_mut();
                let newer = std::mem::replace(&mut *pending, batch);
                pending.extend(newer);
                false
            }
            Err(_) => false,
        }
    }

    /// Sends an event at once, after the messages kept so far.
    pub fn send(&self, event: Event) {
        self.flush();
        self.link.send(event);
    }
}
