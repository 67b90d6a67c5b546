//! The gRPC `AgentService` (proto/agent.proto) over the servers' shared
//! state: unary answers from what the workers keep, `StreamLogs` and
//! `WatchStatus` as ring [`Cursor`](super::ring::Cursor)s sent through grpcio's
//! `ServerStreamingSink` on its own completion-queue threads (a stream ends
//! only when the caller cancels it or the agent stops). `GetMetrics` may wait
//! up to a second on the Server List Ping, so it runs on a short-lived thread,
//! never on a completion queue; at most [`MAX_METRICS_CALLS`] at once.
//!
//! Streams are admitted by [`StreamTable`] (per-peer and per-server caps
//! where an older stream gives way, never the new one refused), and a stream
//! never blocks the worker that fills the ring: a stream that does not read
//! falls behind and resumes from the ring with `truncated` (see [`crate::ring`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aymc_proto::agent::{
    ListServersRequest, ListServersResponse, LogEntry, PingRequest, PingResponse, ServerInfo, ServerMetrics,
    ServerRequest, ServerStatus, StreamLogsRequest,
};
use aymc_proto::agent_grpc::{create_agent_service, AgentService};
use futures::future::{self, Either};
use futures::{FutureExt, SinkExt, StreamExt};
use grpcio::{
    EnvBuilder, RpcContext, RpcStatus, RpcStatusCode, ServerBuilder, ServerCredentials, ServerStreamingSink, UnarySink,
    WriteFlags,
};

use crate::parse::Entry;
use crate::ring::Delivered;
use crate::server::Server;
use crate::status::RunStatusChange;
use crate::streams::{peer_address, Admission, StreamKind, StreamTable};

/// `GetMetrics` calls served at once; more are answered `RESOURCE_EXHAUSTED`.
pub const MAX_METRICS_CALLS: usize = 16;

/// The service; cheap to clone (grpcio clones it per completion queue).
#[derive(Clone)]
pub struct AgentRpc {
    id: Arc<str>,
    servers: Arc<[Arc<Server>]>,
    metrics_calls: Arc<AtomicUsize>,
    streams: Arc<StreamTable>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl AgentRpc {
    /// A service for the agent `id` and its servers.
    pub fn new(id: &str, servers: Vec<Arc<Server>>) -> AgentRpc {
        AgentRpc {
            id: id.into(),
            servers: servers.into(),
            metrics_calls: Arc::new(AtomicUsize::new(0)),
            streams: Arc::new(StreamTable::default()),
        }
    }

    fn find(&self, id: &str) -> Option<Arc<Server>> {
        let id = id.trim().to_ascii_lowercase();
        self.servers.iter().find(|s| s.config.id == id).cloned()
    }

    /// Admits a stream (see [`StreamTable`]); logs the one that gave way.
    fn admit(&self, ctx: &RpcContext, server: &Server, kind: StreamKind) -> Admission {
        let peer = ctx.peer();
        let (admission, gave_way) = self.streams.admit(&server.config.id, kind, peer_address(&peer));
        if let Some(old) = gave_way {
            log::warn!("{peer}: {kind:?} stream of {old} for server {} cancelled to admit this one", server.config.id);
        }
        admission
    }

    /// Binds `listen` (port 0: any free port), starts serving, returns the
    /// server handle and the bound address.
    ///
    /// # Errors
    /// grpcio's, when the server cannot be built or the address bound.
    pub fn serve(self, listen: SocketAddr) -> Result<(grpcio::Server, SocketAddr), grpcio::Error> {
        let env = Arc::new(EnvBuilder::new().cq_count(2).name_prefix("agent-grpc").build());
        let mut server = ServerBuilder::new(env).register_service(create_agent_service(self)).build()?;
        let port = server.add_listening_port(listen.to_string(), ServerCredentials::insecure())?;
        server.start();
        Ok((server, SocketAddr::new(listen.ip(), port)))
    }
}

fn reply<T: Send + 'static>(ctx: &RpcContext, sink: UnarySink<T>, result: Result<T, RpcStatus>) {
    let f = match result {
        Ok(value) => sink.success(value),
        Err(status) => sink.fail(status),
    };
    ctx.spawn(f.map(|r| {
        if let Err(e) = r {
            log::debug!("reply not sent: {e}");
        }
    }));
}

fn not_found(id: &str) -> RpcStatus {
    RpcStatus::with_message(RpcStatusCode::NOT_FOUND, format!("no server '{id}' on this agent"))
}

fn refuse<T>(ctx: &RpcContext, sink: ServerStreamingSink<T>, status: RpcStatus) {
    ctx.spawn(sink.fail(status).map(|_| ()));
}

fn log_entry(d: Delivered<Entry>) -> LogEntry {
    let e = &d.item;
    let mut m = LogEntry::new();
    m.set_offset(e.offset);
    m.set_timestamp(e.timestamp);
    m.set_level(e.level.as_str().to_string());
    m.set_source(e.source.clone());
    m.set_message(e.message.clone());
    m.set_exception(e.exception.clone());
    m.set_truncated(d.lost);
    m
}

fn server_status(server_id: &str, c: &RunStatusChange) -> ServerStatus {
    let mut m = ServerStatus::new();
    m.set_server_id(server_id.to_string());
    m.set_status(c.status.as_str().to_string());
    m.set_reason(c.reason.clone());
    m.set_timestamp(c.timestamp);
    m
}

/// Sends a never-ending stream until the caller cancels, the server stops,
/// or the stream must give way to a newer one (then the call is cancelled:
/// dropping grpcio's sink unfinished cancels it, even when the caller does
/// not read and no status could be written).
fn stream<T, S>(ctx: &RpcContext, mut sink: ServerStreamingSink<T>, items: S, mut admission: Admission, what: String)
where
    T: Send + 'static,
    S: futures::Stream<Item = T> + Send + Unpin + 'static,
{
    sink.enhance_batch(true);
    let mut items = items.map(|item| Ok((item, WriteFlags::default())));
    ctx.spawn(async move {
        let sent = match future::select(sink.send_all(&mut items), &mut admission.give_way).await {
            Either::Left((sent, _)) => Some(sent),
            Either::Right(_) => None,
        };
        match sent {
            Some(Ok(())) => {
                let _ = sink.close().await;
            }
            Some(Err(e)) => log::debug!("{what} ended: {e}"),
            None => log::debug!("{what} gave way to a newer stream"),
        }
        drop(items);
        drop(sink);
        drop(admission);
    });
}

impl AgentService for AgentRpc {
    fn ping(&mut self, ctx: RpcContext, _req: PingRequest, sink: UnarySink<PingResponse>) {
        let mut m = PingResponse::new();
        m.set_agent_id(self.id.to_string());
        m.set_version(env!("CARGO_PKG_VERSION").to_string());
        m.set_timestamp(now_ms());
        reply(&ctx, sink, Ok(m));
    }

    fn list_servers(&mut self, ctx: RpcContext, _req: ListServersRequest, sink: UnarySink<ListServersResponse>) {
        let mut m = ListServersResponse::new();
        for server in self.servers.iter() {
            let mut info = ServerInfo::new();
            info.set_id(server.config.id.clone());
            info.set_name(server.config.name.clone());
            info.set_status(server.current_status().map_or("starting", |c| c.status.as_str()).to_string());
            m.mut_servers().push(info);
        }
        reply(&ctx, sink, Ok(m));
    }

    fn stream_logs(&mut self, ctx: RpcContext, req: StreamLogsRequest, sink: ServerStreamingSink<LogEntry>) {
        let Some(server) = self.find(req.get_server_id()) else {
            return refuse(&ctx, sink, not_found(req.get_server_id()));
        };
        let admission = self.admit(&ctx, &server, StreamKind::Logs);
        let after = req.get_after_offset();
        log::info!("{}: StreamLogs {} after {after}", ctx.peer(), server.config.id);
        let entries = server.logs.subscribe(after).map(log_entry);
        stream(&ctx, sink, entries, admission, format!("StreamLogs {} for {}", server.config.id, ctx.peer()));
    }

    fn get_metrics(&mut self, ctx: RpcContext, req: ServerRequest, sink: UnarySink<ServerMetrics>) {
        let Some(server) = self.find(req.get_server_id()) else {
            return reply(&ctx, sink, Err(not_found(req.get_server_id())));
        };
        let calls = Arc::clone(&self.metrics_calls);
        if calls.fetch_add(1, Ordering::SeqCst) >= MAX_METRICS_CALLS {
            calls.fetch_sub(1, Ordering::SeqCst);
            let busy = RpcStatus::with_message(RpcStatusCode::RESOURCE_EXHAUSTED, "too many GetMetrics calls".into());
            return reply(&ctx, sink, Err(busy));
        }
        let spawned = std::thread::Builder::new().name("agent-metrics".into()).spawn(move || {
            let m = server.metrics(now_ms());
            calls.fetch_sub(1, Ordering::SeqCst);
            if let Err(e) = futures::executor::block_on(sink.success(m)) {
                log::debug!("GetMetrics reply not sent: {e}");
            }
        });
        if let Err(e) = spawned {
            self.metrics_calls.fetch_sub(1, Ordering::SeqCst);
            log::warn!("GetMetrics: cannot start a thread: {e}");
        }
    }

    fn get_status(&mut self, ctx: RpcContext, req: ServerRequest, sink: UnarySink<ServerStatus>) {
        let result = match self.find(req.get_server_id()) {
            None => Err(not_found(req.get_server_id())),
            Some(server) => match server.current_status() {
                Some(c) => Ok(server_status(&server.config.id, &c)),
                None => Err(RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, "status not known yet".into())),
            },
        };
        reply(&ctx, sink, result);
    }

    fn watch_status(&mut self, ctx: RpcContext, req: ServerRequest, sink: ServerStreamingSink<ServerStatus>) {
        let Some(server) = self.find(req.get_server_id()) else {
            return refuse(&ctx, sink, not_found(req.get_server_id()));
        };
        let admission = self.admit(&ctx, &server, StreamKind::Status);
        log::info!("{}: WatchStatus {}", ctx.peer(), server.config.id);
        let id = server.config.id.clone();
        let changes = server.status.subscribe_latest().map(move |d| server_status(&id, &d.item));
        stream(&ctx, sink, changes, admission, format!("WatchStatus {} for {}", server.config.id, ctx.peer()));
    }
}
