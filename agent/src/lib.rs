//! `aymc-agent`, the agent beside Minecraft servers: it serves
//! `AgentService` (`proto/agent.proto`, generated in the `aymc-proto` crate;
//! DESIGN.md "The agent contract") for the servers in its configuration. It owns, per server, the tailing of
//! `logs/latest.log` (durable offsets, rotation, the state file), the kept
//! entries for resuming hubs, the status, and the metrics read from `/proc`
//! and the Server List Ping. It shares nothing with the hub but the contract
//! and the command-line conventions (`aymc-cli`).
//!
//! Threads: one worker per server ([`server::Worker`]: tailer + status,
//! woken by inotify when the log changes, and every 50 ms), grpcio's completion-queue threads (unary answers and
//! streams, woken by the workers through the rings), and a short-lived thread
//! per `GetMetrics` call.
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | `--config`, `AYMC_AGENT_*`, the TOML file → validated [`config::AgentSettings`] |
//! | [`parse`] | line prefixes, levels, sources, stack-trace folding, TPS and status markers (pure) |
//! | [`tail`] | following latest.log: rotation, truncation, partial lines, offsets |
//! | [`state`] | the state file: generations, positions, the generated agent id (fsynced) |
//! | [`ring`] | kept items, the floor, live subscribers as streams |
//! | [`status`] | the status rules (pure) and new crash reports |
//! | [`metrics`] | `/proc`: process CPU, RSS, uptime, host memory |
//! | [`slp`] | the Server List Ping client |
//! | [`server`] | one server's shared state and its worker thread |
//! | [`service`] | the grpcio `AgentService` implementation |
//! | [`streams`] | who may hold how many streams: per-peer and per-server caps |
//! | [`tenant`] | reading in directories tenants write: no links followed, regular files only |
//! | [`watch`] | inotify on `logs/`: wakes a worker when its log changes |

#![deny(missing_docs)]

pub mod config;
pub mod metrics;
pub mod parse;
pub mod ring;
pub mod server;
pub mod service;
pub mod slp;
pub mod state;
pub mod status;
pub mod streams;
pub mod tail;
pub mod tenant;
pub mod watch;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use config::AgentSettings;
use server::{Server, Worker};
use state::{StateError, StateStore};
use tail::Tailer;

/// Why the agent could not start (exit code 1; config errors are code 2).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state file cannot be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A worker thread could not be started or died while reading its log.
    #[error("server {0}: worker thread: {1}")]
    Worker(String, String),
    /// The gRPC service cannot listen.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, String),
}

/// The running agent: its id, its servers and their workers.
pub struct Agent {
    /// The agent's id (configured, or generated once and kept in the state file).
    pub id: String,
    /// The servers, in configuration order.
    pub servers: Vec<Arc<Server>>,
    workers: Vec<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Agent {
    /// Opens the state file, starts a worker per server and waits until each
    /// has read its current latest.log (so the rings are refilled and the
    /// statuses known before anyone asks).
    ///
    /// # Errors
    /// [`AgentError::State`] or [`AgentError::Worker`].
    pub fn start(config: &AgentSettings) -> Result<Agent, AgentError> {
        let store = Arc::new(StateStore::open(&config.state_file)?);
        let id = store.agent_id(config.id.as_deref())?;
        let mut agent = Agent { id, servers: Vec::new(), workers: Vec::new() };
        let (ready_tx, ready_rx) = mpsc::channel();
        for sc in &config.servers {
            let server = Arc::new(Server::new(sc.clone(), config.history_lines, config.history_bytes));
            let (tailer, floor) = Tailer::open(&sc.id, &sc.log_path(), Arc::clone(&store))?;
            server.logs.raise_floor(floor);
            let worker = Worker::new(Arc::clone(&server), tailer);
            let (stop_tx, stop_rx) = mpsc::channel();
            let ready = ready_tx.clone();
            let name = format!("tail-{}", sc.id.get(..8).unwrap_or(&sc.id));
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || worker.run(stop_rx, ready))
                .map_err(|e| AgentError::Worker(sc.id.clone(), e.to_string()))?;
            agent.workers.push((stop_tx, handle));
            agent.servers.push(server);
        }
        drop(ready_tx);
        for sc in &config.servers {
            if ready_rx.recv().is_err() {
                return Err(AgentError::Worker(sc.id.clone(), "stopped before reading its log".into()));
            }
        }
        Ok(agent)
    }

    /// Stops the workers and waits for them.
    pub fn stop(self) {
        for (stop, handle) in self.workers {
            let _ = stop.send(());
            if handle.join().is_err() {
                log::error!("a worker thread panicked");
            }
        }
    }
}

/// Runs the agent: start, serve on `config.listen`, log `listening on ADDR`,
/// call `wait` (which returns on SIGTERM/SIGINT in `main`), then stop cleanly.
///
/// # Errors
/// What [`Agent::start`] or binding the service returns.
pub fn run(config: &AgentSettings, wait: impl FnOnce()) -> Result<(), AgentError> {
    let agent = Agent::start(config)?;
    let rpc = service::AgentRpc::new(&agent.id, agent.servers.clone());
    let (mut server, addr) = match rpc.serve(config.listen) {
        Ok(s) => s,
        Err(e) => {
            agent.stop();
            return Err(AgentError::Listen(config.listen, e.to_string()));
        }
    };
    log::info!("agent {} serving {} server(s), listening on {addr}", agent.id, agent.servers.len());
    wait();
    log::info!("stopping");
    let shutdown = server.shutdown();
    server.cancel_all_calls();
    if let Err(e) = futures::executor::block_on(shutdown) {
        log::warn!("gRPC shutdown: {e}");
    }
    agent.stop();
    Ok(())
}
