//! PROTOCOL.md section 10: on SIGTERM or SIGINT every client gets a Close
//! frame with code 1001 and the hub exits 0 within the grace period.

use std::time::{Duration, Instant};

use crate::support::*;

fn shuts_down_on(sig: i32) {
    let mut hub = Hub::start("");
    let mut a = hub.connect_admin();
    a.subscribe_ok(&[&logs(SERVER_A)]);
    let mut b = hub.connect(&user_token(&new_id(), &[]));
    b.ping_pong();
    let start = Instant::now();
    hub.signal(sig);
    for client in [&mut a, &mut b] {
        let (code, seen) = client.expect_close(Duration::from_secs(5));
        assert_eq!(code, 1001, "close code on shutdown; messages before it: {seen:?}");
    }
    let left = Duration::from_secs(5).saturating_sub(start.elapsed());
    let status = hub.wait_exit(left).unwrap_or_else(|| panic!("the hub did not exit within 5 s of signal {sig}"));
    assert_eq!(status.code(), Some(0), "exit status after signal {sig}: {status:?}");
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_0() {
    shuts_down_on(libc::SIGTERM);
}

#[test]
fn sigint_closes_clients_with_1001_and_exits_0() {
    shuts_down_on(libc::SIGINT);
}

#[test]
fn a_client_that_ignores_the_close_does_not_hold_the_hub_past_the_grace() {
    let mut hub = Hub::start("shutdown_grace_s = 1");
    // A raw client that reads the Close but never answers it.
    let mut ws = RawWs::connect(hub.addr, &admin_token());
    let start = Instant::now();
    hub.signal(libc::SIGTERM);
    assert_eq!(ws.expect_close(Duration::from_secs(3)), 1001);
    let status = hub
        .wait_exit(Duration::from_secs(4))
        .unwrap_or_else(|| panic!("the hub did not exit within shutdown_grace_s = 1 (+3 s)"));
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(start.elapsed() < Duration::from_secs(4), "exit took {:?}", start.elapsed());
}

#[test]
fn a_closing_client_gets_the_whole_shutdown_grace() {
    let mut hub = Hub::start("shutdown_grace_s = 4");
    // A raw client that reads the Close but never answers it: the hub waits
    // for it until the grace ends, not a fixed 2 s.
    let mut ws = RawWs::connect(hub.addr, &admin_token());
    let start = Instant::now();
    hub.signal(libc::SIGTERM);
    assert_eq!(ws.expect_close(Duration::from_secs(3)), 1001);
    let status = hub.wait_exit(Duration::from_secs(8)).expect("the hub exits after its grace");
    assert_eq!(status.code(), Some(0), "{status:?}");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(3500) && took < Duration::from_secs(7), "exit after {took:?}");
}
