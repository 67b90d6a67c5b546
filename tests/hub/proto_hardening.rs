//! RUSTSEC-2024-0437 (stack overflow in `protobuf` on deeply nested unknown
//! fields): a hostile agent answers the hub's every call with crafted
//! protobuf, and the hub keeps serving and recovers once the agent behaves.
//!
//! The hostile agent is a grpcio server whose methods take and return raw
//! bytes, encoded here by hand, so the test does not depend on the
//! `protobuf` release the hub decodes with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::channel::mpsc::{unbounded, UnboundedSender};
use futures::{SinkExt, StreamExt};
use grpcio::{
    Environment, MethodType, RpcContext, Server, ServerBuilder, ServerCredentials, ServerStreamingSink, ServiceBuilder,
    UnarySink, WriteFlags,
};
use serde_json::Value;

use aymc_proto::raw::*;

use crate::agent_link::{hub_for, AGENT_ID};
use crate::support::*;

const PING: &str = "/aymc.agent.v1.AgentService/Ping";
const LIST_SERVERS: &str = "/aymc.agent.v1.AgentService/ListServers";
const STREAM_LOGS: &str = "/aymc.agent.v1.AgentService/StreamLogs";
const GET_METRICS: &str = "/aymc.agent.v1.AgentService/GetMetrics";
const GET_STATUS: &str = "/aymc.agent.v1.AgentService/GetStatus";
const WATCH_STATUS: &str = "/aymc.agent.v1.AgentService/WatchStatus";

fn now_ms() -> u64 {
    now() as u64 * 1000
}

/// What the hostile agent holds; shared by the test and its handlers.
#[derive(Default)]
struct State {
    /// Bytes appended to every message a method answers with (and to the
    /// `ServerInfo` inside `ListServers`): crafted unknown fields.
    tails: HashMap<&'static str, Vec<u8>>,
    /// Calls per method.
    calls: HashMap<&'static str, usize>,
    /// Log lines; line `i` has offset `100 * (i + 1)`.
    lines: Vec<String>,
    /// Open `StreamLogs` calls.
    log_streams: Vec<UnboundedSender<Vec<u8>>>,
    /// Open `WatchStatus` calls (kept open).
    status_streams: Vec<UnboundedSender<Vec<u8>>>,
}

impl State {
    fn tail(&self, method: &str) -> &[u8] {
        self.tails.get(method).map_or(&[], Vec::as_slice)
    }

    fn hit(&mut self, method: &'static str) {
        *self.calls.entry(method).or_default() += 1;
    }

    fn log_entry(&self, i: usize) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(1, 100 * (i as u64 + 1), &mut out);
        put_varint(2, now_ms(), &mut out);
        put_bytes(3, b"INFO", &mut out);
        put_bytes(4, b"server", &mut out);
        put_bytes(5, self.lines[i].as_bytes(), &mut out);
        out.extend_from_slice(self.tail(STREAM_LOGS));
        out
    }

    fn status(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes(1, SERVER_A.as_bytes(), &mut out);
        put_bytes(2, b"running", &mut out);
        put_varint(4, now_ms(), &mut out);
        out
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// An agent serving SERVER_A whose answers carry whatever `tails` says.
struct HostileAgent {
    state: Shared,
    server: Option<Server>,
    port: u16,
}

fn unary(ctx: RpcContext, sink: UnarySink<Vec<u8>>, body: Vec<u8>) {
    ctx.spawn(async move {
        let _ = sink.success(body).await;
    });
}

fn forward(
    ctx: RpcContext,
    mut sink: ServerStreamingSink<Vec<u8>>,
    mut rx: futures::channel::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    ctx.spawn(async move {
        while let Some(item) = rx.next().await {
            if sink.send((item, WriteFlags::default())).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
}

impl HostileAgent {
    fn start() -> HostileAgent {
        let state = Shared::default();
        let mut service = ServiceBuilder::new();
        let s = Arc::clone(&state);
        service = service.add_unary_handler(&method(MethodType::Unary, PING), move |ctx, _req, sink| {
            let mut st = lock(&s);
            st.hit(PING);
            let mut out = Vec::new();
            put_bytes(1, b"hostile", &mut out);
            put_bytes(2, b"0", &mut out);
            put_varint(3, now_ms(), &mut out);
            out.extend_from_slice(st.tail(PING));
            unary(ctx, sink, out);
        });
        let s = Arc::clone(&state);
        service = service.add_unary_handler(&method(MethodType::Unary, LIST_SERVERS), move |ctx, _req, sink| {
            let mut st = lock(&s);
            st.hit(LIST_SERVERS);
            let mut info = Vec::new();
            put_bytes(1, SERVER_A.as_bytes(), &mut info);
            put_bytes(2, b"hostile-survival", &mut info);
            put_bytes(3, b"running", &mut info);
            info.extend_from_slice(st.tail(LIST_SERVERS));
            let mut out = Vec::new();
            put_bytes(1, &info, &mut out);
            out.extend_from_slice(st.tail(LIST_SERVERS));
            unary(ctx, sink, out);
        });
        let s = Arc::clone(&state);
        service = service.add_unary_handler(&method(MethodType::Unary, GET_METRICS), move |ctx, _req, sink| {
            let mut st = lock(&s);
            st.hit(GET_METRICS);
            let mut out = Vec::new();
            put_bytes(1, SERVER_A.as_bytes(), &mut out);
            put_varint(2, now_ms(), &mut out);
            put_varint(7, 3, &mut out);
            put_varint(8, 20, &mut out);
            out.extend_from_slice(st.tail(GET_METRICS));
            unary(ctx, sink, out);
        });
        let s = Arc::clone(&state);
        service = service.add_unary_handler(&method(MethodType::Unary, GET_STATUS), move |ctx, _req, sink| {
            let mut st = lock(&s);
            st.hit(GET_STATUS);
            let mut out = st.status();
            out.extend_from_slice(st.tail(GET_STATUS));
            unary(ctx, sink, out);
        });
        let s = Arc::clone(&state);
        service = service.add_server_streaming_handler(
            &method(MethodType::ServerStreaming, STREAM_LOGS),
            move |ctx, req: Vec<u8>, sink| {
                let mut st = lock(&s);
                st.hit(STREAM_LOGS);
                let (tx, rx) = unbounded();
                // As the contract says: only entries after `after_offset`.
                let after = varint_field(&req, 2).unwrap_or(0);
                for i in (0..st.lines.len()).filter(|i| 100 * (*i as u64 + 1) > after) {
                    let _ = tx.unbounded_send(st.log_entry(i));
                }
                st.log_streams.push(tx);
                forward(ctx, sink, rx);
            },
        );
        let s = Arc::clone(&state);
        service = service.add_server_streaming_handler(
            &method(MethodType::ServerStreaming, WATCH_STATUS),
            move |ctx, _req, sink| {
                let mut st = lock(&s);
                st.hit(WATCH_STATUS);
                let (tx, rx) = unbounded();
                let mut status = st.status();
                status.extend_from_slice(st.tail(WATCH_STATUS));
                let _ = tx.unbounded_send(status);
                st.status_streams.push(tx);
                forward(ctx, sink, rx);
            },
        );
        let mut server =
            ServerBuilder::new(Arc::new(Environment::new(1))).register_service(service.build()).build().unwrap();
        let port = server.add_listening_port("127.0.0.1:0", ServerCredentials::insecure()).unwrap();
        server.start();
        HostileAgent { state, server: Some(server), port }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn calls(&self, method: &str) -> usize {
        self.state().calls.get(method).copied().unwrap_or(0)
    }

    /// Appends `tail` to the answers of `methods` from now on (empty: none).
    fn set_tail(&self, methods: &[&'static str], tail: &[u8]) {
        let mut st = self.state();
        for m in methods {
            st.tails.insert(m, tail.to_vec());
        }
    }

    /// A new log line, sent to open `StreamLogs` calls.
    fn log(&self, line: &str) {
        let mut st = self.state();
        st.lines.push(line.to_string());
        let entry = st.log_entry(st.lines.len() - 1);
        st.log_streams.retain(|tx| tx.unbounded_send(entry.clone()).is_ok());
    }
}

impl Drop for HostileAgent {
    fn drop(&mut self) {
        {
            let mut st = self.state();
            st.log_streams.clear();
            st.status_streams.clear();
        }
        if let Some(mut server) = self.server.take() {
            let _ = futures::executor::block_on(server.shutdown());
        }
    }
}

const ALL: [&str; 6] = [PING, LIST_SERVERS, STREAM_LOGS, GET_METRICS, GET_STATUS, WATCH_STATUS];

/// The hub process is alive and answers `/healthz`, stats and a WebSocket ping.
fn assert_serving(hub: &mut Hub, after: &str) -> Value {
    assert!(hub.wait_exit(Duration::ZERO).is_none(), "the hub exited after {after}; stderr: {:?}", hub.logs());
    let health = http_get(hub.addr, "/healthz", None);
    assert_eq!(health.status, 200, "/healthz after {after}: {}", health.text());
    hub.connect_admin().ping_pong();
    hub.stats()
}

/// Waits for `n` more calls of `method` than `before`; a hub that died
/// meanwhile fails with its exit status and stderr.
fn wait_calls(hub: &mut Hub, agent: &HostileAgent, method: &str, before: usize, n: usize) {
    let ok = wait_until(Duration::from_secs(15), || agent.calls(method) >= before + n);
    if let Some(status) = hub.wait_exit(Duration::ZERO) {
        panic!("the hub exited ({status}) while waiting for {method} calls; stderr: {:?}", hub.logs());
    }
    assert!(ok, "the hub made {} {method} calls, not {before} + {n}", agent.calls(method));
}

#[test]
fn crafted_nested_unknown_fields_from_an_agent_do_not_crash_the_hub() {
    let agent = HostileAgent::start();
    let deep_lengths = nested_lengths(LEN_DEPTH);
    let deep_groups = nested_groups(GROUP_DEPTH);

    // 1. Nested length-delimited unknown fields on every answer: valid
    // protobuf, kept as opaque bytes; everything reaches subscribers.
    agent.set_tail(&ALL, &deep_lengths);
    let mut hub = hub_for(&agent.address());
    let mut client = hub.connect(&user_token(OWNER, &[]));
    client.subscribe_ok(&[&logs(SERVER_A), &metrics(SERVER_A)]);
    let m = loop {
        let msg = client.recv_json_within(Duration::from_secs(15));
        if msg["type"] == "metrics" {
            break msg;
        }
    };
    assert_eq!((m["data"]["players_online"].as_i64(), m["data"]["max_players"].as_i64()), (Some(3), Some(20)));
    wait_calls(&mut hub, &agent, STREAM_LOGS, 0, 1);
    agent.log("deep 0");
    agent.log("deep 1");
    assert_eq!(recv_log_messages(&mut client, 2), ["deep 0", "deep 1"]);
    let stats = assert_serving(&mut hub, "nested length-delimited fields");
    assert_eq!(stats["agents"][0]["connected"], true, "{stats}");
    assert!(agent.calls(WATCH_STATUS) >= 1);

    // 2. 500,000 nested groups on the streams and metrics while Ping and
    // ListServers stay clean: each stream item and metrics answer is refused.
    let streams = agent.calls(STREAM_LOGS);
    let metrics_calls = agent.calls(GET_METRICS);
    agent.set_tail(&[STREAM_LOGS, GET_METRICS, GET_STATUS, WATCH_STATUS], &deep_groups);
    agent.log("grouped 0");
    wait_calls(&mut hub, &agent, STREAM_LOGS, streams, 1);
    wait_calls(&mut hub, &agent, GET_METRICS, metrics_calls, 2);
    assert_serving(&mut hub, "nested groups in stream items and metrics");

    // 3. ... then on ListServers (nested in its ServerInfo too), then on
    // Ping: the agent is down for the hub, which says why and goes on.
    let listed = agent.calls(LIST_SERVERS);
    agent.set_tail(&[LIST_SERVERS], &deep_groups);
    wait_calls(&mut hub, &agent, LIST_SERVERS, listed, 1);
    let stats = hub.wait_stats(Duration::from_secs(15), |s| s["agents"][0]["connected"] == false);
    assert!(stats["agents"][0]["last_error"].is_string(), "{stats}");
    let pings = agent.calls(PING);
    agent.set_tail(&ALL, &deep_groups);
    wait_calls(&mut hub, &agent, PING, pings, 1);
    assert_serving(&mut hub, "nested groups in every answer");
    let pings = agent.calls(PING);
    agent.set_tail(&ALL, &open_groups(GROUP_DEPTH));
    wait_calls(&mut hub, &agent, PING, pings, 1);
    let stats = assert_serving(&mut hub, "unclosed nested groups in every answer");
    assert_eq!(stats["agents"][0]["connected"], false, "{stats}");

    // 4. The agent behaves again: the hub reconnects and streams on.
    agent.set_tail(&ALL, &[]);
    agent.log("clean 0");
    assert_eq!(recv_log_messages(&mut client, 2), ["grouped 0", "clean 0"]);
    let stats = hub.wait_stats(Duration::from_secs(15), |s| s["agents"][0]["connected"] == true);
    assert_serving(&mut hub, "recovery");
    assert_eq!(stats["agents"][0]["id"], AGENT_ID);
}
