//! The hub driven without sockets: clients are keys, output is read back
//! through `write_out` into memory, as a client would receive it.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use serde_json::{json, Value};
use uuid::Uuid;

use super::*;
use crate::auth::Identity;
use crate::config::AuthConfig;
use crate::outq::tests::Trickle;
use crate::protocol::Since;

const SERVER: Uuid = Uuid::from_u128(0x550e8400_e29b_41d4_a716_446655440000);
const OTHER: Uuid = Uuid::from_u128(0x650e8400_e29b_41d4_a716_446655440000);
const USER: Uuid = Uuid::from_u128(0x123e4567_e89b_12d3_a456_426614174000);

fn logs(server: Uuid) -> String {
    format!("server:{server}:logs")
}

struct Fixture {
    hub: Hub,
    auth: Authenticator,
}

impl Fixture {
    fn new(client_queue: usize, log_lines: usize) -> Fixture {
        let limits = Limits { client_queue, ..Limits::default() };
        Fixture::with(&limits, &HistoryConfig { log_lines, ..HistoryConfig::default() })
    }

    /// A hub with these limits and history settings.
    fn with(limits: &Limits, history: &HistoryConfig) -> Fixture {
        let cfg = AuthConfig { jwt_secret: Some("test-secret".into()), ..AuthConfig::default() };
        let auth = Authenticator::new(&cfg, HashMap::new()).unwrap();
        Fixture { hub: Hub::new(limits, history, None, None), auth }
    }

    /// A connected, upgraded client of `user` allowed `servers`.
    fn client(&mut self, key: usize, role: Role, servers: &[Uuid]) {
        let identity = Identity { user: USER, role, servers: servers.into(), exp: i64::MAX / 2 };
        self.hub.connect(key);
        self.hub.open_session(key, Session::new(identity, &Limits::default(), 60, Instant::now()));
    }

    fn subscribe(&mut self, key: usize, channels: &[&str], since: Option<(&str, u64, &str)>) {
        let names: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
        let since = since.map(|(c, seq, epoch)| vec![(c.to_string(), Since { seq, epoch: epoch.to_string() })]);
        self.hub.subscribe(key, &self.auth, &names, since.as_deref());
    }

    fn log(&mut self, server: Uuid, message: &str) -> usize {
        let body = json!({"type": "log_entry", "channel": logs(server),
            "data": {"server_id": server, "level": "INFO", "source": "server", "message": message}});
        self.hub.publish(&self.auth, Publish::from_api(body.to_string().as_bytes()).unwrap())
    }

    /// Everything queued for `key`, written out and parsed as JSON.
    fn read(&mut self, key: usize) -> Vec<Value> {
        let mut wire = Vec::new();
        self.hub.write_out(key, &mut wire).unwrap();
        decode(&wire).0
    }
}

fn codes(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["data"]["code"].as_str().map_or_else(|| m["type"].as_str().unwrap().to_string(), str::to_string))
        .collect()
}

#[test]
fn subscribe_applies_the_acl_and_answers_in_section_4_order() {
    let mut f = Fixture::new(256, 1000);
    f.client(1, Role::User, &[SERVER]);
    let other = logs(OTHER);
    f.subscribe(1, &[&logs(SERVER), &other, "nope", &other, &logs(SERVER)], None);
    let got = f.read(1);
    assert_eq!(codes(&got), ["FORBIDDEN", "INVALID_CHANNEL", "SUBSCRIBED"]);
    assert_eq!(got[0]["data"]["data"], json!([other]), "listed once");
    assert_eq!(got[2]["data"]["data"], json!([logs(SERVER)]));
    let subs: Vec<(String, usize)> = f.hub.subscriptions().map(|(c, n)| (c.to_string(), n)).collect();
    assert_eq!(subs, [(logs(SERVER), 1)]);

    f.hub.unsubscribe(1, &[logs(SERVER), other, "bad".into()]);
    assert_eq!(codes(&f.read(1)), ["INVALID_CHANNEL", "UNSUBSCRIBED"]);
    assert_eq!(f.hub.subscriptions().count(), 0);
    assert_eq!(f.hub.channels.len(), 0, "a channel without subscribers or messages is freed");
}

#[test]
fn publish_numbers_each_channel_and_shares_one_frame_with_every_subscriber() {
    let mut f = Fixture::new(256, 1000);
    for key in 0..3 {
        f.client(key, Role::Admin, &[]);
        f.subscribe(key, &[&logs(SERVER)], None);
        f.read(key);
    }
    assert_eq!(f.log(SERVER, "one"), 3);
    assert_eq!(f.log(SERVER, "two"), 3);
    assert_eq!(f.log(OTHER, "elsewhere"), 0, "no subscriber, still a seq");
    assert!((0..3).all(|k| f.hub.client(k).unwrap().out.is_empty()), "nothing queued per subscriber");
    let i = f.hub.channels.find(&Channel::parse(&logs(SERVER)).unwrap()).unwrap();
    let frame = Rc::clone(&f.hub.channels.get(i).unwrap().ring[0].frame);
    assert_eq!(Rc::strong_count(&frame), 2, "encoded once, held by the ring only");
    for key in 0..3 {
        let got = f.read(key);
        assert_eq!(got.iter().map(|m| m["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
        assert!(got.iter().all(|m| m["epoch"] == f.hub.epoch()));
        assert_eq!(got[1]["data"]["message"], "two");
    }
    assert_eq!(f.hub.counters.messages_in, 3);
    assert_eq!(f.hub.counters.messages_out, 6);
}

#[test]
fn overflow_drops_for_the_slow_client_only_and_reports_the_exact_range() {
    let mut f = Fixture::new(2, 1000);
    let channel = format!("server:{SERVER}:metrics");
    f.client(1, Role::Admin, &[]);
    f.client(2, Role::Admin, &[]);
    for key in [1, 2] {
        f.subscribe(key, &[&channel], None);
        f.read(key);
    }
    metrics_of(&mut f, SERVER, 1);
    metrics_of(&mut f, SERVER, 2);
    let mut fast = f.read(2);
    for p in 3..=5 {
        metrics_of(&mut f, SERVER, p);
        fast.extend(f.read(2));
    }
    let slow = f.read(1);
    assert_eq!(codes(&slow), ["metrics", "metrics", "MESSAGES_DROPPED"]);
    assert_eq!(slow[2]["data"]["data"], json!({"channel": channel, "dropped": 3, "from_seq": 3, "to_seq": 5}));
    assert_eq!(fast.iter().map(|m| m["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(f.hub.counters.messages_dropped, 3);
}

fn seqs_of(messages: &[Value]) -> Vec<u64> {
    messages.iter().filter_map(|m| m["seq"].as_u64()).collect()
}

#[test]
fn a_logs_subscriber_lags_as_far_as_the_ring_keeps_without_a_drop() {
    // client_queue 2 caps nothing on a logs channel: the ring (10) does.
    let mut f = Fixture::new(2, 10);
    f.client(1, Role::Admin, &[]);
    f.subscribe(1, &[&logs(SERVER)], None);
    f.read(1);
    for n in 0..10 {
        assert_eq!(f.log(SERVER, &n.to_string()), 1);
    }
    assert!(f.hub.client(1).unwrap().out.is_empty(), "no copy queued");
    let got = f.read(1);
    assert_eq!(codes(&got), vec!["log_entry"; 10]);
    assert_eq!(seqs_of(&got), (1..=10).collect::<Vec<_>>());
    assert_eq!(f.hub.counters.messages_dropped, 0);
}

#[test]
fn a_cursor_behind_an_eviction_gets_one_report_for_exactly_that_range_then_the_rest() {
    let mut f = Fixture::new(2, 5);
    f.client(1, Role::Admin, &[]);
    f.client(2, Role::Admin, &[]);
    for key in [1, 2] {
        f.subscribe(key, &[&logs(SERVER)], None);
        f.read(key);
    }
    f.log(SERVER, "1");
    assert_eq!(seqs_of(&f.read(1)), [1]);
    for n in 2..=9 {
        f.log(SERVER, &n.to_string());
    }
    // The ring keeps 5..=9: client 1 missed 2..=4, client 2 missed 1..=4.
    let both = [f.read(1), f.read(2)];
    for (from, got) in [(2, &both[0]), (1, &both[1])] {
        assert_eq!(codes(&got[..1]), ["MESSAGES_DROPPED"], "the report comes where the gap is");
        let dropped = 5 - from;
        let want = json!({"channel": logs(SERVER), "dropped": dropped, "from_seq": from, "to_seq": 4});
        assert_eq!(got[0]["data"]["data"], want);
        assert_eq!(seqs_of(&got[1..]), [5, 6, 7, 8, 9]);
    }
    f.log(SERVER, "more");
    for key in [1, 2] {
        assert_eq!(codes(&f.read(key)), ["log_entry"], "caught up: no second report");
    }
    assert_eq!(f.hub.counters.messages_dropped, 3 + 4);
}

#[test]
fn a_ring_with_subscribers_keeps_client_queue_lines_whatever_log_lines_says() {
    let mut f = Fixture::new(4, 0);
    f.client(1, Role::Admin, &[]);
    f.subscribe(1, &[&logs(SERVER)], None);
    f.read(1);
    for n in 0..6 {
        f.log(SERVER, &n.to_string());
    }
    let got = f.read(1);
    assert_eq!(got[0]["data"]["data"]["to_seq"], 2, "{got:?}");
    assert_eq!(seqs_of(&got[1..]), [3, 4, 5, 6]);
    f.hub.unsubscribe(1, &[logs(SERVER)]);
    assert_eq!(f.hub.history_size().0, 0, "without subscribers log_lines = 0 keeps nothing");
}

#[test]
fn the_byte_budget_evicts_what_subscribers_read_before_what_they_did_not() {
    let history = HistoryConfig { log_lines: 1000, max_bytes: 6000, ..HistoryConfig::default() };
    let limits = Limits { client_queue: 20, ..Limits::default() };
    let mut f = Fixture::with(&limits, &history);
    f.client(1, Role::Admin, &[]);
    f.subscribe(1, &[&logs(SERVER)], None);
    f.read(1);
    // OTHER's ring (no subscriber) is the largest: it goes first.
    for n in 0..40 {
        f.log(OTHER, &format!("{n} {}", "x".repeat(200)));
    }
    for n in 0..15 {
        f.log(SERVER, &format!("{n} {}", "y".repeat(200)));
    }
    let got = f.read(1);
    assert_eq!(seqs_of(&got), (1..=15).collect::<Vec<_>>(), "nothing unread was evicted: {:?}", codes(&got));
    assert!(f.hub.history_size().1 <= 6000 + 15 * 400);
}

#[test]
fn a_zero_byte_budget_loses_nothing_unread_and_keeps_little() {
    let history = HistoryConfig { max_bytes: 0, ..HistoryConfig::default() };
    let mut f = with_history(history);
    f.client(1, Role::Admin, &[]);
    f.subscribe(1, &[&logs(SERVER)], None);
    f.read(1);
    let mut got = Vec::new();
    for n in 0..50 {
        f.log(SERVER, &n.to_string());
        if n % 10 == 9 {
            got.extend(f.read(1));
        }
    }
    assert_eq!(seqs_of(&got), (1..=50).collect::<Vec<_>>(), "{:?}", codes(&got));
    f.log(SERVER, "last");
    f.read(1);
    f.log(OTHER, "no subscriber");
    let (_, bytes) = f.hub.history_size();
    assert!(bytes <= channels::SHED_STEP + 1000, "what was read goes, a step at a time: {bytes}");
}

#[test]
fn queued_items_and_ring_lines_go_out_in_publish_order() {
    let mut f = Fixture::new(256, 100);
    f.client(1, Role::Admin, &[]);
    let metrics = format!("server:{SERVER}:metrics");
    f.subscribe(1, &[&logs(SERVER), &logs(OTHER), &metrics], None);
    f.read(1);
    f.log(SERVER, "a");
    metrics_of(&mut f, SERVER, 1);
    f.log(OTHER, "b");
    f.log(SERVER, "c");
    f.hub.reply(1, br#"{"type":"pong"}"#);
    f.log(OTHER, "d");
    let got = f.read(1);
    let order = lines_and_codes(&got);
    assert_eq!(order, ["a", "metrics", "b", "c", "pong", "d"]);
}

/// Each log line's message, and the code or type of anything else.
fn lines_and_codes(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| match m["type"].as_str() {
            Some("log_entry") => m["data"]["message"].as_str().unwrap().to_string(),
            _ => codes(std::slice::from_ref(m))[0].clone(),
        })
        .collect()
}

#[test]
fn a_half_written_ring_line_is_finished_first_even_after_its_eviction() {
    let mut f = Fixture::new(1, 2);
    f.client(1, Role::Admin, &[]);
    f.subscribe(1, &[&logs(SERVER)], None);
    let mut sock = Trickle { got: Vec::new(), room: 0 };
    f.hub.write_out(1, &mut Vec::new()).unwrap();
    f.log(SERVER, "first line");
    sock.room = 20;
    let w = f.hub.write_out(1, &mut sock).unwrap();
    assert!(w.waiting && w.written == 20);
    // Evicted from the ring meanwhile, and a reply queued after it.
    for m in ["2", "3", "4"] {
        f.log(SERVER, m);
    }
    f.hub.reply(1, br#"{"type":"pong"}"#);
    sock.room = usize::MAX;
    let w = f.hub.write_out(1, &mut sock).unwrap();
    assert!(!w.waiting);
    let mut rest = Vec::new();
    std::mem::swap(&mut rest, &mut sock.got);
    f.hub.queue(1, Rc::from(rest));
    let got = f.read(1);
    let order = lines_and_codes(&got);
    assert_eq!(order, ["first line", "MESSAGES_DROPPED", "3", "4", "pong"]);
    assert_eq!(got[1]["data"]["data"]["from_seq"], 2);
}

#[test]
fn a_graceful_close_comes_after_the_lines_not_read_yet() {
    let mut f = Fixture::new(256, 100);
    f.client(1, Role::Admin, &[]);
    f.subscribe(1, &[&logs(SERVER)], None);
    f.read(1);
    f.log(SERVER, "a");
    f.log(SERVER, "b");
    f.hub.queue_close(1, ws::close(1001, "going away"));
    f.hub.end_session(1);
    let mut wire = Vec::new();
    f.hub.write_out(1, &mut wire).unwrap();
    let close = ws::close(1001, "going away");
    assert!(wire.ends_with(&close), "the Close frame comes last");
    let text = String::from_utf8_lossy(&wire);
    assert!(text.find("\"a\"").unwrap() < text.find("\"b\"").unwrap());
}

#[test]
fn a_graceful_close_carries_its_budget_of_unread_lines_and_reports_the_rest_once() {
    let mut f = Fixture::new(256, 5000);
    f.client(1, Role::Admin, &[]);
    f.subscribe(1, &[&logs(SERVER)], None);
    f.read(1);
    let pad = "x".repeat(1000);
    for n in 1..=3000 {
        f.log(SERVER, &format!("{n} {pad}"));
    }
    let dropped = f.hub.counters.messages_dropped;
    f.hub.queue_close(1, ws::close(1001, "going away"));
    f.hub.end_session(1);
    let mut wire = Vec::new();
    f.hub.write_out(1, &mut wire).unwrap();
    assert!(wire.len() <= super::lag::CLOSE_CARRY_BYTES + 4096, "{} bytes carried", wire.len());
    let (got, closed) = decode(&wire);
    assert!(closed, "the Close frame comes last");
    // Lines 1..=k in order, then one report for k+1..=3000.
    let (report, lines) = got.split_last().unwrap();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["seq"], i as u64 + 1);
    }
    let k = lines.len() as u64;
    assert!(k > 500, "most of the budget is used: {k} lines");
    assert_eq!(report["data"]["code"], "MESSAGES_DROPPED");
    assert_eq!(
        (report["data"]["data"]["from_seq"].as_u64(), report["data"]["data"]["to_seq"].as_u64()),
        (Some(k + 1), Some(3000))
    );
    assert_eq!(f.hub.counters.messages_dropped - dropped, 3000 - k);
}

#[test]
fn since_replays_from_the_ring_without_a_seam_or_says_it_cannot() {
    let mut f = Fixture::new(256, 3);
    for m in ["1", "2", "3", "4", "5"] {
        f.log(SERVER, m);
    }
    let epoch = f.hub.epoch().to_string();
    let channel = logs(SERVER);
    f.client(1, Role::Admin, &[]);
    f.subscribe(1, &[&channel], Some((&channel, 3, &epoch)));
    f.log(SERVER, "6");
    let got = f.read(1);
    assert_eq!(got[0]["data"]["recovered"], json!({ &channel: true }));
    let seqs: Vec<u64> = got[1..].iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [4, 5, 6], "replay, then live, no gap, no double");

    for (seq, epoch) in [(1, epoch.as_str()), (9, epoch.as_str()), (4, "other")] {
        f.client(2, Role::Admin, &[]);
        f.subscribe(2, &[&channel], Some((&channel, seq, epoch)));
        let got = f.read(2);
        assert_eq!(got.len(), 1, "nothing partial is replayed");
        assert_eq!(got[0]["data"]["recovered"], json!({ &channel: false }), "since {seq} in {epoch}");
        f.hub.disconnect(2);
    }
}

#[test]
fn history_pages_backwards_and_knows_when_it_is_complete() {
    let mut f = Fixture::new(256, 4);
    f.client(1, Role::User, &[SERVER]);
    for m in ["1", "2", "3"] {
        f.log(SERVER, m);
    }
    let channel = logs(SERVER);
    f.hub.history(1, &f.auth, &channel, 2, None);
    f.hub.history(1, &f.auth, &channel, 2, Some(2));
    let got = f.read(1);
    let seqs = |m: &Value| {
        m["data"]["messages"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>()
    };
    assert_eq!((seqs(&got[0]), &got[0]["data"]["complete"]), (vec![2, 3], &json!(false)));
    assert_eq!((seqs(&got[1]), &got[1]["data"]["complete"]), (vec![1], &json!(true)));

    for m in ["4", "5"] {
        f.log(SERVER, m);
    }
    f.hub.history(1, &f.auth, &channel, 100, None);
    f.hub.history(1, &f.auth, &logs(OTHER), 10, None);
    f.hub.history(1, &f.auth, &format!("server:{SERVER}:status"), 10, None);
    let got = f.read(1);
    assert_eq!((seqs(&got[0]), &got[0]["data"]["complete"]), (vec![2, 3, 4, 5], &json!(false)), "1 was evicted");
    assert_eq!(codes(&got[1..]), ["FORBIDDEN", "INVALID_MESSAGE"]);
}

#[test]
fn a_closed_client_leaves_every_channel_and_moves_no_one_elses_position() {
    let mut f = Fixture::new(256, 10);
    for key in 0..3 {
        f.client(key, Role::Admin, &[]);
        f.subscribe(key, &[&logs(SERVER), &logs(OTHER)], None);
        f.read(key);
    }
    assert!(f.hub.disconnect(0).is_some());
    f.hub.unsubscribe(2, &[logs(OTHER)]);
    f.read(2);
    assert_eq!(f.log(SERVER, "x"), 2);
    assert_eq!(f.log(OTHER, "y"), 1);
    assert_eq!(codes(&f.read(1)), ["log_entry", "log_entry"]);
    assert_eq!(f.hub.sessions(), 2);
    f.hub.end_session(1);
    f.hub.end_session(2);
    assert_eq!(f.hub.subscriptions().count(), 0);
    assert_eq!(f.hub.channels.len(), 2, "channels with a seq stay for their history");
}

#[test]
fn forgotten_idle_channels_free_their_memory_but_never_reuse_a_seq() {
    let limits = Limits { max_idle_channels: 4, ..Limits::default() };
    let mut f = Fixture::with(&limits, &HistoryConfig::default());
    let servers: Vec<Uuid> = (0..10u128).map(|i| Uuid::from_u128(0xaa00 + i)).collect();
    for &server in &servers {
        f.log(server, "one");
        f.log(server, "two");
    }
    f.hub.forget_idle_channels();
    assert!(f.hub.channels_kept() <= 4, "{} kept", f.hub.channels_kept());
    f.client(1, Role::Admin, &[]);
    f.hub.history(1, &f.auth, &logs(servers[0]), 10, None);
    f.subscribe(1, &[&logs(servers[0])], None);
    f.log(servers[0], "three");
    let got = f.read(1);
    assert_eq!(got[0]["data"]["complete"], false, "a forgotten channel's history is not complete");
    assert!(got[2]["seq"].as_u64().unwrap() > 2, "no seq issued twice: {}", got[2]);
}

fn with_history(history: HistoryConfig) -> Fixture {
    Fixture::with(&Limits::default(), &history)
}

fn metrics_of(f: &mut Fixture, server: Uuid, players: i32) -> usize {
    let body = json!({"type": "metrics", "channel": format!("server:{server}:metrics"),
        "data": {"server_id": server, "cpu_percent": 1.5, "memory_used": 1, "memory_total": 2,
            "memory_percent": 50.0, "players_online": players, "max_players": 20, "uptime_seconds": 3}});
    f.hub.publish(&f.auth, Publish::from_api(body.to_string().as_bytes()).unwrap())
}

fn page_players(m: &Value) -> Vec<i64> {
    m["data"]["messages"].as_array().unwrap().iter().map(|e| e["data"]["players_online"].as_i64().unwrap()).collect()
}

#[test]
fn metrics_rings_keep_metrics_points_and_page_like_logs() {
    let mut f = with_history(HistoryConfig { metrics_points: 3, ..HistoryConfig::default() });
    let channel = format!("server:{SERVER}:metrics");
    f.client(1, Role::User, &[SERVER]);
    for p in 1..=2 {
        metrics_of(&mut f, SERVER, p);
    }
    f.hub.history(1, &f.auth, &channel, 10, None);
    let got = f.read(1);
    assert_eq!((page_players(&got[0]), &got[0]["data"]["complete"]), (vec![1, 2], &json!(true)));
    assert_eq!(got[0]["channel"], channel);

    for p in 3..=5 {
        metrics_of(&mut f, SERVER, p);
    }
    f.hub.history(1, &f.auth, &channel, 2, None);
    f.hub.history(1, &f.auth, &channel, 10, Some(4));
    f.hub.history(1, &f.auth, &format!("server:{OTHER}:metrics"), 10, None);
    f.hub.history(1, &f.auth, &format!("server:{SERVER}:status"), 10, None);
    let got = f.read(1);
    assert_eq!((page_players(&got[0]), &got[0]["data"]["complete"]), (vec![4, 5], &json!(false)));
    assert_eq!((page_players(&got[1]), &got[1]["data"]["complete"]), (vec![3], &json!(false)), "1 and 2 evicted");
    assert_eq!(codes(&got[2..]), ["FORBIDDEN", "INVALID_MESSAGE"]);
    assert_eq!(got[3]["data"]["message"], "Only logs and metrics channels have history");

    f.subscribe(1, &[&channel], None);
    let got = f.read(1);
    assert_eq!(codes(&got), ["SUBSCRIBED", "metrics"], "the latest value still comes at once");
    assert_eq!(got[1]["data"]["players_online"], 5);
    assert_eq!(f.hub.history_size().0, 3);
}

#[test]
fn metrics_rings_share_the_byte_budget_and_zero_points_keeps_only_the_latest() {
    let mut f = with_history(HistoryConfig { metrics_points: 1000, max_bytes: 4096, ..HistoryConfig::default() });
    for p in 0..200 {
        metrics_of(&mut f, SERVER, p);
        f.log(OTHER, "a line");
    }
    let (entries, bytes) = f.hub.history_size();
    assert!(bytes <= 4096 && entries > 0, "{entries} entries, {bytes} bytes");
    f.client(1, Role::Admin, &[]);
    f.hub.history(1, &f.auth, &format!("server:{SERVER}:metrics"), 1000, None);
    let got = f.read(1);
    let kept = page_players(&got[0]);
    assert_eq!(kept.last(), Some(&199), "the newest stay");
    assert!(kept.len() < 200 && got[0]["data"]["complete"] == false);

    let mut f = with_history(HistoryConfig { metrics_points: 0, ..HistoryConfig::default() });
    metrics_of(&mut f, SERVER, 7);
    assert_eq!(f.hub.history_size(), (0, 0));
    f.client(1, Role::Admin, &[]);
    f.hub.history(1, &f.auth, &format!("server:{SERVER}:metrics"), 10, None);
    f.subscribe(1, &[&format!("server:{SERVER}:metrics")], None);
    let got = f.read(1);
    assert_eq!((page_players(&got[0]), &got[0]["data"]["complete"]), (vec![], &json!(false)));
    assert_eq!(codes(&got[1..]), ["SUBSCRIBED", "metrics"]);
}

#[test]
fn the_latest_status_message_names_the_server() {
    let mut f = Fixture::new(256, 10);
    for (name, new) in [("Lobby", "starting"), ("Lobby 2", "running")] {
        let body = json!({"type": "server_status", "channel": format!("server:{SERVER}:status"),
            "data": {"server_id": SERVER, "server_name": name, "old_status": "unknown", "new_status": new}});
        f.hub.publish(&f.auth, Publish::from_api(body.to_string().as_bytes()).unwrap());
    }
    metrics_of(&mut f, OTHER, 1);
    let servers: Vec<_> = f.hub.servers().map(|(id, name, status)| (id, name.to_string(), status)).collect();
    assert_eq!(servers, [(SERVER, "Lobby 2".to_string(), crate::protocol::Status::Running)]);
}

#[test]
fn a_message_is_compressed_once_per_window_and_every_such_subscriber_gets_that_frame() {
    let mut f = Fixture::new(16, 10);
    for (key, deflate) in [(1, None), (2, Some(15)), (3, Some(15)), (4, Some(10))] {
        f.client(key, Role::Admin, &[]);
        f.hub.session_mut(key).unwrap().deflate = deflate;
        f.subscribe(key, &[&logs(SERVER)], None);
        f.read(key);
    }
    assert_eq!(f.log(SERVER, &"Can't keep up! Is the server overloaded? ".repeat(10)), 4);
    // Logs subscribers read the ring's frame (lag cursor): each gets the
    // variant of its window, made once and kept with the ring's entry.
    let wire = |f: &mut Fixture, key: usize| {
        let mut out = Vec::new();
        f.hub.write_out(key, &mut out).unwrap();
        out
    };
    let (plain, a, b, small) = (wire(&mut f, 1), wire(&mut f, 2), wire(&mut f, 3), wire(&mut f, 4));
    let ring = f.hub.channels.ring(&Channel::logs(SERVER)).last().unwrap();
    let shared = ring.frame.variant(Some(15), 256);
    assert!(Rc::ptr_eq(shared, ring.frame.variant(Some(15), 256)), "compressed once per window size");
    assert_eq!((&a, &b), (&shared.to_vec(), &shared.to_vec()), "both 15-bit clients got that frame");
    let ten = ring.frame.variant(Some(10), 256);
    assert_eq!(small, ten.to_vec());
    assert!(!Rc::ptr_eq(ten, shared), "another window size, another variant");
    assert_eq!(plain, ring.frame.plain().to_vec());
    assert_eq!((plain[0], a[0], small[0]), (0x81, 0xC1, 0xC1));
    assert_eq!(crate::deflate::inflate(ws::payload(&a), 1 << 20).unwrap(), ws::payload(&plain));
    // Under the threshold (a reload raised it): plain to everybody.
    f.hub.set_limits(&Limits { client_queue: 16, compress_min_bytes: 1000, ..Limits::default() });
    f.log(SERVER, "Done");
    assert_eq!(wire(&mut f, 1), wire(&mut f, 2));
}

// ---- the lag cursor under partial writes ----

/// The text messages on the wire as a client reads them (compressed ones
/// inflated), and whether it ends with a Close frame.
fn decode(wire: &[u8]) -> (Vec<Value>, bool) {
    let (mut out, mut closed) = (Vec::new(), false);
    let mut rest = wire;
    while !rest.is_empty() {
        assert!(!closed, "nothing after the Close frame");
        let (len, header) = match rest[1] & 0x7f {
            126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 => (u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        let payload = &rest[header..header + len];
        match rest[0] & 0x0f {
            1 if rest[0] & 0x40 != 0 => {
                out.push(serde_json::from_slice(&crate::deflate::inflate(payload, 1 << 20).unwrap()).unwrap())
            }
            1 => out.push(serde_json::from_slice(payload).unwrap()),
            8 => closed = true,
            _ => {}
        }
        rest = &rest[header + len..];
    }
    (out, closed)
}

/// xorshift64: a fixed sequence per seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Checks what one client read: every message of each channel delivered
/// once and in order or covered by exactly one `MESSAGES_DROPPED` placed
/// where the gap is, up to the channel's last seq; everything in publish
/// order (each message carries its publish number `g`). Returns the
/// messages reported dropped.
fn check_stream(got: &[Value], last: &HashMap<String, u64>) -> u64 {
    let mut next: HashMap<String, u64> = HashMap::new();
    let (mut g_last, mut dropped) = (0, 0);
    for m in got {
        let g = match m["type"].as_str().unwrap() {
            "log_entry" => m["data"]["message"].as_str().unwrap().split(' ').next().unwrap().parse::<u64>().unwrap(),
            "metrics" => m["data"]["players_online"].as_u64().unwrap(),
            "pong" => m["g"].as_u64().unwrap(),
            "error" => {
                let d = &m["data"]["data"];
                let channel = d["channel"].as_str().unwrap().to_string();
                let (from, to) = (d["from_seq"].as_u64().unwrap(), d["to_seq"].as_u64().unwrap());
                let want = next.entry(channel.clone()).or_insert(1);
                assert_eq!(from, *want, "a report where the gap is on {channel}: {m}");
                assert_eq!(d["dropped"].as_u64().unwrap(), to - from + 1, "{m}");
                *want = to + 1;
                dropped += to - from + 1;
                continue;
            }
            _ => continue,
        };
        assert!(g > g_last, "publish order: {g} after {g_last}");
        g_last = g;
        if let Some(seq) = m["seq"].as_u64() {
            let want = next.entry(m["channel"].as_str().unwrap().to_string()).or_insert(1);
            assert_eq!(seq, *want, "no gap, no duplicate: {m}");
            *want += 1;
        }
    }
    for (channel, &last) in last {
        assert_eq!(
            next.get(channel).copied().unwrap_or(1),
            last + 1,
            "{channel}: everything up to {last} accounted for"
        );
    }
    dropped
}

/// Random publishes, replies and partial writes to three clients (plain,
/// and two compression windows) on `servers` logs channels and a metrics
/// channel, with rings small enough that lines are evicted under readers
/// (by count, and by the byte budget when `max_bytes` is small); the last
/// client is closed gracefully, the others drained. Returns the messages
/// reported dropped.
fn lag_under_partial_writes(seed: u64, max_bytes: usize, servers: u128) -> u64 {
    let limits = Limits { client_queue: 3, compress_min_bytes: 64, ..Limits::default() };
    let history = HistoryConfig { log_lines: 4, max_bytes, ..HistoryConfig::default() };
    let mut f = Fixture::with(&limits, &history);
    let servers: Vec<Uuid> = (0..servers).map(|n| Uuid::from_u128(SERVER.as_u128() + n)).collect();
    let metrics = format!("server:{SERVER}:metrics");
    let mut wires: Vec<Trickle> = Vec::new();
    for (key, deflate) in [(0, None), (1, Some(15)), (2, Some(9))] {
        f.client(key, Role::Admin, &[]);
        f.hub.session_mut(key).unwrap().deflate = deflate;
        let mut channels: Vec<String> = servers.iter().map(|&s| logs(s)).collect();
        // (The closed client leaves no metrics drop pending: a session's
        // pending reports end with it.)
        if key != 2 {
            channels.push(metrics.clone());
        }
        let channels: Vec<&str> = channels.iter().map(String::as_str).collect();
        f.subscribe(key, &channels, None);
        let mut sock = Trickle { got: Vec::new(), room: usize::MAX };
        f.hub.write_out(key, &mut sock).unwrap();
        sock.got.clear();
        wires.push(sock);
    }
    let mut rng = Rng(seed);
    let mut last: HashMap<String, u64> = HashMap::new();
    for g in 1..=600u64 {
        let pad = "Can't keep up! ".repeat(rng.below(12) as usize);
        match rng.below(10) {
            0..=4 => {
                let server = servers[rng.below(servers.len() as u64) as usize];
                f.log(server, &format!("{g} {pad}"));
                *last.entry(logs(server)).or_default() += 1;
            }
            5 => {
                metrics_of(&mut f, SERVER, g as i32);
                *last.entry(metrics.clone()).or_default() += 1;
            }
            6 => f.hub.reply(rng.below(3) as usize, format!(r#"{{"type":"pong","g":{g}}}"#).as_bytes()),
            _ => {
                let key = rng.below(3) as usize;
                let sock = &mut wires[key];
                sock.room = match rng.below(4) {
                    0 => 0,
                    1 => 1 + rng.below(8) as usize,
                    2 => rng.below(400) as usize,
                    _ => rng.below(4000) as usize,
                };
                let before = sock.got.len();
                let w = f.hub.write_out(key, sock).unwrap();
                // Paid off at plain size: the bytes written, plus what
                // compression saved for a compressing client.
                let sent = sock.got.len() - before;
                if key == 0 {
                    assert_eq!(w.written, sent);
                } else {
                    assert!(w.written >= sent, "client {key}: paid {} for {sent} bytes", w.written);
                }
            }
        }
    }
    f.hub.queue_close(2, ws::close(1001, "going away"));
    f.hub.end_session(2);
    let mut reported = 0;
    for (key, sock) in wires.iter_mut().enumerate() {
        sock.room = usize::MAX;
        let w = f.hub.write_out(key, sock).unwrap();
        assert!(!w.waiting);
        let (got, closed) = decode(&sock.got);
        assert_eq!(closed, key == 2, "client {key}");
        let mut last = last.clone();
        if key == 2 {
            last.remove(&metrics);
        }
        reported += check_stream(&got, &last);
    }
    assert_eq!(f.hub.counters.messages_dropped, reported, "the stats count what was reported");
    reported
}

/// [`lag_under_partial_writes`] for 40 seeds; some lines were evicted.
fn lag_under_partial_writes_seeds(max_bytes: usize, servers: u128) {
    let seeds = (1..=40u64).map(|seed| seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let reported: u64 = seeds.map(|seed| lag_under_partial_writes(seed, max_bytes, servers)).sum();
    assert!(reported > 0, "lines were evicted under readers");
}

#[test]
fn partial_writes_evictions_and_a_graceful_close_lose_no_line_silently() {
    lag_under_partial_writes_seeds(usize::MAX / 2, 2);
}

#[test]
fn the_byte_budget_shrinking_rings_under_partial_writes_loses_no_line_silently() {
    lag_under_partial_writes_seeds(3000, 2);
}

#[test]
fn many_logs_subscriptions_of_one_client_interleave_in_publish_order() {
    lag_under_partial_writes_seeds(usize::MAX / 2, 12);
}

#[test]
fn what_a_compressing_client_owes_its_writes_pay_off() {
    // The write timeout's window owes what waits when it opens (unread
    // lines at their plain size, nothing compressed ahead of its write);
    // a client with permessage-deflate pays a line off at that size when
    // its compressed frame goes out.
    let mut f = Fixture::new(256, 1000);
    for (key, deflate) in [(1, None), (2, Some(15))] {
        f.client(key, Role::Admin, &[]);
        f.hub.session_mut(key).unwrap().deflate = deflate;
        f.subscribe(key, &[&logs(SERVER)], None);
        f.read(key);
    }
    for n in 0..50 {
        f.log(SERVER, &format!("{n} {}", "Can't keep up! Is the server overloaded? ".repeat(10)));
    }
    for key in [1, 2] {
        // Half a frame went out, the rest is queued; the ring holds the rest.
        let mut sock = Trickle { got: Vec::new(), room: 30 };
        f.hub.write_out(key, &mut sock).unwrap();
        let owed = f.hub.pending_bytes(key);
        sock.room = usize::MAX;
        let w = f.hub.write_out(key, &mut sock).unwrap();
        assert!(!w.waiting);
        assert_eq!(owed, w.written, "client {key}: owed what its writes then paid");
    }
}

/// Writes everything waiting for `key` to `sock`, at most `room` bytes
/// per write.
fn drain_by(f: &mut Fixture, key: usize, sock: &mut Trickle, room: usize) {
    loop {
        sock.room = room;
        if !f.hub.write_out(key, sock).unwrap().waiting {
            return;
        }
    }
}

#[test]
fn a_half_written_line_is_finished_after_an_unsubscribe_and_since_resumes_right_after_it() {
    let mut f = Fixture::new(256, 100);
    f.client(1, Role::Admin, &[]);
    f.hub.session_mut(1).unwrap().deflate = Some(15);
    let channel = logs(SERVER);
    f.subscribe(1, &[&channel], None);
    let mut sock = Trickle { got: Vec::new(), room: usize::MAX };
    f.hub.write_out(1, &mut sock).unwrap();
    sock.got.clear();
    for n in 1..=6 {
        f.log(SERVER, &format!("{n} {}", "Can't keep up! Is the server overloaded? ".repeat(20)));
    }
    sock.room = 30;
    f.hub.write_out(1, &mut sock).unwrap();
    f.hub.unsubscribe(1, std::slice::from_ref(&channel));
    f.log(SERVER, "7");
    drain_by(&mut f, 1, &mut sock, usize::MAX);
    let (got, _) = decode(&sock.got);
    // Unsubscribing drops the lines not read yet (5.6), not the one half
    // written: it is finished before the answer.
    assert_eq!(lines_and_codes(&got)[1], "UNSUBSCRIBED");
    assert_eq!(seqs_of(&got), [1]);
    let epoch = f.hub.epoch().to_string();
    f.subscribe(1, &[&channel], Some((&channel, 1, &epoch)));
    f.log(SERVER, "8");
    drain_by(&mut f, 1, &mut sock, 7);
    let (got, _) = decode(&sock.got);
    assert_eq!(got[2]["data"]["recovered"], json!({ &channel: true }));
    assert_eq!(seqs_of(&got), [1, 2, 3, 4, 5, 6, 7, 8], "no gap, no double");
    assert_eq!(f.hub.counters.messages_dropped, 0);
}

#[test]
fn a_half_written_drop_report_is_finished_after_its_channel_is_left_and_forgotten() {
    let limits = Limits { client_queue: 2, max_idle_channels: 1, ..Limits::default() };
    let history = HistoryConfig { log_lines: 2, ..HistoryConfig::default() };
    let mut f = Fixture::with(&limits, &history);
    f.client(1, Role::Admin, &[]);
    let channel = logs(SERVER);
    f.subscribe(1, &[&channel], None);
    let mut sock = Trickle { got: Vec::new(), room: usize::MAX };
    f.hub.write_out(1, &mut sock).unwrap();
    sock.got.clear();
    for n in 1..=5 {
        f.log(SERVER, &n.to_string());
    }
    // 1..=3 were evicted: the report for them goes out half.
    sock.room = 40;
    f.hub.write_out(1, &mut sock).unwrap();
    assert_eq!(f.hub.counters.messages_dropped, 3, "counted once its first byte is out");
    f.hub.unsubscribe(1, std::slice::from_ref(&channel));
    for server in [OTHER, Uuid::from_u128(7)] {
        f.log(server, "elsewhere");
    }
    f.hub.forget_idle_channels();
    assert!(f.hub.channels.find(&Channel::logs(SERVER)).is_none(), "forgotten");
    f.subscribe(1, &[&channel], None);
    f.log(SERVER, "after");
    drain_by(&mut f, 1, &mut sock, 3);
    let (got, _) = decode(&sock.got);
    assert_eq!(lines_and_codes(&got), ["MESSAGES_DROPPED", "UNSUBSCRIBED", "SUBSCRIBED", "after"]);
    assert_eq!(got[0]["data"]["data"], json!({"channel": channel, "dropped": 3, "from_seq": 1, "to_seq": 3}));
    assert!(got[3]["seq"].as_u64().unwrap() > 5, "no seq issued twice");
    assert_eq!(f.hub.counters.messages_dropped, 3);
}
