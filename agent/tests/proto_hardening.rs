//! RUSTSEC-2024-0437 (stack overflow in `protobuf` on deeply nested unknown
//! fields): crafted requests, sent as raw bytes to every method of a real
//! `aymc-agent`, are answered or refused, and the agent keeps serving.
//!
//! The requests are encoded by hand, not with `aymc_proto`'s types, so the
//! test does not depend on the `protobuf` release the agent decodes with.

use std::sync::Arc;

use aymc_proto::agent::PingRequest;
use futures::executor::block_on;
use futures::StreamExt;
use grpcio::{ChannelBuilder, Client, Environment, MethodType, RpcStatusCode};

use crate::support::*;
use aymc_proto::raw::*;

/// Field 1 as a string: `server_id` of `ServerRequest` / `StreamLogsRequest`.
fn server_id_field() -> Vec<u8> {
    let mut out = vec![tag(1, 2)];
    varint(SERVER_ID.len() as u64, &mut out);
    out.extend_from_slice(SERVER_ID.as_bytes());
    out
}

/// The crafted bodies: (what, bytes after a valid prefix, whether a correct
/// decoder may accept it). Nested length-delimited unknown fields are valid
/// protobuf (kept as opaque bytes); 500,000 nested groups exceed any sane
/// recursion limit, and unclosed groups are truncated input.
fn payloads() -> Vec<(&'static str, Vec<u8>, bool)> {
    vec![
        ("nested length-delimited unknown fields", nested_lengths(LEN_DEPTH), true),
        ("nested groups", nested_groups(GROUP_DEPTH), false),
        ("unclosed nested groups", open_groups(GROUP_DEPTH), false),
    ]
}

fn raw_client(agent: &Agent) -> Client {
    let env = Arc::new(Environment::new(1));
    let channel = ChannelBuilder::new(env).max_send_message_len(16 << 20).connect(&format!("127.0.0.1:{}", agent.port));
    Client::new(channel)
}

fn assert_serving(agent: &Agent, after: &str) {
    let pong = agent.client().ping_opt(&PingRequest::new(), opt());
    assert!(
        pong.is_ok(),
        "agent stopped answering Ping after {after}: {pong:?}; stderr: {:?}",
        agent.stderr.lock().unwrap()
    );
}

/// A refusal must be the agent's own answer (it decoded and said no), not a
/// dropped connection.
fn assert_refused_by_the_agent(e: &grpcio::Error, what: &str, agent: &Agent) {
    match e {
        grpcio::Error::RpcFailure(s) if s.code() != RpcStatusCode::UNAVAILABLE => {}
        _ => panic!("{what}: not an answer of the agent: {e}; stderr: {:?}", agent.stderr.lock().unwrap()),
    }
}

#[test]
fn crafted_nested_unknown_fields_in_requests_do_not_crash_the_agent() {
    let mc = Mc::new("nested");
    mc.append(&numbered(0, 2, 0).0);
    let agent = Agent::start(mc.write_config("", ""));
    let client = raw_client(&agent);
    let unary = [
        (method(MethodType::Unary, "/aymc.agent.v1.AgentService/Ping"), false),
        (method(MethodType::Unary, "/aymc.agent.v1.AgentService/ListServers"), false),
        (method(MethodType::Unary, "/aymc.agent.v1.AgentService/GetStatus"), true),
        (method(MethodType::Unary, "/aymc.agent.v1.AgentService/GetMetrics"), true),
    ];
    let streaming = [
        (method(MethodType::ServerStreaming, "/aymc.agent.v1.AgentService/StreamLogs"), "line 0"),
        (method(MethodType::ServerStreaming, "/aymc.agent.v1.AgentService/WatchStatus"), SERVER_ID),
    ];
    for (what, tail, acceptable) in payloads() {
        for (m, with_id) in &unary {
            let mut body = if *with_id { server_id_field() } else { Vec::new() };
            body.extend_from_slice(&tail);
            let label = format!("{} with {what} ({} bytes)", m.name, body.len());
            match client.unary_call(m, &body, opt()) {
                Ok(resp) => {
                    assert!(acceptable, "{label}: accepted");
                    if *with_id {
                        let text = String::from_utf8_lossy(&resp);
                        assert!(text.contains(SERVER_ID), "{label}: the answer names the server: {resp:?}");
                    }
                }
                Err(e) => {
                    assert!(!acceptable, "{label}: refused: {e}");
                    assert_refused_by_the_agent(&e, &label, &agent);
                }
            }
            assert_serving(&agent, &label);
        }
        for (m, expect) in &streaming {
            let mut body = server_id_field();
            body.extend_from_slice(&tail);
            let label = format!("{} with {what} ({} bytes)", m.name, body.len());
            let mut stream = client.server_streaming(m, &body, opt()).unwrap();
            match block_on(stream.next()) {
                Some(Ok(item)) => {
                    assert!(acceptable, "{label}: accepted");
                    let text = String::from_utf8_lossy(&item);
                    assert!(text.contains(expect), "{label}: first item holds {expect:?}: {text:?}");
                }
                Some(Err(e)) => {
                    assert!(!acceptable, "{label}: refused: {e}");
                    assert_refused_by_the_agent(&e, &label, &agent);
                }
                None => panic!("{label}: the stream ended without an item or an error"),
            }
            drop(stream);
            assert_serving(&agent, &label);
        }
    }
    // Still the same process, and it still streams lines appended now.
    let tap = stream_logs(&agent.client(), 0);
    assert_eq!(tap.take(2).len(), 2);
    mc.append(&line("12:00:09", "INFO", "after the crafted requests"));
    assert_eq!(tap.take(1)[0].get_message(), "after the crafted requests");
    agent.stop();
}

#[test]
fn the_crafted_bodies_nest_as_deep_as_claimed() {
    // One level of `nested_lengths(3)`: tag, length, then the next level.
    assert_eq!(nested_lengths(3), [0x7a, 4, 0x7a, 2, 0x7a, 0]);
    assert_eq!(nested_groups(2), [0x7b, 0x7b, 0x7c, 0x7c]);
    let deep = nested_lengths(LEN_DEPTH);
    let (mut rest, mut levels) = (&deep[..], 0);
    while let [0x7a, ..] = rest {
        let mut len = 0u64;
        let mut i = 1;
        loop {
            len |= u64::from(rest[i] & 0x7f) << (7 * (i - 1));
            i += 1;
            if rest[i - 1] < 0x80 {
                break;
            }
        }
        assert_eq!(rest.len() - i, len as usize, "level {levels} spans the rest");
        rest = &rest[i..];
        levels += 1;
    }
    assert_eq!((levels, rest.len()), (LEN_DEPTH, 0));
}
