//! aymc-hub: streams Minecraft servers' console logs, metrics, status
//! changes, alerts and user notifications from agents to WebSocket clients,
//! channel by channel, only to the users allowed to see them.
//!
//! The contract is `docs/PROTOCOL.md`; the map of threads and modules, and
//! the path of one log line, is `docs/ARCHITECTURE.md`. Modules:
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | command line, `AYMC_*` environment, TOML file → validated [`config::Config`] |
//! | [`reactor`] | the `mio` loop only: listener, sockets (slab), reads into one buffer, outcomes, flushes, timers, signals, waker |
//! | [`caps`] | the connection caps: counted in all and per client IP |
//! | [`conn`] | one connection's socket side: the state machine (`Http` → `WebSocket` → `Closing`), [`conn::Outcome`], its interest |
//! | [`app`] | what handlers work with: the hub, the token checker, the config, agent states, the query thread |
//! | [`endpoints`] | the HTTP side: pipelined requests, publish bodies, routing, endpoint handlers, upgrade checks |
//! | [`dispatch`] | the WebSocket side: frames, control frames, rate limit, client messages → hub |
//! | [`console`] | the web console's files, embedded from `console/`, and their headers |
//! | [`connlog`] | connect/disconnect log lines, summed up during storms |
//! | [`stats`] | `/api/v1/stats` and `/metrics` rendering |
//! | [`http`] | request heads (`httparse`), the route table, responses |
//! | [`ws`] | WebSocket frames: decoding with small buffers, encoding once |
//! | [`client`] | what a client is: out-queue, session (identity, subscriptions, rate limit, timers) |
//! | [`pending`] | the connections still sending their request head (slowloris cap) |
//! | [`outq`] | a client's outgoing queue: shared frames, `writev`, drops |
//! | [`hub`] | clients and channels: subscriptions, publish (encode once), seq/epoch, history rings and the logs subscribers' cursors into them; no sockets |
//! | [`store`] | on-disk log history (SQLite): writer thread, epoch/seq recovery, retention, search |
//! | [`protocol`] | envelope, `data` shapes, channel names, error codes, client messages |
//! | [`auth`] | JWT validation, claims, channel ACL |
//! | [`proxy`] | behind a reverse proxy: `trusted_proxies` CIDRs, `X-Forwarded-For`, PROXY protocol headers |
//! | [`logging`] | the log line formats: human, systemd journal (`<N>`), JSON |
//! | [`notify`] | systemd's notify protocol: `READY=1`, `STOPPING=1`, `WATCHDOG=1` datagrams |
//! | [`logs_api`] | `GET /api/v1/servers/{id}/logs`: the query thread over on-disk history, or the rings |
//! | [`reload`] | SIGHUP: what a reloaded config changes in the running hub, and the one line saying so |
//! | [`link`] | what other threads send the reactor (events through a channel and a waker) |
//! | [`alerts`] | alert rules evaluated as messages are published (deduplicated per cool-down), webhooks on their own threads |
//! | [`agent_link`] | the hub's side of the gRPC agent link: one thread, streams and health monitor → events for the reactor |
//!
//! One thread runs the reactor, which owns every socket and all hub state:
//! nothing is shared, nothing is locked. A second thread drives the agents
//! and sends events to the reactor through a channel and a `mio::Waker`.
#![deny(missing_docs)]

pub mod agent_link;
pub mod alerts;
pub mod app;
pub mod auth;
pub mod caps;
pub mod client;
pub mod config;
pub mod conn;
pub mod connlog;
pub mod console;
pub mod deflate;
pub mod dispatch;
pub mod endpoints;
pub mod es256;
pub mod http;
pub mod hub;
pub mod link;
pub mod logging;
pub mod logs_api;
pub mod metrics_api;
pub mod notify;
pub mod outq;
pub mod pending;
pub mod protocol;
pub mod proxy;
pub mod reactor;
pub mod reload;
pub mod stats;
pub mod store;
pub mod ws;
