//! Integration tests of `aymc-agent`: the real binary on real files, driven
//! through a grpcio `AgentServiceClient` on 127.0.0.1.

mod deploy;
mod hostile;
mod limits;
mod proto_hardening;
mod support;

use std::fs;
use std::process::Command;
use std::time::Duration;

use aymc_proto::agent::{ListServersRequest, PingRequest};
use support::*;

const GEN1: u64 = 1;

fn messages(entries: &[aymc_proto::agent::LogEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.get_message()).collect()
}

#[test]
fn lines_stream_from_the_start_then_live_with_byte_offsets() {
    let mc = Mc::new("live");
    let (text, pos) = numbered(0, 3, 0);
    mc.append(&text);
    let agent = Agent::start(mc.write_config("", ""));
    let client = agent.client();
    let tap = stream_logs(&client, 0);
    let got = tap.take(3);
    assert_eq!(messages(&got), ["line 0", "line 1", "line 2"]);
    let offsets: Vec<u64> = got.iter().map(|e| e.get_offset()).collect();
    assert_eq!(offsets, pos.iter().map(|p| offset(GEN1, *p)).collect::<Vec<_>>());
    for e in &got {
        assert_eq!(
            (e.get_level(), e.get_source(), e.get_exception(), e.get_truncated()),
            ("INFO", "server", "", false)
        );
        assert!(e.get_timestamp() > 0);
    }
    let start = mc.len();
    mc.append(&line("12:00:01", "WARN", "[Essentials] Can't keep up!"));
    mc.append("[12:00:02 ERROR]: [WorldGuard] boom\n");
    let live = tap.take(2);
    assert_eq!(live[0].get_offset(), offset(GEN1, start));
    assert_eq!(
        (live[0].get_level(), live[0].get_source(), live[0].get_message()),
        ("WARN", "Essentials", "Can't keep up!")
    );
    assert_eq!((live[1].get_level(), live[1].get_source(), live[1].get_message()), ("ERROR", "WorldGuard", "boom"));
    // A second subscriber from the middle gets only what follows.
    let from_middle = stream_logs(&client, offsets[1]).take(3);
    assert_eq!(messages(&from_middle), ["line 2", "Can't keep up!", "boom"]);
    agent.stop();
}

#[test]
fn a_partial_line_is_no_entry_until_its_newline() {
    let mc = Mc::new("partial");
    mc.append(&line("12:00:00", "INFO", "first"));
    let agent = Agent::start(mc.write_config("", ""));
    let tap = stream_logs(&agent.client(), 0);
    assert_eq!(messages(&tap.take(1)), ["first"]);
    let start = mc.len();
    mc.append("[12:00:01] [Server thread/INFO]: hal");
    tap.quiet(Duration::from_millis(400));
    mc.append("f a line\n");
    let got = tap.take(1);
    assert_eq!((got[0].get_message(), got[0].get_offset()), ("half a line", offset(GEN1, start)));
}

#[test]
fn rotation_by_rename_loses_and_repeats_nothing() {
    let mc = Mc::new("rotate");
    let (text, _) = numbered(0, 3, 0);
    mc.append(&text);
    let agent = Agent::start(mc.write_config("", ""));
    let tap = stream_logs(&agent.client(), 0);
    tap.take(3);
    // The old server's last lines, then log4j's rename and a new file, at once.
    let start = mc.len();
    let (tail, tail_pos) = numbered(3, 2, start);
    mc.append(&tail);
    mc.rotate("2026-11-28-1.log");
    let (fresh, fresh_pos) = numbered(5, 2, 0);
    mc.append(&fresh);
    let got = tap.take(4);
    assert_eq!(messages(&got), ["line 3", "line 4", "line 5", "line 6"]);
    let want: Vec<u64> =
        tail_pos.iter().map(|p| offset(1, *p)).chain(fresh_pos.iter().map(|p| offset(2, *p))).collect();
    assert_eq!(got.iter().map(|e| e.get_offset()).collect::<Vec<_>>(), want);
    assert!(got.iter().all(|e| !e.get_truncated()));
    tap.quiet(Duration::from_millis(300));
}

#[test]
fn rotation_gzip_style_reads_the_deleted_file_to_its_end() {
    let mc = Mc::new("gzip");
    mc.append(&numbered(0, 2, 0).0);
    let agent = Agent::start(mc.write_config("", ""));
    let tap = stream_logs(&agent.client(), 0);
    tap.take(2);
    mc.append(&numbered(2, 2, mc.len()).0);
    let rotated = mc.rotate("2026-11-28-2.log");
    fs::remove_file(rotated).unwrap();
    // With no latest.log at all, the agent still has the deleted file open.
    assert_eq!(messages(&tap.take(2)), ["line 2", "line 3"]);
    mc.append(&numbered(4, 1, 0).0);
    let got = tap.take(1);
    assert_eq!((got[0].get_message(), got[0].get_offset()), ("line 4", offset(2, 0)));
}

#[test]
fn truncation_starts_a_new_generation() {
    let mc = Mc::new("truncate");
    mc.append(&numbered(0, 3, 0).0);
    let agent = Agent::start(mc.write_config("", ""));
    let tap = stream_logs(&agent.client(), 0);
    tap.take(3);
    fs::OpenOptions::new().write(true).open(&mc.log).unwrap().set_len(0).unwrap();
    mc.append(&line("12:01:00", "INFO", "after truncation"));
    let got = tap.take(1);
    assert_eq!((got[0].get_message(), got[0].get_offset()), ("after truncation", offset(2, 0)));
}

#[test]
fn a_burst_of_100k_lines_arrives_whole_and_in_order() {
    const N: usize = 100_000;
    let mc = Mc::new("burst");
    mc.append("");
    let agent = Agent::start(mc.write_config("", ""));
    let tap = stream_logs(&agent.client(), 0);
    let (text, pos) = numbered(0, N, 0);
    mc.append(&text);
    let got = tap.take(N);
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.get_offset(), offset(GEN1, pos[i]), "entry {i}");
        assert!(!e.get_truncated(), "entry {i} truncated");
    }
    assert_eq!(got[N - 1].get_message(), format!("line {}", N - 1));
    tap.quiet(Duration::from_millis(200));
}

#[test]
fn a_stack_trace_folds_into_the_previous_entry() {
    let mc = Mc::new("trace");
    let agent = Agent::start(mc.write_config("", ""));
    let tap = stream_logs(&agent.client(), 0);
    let trace = [
        "java.lang.IllegalStateException: Ticking entity",
        "\tat net.minecraft.server.MinecraftServer.tickChildren(MinecraftServer.java:1014) ~[server.jar:?]",
        "Caused by: java.lang.NullPointerException: Cannot read field \"x\" because \"pos\" is null",
        "\tat net.minecraft.world.entity.Entity.tick(Entity.java:420) ~[server.jar:?]",
        "\t... 5 more",
    ];
    mc.append(&format!(
        "{}{}\n{}",
        line("12:00:00", "ERROR", "Encountered an unexpected exception"),
        trace.join("\n"),
        line("12:00:01", "INFO", "Stopping server")
    ));
    let got = tap.take(2);
    assert_eq!((got[0].get_level(), got[0].get_message()), ("ERROR", "Encountered an unexpected exception"));
    assert_eq!(got[0].get_exception(), trace.join("\n"));
    assert_eq!((got[1].get_message(), got[1].get_exception()), ("Stopping server", ""));
    // The last entry is not held back: it came 100 ms after its line.
}

#[test]
fn restart_resumes_with_the_same_offsets() {
    let mc = Mc::new("restart");
    mc.append(&numbered(0, 5, 0).0);
    let config = mc.write_config("", "");
    let agent = Agent::start(config);
    let before = stream_logs(&agent.client(), 0).take(5);
    agent.stop();
    // Written while the agent is down.
    mc.append(&numbered(5, 3, mc.len()).0);
    let agent = Agent::start(config);
    let client = agent.client();
    let all = stream_logs(&client, 0).take(8);
    assert_eq!(
        all[..5].iter().map(|e| e.get_offset()).collect::<Vec<_>>(),
        before.iter().map(|e| e.get_offset()).collect::<Vec<_>>()
    );
    // A hub that had the first three resumes with nothing lost or doubled.
    let tap = stream_logs(&client, before[2].get_offset());
    let resumed = tap.take(5);
    assert_eq!(messages(&resumed), ["line 3", "line 4", "line 5", "line 6", "line 7"]);
    assert!(resumed.iter().all(|e| !e.get_truncated()));
    tap.quiet(Duration::from_millis(300));
}

#[test]
fn restart_after_a_rotation_while_down_continues_in_a_new_generation() {
    let mc = Mc::new("restart-rotated");
    mc.append(&numbered(0, 3, 0).0);
    let config = mc.write_config("", "");
    let agent = Agent::start(config);
    let before = stream_logs(&agent.client(), 0).take(3);
    agent.stop();
    mc.rotate("2026-11-28-1.log");
    mc.append(&numbered(3, 2, 0).0);
    let agent = Agent::start(config);
    let client = agent.client();
    // The hub that had everything: the new generation, no loss flagged.
    let got = stream_logs(&client, before[2].get_offset()).take(2);
    assert_eq!(messages(&got), ["line 3", "line 4"]);
    assert_eq!(got[0].get_offset(), offset(2, 0));
    assert!(!got[0].get_truncated());
    // A hub that missed line 2: it is gone with the old file, and it is told.
    let got = stream_logs(&client, before[1].get_offset()).take(2);
    assert!(got[0].get_truncated());
    assert_eq!(got[0].get_message(), "line 3");
}

#[test]
fn after_offset_below_the_floor_is_truncated() {
    let mc = Mc::new("floor");
    let (text, pos) = numbered(0, 20, 0);
    mc.append(&text);
    let agent = Agent::start(mc.write_config("history_lines = 5", ""));
    let client = agent.client();
    // Kept: lines 15..20; the floor is line 14.
    let all = stream_logs(&client, 0).take(5);
    assert_eq!(all[0].get_message(), "line 15");
    assert!(all.iter().all(|e| !e.get_truncated()), "after_offset 0 asks for what is kept");
    let below = stream_logs(&client, offset(GEN1, pos[3])).take(5);
    assert!(below[0].get_truncated());
    assert!(below[1..].iter().all(|e| !e.get_truncated()));
    assert_eq!(below[0].get_message(), "line 15");
    let at_floor = stream_logs(&client, offset(GEN1, pos[14])).take(1);
    assert!(!at_floor[0].get_truncated());
    // An offset this agent never issued (another history): everything, flagged.
    let future = stream_logs(&client, offset(9, 0)).take(1);
    assert!(future[0].get_truncated());
}

#[test]
fn metrics_from_proc_and_the_server_list_ping() {
    let mc = Mc::new("metrics");
    mc.append(&line("12:00:00", "INFO", "Done (3.2s)! For help, type \"help\""));
    let slp = FakeSlp::start(3, 20);
    let java = FakeJava::start(&mc.pid_file);
    let agent = Agent::start(mc.write_config("", &format!("pid_file = \"survival/server.pid\"\nport = {}", slp.port)));
    let client = agent.client();
    let m = client.get_metrics_opt(&server_req(), opt()).unwrap();
    assert_eq!(m.get_server_id(), SERVER_ID);
    assert_eq!((m.get_players_online(), m.get_max_players()), (3, 20));
    assert!(m.get_memory_used() > 0 && m.get_memory_total() > m.get_memory_used());
    assert!(m.get_memory_percent() > 0.0 && m.get_memory_percent() < 100.0);
    assert!(m.get_uptime_seconds() >= 0 && m.get_uptime_seconds() < 60);
    assert!(m.get_cpu_percent() >= 0.0 && m.get_cpu_percent() < 50.0, "sleep uses no CPU: {}", m.get_cpu_percent());
    assert!(m.get_timestamp() > 0);
    assert!(!m.get_has_tps());
    assert_eq!(slp.pings.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Paper's /tps answer, colour codes and all.
    let tap = stream_logs(&client, 0);
    tap.take(1);
    mc.append("[12:00:05 INFO]: §6TPS from last 1m, 5m, 15m: §a19.5, §a19.98, §a*20.0\n");
    tap.take(1);
    let m = client.get_metrics_opt(&server_req(), opt()).unwrap();
    assert!(m.get_has_tps());
    assert_eq!(m.get_tps(), 19.5);
    // The process is gone (its pid file stays behind, stale): zeros.
    java.kill();
    let m = client.get_metrics_opt(&server_req(), opt()).unwrap();
    assert_eq!((m.get_memory_used(), m.get_uptime_seconds(), m.get_cpu_percent()), (0, 0, 0.0));
    assert!(m.get_memory_total() > 0);
}

#[test]
fn status_with_a_pid_file_starting_running_stopping_stopped() {
    let mc = Mc::new("status");
    let agent = Agent::start(mc.write_config("", "pid_file = \"survival/server.pid\""));
    let client = agent.client();
    let watch = watch_status(&client);
    assert_eq!(watch.take(1)[0].get_status(), "stopped");
    let java = FakeJava::start(&mc.pid_file);
    mc.append(&line("12:00:00", "INFO", "Starting minecraft server version 1.21.1"));
    assert_eq!(watch.take(1)[0].get_status(), "starting");
    mc.append(&line("12:00:03", "INFO", "Done (3.012s)! For help, type \"help\""));
    assert_eq!(watch.take(1)[0].get_status(), "running");
    let s = client.get_status_opt(&server_req(), opt()).unwrap();
    assert_eq!((s.get_server_id(), s.get_status()), (SERVER_ID, "running"));
    mc.append(&line("12:10:00", "INFO", "Stopping the server"));
    mc.append(&line("12:10:00", "INFO", "Stopping server"));
    assert_eq!(watch.take(1)[0].get_status(), "stopping");
    java.kill();
    let stopped = watch.take(1);
    assert_eq!(stopped[0].get_status(), "stopped");
    assert!(stopped[0].get_timestamp() > 0 && !stopped[0].get_reason().is_empty());
    let list = client.list_servers_opt(&ListServersRequest::new(), opt()).unwrap();
    let s = &list.get_servers()[0];
    assert_eq!((s.get_id(), s.get_name(), s.get_status()), (SERVER_ID, "Survival", "stopped"));
}

#[test]
fn status_crashed_when_the_process_dies_without_a_stopping_line() {
    let mc = Mc::new("crash-exit");
    mc.append(&line("12:00:03", "INFO", "Done (3.012s)! For help, type \"help\""));
    let java = FakeJava::start(&mc.pid_file);
    let agent = Agent::start(mc.write_config("", "pid_file = \"survival/server.pid\""));
    let watch = watch_status(&agent.client());
    assert_eq!(watch.take(1)[0].get_status(), "running");
    java.kill();
    let crashed = watch.take(1);
    assert_eq!(crashed[0].get_status(), "crashed");
    assert!(crashed[0].get_reason().contains("without a stopping line"), "{}", crashed[0].get_reason());
}

#[test]
fn status_crashed_on_a_new_crash_report_even_when_stopping_lines_follow() {
    let mc = Mc::new("crash-report");
    mc.crash_report("crash-2026-11-01_10.00.00-server.txt");
    mc.append(&line("12:00:03", "INFO", "Done (3.012s)! For help, type \"help\""));
    let java = FakeJava::start(&mc.pid_file);
    let agent = Agent::start(mc.write_config("", "pid_file = \"survival/server.pid\""));
    let watch = watch_status(&agent.client());
    assert_eq!(watch.take(1)[0].get_status(), "running", "an old crash report is not news");
    mc.crash_report("crash-2026-11-28_12.00.05-server.txt");
    let crashed = watch.take(1);
    assert_eq!(crashed[0].get_status(), "crashed");
    assert!(crashed[0].get_reason().contains("crash-2026-11-28_12.00.05-server.txt"));
    mc.append(&line("12:00:06", "INFO", "Stopping server"));
    java.kill();
    watch.quiet(Duration::from_millis(400));
    // The server comes back: a new process and a new latest.log.
    let _java = FakeJava::start(&mc.pid_file);
    mc.rotate("2026-11-28-1.log");
    mc.append(&line("12:01:00", "INFO", "Starting minecraft server version 1.21.1"));
    assert_eq!(watch.take(1)[0].get_status(), "starting");
}

#[test]
fn status_from_the_log_alone() {
    let mc = Mc::new("log-only");
    let agent = Agent::start(mc.write_config("", ""));
    let watch = watch_status(&agent.client());
    assert_eq!(watch.take(1)[0].get_status(), "stopped", "no latest.log");
    mc.append(&line("12:00:00", "INFO", "Starting minecraft server version 1.21.1"));
    assert_eq!(watch.take(1)[0].get_status(), "starting");
    mc.append(&line("12:00:03", "INFO", "Done (3.012s)! For help, type \"help\""));
    assert_eq!(watch.take(1)[0].get_status(), "running");
    mc.append(&line("12:10:00", "INFO", "Stopping server"));
    assert_eq!(watch.take(1)[0].get_status(), "stopping");
    mc.append(&line("12:10:01", "INFO", "ThreadedAnvilChunkStorage: All dimensions are saved"));
    assert_eq!(watch.take(1)[0].get_status(), "stopped");
    mc.crash_report("crash-2026-11-28_12.10.02-server.txt");
    assert_eq!(watch.take(1)[0].get_status(), "crashed");
}

#[test]
fn ping_list_servers_and_unknown_servers() {
    let mc = Mc::new("ping");
    let agent = Agent::start(mc.write_config("id = \"agent-7\"", ""));
    let client = agent.client();
    let pong = client.ping_opt(&PingRequest::new(), opt()).unwrap();
    assert_eq!((pong.get_agent_id(), pong.get_version()), ("agent-7", env!("CARGO_PKG_VERSION")));
    let now = chrono::Utc::now().timestamp_millis();
    assert!((pong.get_timestamp() - now).abs() < 10_000);
    let list = client.list_servers_opt(&ListServersRequest::new(), opt()).unwrap();
    assert_eq!(list.get_servers().len(), 1);
    let mut req = server_req();
    req.set_server_id("00000000-0000-0000-0000-000000000000".into());
    let e = client.get_status_opt(&req, opt()).unwrap_err().to_string();
    assert!(e.contains("NOT_FOUND") || e.contains("NotFound"), "{e}");
    assert!(client.get_metrics_opt(&req, opt()).is_err());
    let mut logs = aymc_proto::agent::StreamLogsRequest::new();
    logs.set_server_id("nope".into());
    let tap = Tap::new(&client, client.stream_logs(&logs).unwrap());
    let e = tap.error();
    assert!(e.contains("NOT_FOUND") || e.contains("NotFound"), "{e}");
}

#[test]
fn a_generated_agent_id_is_kept_across_restarts() {
    let mc = Mc::new("agent-id");
    let config = mc.write_config("", "");
    let agent = Agent::start(config);
    let first = agent.client().ping_opt(&PingRequest::new(), opt()).unwrap().get_agent_id().to_string();
    agent.stop();
    assert!(uuid::Uuid::try_parse(&first).is_ok(), "{first}");
    let agent = Agent::start(config);
    assert_eq!(agent.client().ping_opt(&PingRequest::new(), opt()).unwrap().get_agent_id(), first);
    assert!(mc.root.path().join("state.toml").exists());
}

#[test]
fn config_errors_are_one_line_and_exit_code_2() {
    let mc = Mc::new("bad-config");
    fs::write(&mc.config, "listen = \"127.0.0.1:0\"\nhistory_lines = \"many\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aymc-agent")).arg("--config").arg(&mc.config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_aymc-agent")).env_remove("AYMC_AGENT_CONFIG").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_aymc-agent"))
        .env("AYMC_AGENT_CONFIG", mc.root.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
