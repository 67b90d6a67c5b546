//! The reactor: one `mio::Poll` loop on one thread. It owns the listener,
//! every connection's socket (a slab keyed by token) and the [`App`] the
//! handlers work with, and it is only the loop: poll, accept, read into one
//! shared buffer, hand the bytes to the connection's handler
//! ([`endpoints`] or [`dispatch`]), act on the [`Outcome`], flush, run the
//! timers, drain what other threads sent through the waker.
//!
//! Each turn: take every ready event (accepts, reads; a read may publish,
//! which only queues bytes), then write each connection that got output
//! once (one `writev`), then run the timers when due. Readiness is
//! edge-triggered, so reads drain to WouldBlock (bounded per turn, the rest
//! comes next turn) and WRITABLE interest is registered only while bytes
//! wait. Only the loop removes a connection; only a failure of `poll`
//! itself stops it.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::app::App;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::conn::{self, Conn, Outcome, Phase, Reason};
use crate::link::{Event, Link};
use crate::notify::{Notifier, Systemd};
use crate::pending::PendingHeads;
use crate::proxy::Via;
use crate::reload::{self, ReloadFn};
use crate::store::{Recovered, Store};
use crate::{dispatch, endpoints, ws};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);

/// Events waiting for the reactor at most (a batch of up to
/// [`link::BATCH`](crate::link::BATCH) messages is one); the agent thread
/// waits when the queue is full.
const EVENT_QUEUE: usize = 256;
/// Agent events handled per loop turn (a batch counts as its messages);
/// the rest wait for the next turn.
const EVENTS_PER_TURN: usize = 16_384;

/// Bytes read from a socket per `read` call, into the one shared buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Reads per connection per turn; a connection with more waiting is
/// read again next turn, so one sender cannot starve the others.
const READS_PER_TURN: usize = 16;
/// Timers run this often.
const TICK: Duration = Duration::from_millis(250);
/// How long a closing connection may take to close its side.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// The heap is trimmed at most this often (and only after accepts).
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// Live messages wait at most this long to be written together: while
/// publishes keep arriving, each subscriber gets one `writev` for several
/// messages instead of one per message (fewer syscalls and wake-ups, the
/// hot path of a fan-out). When a turn publishes nothing, they go at once.
const FANOUT_DELAY: Duration = Duration::from_millis(2);
/// The listen backlog asked for.
const LISTEN_BACKLOG: libc::c_int = 4096;
/// After `accept` fails for lack of descriptors, try again after this.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The loop and everything it owns. See the module docs.
pub struct Reactor {
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Signals,
    conns: Slab<Conn>,
    app: App,
    scratch: Box<[u8]>,
    accept_paused_until: Option<Instant>,
    shutdown_at: Option<Instant>,
    /// Connections still sending their request head (`limits.max_pending`).
    pending: PendingHeads,
    /// Connections with input left to read next turn.
    read_again: Vec<usize>,
    waker: Arc<Waker>,
    events_tx: SyncSender<Event>,
    events: Receiver<Event>,
    /// Events were left in the queue last turn.
    events_pending: bool,
    /// A sender has woken the reactor since it last drained (see [`Link`]).
    woken: Arc<AtomicBool>,
    /// Connections accepted so far (each one's serial).
    serials: u64,
    /// When the heap was last trimmed, and `serials` then.
    last_trim: Instant,
    trimmed_at_serial: u64,
    /// What systemd is told (ready, stopping, watchdog).
    systemd: Systemd,
    /// Loads the configuration again on SIGHUP.
    reload: Option<ReloadFn>,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Reactor {
    /// Binds the listener and prepares the loop.
    ///
    /// # Errors
    /// The address cannot be bound, or the poll or signal handler cannot
    /// be created.
    pub fn bind(
        cfg: Config,
        auth: Authenticator,
        store: Option<Store>,
        recovered: Option<Recovered>,
    ) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(cfg.listen)?;
        // std listens with a backlog of 128: a storm of connects overflows
        // it and clients wait a second for a SYN retry. Listening again
        // raises it (the kernel caps it at net.core.somaxconn).
        // SAFETY: listen(2) on the socket this listener owns.
        unsafe {
            libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG);
        }
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let woken = Arc::new(AtomicBool::new(false));
        let (events_tx, events) = sync_channel(EVENT_QUEUE);
        let link = Link::new(events_tx.clone(), Arc::clone(&waker), Arc::clone(&woken));
        let app = App::new(cfg, auth, store, recovered, link)?;
        Ok(Reactor {
            poll,
            listener: Some(listener),
            signals,
            conns: Slab::new(),
            app,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            accept_paused_until: None,
            shutdown_at: None,
            pending: PendingHeads::default(),
            read_again: Vec::new(),
            waker,
            events_tx,
            events,
            events_pending: false,
            woken,
            serials: 0,
            last_trim: Instant::now(),
            trimmed_at_serial: 0,
            systemd: Systemd::default(),
            reload: None,
        })
    }

    /// A sending end for the agent thread (or any other publisher thread).
    pub fn link(&self) -> Link {
        Link::new(self.events_tx.clone(), Arc::clone(&self.waker), Arc::clone(&self.woken))
    }

    /// The bound address.
    ///
    /// # Errors
    /// When the listener is closed or the OS cannot tell.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Some(l) => l.local_addr(),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Tells systemd (through `notifier`) when the loop is ready, when it
    /// stops, and that it is alive (watchdog).
    pub fn set_notifier(&mut self, notifier: Option<Notifier>) {
        self.systemd = Systemd::new(notifier);
    }

    /// Sets how SIGHUP loads the configuration again.
    pub fn set_reload(&mut self, reload: ReloadFn) {
        self.reload = Some(reload);
    }

    /// Runs until SIGTERM/SIGINT and the shutdown grace period end.
    ///
    /// # Errors
    /// Only when `poll` itself fails.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        let mut flush = Vec::new();
        self.systemd.ready(Instant::now());
        loop {
            let now = Instant::now();
            let wake = match self.app.hub.fanout_since() {
                Some(since) => next_tick.min(since + FANOUT_DELAY),
                None => next_tick,
            };
            let wake = self.systemd.deadline().map_or(wake, |w| wake.min(w));
            let timeout = if self.read_again.is_empty() && !self.events_pending {
                wake.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            let published = self.app.hub.counters.messages_in;
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => self.drain_events(now),
                    SIGNALS => {
                        let signals: Vec<i32> = self.signals.pending().collect();
                        for signal in signals {
                            if signal == SIGHUP {
                                reload::on_sighup(self.reload.as_mut(), &mut self.app);
                            } else {
                                self.begin_shutdown(now);
                            }
                        }
                    }
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(key, now);
                        }
                        if event.is_writable() {
                            self.app.hub.touch(key);
                        }
                    }
                }
            }
            for key in std::mem::take(&mut self.read_again) {
                self.on_readable(key, now);
            }
            if self.events_pending {
                self.drain_events(now);
            }
            self.flush_listed(&mut flush, now, false);
            let busy = self.app.hub.counters.messages_in != published;
            if self.app.hub.fanout_since().is_some_and(|t| !busy || now.duration_since(t) >= FANOUT_DELAY) {
                self.flush_listed(&mut flush, now, true);
            }
            self.systemd.alive(now);
            if now >= next_tick {
                next_tick = now + TICK;
                self.tick(now);
                self.flush_listed(&mut flush, now, false);
            }
            if let Some(until) = self.shutdown_at {
                if self.conns.is_empty() || now >= until {
                    let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                    for key in keys {
                        self.remove(key, Reason::Shutdown);
                    }
                    self.app.hub.close_store();
                    self.app.alerts.finish();
                    info!("stopped");
                    return Ok(());
                }
            }
        }
    }

    /// Handles queued events from other threads, at most
    /// [`EVENTS_PER_TURN`].
    fn drain_events(&mut self, now: Instant) {
        self.events_pending = false;
        self.woken.store(false, Ordering::SeqCst);
        let mut budget = EVENTS_PER_TURN;
        while budget > 0 {
            budget -= 1;
            match self.events.try_recv() {
                Ok(Event::Batch(batch)) => {
                    budget = budget.saturating_sub(batch.len());
                    for msg in batch {
                        self.app.publish(msg, now);
                    }
                }
                Ok(Event::Reply(reply)) => {
                    let Some(conn) = self.conns.get_mut(reply.key) else { continue };
                    if conn.serial == reply.serial {
                        let outcome = endpoints::on_reply(&mut self.app, reply.key, conn, reply.response, now);
                        self.act(reply.key, outcome, now);
                    }
                }
                Ok(Event::Agent(state)) => self.app.agent_state(state),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
        self.events_pending = true;
    }

    /// Writes the connections the hub listed: those with replies, or (with
    /// `fanout`) those with live messages.
    fn flush_listed(&mut self, list: &mut Vec<usize>, now: Instant, fanout: bool) {
        if fanout {
            self.app.hub.take_fanout(list);
        } else {
            self.app.hub.take_dirty(list);
        }
        for key in list.drain(..) {
            let outcome = self.flush(key, now);
            self.act(key, outcome, now);
        }
    }

    fn accept(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.accept_paused_until = None;
        self.accept_all(now);
        self.make_room(now);
    }

    /// Accepts until the listener would block (or descriptors run out).
    fn accept_all(&mut self, now: Instant) {
        let Some(listener) = &self.listener else { return };
        loop {
            let (mut stream, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::ConnectionAborted => {
                    continue
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: pause and retry on a timer.
                    warn!("accept failed ({e}); pausing accepts for {} ms", ACCEPT_PAUSE.as_millis());
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
            };
            conn::tune(&stream);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.poll.registry().register(&mut stream, Token(key), Interest::READABLE) {
                warn!("cannot register connection from {peer}: {e}");
                continue;
            }
            let cfg = &self.app.cfg;
            let via = Via::of(peer.ip(), &cfg.trusted_proxies, cfg.proxy_protocol);
            // A trusted proxy's client is counted per IP once it is named.
            let counted = self.app.caps.admit((via == Via::Direct).then_some(peer.ip()));
            if counted.is_none() {
                debug!("connection from {peer} over the cap; it will get 503");
            }
            self.serials += 1;
            entry.insert(Conn::new(stream, peer, via, self.serials, counted, now));
            self.app.hub.connect(key);
            self.app.connections += 1;
            self.pending.accepted(key, self.serials, now);
        }
    }

    /// Keeps at most `limits.max_pending` connections sending their
    /// request head: the oldest of them is answered `408` and closed, so a
    /// client that sends its head promptly always gets in (slowloris).
    fn make_room(&mut self, now: Instant) {
        let conns = &self.conns;
        let still = |key, serial| conns.get(key).is_some_and(|c: &Conn| c.serial == serial && c.awaits_head());
        for key in self.pending.over(self.app.cfg.limits.max_pending, now, still) {
            // What it sent may wait unread only because the hub is busy:
            // read it first, and evict it only if its head is still short.
            self.on_readable(key, now);
            let Some(conn) = self.conns.get(key).filter(|c| c.awaits_head()) else { continue };
            let outcome = endpoints::evict(&mut self.app, key, conn);
            self.act(key, outcome, now);
        }
    }

    /// Reads what the socket has, up to [`READS_PER_TURN`] chunks, and
    /// hands each chunk to the connection's handler. A connection that
    /// takes no input now is paused (its bytes wait in the kernel); when it
    /// takes input again, what it had buffered is handled first.
    fn on_readable(&mut self, key: usize, now: Instant) {
        let max_reply_bytes = self.app.cfg.limits.max_reply_bytes;
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if !conn.takes_input(self.app.hub.reply_bytes(key), max_reply_bytes) {
                conn.paused = true;
                return;
            }
            let outcome = if std::mem::take(&mut conn.paused) {
                self.handle(key, 0, now)
            } else {
                match conn.stream.read(&mut self.scratch) {
                    Ok(0) => match &conn.phase {
                        Phase::Closing(c) => Outcome::Drop(c.reason.clone()),
                        _ => Outcome::Drop(Reason::PeerClosed),
                    },
                    Ok(n) => {
                        conn.last_read = now;
                        self.handle(key, n, now)
                    }
                    Err(e) if would_block(&e) => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => Outcome::Keep,
                    Err(e) => Outcome::Drop(Reason::Io(e.to_string())),
                }
            };
            if outcome != Outcome::Keep {
                return self.act(key, outcome, now);
            }
        }
        self.read_again.push(key);
    }

    /// Hands the first `n` bytes of the read buffer to the connection's
    /// handler.
    fn handle(&mut self, key: usize, n: usize, now: Instant) -> Outcome {
        let Some(conn) = self.conns.get_mut(key) else { return Outcome::Keep };
        let bytes = self.scratch.get_mut(..n).unwrap_or_default();
        match conn.phase {
            Phase::Http(_) => endpoints::on_bytes(&mut self.app, key, conn, bytes, now),
            Phase::WebSocket(_) => dispatch::on_bytes(&mut self.app, key, conn, bytes, now),
            // Our Close went out; whatever comes now (the peer's Close)
            // ends the handshake.
            Phase::Closing(ref c) if c.shut => Outcome::Drop(c.reason.clone()),
            Phase::Closing(_) => Outcome::Keep,
        }
    }

    /// Carries out a handler's outcome: nothing, the start of a graceful
    /// close, or the removal of the connection.
    fn act(&mut self, key: usize, outcome: Outcome, now: Instant) {
        match outcome {
            Outcome::Keep => {}
            Outcome::Drop(reason) => self.remove(key, reason),
            Outcome::Close(reason) => {
                let Some(conn) = self.conns.get_mut(key) else { return };
                if matches!(conn.phase, Phase::Closing(_)) {
                    return;
                }
                // Shutting down, a client has the rest of the grace period.
                let deadline = self.shutdown_at.unwrap_or(now + CLOSE_LINGER);
                let who = self.app.hub.end_session(key).map(|s| s.describe());
                conn.begin_closing(deadline, reason, who);
                self.app.hub.touch(key);
            }
        }
    }

    /// Writes what is queued, then brings the registration in line with
    /// what waits (WRITABLE only while bytes wait), shuts the write side of
    /// a closing connection once it is drained, and resumes a paused
    /// reader once its replies drained.
    fn flush(&mut self, key: usize, now: Instant) -> Outcome {
        let Some(conn) = self.conns.get_mut(key) else { return Outcome::Keep };
        let written = match self.app.hub.write_out(key, &mut conn.stream) {
            Ok(w) => w,
            Err(e) => return Outcome::Drop(Reason::Io(e.to_string())),
        };
        let hub = &self.app.hub;
        conn.wrote(written.written, written.waiting, || hub.pending_bytes(key), now);
        if let Phase::Closing(closing) = &mut conn.phase {
            if !written.waiting && !closing.shut {
                let _ = conn.stream.shutdown(Shutdown::Write);
                closing.shut = true;
            }
        }
        let interest = conn.interest(written.waiting);
        if interest != conn.registered {
            if let Err(e) = self.poll.registry().reregister(&mut conn.stream, Token(key), interest) {
                return Outcome::Drop(Reason::Io(e.to_string()));
            }
            conn.registered = interest;
        }
        if conn.paused && conn.takes_input(written.reply_bytes, self.app.cfg.limits.max_reply_bytes / 2) {
            self.read_again.push(key);
        }
        Outcome::Keep
    }

    /// The timers of every connection (run every [`TICK`]).
    fn tick(&mut self, now: Instant) {
        let l = &self.app.cfg.limits;
        let pong_timeout = Duration::from_secs(l.pong_timeout_s);
        let write_timeout = Duration::from_secs(l.write_timeout_s);
        let ping_interval = Duration::from_secs(l.ping_interval_s);
        let message_timeout = Duration::from_secs(l.message_timeout_s);
        let unix_now = chrono::Utc::now().timestamp();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            let outcome = if conn.stalled(now, write_timeout) {
                let at_frame_start = self.app.hub.client(key).is_some_and(|c| c.out.at_frame_start());
                if matches!(conn.phase, Phase::WebSocket(_)) && at_frame_start {
                    let _ = conn.stream.write(&ws::close(4008, "write timeout"));
                }
                Outcome::Drop(Reason::WriteStall)
            } else {
                match &conn.phase {
                    Phase::Http(_) => endpoints::on_tick(&mut self.app, key, conn, now),
                    Phase::WebSocket(_) if now.duration_since(conn.last_read) >= pong_timeout => {
                        Outcome::Drop(Reason::PongTimeout)
                    }
                    Phase::WebSocket(ws)
                        if ws.message_since.is_some_and(|t| now.duration_since(t) >= message_timeout) =>
                    {
                        dispatch::close(&mut self.app, key, 1008, "message not completed in time")
                    }
                    Phase::WebSocket(_) => {
                        self.app.hub.ping_if_due(key, now, ping_interval);
                        dispatch::check_token(&mut self.app, key, unix_now).unwrap_or(Outcome::Keep)
                    }
                    Phase::Closing(closing) if now >= closing.deadline => Outcome::Drop(closing.reason.clone()),
                    Phase::Closing(_) => Outcome::Keep,
                }
            };
            self.act(key, outcome, now);
        }
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept(now);
        }
        self.app.tick_alerts(now);
        self.app.hub.save_counters();
        self.app.hub.forget_idle_channels();
        self.app.connlog.roll(now);
        self.trim_heap(now);
    }

    /// Returns the heap's free pages to the OS after connections came and
    /// went (handshake buffers, closed sessions), at most every
    /// [`TRIM_EVERY`], so idle RSS follows the connections that remain.
    fn trim_heap(&mut self, now: Instant) {
        if self.serials != self.trimmed_at_serial && now.duration_since(self.last_trim) >= TRIM_EVERY {
            self.last_trim = now;
            self.trimmed_at_serial = self.serials;
            // Tables keep their peak capacity: let it go once they are
            // mostly empty (a storm of connections that went away).
            if self.conns.is_empty() {
                self.conns = Slab::new();
            }
            self.pending.shrink();
            self.read_again.shrink_to_fit();
            self.app.hub.shrink();
            // SAFETY: malloc_trim only gives free heap pages back to the OS.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    /// Frees a connection: deregisters it, drops its client, logs.
    fn remove(&mut self, key: usize, reason: Reason) {
        let Some(mut conn) = self.conns.try_remove(key) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.app.connections -= 1;
        if let Some(counted) = conn.counted.take() {
            self.app.caps.release(counted);
        }
        let session = self.app.hub.end_session(key);
        self.app.hub.disconnect(key);
        let remote = conn.remote();
        let who = match conn.phase {
            Phase::Closing(closing) => closing.who,
            _ => session.map(|s| s.describe()),
        };
        match who {
            Some(who) => self
                .app
                .connlog
                .disconnected(Instant::now(), || format!("client disconnected: user {who} from {remote}: {reason}")),
            None => debug!("connection from {remote} closed: {reason}"),
        }
    }

    fn begin_shutdown(&mut self, now: Instant) {
        if self.shutdown_at.is_some() {
            return;
        }
        info!("shutting down: closing {} clients", self.app.hub.sessions());
        self.systemd.stopping();
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.shutdown_at = Some(now + Duration::from_secs(self.app.cfg.limits.shutdown_grace_s));
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let outcome = match self.conns.get(key).map(|c| &c.phase) {
                Some(Phase::WebSocket(_)) => dispatch::close(&mut self.app, key, 1001, "going away"),
                Some(Phase::Http(_)) => Outcome::Drop(Reason::Shutdown),
                _ => Outcome::Keep,
            };
            self.act(key, outcome, now);
        }
    }
}
