//! Faults the hub must live through, bounded in time: running out of file
//! descriptors, a storm of 10,000 connections that all go away, and a
//! restart under connected clients that recover with `since`.

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::hardening::rss_kib;
use crate::support::*;

/// CPU seconds the hub used over `window`.
fn cpu_over(hub: &Hub, window: Duration) -> f64 {
    let pid = hub.pid().to_string();
    let before = aymc_loadgen::stats::cpu_seconds(&pid).unwrap();
    thread::sleep(window);
    aymc_loadgen::stats::cpu_seconds(&pid).unwrap() - before
}

#[test]
fn out_of_descriptors_accepts_pause_without_spinning_and_resume() {
    let mut config = HubConfig::new();
    config.nofile_limit = Some(64);
    let hub = config.start();
    // Far more connections than descriptors: the rest wait in the backlog.
    let mut held: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(hub.addr).unwrap()).collect();
    hub.wait_for_log(Duration::from_secs(5), |l| l.contains("pausing accepts")).expect("accept fails for lack of fds");
    let busy = cpu_over(&hub, Duration::from_secs(2));
    assert!(busy < 0.5, "the hub used {busy:.2} s of CPU in 2 s while out of descriptors");
    // Free descriptors: the waiting connections are accepted and served.
    held.truncate(10);
    let resp = http_get(hub.addr, "/healthz", None);
    assert_eq!(resp.status, 200);
}

#[test]
fn ten_thousand_connections_at_once_then_gone_leave_the_hub_as_it_was() {
    let _ = rlimit::increase_nofile_limit(20_000);
    let hub = Hub::start("max_connections = 12000");
    let mut warm = hub.connect_admin();
    warm.subscribe_ok(&[&logs(SERVER_A)]);
    drop(warm);
    thread::sleep(Duration::from_millis(500));
    let before = rss_kib(hub.pid());
    let conns: Vec<TcpStream> = (0..10_000)
        .map(|_| {
            let mut c = HttpConn::connect(hub.addr);
            c.send(upgrade_request(&ws_path(&admin_token()), &[]).as_bytes());
            c.stream
        })
        .collect();
    hub.wait_stats(Duration::from_secs(60), |s| s["clients"].as_u64() == Some(10_000));
    let peak = rss_kib(hub.pid());
    drop(conns);
    hub.wait_stats(Duration::from_secs(30), |s| s["connections"].as_u64() == Some(1));
    let mut after = rss_kib(hub.pid());
    let deadline = Instant::now() + Duration::from_secs(15);
    while after > before + before / 10 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        after = rss_kib(hub.pid());
    }
    assert!(after <= before + before / 10, "RSS {before} KiB before, {peak} KiB at 10,000, {after} KiB after");
    hub.connect_admin().ping_pong();
}

/// A client, the line numbers it got, and the seq and epoch of the last.
type Reader = (Client, Vec<u64>, Option<(u64, String)>);

#[test]
fn a_restart_under_100_clients_that_recover_with_since_loses_and_doubles_nothing() {
    let db = temp_dir();
    let config = || HubConfig::new().extra(&format!("[history]\ndb_path = \"{}\"\n", db.path().join("h.db").display()));
    let mut hub = config().start();
    let addr = Arc::new(std::sync::Mutex::new(hub.addr));
    let mut clients: Vec<Reader> = (0..100)
        .map(|_| {
            let mut c = hub.connect_admin();
            c.subscribe_ok(&[&logs(SERVER_A)]);
            (c, Vec::new(), None)
        })
        .collect();
    // A publisher numbering its lines, retrying each until a hub takes it.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (addr, stop, sent) = (Arc::clone(&addr), Arc::clone(&stop), Arc::clone(&sent));
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let target = *addr.lock().unwrap();
                let body = log_body(SERVER_A, &format!("line {n}"));
                let ok = std::panic::catch_unwind(|| publish(target, &service_token(), &body).status == 202);
                if ok.unwrap_or(false) {
                    n += 1;
                    sent.store(n, Ordering::SeqCst);
                } else {
                    thread::sleep(Duration::from_millis(20));
                }
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let read = |client: &mut Client, got: &mut Vec<u64>, last: &mut Option<(u64, String)>, until: Duration| {
        let deadline = Instant::now() + until;
        while Instant::now() < deadline {
            match client.next_event(Duration::from_millis(50)) {
                Event::Json(m) if m["type"] == "log_entry" => {
                    let n = m["data"]["message"].as_str().unwrap().trim_start_matches("line ").parse().unwrap();
                    got.push(n);
                    *last = Some((m["seq"].as_u64().unwrap(), m["epoch"].as_str().unwrap().to_string()));
                }
                Event::Timeout => {}
                Event::Json(_) => {}
                _ => return false,
            }
        }
        true
    };
    thread::sleep(Duration::from_millis(500));
    for (c, got, last) in clients.iter_mut() {
        read(c, got, last, Duration::from_millis(20));
    }
    hub.signal(libc::SIGTERM);
    for (c, got, last) in clients.iter_mut() {
        read(c, got, last, Duration::from_secs(10));
    }
    hub.wait_exit(Duration::from_secs(10)).expect("the hub stops on SIGTERM");
    hub = config().start();
    *addr.lock().unwrap() = hub.addr;
    let channel = logs(SERVER_A);
    for (c, _, last) in clients.iter_mut() {
        let (seq, epoch) = last.clone().expect("every client saw lines before the restart");
        *c = hub.connect_admin();
        c.send_json(&json!({"type": "subscribe", "data": {"channels": [&channel], "since": {&channel: {"seq": seq, "epoch": epoch}}}}));
    }
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    publisher.join().unwrap();
    let total = sent.load(Ordering::SeqCst);
    let mut recovered: HashMap<bool, usize> = HashMap::new();
    for (c, got, last) in clients.iter_mut() {
        let answer: Value = c.recv_json();
        *recovered.entry(answer["data"]["recovered"][&channel] == true).or_default() += 1;
        read(c, got, last, Duration::from_millis(200));
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < total as usize && Instant::now() < deadline {
            read(c, got, last, Duration::from_millis(100));
        }
        let expected: Vec<u64> = (0..total).collect();
        assert_eq!(got, &expected, "a client lost or doubled lines across the restart");
    }
    assert_eq!(recovered.get(&true), Some(&100), "{recovered:?}");
}
