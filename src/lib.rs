//! aymc-hub: streams Minecraft servers' console logs, metrics, status
//! changes, alerts and user notifications from agents to WebSocket clients,
//! channel by channel, only to the users allowed to see them.
//!
//! The contract is `PROTOCOL.md`; the shape is `DESIGN.md`. Map:
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | command line, `AYMC_*` environment, TOML file → validated [`config::Config`] |
//! | [`reactor`] | the `mio` loop: listener, connections (slab), timers, signals |
//! | [`conn`] | one connection's state machine (`Http` → `WebSocket` → `Closing`), rate limit |
//! | [`http`] | request heads (`httparse`), routing, responses |
//! | [`ws`] | WebSocket frames: decoding with small buffers, encoding once |
//! | [`outq`] | a connection's outgoing queue: shared frames, `writev`, drops |
//! | [`hub`] | channels, subscriptions, publish (encode once), seq/epoch, history rings |
//! | [`store`] | on-disk log history (SQLite): writer thread, epoch/seq recovery, retention, search |
//! | [`protocol`] | envelope, `data` shapes, channel names, error codes, client messages |
//! | [`auth`] | JWT validation, claims, channel ACL |
//! | [`logs_api`] | `GET /api/v1/servers/{id}/logs`: the query thread over on-disk history, or the rings |
//! | [`link`] | what other threads send the reactor (events through a channel and a waker) |
//! | [`agent_link`] | the hub's side of the gRPC agent link: one thread, streams and health monitor → events for the reactor |
//! | [`store`] | on-disk history (SQLite): writer thread, epoch and seq recovery, retention, search |
//!
//! One thread runs the reactor, which owns every socket and all hub state:
//! nothing is shared, nothing is locked. A second thread drives the agents
//! and sends events to the reactor through a channel and a `mio::Waker`.
#![deny(missing_docs)]

pub mod agent_link;
pub mod auth;
pub mod config;
pub mod conn;
pub mod http;
pub mod hub;
pub mod link;
pub mod logs_api;
pub mod outq;
pub mod protocol;
pub mod reactor;
pub mod store;
pub mod ws;
