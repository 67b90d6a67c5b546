//! The agent link, the hub's side of gRPC: one thread that drives every
//! configured agent over gRPC (`proto/agent.proto`, the `aymc-proto` crate)
//! as a client and hands what it learns to the reactor as
//! [`Event`]s through a [`Link`] (a channel plus a `mio::Waker`).
//!
//! The thread runs a `futures` `LocalPool`: per agent one monitor task
//! (Ping, ListServers, GetMetrics, GetStatus polling when `WatchStatus` is
//! unimplemented: right after each (re)connect, then every
//! `monitor.health_interval_s`), and per server one `StreamLogs` task and
//! one `WatchStatus` task, each reconnecting with capped exponential backoff
//! and resuming logs from the last offset seen. Every unary call has a
//! deadline. It never touches the hub: it only sends events.
//!
//! A listed server that `[[servers]] agent` assigns to another agent is
//! refused: no stream, metrics or status of it is taken from this agent.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use aymc_proto::agent::{self as pb, ListServersRequest, PingRequest, ServerRequest, StreamLogsRequest};
use aymc_proto::agent_grpc::AgentServiceClient;
use futures::channel::oneshot;
use futures::executor::LocalPool;
use futures::future::{self, Either};
use futures::task::LocalSpawnExt;
use futures::StreamExt;
use futures_timer::Delay;
use grpcio::{CallOption, ChannelBuilder, EnvBuilder, Environment, RpcStatusCode};
use log::{info, warn};
use uuid::Uuid;

use crate::config::{AgentConfig, Config};
use crate::link::{AgentState, Event, Link, Outbox};
use crate::protocol::{
    Alert, AlertSource, Level, LogEntry, Metrics, Notification, NotificationType, Publish, Severity, Status,
    StatusChange, Time,
};

mod streams;
use streams::{stream_logs, watch_status};

/// Names, owners and agents of servers from the hub's `[[servers]]`.
#[derive(Debug, Clone, Default)]
struct Directory {
    names: HashMap<Uuid, String>,
    owners: HashMap<Uuid, Uuid>,
    /// The one agent that may speak for a server (`[[servers]] agent`);
    /// a server without one is open to whichever agent lists it.
    agents: HashMap<Uuid, Uuid>,
    /// Last stored log offset per server (resume point after a restart).
    offsets: HashMap<Uuid, u64>,
}

/// Backoff for reconnects: 1 s doubling to 30 s, with jitter.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The next wait (the current step, plus or minus 20% jitter).
    fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let jitter = (Uuid::new_v4().as_u128() % 401) as f64 / 1000.0 - 0.2;
        base.mul_f64(1.0 + jitter)
    }
}

/// What the hub knows of one server of an agent.
#[derive(Debug, Default)]
struct ServerTrack {
    name: String,
    /// Last status published (`None`: never seen).
    status: Option<Status>,
    /// Last log offset received.
    offset: u64,
    /// Its log and status tasks are running.
    tasks: bool,
}

struct AgentShared {
    cfg: AgentConfig,
    id: Uuid,
    client: AgentServiceClient,
    link: Outbox,
    dir: Rc<Directory>,
    timeout: Duration,
    interval: Duration,
    /// `None` until the first Ping.
    up: Option<bool>,
    since: Option<Time>,
    last_error: Option<String>,
    streams: usize,
    /// Listed servers refused because another agent runs them, counted at
    /// every listing.
    refused: u64,
    /// Servers refused so far (each is logged once).
    refused_servers: HashSet<Uuid>,
    /// Poll `GetStatus` (the agent does not implement `WatchStatus`).
    poll_status: bool,
    servers: HashMap<Uuid, ServerTrack>,
    /// Cancel the open streams when the agent stops answering: one entry
    /// per open stream, removed when its [`CancelHandle`] drops.
    cancels: HashMap<u64, oneshot::Sender<()>>,
    /// The key of the next cancel handle (never reused).
    next_cancel: u64,
    /// Grows each time the agent answers again after being down: streams
    /// waiting in backoff retry at once.
    generation: u64,
    /// A status stream reconnected: run the monitor now.
    recheck: bool,
}

type Shared = Rc<RefCell<AgentShared>>;

impl AgentShared {
    fn new(cfg: AgentConfig, client: AgentServiceClient, link: Outbox, dir: Rc<Directory>, interval: Duration) -> Self {
        AgentShared {
            id: cfg.id,
            cfg,
            client,
            link,
            dir,
            timeout: (interval / 2).max(Duration::from_secs(1)),
            interval,
            up: None,
            since: None,
            last_error: None,
            streams: 0,
            refused: 0,
            refused_servers: HashSet::new(),
            poll_status: false,
            servers: HashMap::new(),
            cancels: HashMap::new(),
            next_cancel: 0,
            generation: 0,
            recheck: false,
        }
    }

    fn report(&self) {
        self.link.send(Event::Agent(AgentState {
            id: self.id,
            address: self.cfg.address.clone(),
            connected: self.up == Some(true),
            since: self.since,
            last_error: self.last_error.clone(),
            streams: self.streams,
            refused: self.refused,
        }));
    }

    fn opt(&self) -> CallOption {
        CallOption::default().timeout(self.timeout)
    }

    /// Publishes a status transition (and, for a crash, the owner's
    /// notification and a critical alert) when it is one.
    fn observe(&mut self, server: Uuid, new: Status, reason: String) {
        let Some(track) = self.servers.get_mut(&server) else { return };
        let old = track.status.unwrap_or(Status::Unknown);
        if track.status == Some(new) {
            return;
        }
        track.status = Some(new);
        let name = track.name.clone();
        self.link.publish(Publish::Status(StatusChange {
            server_id: server,
            server_name: name.clone(),
            old_status: old,
            new_status: new,
            timestamp: None,
            reason,
        }));
        if new == Status::Crashed {
            let message = format!("Your server '{name}' has crashed");
            if let Some(&owner) = self.dir.owners.get(&server) {
                self.link.publish(Publish::Notification {
                    user: owner,
                    notification: Notification {
                        kind: NotificationType::Error,
                        title: "Server Crashed".into(),
                        message: message.clone(),
                        link: format!("/servers/{server}"),
                    },
                });
            }
            self.link.publish(alert(Severity::Critical, "Server Crashed", message, AlertSource::Server, server));
        }
    }

    /// Whether `[[servers]]` assigns this listed server to another agent:
    /// then it is not streamed, polled or watched from this one; counted,
    /// and logged once per server.
    fn refuse(&mut self, server: Uuid) -> bool {
        let Some(&owner) = self.dir.agents.get(&server).filter(|a| **a != self.id) else {
            return false;
        };
        self.refused += 1;
        if self.refused_servers.insert(server) {
            warn!(
                "agent {} at {} lists server {server}, which [[servers]] assigns to agent {owner}: refused",
                self.id, self.cfg.address
            );
        }
        true
    }

    fn mark_up(&mut self) {
        if self.up == Some(true) {
            return;
        }
        let was_down = self.up == Some(false);
        self.up = Some(true);
        self.generation += 1;
        self.since = Some(Time::now());
        info!("agent {} at {} is up", self.id, self.cfg.address);
        if was_down {
            let msg = format!("Agent {} at {} answers again", self.id, self.cfg.address);
            self.link.publish(alert(Severity::Info, "Agent reconnected", msg, AlertSource::Agent, self.id));
        }
        self.report();
    }

    fn mark_down(&mut self, error: String) {
        self.last_error = Some(error.clone());
        if self.up == Some(false) {
            self.report();
            return;
        }
        self.up = Some(false);
        self.since = Some(Time::now());
        warn!("agent {} at {} is unreachable: {error}", self.id, self.cfg.address);
        let msg = format!("Agent {} at {} does not answer: {error}", self.id, self.cfg.address);
        self.link.publish(alert(Severity::Error, "Agent unreachable", msg, AlertSource::Agent, self.id));
        let known: Vec<Uuid> = self.servers.iter().filter(|(_, t)| t.status.is_some()).map(|(id, _)| *id).collect();
        for server in known {
            self.observe(server, Status::Unreachable, format!("agent unreachable: {error}"));
        }
        for (_, cancel) in self.cancels.drain() {
            let _ = cancel.send(());
        }
        self.report();
    }
}

fn alert(severity: Severity, title: &str, message: String, source: AlertSource, id: Uuid) -> Publish {
    Publish::Alert(Alert {
        id: None,
        severity,
        title: title.into(),
        message,
        source,
        source_id: Some(id),
        timestamp: None,
        data: None,
    })
}

/// Starts the agent thread for the configured agents; `None` when there
/// are none (no gRPC environment is created then).
///
/// # Errors
/// When the thread cannot be spawned.
///
/// `offsets` are the last log offsets the hub stored per server (on-disk
/// history): the log streams resume after them.
pub fn spawn(
    cfg: &Config,
    link: Link,
    offsets: HashMap<Uuid, u64>,
) -> std::io::Result<Option<std::thread::JoinHandle<()>>> {
    if cfg.agents.is_empty() {
        return Ok(None);
    }
    let dir = Directory {
        names: cfg.servers.iter().filter_map(|s| Some((s.id, s.name.clone()?))).collect(),
        owners: cfg.servers.iter().filter_map(|s| Some((s.id, s.owner?))).collect(),
        agents: cfg.servers.iter().filter_map(|s| Some((s.id, s.agent?))).collect(),
        offsets,
    };
    let agents = cfg.agents.clone();
    let interval = Duration::from_secs(cfg.monitor.health_interval_s);
    std::thread::Builder::new().name("aymc-agents".into()).spawn(move || run(agents, dir, interval, link)).map(Some)
}

fn run(agents: Vec<AgentConfig>, dir: Directory, interval: Duration, link: Link) {
    let env: Arc<Environment> = Arc::new(EnvBuilder::new().cq_count(1).name_prefix("aymc-grpc").build());
    let dir = Rc::new(dir);
    let link = Outbox::new(link);
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    for cfg in agents {
        let channel = ChannelBuilder::new(Arc::clone(&env)).connect(&cfg.address);
        let client = AgentServiceClient::new(channel);
        let shared = Rc::new(RefCell::new(AgentShared::new(cfg, client, link.clone(), Rc::clone(&dir), interval)));
        shared.borrow().report();
        let task_spawner = spawner.clone();
        if let Err(e) = spawner.spawn_local(monitor(shared, task_spawner)) {
            warn!("cannot start an agent task: {e}");
        }
    }
    // Each turn runs every task that can progress (the log lines grpcio
    // delivered meanwhile, from all streams), then hands what they
    // published to the reactor as one batch, then sleeps until a task is
    // woken (grpcio and the timers unpark this thread; an unpark that came
    // during the turn makes `park` return at once). That last send must not
    // wait: a full channel's send parks this thread itself and could eat
    // the unpark of a wake that came meanwhile, so with the channel full it
    // tries again shortly instead.
    loop {
        pool.run_until_stalled();
        if link.try_flush() {
            std::thread::park();
        } else {
            std::thread::park_timeout(FULL_RETRY);
        }
    }
}

/// Per agent: Ping, ListServers (starting streams for new servers), then
/// GetMetrics (and GetStatus when polling) per server; every
/// `health_interval_s` while up, with backoff while down.
async fn monitor(shared: Shared, spawner: futures::executor::LocalSpawner) {
    let mut backoff = Backoff::new();
    loop {
        let ok = check(&shared, &spawner).await;
        let wait = if ok {
            backoff.reset();
            shared.borrow().interval
        } else {
            backoff.step()
        };
        let reconnected = wait_or_reconnect(&shared, wait).await;
        if reconnected {
            backoff.reset();
        }
    }
}

/// Waits `wait`; returns early (true) when a status stream of this agent
/// reconnected, so the monitor runs right after a reconnect.
async fn wait_or_reconnect(shared: &Shared, wait: Duration) -> bool {
    let mut waited = Duration::ZERO;
    while waited < wait {
        let slice = SLICE.min(wait - waited);
        Delay::new(slice).await;
        waited += slice;
        if std::mem::take(&mut shared.borrow_mut().recheck) {
            return true;
        }
    }
    false
}

/// While the reactor's channel is full, the agent thread tries this often
/// to hand over what its last turn published.
const FULL_RETRY: Duration = Duration::from_millis(1);

/// Backoff sleeps wake this often to see whether the agent is back.
const SLICE: Duration = Duration::from_millis(200);

/// Sleeps `wait`, or less when the agent answers again meanwhile.
async fn backoff_sleep(shared: &Shared, wait: Duration) {
    let generation = shared.borrow().generation;
    let mut waited = Duration::ZERO;
    while waited < wait && shared.borrow().generation == generation {
        let slice = SLICE.min(wait - waited);
        Delay::new(slice).await;
        waited += slice;
    }
}

async fn check(shared: &Shared, spawner: &futures::executor::LocalSpawner) -> bool {
    let (client, opt) = {
        let s = shared.borrow();
        (s.client.clone(), s.opt())
    };
    let ping = match client.ping_async_opt(&PingRequest::new(), opt.clone()) {
        Ok(call) => call.await,
        Err(e) => Err(e),
    };
    if let Err(e) = ping {
        shared.borrow_mut().mark_down(e.to_string());
        return false;
    }
    shared.borrow_mut().mark_up();
    let listed = match client.list_servers_async_opt(&ListServersRequest::new(), opt.clone()) {
        Ok(call) => call.await,
        Err(e) => Err(e),
    };
    let listed = match listed {
        Ok(l) => l,
        Err(e) => {
            shared.borrow_mut().mark_down(e.to_string());
            return false;
        }
    };
    let refused_before = shared.borrow().refused;
    for info in listed.get_servers() {
        let Ok(id) = Uuid::try_parse(info.get_id()) else {
            warn!("agent {} lists a server with a bad id '{}'", shared.borrow().id, info.get_id());
            continue;
        };
        if shared.borrow_mut().refuse(id) {
            continue;
        }
        let start = {
            let mut s = shared.borrow_mut();
            let name = s.dir.names.get(&id).cloned().unwrap_or_else(|| match info.get_name() {
                "" => id.to_string(),
                n => n.to_string(),
            });
            let offset = s.dir.offsets.get(&id).copied().unwrap_or(0);
            let track = s.servers.entry(id).or_insert_with(|| ServerTrack { offset, ..ServerTrack::default() });
            track.name = name;
            !std::mem::replace(&mut track.tasks, true)
        };
        if start {
            let spawned = spawner
                .spawn_local(stream_logs(Rc::clone(shared), id))
                .and_then(|()| spawner.spawn_local(watch_status(Rc::clone(shared), id)));
            if let Err(e) = spawned {
                warn!("cannot start stream tasks: {e}");
            }
        }
    }
    if shared.borrow().refused != refused_before {
        shared.borrow().report();
    }
    let servers: Vec<Uuid> = shared.borrow().servers.keys().copied().collect();
    for server in servers {
        let mut req = ServerRequest::new();
        req.set_server_id(server.to_string());
        match client.get_metrics_async_opt(&req, opt.clone()) {
            Ok(call) => match call.await {
                Ok(m) => shared.borrow().link.publish(Publish::Metrics(metrics(server, &m))),
                Err(e) => log::debug!("GetMetrics of {server} failed: {e}"),
            },
            Err(e) => log::debug!("GetMetrics of {server} failed: {e}"),
        }
        if shared.borrow().poll_status {
            if let Ok(call) = client.get_status_async_opt(&req, opt.clone()) {
                if let Ok(status) = call.await {
                    apply_status(shared, server, &status);
                }
            }
        }
    }
    true
}

fn metrics(server: Uuid, m: &pb::ServerMetrics) -> Metrics {
    Metrics {
        server_id: server,
        timestamp: Time::from_unix_ms(m.get_timestamp()).filter(|_| m.get_timestamp() > 0),
        cpu_percent: m.get_cpu_percent(),
        memory_used: m.get_memory_used(),
        memory_total: m.get_memory_total(),
        memory_percent: m.get_memory_percent(),
        players_online: m.get_players_online(),
        max_players: m.get_max_players(),
        tps: m.get_has_tps().then(|| m.get_tps()),
        uptime_seconds: m.get_uptime_seconds(),
    }
}

fn parse_status(s: &str) -> Option<Status> {
    Some(match s {
        "running" => Status::Running,
        "starting" => Status::Starting,
        "stopping" => Status::Stopping,
        "stopped" => Status::Stopped,
        "crashed" => Status::Crashed,
        "unreachable" => Status::Unreachable,
        _ => return None,
    })
}

fn apply_status(shared: &Shared, server: Uuid, status: &pb::ServerStatus) {
    match parse_status(status.get_status()) {
        Some(new) => shared.borrow_mut().observe(server, new, status.get_reason().to_string()),
        None => warn!("agent sent an unknown status '{}' for {server}", status.get_status()),
    }
}

#[cfg(test)]
mod tests {
    use super::streams::*;
    use super::*;

    #[test]
    fn backoff_doubles_to_thirty_seconds_with_jitter() {
        let mut b = Backoff::new();
        let steps: Vec<Duration> = (0..8).map(|_| b.step()).collect();
        assert!(steps[0] >= Duration::from_millis(800) && steps[0] <= Duration::from_millis(1200));
        assert!(steps[1] >= Duration::from_millis(1600) && steps[1] <= Duration::from_millis(2400));
        assert!(steps[7] >= Duration::from_secs(24) && steps[7] <= Duration::from_secs(36));
        b.reset();
        assert!(b.step() <= Duration::from_millis(1200));
    }

    /// An agent's shared state with a client that never connects (gRPC
    /// channels connect lazily) and a link whose receiving end the test
    /// drains; the `Poll` backs the link's waker.
    fn test_shared() -> (Shared, std::sync::mpsc::Receiver<Event>, mio::Poll) {
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let link = Outbox::new(Link::new(tx, waker, Arc::new(std::sync::atomic::AtomicBool::new(false))));
        let env = Arc::new(EnvBuilder::new().cq_count(1).build());
        let client = AgentServiceClient::new(ChannelBuilder::new(env).connect("127.0.0.1:1"));
        let cfg = AgentConfig { id: Uuid::new_v4(), address: "127.0.0.1:1".into() };
        let shared = AgentShared::new(cfg, client, link, Rc::new(Directory::default()), Duration::from_secs(30));
        (Rc::new(RefCell::new(shared)), rx, poll)
    }

    #[test]
    fn cancel_handles_do_not_grow_with_stream_retries() {
        let (shared, events, _poll) = test_shared();
        let mut pool = LocalPool::new();
        for retry in 0..1000 {
            // A stream that delivers a little, then fails or ends: one retry
            // of a flapping agent.
            let items: Vec<grpcio::Result<u32>> = match retry % 3 {
                0 => vec![Ok(1), Err(grpcio::Error::RemoteStopped)],
                1 => vec![Ok(1), Ok(2)],
                _ => vec![],
            };
            let mut seen = 0;
            let ended = pool.run_until(follow(&shared, futures::stream::iter(items), |_| seen += 1));
            assert!(!matches!(ended, Ended::Cancelled));
            while events.try_recv().is_ok() {}
        }
        let s = shared.borrow();
        assert_eq!(s.cancels.len(), 0, "a live cancel handle per ended stream");
        assert_eq!(s.streams, 0);
    }

    #[test]
    fn an_agent_going_down_cancels_its_open_streams() {
        let (shared, events, _poll) = test_shared();
        let mut pool = LocalPool::new();
        let ended = Rc::new(RefCell::new(Vec::new()));
        for _ in 0..3 {
            let (shared, ended) = (Rc::clone(&shared), Rc::clone(&ended));
            pool.spawner()
                .spawn_local(async move {
                    let stream = futures::stream::pending::<grpcio::Result<u32>>();
                    let how = follow(&shared, stream, |_| {}).await;
                    ended.borrow_mut().push(matches!(how, Ended::Cancelled));
                })
                .expect("spawn");
        }
        pool.run_until_stalled();
        assert_eq!((shared.borrow().cancels.len(), shared.borrow().streams), (3, 3));
        shared.borrow_mut().mark_down("test".into());
        pool.run_until_stalled();
        assert_eq!(*ended.borrow(), [true, true, true]);
        assert_eq!((shared.borrow().cancels.len(), shared.borrow().streams), (0, 0));
        while events.try_recv().is_ok() {}
    }

    #[test]
    fn agent_levels_map_to_protocol_levels() {
        let mut e = pb::LogEntry::new();
        for (given, want) in
            [("FATAL", Level::Error), ("TRACE", Level::Debug), ("WARN", Level::Warn), ("x", Level::Info)]
        {
            e.set_level(given.into());
            assert_eq!(log_entry(Uuid::nil(), e.clone()).level, want);
        }
        assert_eq!(log_entry(Uuid::nil(), e).source, "server");
    }
}
