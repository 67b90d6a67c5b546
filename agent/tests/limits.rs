//! What a tenant or a peer can make the agent hold: huge lines, lines that
//! never end, streams that never read. Memory stays bounded and the hub's
//! stream keeps working.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use crate::support::*;

const MIB: u64 = 1 << 20;
/// The agent's peak RSS allowed here: its baseline (gRPC's threads and
/// arenas) plus the default 16 MiB ring, with room, and far below what the
/// tests write.
const RSS_LIMIT: u64 = 64 * MIB;

#[test]
fn huge_and_endless_lines_keep_the_agent_small_and_resuming_works() {
    const LINES: usize = 300;
    let mc = Mc::new("huge-lines");
    mc.append(&line("12:00:00", "INFO", "first"));
    let config = mc.write_config("", "");
    let agent = Agent::start(config);
    let client = agent.client();
    let tap = stream_logs(&client, 0);
    assert_eq!(tap.take(1)[0].get_message(), "first");
    // A few hundred 1 MiB lines.
    let big = format!("[12:00:01] [Server thread/INFO]: {}\n", "x".repeat(MIB as usize));
    let mut f = OpenOptions::new().append(true).open(&mc.log).unwrap();
    let mut starts = Vec::new();
    for _ in 0..LINES {
        starts.push(mc.len());
        f.write_all(big.as_bytes()).unwrap();
    }
    // Then a 1 GiB line without a newline (sparse zeros), then its end.
    let endless_at = mc.len();
    f.set_len(endless_at + 1024 * MIB).unwrap();
    let got = tap.take(LINES);
    let peak = agent.peak_rss();
    assert!(peak < RSS_LIMIT, "peak RSS {} MiB", peak >> 20);
    assert_eq!(
        got.iter().map(|e| e.get_offset()).collect::<Vec<_>>(),
        starts.iter().map(|p| offset(1, *p)).collect::<Vec<_>>()
    );
    for e in &got {
        assert!(e.get_message().len() < 65 * 1024, "an entry of {} bytes", e.get_message().len());
        assert!(e.get_message().ends_with("bytes cut]"), "no cut note");
    }
    tap.quiet(Duration::from_millis(300));
    drop(f);
    mc.append(&format!("\n{}", line("12:00:02", "INFO", "after")));
    let got = tap.take(2);
    assert_eq!(got[0].get_offset(), offset(1, endless_at));
    assert!(got[0].get_message().ends_with(&format!("[… {} bytes cut]", 1024 * MIB - 64 * 1024)));
    let after = got[1].get_offset();
    assert_eq!(got[1].get_message(), "after");
    let peak = agent.peak_rss();
    assert!(peak < RSS_LIMIT, "peak RSS {} MiB", peak >> 20);
    // Resuming: from the last offset, nothing lost; from an evicted one, truncated.
    let resumed = stream_logs(&client, got[0].get_offset()).take(1);
    assert_eq!((resumed[0].get_message(), resumed[0].get_truncated()), ("after", false));
    let old = stream_logs(&client, offset(1, starts[0]));
    let first = old.take(1);
    assert!(first[0].get_truncated(), "the byte budget dropped the oldest entries");
    assert!(first[0].get_offset() > offset(1, starts[1]));
    let kept = stream_logs(&client, 0);
    let first_kept = kept.take(1)[0].get_offset();
    assert_eq!(first_kept, first[0].get_offset());
    agent.stop();
    // After a restart the same lines have the same offsets, within the same bound.
    let agent = Agent::start(config);
    let again = stream_logs(&agent.client(), got[0].get_offset()).take(1);
    assert_eq!((again[0].get_offset(), again[0].get_truncated()), (after, false));
    let peak = agent.peak_rss();
    assert!(peak < RSS_LIMIT, "peak RSS after restart {} MiB", peak >> 20);
}
