//! What a tenant or a peer can make the agent hold: huge lines, lines that
//! never end, streams that never read. Memory stays bounded and the hub's
//! stream keeps working.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use futures::StreamExt;

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
    // A short line (it completes the last big one at once), then a 1 GiB
    // line without a newline (sparse zeros), then its end.
    f.write_all(line("12:00:01", "INFO", "short").as_bytes()).unwrap();
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
    assert_eq!(tap.take(1)[0].get_message(), "short");
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

#[test]
fn streams_that_never_read_neither_lock_out_nor_slow_down_the_hub() {
    const BATCHES: usize = 30;
    const PER_BATCH: usize = 100;
    let mc = Mc::new("stream-caps");
    mc.append(&line("12:00:00", "INFO", "first"));
    let agent = Agent::start(mc.write_config("history_lines = 1000", ""));
    // A stranger on the hub's own address: 70 of each stream, never read.
    let stranger = stingy_client(agent.port);
    let mut held_logs = Vec::new();
    let mut held_status = Vec::new();
    // Each has its first answer, so all arrived before the hub's (a stream
    // from the same address that came later would replace the hub's).
    for _ in 0..70 {
        held_logs.push(arrived(stranger.stream_logs(&logs_req(0)).unwrap()));
        held_status.push(arrived(stranger.watch_status(&server_req()).unwrap()));
    }
    // Another host trickles: four streams each reading an entry every 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = stingy_client(Relay::start(Ipv4Addr::new(127, 0, 0, 2), agent.port).port);
    let tricklers: Vec<_> = (0..4)
        .map(|_| {
            let mut stream = trickle.stream_logs(&logs_req(0)).unwrap();
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if futures::executor::block_on(stream.next()).is_none_or(|r| r.is_err()) {
                        return;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    // A third keeps opening streams it never reads while the lines flow.
    let opener_client = stingy_client(Relay::start(Ipv4Addr::new(127, 0, 0, 3), agent.port).port);
    let opener_stop = Arc::clone(&stop);
    let opener = thread::spawn(move || {
        let mut held = Vec::new();
        while !opener_stop.load(Ordering::SeqCst) && held.len() < 300 {
            held.push(opener_client.stream_logs(&logs_req(0)).unwrap());
            thread::sleep(Duration::from_millis(5));
        }
        held.len()
    });
    // The hub gets through at once, for logs and status.
    let hub = own_client(agent.port);
    let tap = stream_logs(&hub, 0);
    assert_eq!(tap.take(1)[0].get_message(), "first");
    let watch = watch_status(&hub);
    assert_eq!(watch.take(1)[0].get_status(), "starting");
    // Lines flow in bursts; the ring holds 1000, so it fills and waiting matters.
    let pad = "p".repeat(1000);
    let mut positions = Vec::new();
    for b in 0..BATCHES {
        let start = mc.len();
        let mut text = String::new();
        for i in 0..PER_BATCH {
            positions.push(start + text.len() as u64);
            text.push_str(&line("12:00:01", "INFO", &format!("line {} {pad}", b * PER_BATCH + i)));
        }
        mc.append(&text);
        thread::sleep(Duration::from_millis(20));
    }
    let written = Instant::now();
    let got = tap.take(BATCHES * PER_BATCH);
    let lag = written.elapsed();
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.get_offset(), offset(1, positions[i]), "entry {i}");
        assert!(!e.get_truncated(), "entry {i} truncated");
    }
    assert!(lag < Duration::from_secs(3), "the hub had the last line {lag:?} after it was written");
    // The streams that stopped reading held the log back once, not more.
    let waits = agent.log_lines(&["kept the log waiting"]);
    assert_eq!(waits.len(), 1, "{waits:#?}");
    stop.store(true, Ordering::SeqCst);
    assert!(opener.join().unwrap() > 50);
    for t in tricklers {
        t.join().unwrap();
    }
    let peak = agent.peak_rss();
    assert!(peak < RSS_LIMIT, "peak RSS {} MiB", peak >> 20);
    let replaced = agent.log_lines(&["cancelled to admit"]);
    assert!(replaced.len() >= 2 * (70 - 4), "{} streams gave way", replaced.len());
    agent.assert_answers(&hub);
    drop((held_logs, held_status));
    agent.stop_within(Duration::from_secs(3));
}
