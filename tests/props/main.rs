//! Property tests of the hub's parsers: everything that reads bytes a
//! stranger sends (HTTP heads, WebSocket frames, client messages, channel
//! names, tokens, publish bodies, logs query strings).
//!
//! One integration binary, using only the crate's public API, so the
//! properties sit beside no one's source file and break only when the
//! contract does. Each property runs proptest's default 256 cases (a few
//! seconds for the set); `PROPTEST_CASES=10000 cargo test --test props`
//! digs deeper. A failure is saved under `tests/proptest-regressions/`
//! and replayed first from then on: commit it with the fix. The same
//! parsers have cargo-afl targets in `fuzz/` for runs of hours.

mod channel;
mod client;
mod drain;
mod http;
mod known;
mod logs_query;
mod publish;
mod support;
mod token;
mod ws;
