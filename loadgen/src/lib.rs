//! The load generator behind `aymc-loadgen` and `scripts/bench`. It starts
//! the hub under test as its own process (pinned to one core, a generated
//! config in a temporary directory), drives it through real paths only (a
//! TCP connection per WebSocket client with a real JWT, `subscribe`, the
//! publish API, a gRPC bench agent), and prints one JSON object per run.
//!
//! | module | owns |
//! | --- | --- |
//! | [`cli`] | the command line → a validated [`cli::Opts`] |
//! | [`scenarios`] | the six scenarios (and the reader self-check) |
//! | [`engine`] | the client `mio` loop: handshakes, bulk reads, Pongs |
//! | [`frames`] | header-only frame walking, masked client frames, stamp and `seq` search |
//! | [`publisher`] | `POST /api/v1/publish` at a constant rate over keep-alive connections |
//! | [`bench_agent`] | the gRPC bench agent (an `AgentService`) streaming stamped lines |
//! | [`hubproc`] | the hub process: config, start, `/proc`, `/metrics`, stop |
//! | [`tokens`] | HS256 and ES256 tokens |
//! | [`stats`] | counters, the clock, percentiles, `/proc` readings |
#![deny(missing_docs)]

pub mod bench_agent;
pub mod cli;
pub mod engine;
pub mod frames;
pub mod hubproc;
pub mod publisher;
pub mod scenarios;
pub mod stats;
pub mod tokens;

/// Every error of the tool ends the run with its message.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Bytes of every bench log line's `message`.
pub const LINE_BYTES: usize = 200;

/// A bench log line: `t=<stamp µs> n=<index> ` and filler, [`LINE_BYTES`] long.
/// The receivers find the stamp after `"message":"t=` ([`frames::STAMP_MARK`]).
pub fn bench_line(stamp_us: u64, n: u64) -> String {
    const FILLER: &str = "Villager EntityVillager['Villager'/4721, l='ServerLevel[world]', x=-118.50, y=64.00, \
                          z=203.50] died, message: 'Villager was squashed by a falling anvil' ";
    let mut line = format!("t={stamp_us:016} n={n:010} ");
    while line.len() < LINE_BYTES {
        let take = (LINE_BYTES - line.len()).min(FILLER.len());
        line.push_str(&FILLER[..take]);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_have_the_stamp_and_the_size() {
        let line = bench_line(123, 7);
        assert_eq!(line.len(), LINE_BYTES);
        let json = format!("{{\"message\":\"{line}\"}}");
        assert_eq!(frames::stamp(json.as_bytes()), Some(123));
    }
}
