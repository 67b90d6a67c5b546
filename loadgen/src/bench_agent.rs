//! The bench agent: a real grpcio `AgentService` on 127.0.0.1 that lists
//! `n` servers and streams bench lines on each `StreamLogs` call at a fixed
//! rate per server, stamped with their intended send time. `WatchStatus`
//! is left unimplemented (the hub then polls `GetStatus`). A generator
//! thread paces the lines; grpcio's completion-queue thread writes them,
//! batched with `enhance_batch`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
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
use uuid::Uuid;

use crate::stats::now_us;
use crate::{bench_line, Error};

/// Lines queued toward the hub at most; past this the generator skips
/// lines (and says so) rather than growing without bound.
const MAX_OUTSTANDING: u64 = 1_000_000;
/// The generator wakes this often.
const GENERATOR_TICK: Duration = Duration::from_millis(2);

struct BenchShared {
    ids: Vec<String>,
    index: HashMap<String, usize>,
    streams: Mutex<Vec<Option<UnboundedSender<LogEntry>>>>,
    /// The last offset sent per server (offsets keep growing across runs).
    offsets: Mutex<Vec<u64>>,
    outstanding: AtomicU64,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
struct BenchService {
    shared: Arc<BenchShared>,
}

impl AgentService for BenchService {
    fn ping(&mut self, ctx: RpcContext, _req: PingRequest, sink: UnarySink<PingResponse>) {
        let mut resp = PingResponse::new();
        resp.set_agent_id("bench".into());
        resp.set_version(env!("CARGO_PKG_VERSION").into());
        resp.set_timestamp(chrono::Utc::now().timestamp_millis());
        ctx.spawn(async move {
            let _ = sink.success(resp).await;
        });
    }

    fn list_servers(&mut self, ctx: RpcContext, _req: ListServersRequest, sink: UnarySink<ListServersResponse>) {
        let mut resp = ListServersResponse::new();
        for (i, id) in self.shared.ids.iter().enumerate() {
            let mut info = ServerInfo::new();
            info.set_id(id.clone());
            info.set_name(format!("bench-{i}"));
            info.set_status("running".into());
            resp.mut_servers().push(info);
        }
        ctx.spawn(async move {
            let _ = sink.success(resp).await;
        });
    }

    fn stream_logs(&mut self, ctx: RpcContext, req: StreamLogsRequest, mut sink: ServerStreamingSink<LogEntry>) {
        let Some(&i) = self.shared.index.get(req.get_server_id()) else {
            ctx.spawn(async move {
                let _ = sink.fail(RpcStatus::new(RpcStatusCode::NOT_FOUND)).await;
            });
            return;
        };
        let (tx, rx) = unbounded();
        lock(&self.shared.streams)[i] = Some(tx);
        let shared = Arc::clone(&self.shared);
        ctx.spawn(async move {
            sink.enhance_batch(true);
            let mut lines = rx.map(move |e| {
                shared.outstanding.fetch_sub(1, Ordering::Relaxed);
                Ok::<_, grpcio::Error>((e, WriteFlags::default()))
            });
            if sink.send_all(&mut lines).await.is_ok() {
                let _ = sink.close().await;
            }
        });
    }

    fn get_metrics(&mut self, ctx: RpcContext, req: ServerRequest, sink: UnarySink<ServerMetrics>) {
        let mut m = ServerMetrics::new();
        m.set_server_id(req.get_server_id().to_string());
        m.set_timestamp(chrono::Utc::now().timestamp_millis());
        m.set_memory_total(4 << 30);
        m.set_max_players(20);
        ctx.spawn(async move {
            let _ = sink.success(m).await;
        });
    }

    fn get_status(&mut self, ctx: RpcContext, req: ServerRequest, sink: UnarySink<ServerStatus>) {
        let mut s = ServerStatus::new();
        s.set_server_id(req.get_server_id().to_string());
        s.set_status("running".into());
        s.set_timestamp(chrono::Utc::now().timestamp_millis());
        ctx.spawn(async move {
            let _ = sink.success(s).await;
        });
    }
}

/// What a generator run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunReport {
    /// Lines handed to the streams.
    pub sent: u64,
    /// Lines not sent because too many were queued.
    pub skipped: u64,
    /// Most lines queued at once.
    pub max_outstanding: u64,
}

/// The running agent.
pub struct BenchAgent {
    shared: Arc<BenchShared>,
    server: Server,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl BenchAgent {
    /// Serves `servers` servers (random ids) on a free port.
    ///
    /// # Errors
    /// The gRPC server cannot be built or bound.
    pub fn start(servers: usize) -> Result<BenchAgent, Error> {
        let ids: Vec<String> = (0..servers).map(|_| Uuid::new_v4().to_string()).collect();
        let index = ids.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect();
        let shared = Arc::new(BenchShared {
            streams: Mutex::new(vec![None; servers]),
            offsets: Mutex::new(vec![0; servers]),
            ids,
            index,
            outstanding: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let service = create_agent_service(BenchService { shared: Arc::clone(&shared) });
        let env = Arc::new(Environment::new(1));
        let mut server = ServerBuilder::new(env)
            .register_service(service)
            .build()
            .map_err(|e| format!("cannot build the bench agent: {e}"))?;
        let port = server
            .add_listening_port("127.0.0.1:0", ServerCredentials::insecure())
            .map_err(|e| format!("the bench agent cannot listen: {e}"))?;
        server.start();
        Ok(BenchAgent { shared, server, port })
    }

    /// The server ids, in order.
    pub fn servers(&self) -> &[String] {
        &self.shared.ids
    }

    /// Servers with an open `StreamLogs` call.
    pub fn streaming(&self) -> usize {
        lock(&self.shared.streams).iter().filter(|s| s.as_ref().is_some_and(|tx| !tx.is_closed())).count()
    }

    /// Starts a generator thread: `rate` lines/s per server for `lines`
    /// lines each, starting at `t0` (µs of `now_us`). Server `k`'s lines are
    /// offset by `k / (servers * rate)` so the total flow is smooth.
    pub fn run(&self, rate: f64, lines: u64, t0: u64) -> JoinHandle<RunReport> {
        let shared = Arc::clone(&self.shared);
        std::thread::spawn(move || generate(&shared, rate, lines, t0))
    }

    /// Ends every stream and stops serving.
    pub fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        lock(&self.shared.streams).iter_mut().for_each(|s| *s = None);
        let _ = futures::executor::block_on(self.server.shutdown());
    }
}

fn generate(shared: &BenchShared, rate: f64, lines: u64, t0: u64) -> RunReport {
    let n = shared.ids.len();
    let mut next = vec![0u64; n];
    let mut offsets = lock(&shared.offsets).clone();
    let mut report = RunReport::default();
    let period = 1e6 / rate;
    let due = |k: usize, j: u64| t0 + ((j as f64 + k as f64 / n as f64) * period) as u64;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let now = now_us();
        let mut left = false;
        {
            let streams = lock(&shared.streams);
            for k in 0..n {
                while next[k] < lines && due(k, next[k]) <= now {
                    let stamp = due(k, next[k]);
                    next[k] += 1;
                    let outstanding = shared.outstanding.load(Ordering::Relaxed);
                    report.max_outstanding = report.max_outstanding.max(outstanding);
                    let Some(tx) = &streams[k] else {
                        report.skipped += 1;
                        continue;
                    };
                    if outstanding >= MAX_OUTSTANDING {
                        report.skipped += 1;
                        continue;
                    }
                    offsets[k] += 1;
                    let mut e = LogEntry::new();
                    e.set_offset(offsets[k]);
                    e.set_timestamp(chrono::Utc::now().timestamp_millis());
                    e.set_level("INFO".into());
                    e.set_source("server".into());
                    e.set_message(bench_line(stamp, offsets[k]));
                    shared.outstanding.fetch_add(1, Ordering::Relaxed);
                    if tx.unbounded_send(e).is_ok() {
                        report.sent += 1;
                    } else {
                        shared.outstanding.fetch_sub(1, Ordering::Relaxed);
                        report.skipped += 1;
                    }
                }
                left |= next[k] < lines;
            }
        }
        if !left {
            break;
        }
        std::thread::sleep(GENERATOR_TICK);
    }
    *lock(&shared.offsets) = offsets;
    report
}
