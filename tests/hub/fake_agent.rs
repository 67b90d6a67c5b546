//! An in-process fake agent: a real grpcio `AgentService` on 127.0.0.1 that
//! tests drive by hand (add log lines, change statuses, break streams, go
//! away and come back on the same port, answer slowly).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aymc_proto::agent::{
    ListServersRequest, ListServersResponse, LogEntry, PingRequest, PingResponse, ServerInfo, ServerMetrics,
    ServerRequest, ServerStatus, StreamLogsRequest,
};
use aymc_proto::agent_grpc::{create_agent_service, AgentService};
use futures::channel::mpsc::{unbounded, UnboundedSender};
use futures::{SinkExt, StreamExt};
use grpcio::{
    Environment, RpcContext, RpcStatus, RpcStatusCode, Server, ServerBuilder, ServerCredentials, ServerStreamingSink,
    UnarySink, WriteFlags,
};

/// What the fake agent holds; shared by the test and the service.
#[derive(Default)]
pub struct State {
    /// (id, name) of the servers it lists.
    pub servers: Vec<(String, String)>,
    /// Kept log entries per server, offsets increasing.
    pub logs: HashMap<String, Vec<LogEntry>>,
    /// Current status per server.
    pub statuses: HashMap<String, String>,
    /// Metrics per server.
    pub metrics: HashMap<String, ServerMetrics>,
    /// Every `StreamLogs` request: (server, after_offset).
    pub stream_requests: Vec<(String, u64)>,
    /// Pings answered.
    pub pings: usize,
    /// Answer Ping this late.
    pub ping_delay: Duration,
    /// Answer `WatchStatus` with UNIMPLEMENTED.
    pub no_watch: bool,
    /// The newest offset no longer held (entries at or below it are gone).
    pub floor: u64,
    /// Its offsets went back (state file reset, or the server moved here):
    /// a stream whose `after_offset` is beyond the newest kept entry
    /// starts from the oldest kept one. `Some(true)` flags that stream's
    /// first entry `truncated`, as aymc-agent does; `Some(false)` does not.
    pub offsets_reset: Option<bool>,
    log_streams: Vec<(String, UnboundedSender<LogEntry>)>,
    status_streams: Vec<(String, UnboundedSender<ServerStatus>)>,
}

#[derive(Clone)]
struct Service {
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn status_msg(server: &str, status: &str) -> ServerStatus {
    let mut s = ServerStatus::new();
    s.set_server_id(server.to_string());
    s.set_status(status.to_string());
    s.set_reason(format!("fake agent says {status}"));
    s
}

impl AgentService for Service {
    fn ping(&mut self, ctx: RpcContext, _req: PingRequest, sink: UnarySink<PingResponse>) {
        let delay = {
            let mut s = lock(&self.state);
            s.pings += 1;
            s.ping_delay
        };
        let mut resp = PingResponse::new();
        resp.set_agent_id("fake".into());
        resp.set_version("0".into());
        ctx.spawn(async move {
            if !delay.is_zero() {
                futures_timer::Delay::new(delay).await;
            }
            let _ = sink.success(resp).await;
        });
    }

    fn list_servers(&mut self, ctx: RpcContext, _req: ListServersRequest, sink: UnarySink<ListServersResponse>) {
        let mut resp = ListServersResponse::new();
        for (id, name) in &lock(&self.state).servers {
            let mut info = ServerInfo::new();
            info.set_id(id.clone());
            info.set_name(name.clone());
            resp.mut_servers().push(info);
        }
        ctx.spawn(async move {
            let _ = sink.success(resp).await;
        });
    }

    fn stream_logs(&mut self, ctx: RpcContext, req: StreamLogsRequest, mut sink: ServerStreamingSink<LogEntry>) {
        let (tx, mut rx) = unbounded();
        // Whether the first entry still to be sent (a live one) is flagged.
        let mut flag = {
            let mut s = lock(&self.state);
            let server = req.get_server_id().to_string();
            let after = req.get_after_offset();
            s.stream_requests.push((server.clone(), after));
            let floor = s.floor;
            let kept = s.logs.get(&server).into_iter().flatten();
            let newest = kept.clone().last().map_or(0, |e| e.get_offset());
            let (after, mut flag) = match s.offsets_reset {
                Some(truncated) if after > newest => (0, truncated),
                _ => (after, after < floor && kept.clone().any(|e| e.get_offset() > after)),
            };
            for e in kept.filter(|e| e.get_offset() > after) {
                let mut e = e.clone();
                e.set_truncated(std::mem::take(&mut flag));
                let _ = tx.unbounded_send(e);
            }
            s.log_streams.push((server, tx));
            flag
        };
        ctx.spawn(async move {
            while let Some(mut entry) = rx.next().await {
                if std::mem::take(&mut flag) {
                    entry.set_truncated(true);
                }
                if sink.send((entry, WriteFlags::default())).await.is_err() {
                    return;
                }
            }
            sink.set_status(RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, "stream broken by the test".into()));
            let _ = sink.close().await;
        });
    }

    fn get_metrics(&mut self, ctx: RpcContext, req: ServerRequest, sink: UnarySink<ServerMetrics>) {
        let m = lock(&self.state).metrics.get(req.get_server_id()).cloned();
        ctx.spawn(async move {
            let _ = match m {
                Some(m) => sink.success(m).await,
                None => sink.fail(RpcStatus::new(RpcStatusCode::NOT_FOUND)).await,
            };
        });
    }

    fn get_status(&mut self, ctx: RpcContext, req: ServerRequest, sink: UnarySink<ServerStatus>) {
        let server = req.get_server_id().to_string();
        let status = lock(&self.state).statuses.get(&server).cloned().unwrap_or_else(|| "stopped".into());
        ctx.spawn(async move {
            let _ = sink.success(status_msg(&server, &status)).await;
        });
    }

    fn watch_status(&mut self, ctx: RpcContext, req: ServerRequest, mut sink: ServerStreamingSink<ServerStatus>) {
        let server = req.get_server_id().to_string();
        let (tx, mut rx) = unbounded();
        let no_watch = {
            let mut s = lock(&self.state);
            let status = s.statuses.get(&server).cloned().unwrap_or_else(|| "stopped".into());
            let _ = tx.unbounded_send(status_msg(&server, &status));
            if !s.no_watch {
                s.status_streams.push((server, tx));
            }
            s.no_watch
        };
        ctx.spawn(async move {
            if no_watch {
                let _ = sink.fail(RpcStatus::new(RpcStatusCode::UNIMPLEMENTED)).await;
                return;
            }
            while let Some(status) = rx.next().await {
                if sink.send((status, WriteFlags::default())).await.is_err() {
                    return;
                }
            }
            sink.set_status(RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, "stream broken by the test".into()));
            let _ = sink.close().await;
        });
    }
}

/// A running (or stopped) fake agent.
pub struct FakeAgent {
    /// Shared state.
    pub state: Arc<Mutex<State>>,
    env: Arc<Environment>,
    server: Option<Server>,
    /// The port it listens (or listened) on.
    pub port: u16,
}

impl FakeAgent {
    /// A fake agent listing `servers` (id, name), all `running`.
    pub fn start(servers: &[(&str, &str)]) -> FakeAgent {
        let state = State {
            servers: servers.iter().map(|(i, n)| (i.to_string(), n.to_string())).collect(),
            statuses: servers.iter().map(|(i, _)| (i.to_string(), "running".to_string())).collect(),
            ..State::default()
        };
        let mut agent =
            FakeAgent { state: Arc::new(Mutex::new(state)), env: Arc::new(Environment::new(1)), server: None, port: 0 };
        agent.listen(0);
        agent
    }

    /// The address for the hub's `[[agents]] address`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn listen(&mut self, port: u16) {
        let service = create_agent_service(Service { state: Arc::clone(&self.state) });
        let mut server = ServerBuilder::new(Arc::clone(&self.env)).register_service(service).build().unwrap();
        let mut bound = None;
        for _ in 0..50 {
            match server.add_listening_port(format!("127.0.0.1:{port}"), ServerCredentials::insecure()) {
                Ok(p) => {
                    bound = Some(p);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        self.port = bound.expect("fake agent cannot bind");
        server.start();
        self.server = Some(server);
    }

    /// Locks the state.
    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Appends a log line (offset = previous + 100) and streams it to open
    /// `StreamLogs` calls. Returns its offset.
    pub fn log(&self, server: &str, message: &str) -> u64 {
        let mut s = self.state();
        let logs = s.logs.entry(server.to_string()).or_default();
        let offset = logs.last().map_or(100, |e| e.get_offset() + 100);
        let mut e = LogEntry::new();
        e.set_offset(offset);
        e.set_timestamp(1_795_879_800_000 + offset as i64);
        e.set_level("INFO".into());
        e.set_source("server".into());
        e.set_message(message.to_string());
        logs.push(e.clone());
        s.log_streams.retain(|(id, tx)| id != server || tx.unbounded_send(e.clone()).is_ok());
        offset
    }

    /// Sets a server's status and sends it to `WatchStatus` streams.
    pub fn set_status(&self, server: &str, status: &str) {
        let mut s = self.state();
        s.statuses.insert(server.to_string(), status.to_string());
        let msg = status_msg(server, status);
        s.status_streams.retain(|(id, tx)| id != server || tx.unbounded_send(msg.clone()).is_ok());
    }

    /// Ends every open stream with UNAVAILABLE.
    pub fn break_streams(&self) {
        let mut s = self.state();
        s.log_streams.clear();
        s.status_streams.clear();
    }

    /// Stops serving (the agent process "dies"); its kept lines stay, as a
    /// real agent's durable ring would.
    pub fn stop(&mut self) {
        self.break_streams();
        if let Some(mut server) = self.server.take() {
            let _ = futures::executor::block_on(server.shutdown());
        }
    }

    /// Serves again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        self.listen(port);
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop();
    }
}
