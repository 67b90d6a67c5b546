//! Both binaries and a WebSocket client: lines appended to a Minecraft log
//! file reach the client in order, across an agent restart and a log
//! rotation, none lost, none doubled.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

const AGENT_ID: &str = "6f1c2a9e-0000-4000-8000-000000000002";

/// The `aymc-agent` binary, beside the hub's. It is another package's, so
/// cargo sets no `CARGO_BIN_EXE_` for it here; `cargo test` at the workspace
/// root builds every package's binaries into the same directory before any
/// test runs.
pub(crate) fn agent_bin() -> PathBuf {
    let path = Path::new(bin()).with_file_name("aymc-agent");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo test` at the workspace root, or `cargo build -p aymc-agent` first",
        path.display()
    );
    path
}

/// A running aymc-agent, killed on drop.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts aymc-agent; returns it and the address it listens on.
fn start_agent(config: &Path) -> (AgentProcess, String) {
    let mut child = Command::new(agent_bin())
        .arg("--config")
        .arg(config)
        .env("AYMC_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start aymc-agent");
    let stderr = child.stderr.take().expect("agent stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let child = AgentProcess(child);
    let addr = rx.recv_timeout(WAIT).expect("aymc-agent says where it listens");
    (child, addr)
}

fn append(path: &Path, lines: &[String]) {
    let mut f = OpenOptions::new().create(true).append(true).open(path).expect("open latest.log");
    for line in lines {
        writeln!(f, "[12:00:00] [Server thread/INFO]: {line}").expect("append");
    }
}

#[test]
fn appended_lines_reach_the_client_in_order_across_an_agent_restart() {
    let dir = temp_dir();
    let server_dir = dir.path().join("survival");
    std::fs::create_dir_all(server_dir.join("logs")).unwrap();
    let log = server_dir.join("logs").join("latest.log");
    append(&log, &numbered("old", 0..3));
    let agent_config = write_file(
        &dir,
        "agent.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\nid = \"{AGENT_ID}\"\nstate_file = \"{}\"\n\n[[servers]]\nid = \"{SERVER_A}\"\nname = \"Survival\"\ndir = \"{}\"\n",
            dir.path().join("agent-state.toml").display(),
            server_dir.display()
        ),
    );
    let (agent, address) = start_agent(&agent_config);
    let hub = HubConfig::new()
        .extra(&format!(
            "[monitor]\nhealth_interval_s = 3\n\n[[agents]]\nid = \"{AGENT_ID}\"\naddress = \"{address}\"\n\n[[servers]]\nid = \"{SERVER_A}\"\nowner = \"{OWNER}\"\n"
        ))
        .start();
    let mut client = hub.connect(&user_token(OWNER, &[]));
    client.subscribe_ok(&[&logs(SERVER_A)]);
    // The agent streams what it keeps, then new lines as they are written.
    assert_eq!(recv_log_messages(&mut client, 3), numbered("old", 0..3));
    append(&log, &numbered("a", 0..200));
    assert_eq!(recv_log_messages(&mut client, 200), numbered("a", 0..200));

    // The agent dies; the server keeps writing; the agent comes back on the
    // same port and the hub resumes after the last line it had.
    drop(agent);
    append(&log, &numbered("b", 0..100));
    let port_config = std::fs::read_to_string(&agent_config).unwrap().replace("127.0.0.1:0", &address);
    std::fs::write(&agent_config, port_config).unwrap();
    let (_agent, _) = start_agent(&agent_config);
    append(&log, &numbered("c", 0..100));
    let mut expected = numbered("b", 0..100);
    expected.extend(numbered("c", 0..100));
    assert_eq!(recv_log_messages(&mut client, 200), expected);

    // The server restarts: latest.log is renamed and a new one begins.
    std::fs::rename(&log, server_dir.join("logs").join("2026-11-29-1.log")).unwrap();
    append(&log, &numbered("d", 0..50));
    assert_eq!(recv_log_messages(&mut client, 50), numbered("d", 0..50));
    client.expect_no_message(Duration::from_millis(500));
}

/// For other test files: starts aymc-agent as the test above does (found
/// the same way; SIGKILLed when the returned value drops); returns it and
/// the address it listens on.
pub(crate) fn spawn_agent(config: &std::path::Path) -> (impl Drop, String) {
    start_agent(config)
}
