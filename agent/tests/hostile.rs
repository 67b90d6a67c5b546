//! Server directories are written by tenants, not by the operator: what a
//! tenant puts there (symbolic links, FIFOs, sockets, endless files) must
//! never make the agent read what it should not, hang, or grow.

use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener;
use std::thread;
use std::time::Duration;

use crate::support::*;

const SECRET: &str = "SECRET of another tenant";
const PID_CONFIG: &str = "pid_file = \"survival/server.pid\"";
const STOP_LIMIT: Duration = Duration::from_secs(3);
/// Polls the worker makes in this time: enough to see a warning repeated per poll.
const SOME_POLLS: Duration = Duration::from_millis(600);

/// Another tenant's server directory beside `mc`'s, with a log full of secrets.
fn other_tenant(mc: &Mc) -> std::path::PathBuf {
    let logs = mc.root.path().join("other/logs");
    fs::create_dir_all(&logs).unwrap();
    fs::write(logs.join("latest.log"), line("11:00:00", "INFO", SECRET).repeat(3)).unwrap();
    logs
}

fn assert_no_secret(agent: &Agent) {
    assert!(agent.log_lines(&["SECRET"]).is_empty(), "a secret reached the agent's log");
}

#[test]
fn a_symlinked_latest_log_or_logs_dir_is_never_read() {
    let mc = Mc::new("symlink-log");
    let other_logs = other_tenant(&mc);
    symlink(other_logs.join("latest.log"), &mc.log).unwrap();
    let agent = Agent::start(mc.write_config("", ""));
    let client = agent.client();
    agent.assert_answers(&client);
    let tap = stream_logs(&client, 0);
    tap.quiet(SOME_POLLS);
    // A link to the agent's own state file.
    remove(&mc.log);
    symlink(mc.root.path().join("state.toml"), &mc.log).unwrap();
    tap.quiet(SOME_POLLS);
    // `logs` itself a link to the other tenant's directory.
    remove(&mc.log);
    let own_logs = mc.dir.join("logs");
    fs::rename(&own_logs, mc.dir.join("logs.own")).unwrap();
    symlink(&other_logs, &own_logs).unwrap();
    tap.quiet(SOME_POLLS);
    agent.assert_answers(&client);
    // Back to a real file: it is read.
    remove(&own_logs);
    fs::rename(mc.dir.join("logs.own"), &own_logs).unwrap();
    mc.append(&line("12:00:00", "INFO", "own line"));
    let got = tap.take(1);
    assert_eq!((got[0].get_message(), got[0].get_offset()), ("own line", offset(1, 0)));
    // A running server's latest.log swapped for a link: the link is never
    // read, and the old file (which the server still writes) goes on.
    let old = mc.rotate("2026-11-28-1.log");
    symlink(other_logs.join("latest.log"), &mc.log).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&old)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line("12:00:01", "INFO", "still own").as_bytes()))
        .unwrap();
    assert_eq!(tap.take(1)[0].get_message(), "still own");
    tap.quiet(SOME_POLLS);
    agent.assert_answers(&client);
    // Warned once per time the condition began, not once per poll.
    let warnings = agent.log_lines(&["latest.log", "symbolic link"]);
    assert!((1..=4).contains(&warnings.len()), "{warnings:#?}");
    assert_no_secret(&agent);
    agent.stop_within(STOP_LIMIT);
}

#[test]
fn a_fifo_or_socket_as_latest_log_or_pid_file_hangs_nothing() {
    let mc = Mc::new("fifo");
    mkfifo(&mc.log);
    mkfifo(&mc.pid_file);
    let agent = Agent::start(mc.write_config("", PID_CONFIG));
    let client = agent.client();
    agent.assert_answers(&client);
    assert_eq!(client.get_status_opt(&server_req(), opt()).unwrap().get_status(), "stopped");
    let m = client.get_metrics_opt(&server_req(), opt()).unwrap();
    assert_eq!((m.get_memory_used(), m.get_uptime_seconds()), (0, 0));
    let tap = stream_logs(&client, 0);
    tap.quiet(SOME_POLLS);
    // Sockets instead.
    remove(&mc.log);
    remove(&mc.pid_file);
    let _log_socket = UnixListener::bind(&mc.log).unwrap();
    let _pid_socket = UnixListener::bind(&mc.pid_file).unwrap();
    tap.quiet(SOME_POLLS);
    agent.assert_answers(&client);
    let m = client.get_metrics_opt(&server_req(), opt()).unwrap();
    assert_eq!(m.get_memory_used(), 0);
    for what in ["latest.log", "server.pid"] {
        let warnings = agent.log_lines(&[what, "not a regular file"]);
        assert!((1..=3).contains(&warnings.len()), "{what}: {warnings:#?}");
    }
    agent.stop_within(STOP_LIMIT);
}

#[test]
fn a_pid_file_linked_to_dev_zero_or_endless_is_read_bounded() {
    let mc = Mc::new("pid-zero");
    mc.append(&line("12:00:00", "INFO", "Done (3.0s)! For help, type \"help\""));
    symlink("/dev/zero", &mc.pid_file).unwrap();
    let agent = Agent::start(mc.write_config("", PID_CONFIG));
    let client = agent.client();
    agent.assert_answers(&client);
    let watch = watch_status(&client);
    assert_eq!(watch.take(1)[0].get_status(), "crashed", "no process: the log has no stopping line");
    assert_eq!(client.get_metrics_opt(&server_req(), opt()).unwrap().get_memory_used(), 0);
    // A regular file of a terabyte of zeros (sparse).
    remove(&mc.pid_file);
    fs::File::create(&mc.pid_file).unwrap().set_len(1 << 40).unwrap();
    thread::sleep(SOME_POLLS);
    assert_eq!(client.get_metrics_opt(&server_req(), opt()).unwrap().get_memory_used(), 0);
    // A real pid followed by a terabyte: the pid counts.
    let java = FakeJava::start(&mc.pid_file);
    fs::OpenOptions::new().write(true).open(&mc.pid_file).unwrap().set_len(1 << 40).unwrap();
    assert_eq!(watch.take(1)[0].get_status(), "starting");
    assert!(client.get_metrics_opt(&server_req(), opt()).unwrap().get_memory_used() > 0);
    agent.assert_answers(&client);
    assert!(agent.peak_rss() < 96 << 20, "peak RSS {} MiB", agent.peak_rss() >> 20);
    let warnings = agent.log_lines(&["server.pid", "symbolic link"]);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    java.kill();
    agent.stop_within(STOP_LIMIT);
}

#[test]
fn a_symlinked_or_special_crash_report_is_no_crash() {
    let mc = Mc::new("crash-links");
    let other_logs = other_tenant(&mc);
    mc.append(&line("12:00:00", "INFO", "Done (3.0s)! For help, type \"help\""));
    let agent = Agent::start(mc.write_config("", ""));
    let client = agent.client();
    let watch = watch_status(&client);
    assert_eq!(watch.take(1)[0].get_status(), "running");
    let reports = mc.dir.join("crash-reports");
    symlink(other_logs.join("latest.log"), reports.join("crash-2026-11-28_12.00.00-server.txt")).unwrap();
    mkfifo(&reports.join("crash-2026-11-28_12.00.01-server.txt"));
    watch.quiet(SOME_POLLS);
    // crash-reports itself a link to a directory where files appear.
    fs::rename(&reports, mc.dir.join("crash-reports.own")).unwrap();
    symlink(&other_logs, &reports).unwrap();
    fs::write(other_logs.join("crash-2026-11-28_12.00.02-server.txt"), "x").unwrap();
    watch.quiet(SOME_POLLS);
    remove(&reports);
    fs::rename(mc.dir.join("crash-reports.own"), &reports).unwrap();
    mc.crash_report("crash-2026-11-28_12.00.03-server.txt");
    let crashed = watch.take(1);
    assert_eq!(crashed[0].get_status(), "crashed");
    assert!(crashed[0].get_reason().contains("12.00.03"), "{}", crashed[0].get_reason());
    agent.assert_answers(&client);
    agent.stop_within(STOP_LIMIT);
}
