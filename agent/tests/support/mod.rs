//! Harness for the agent's integration tests: temporary Minecraft server
//! directories, the real `aymc-agent` binary on `127.0.0.1:0`, a grpcio
//! client, stream taps with bounded waits, and a fake Server List Ping
//! responder.

#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use aymc_agent::slp;
use aymc_proto::agent::{LogEntry, ServerRequest, ServerStatus, StreamLogsRequest};
use aymc_proto::agent_grpc::AgentServiceClient;
use futures::StreamExt;
use grpcio::{CallOption, ChannelBuilder, EnvBuilder, Environment};
use tempfile::TempDir;

pub const SERVER_ID: &str = "550e8400-e29b-41d4-a716-446655440000";
/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(8);

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A fake Minecraft server directory and an agent config for it.
pub struct Mc {
    pub root: TempDir,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
    pub config: PathBuf,
}

impl Mc {
    /// A server directory with `logs/` and `crash-reports/`; no latest.log yet.
    pub fn new(name: &str) -> Mc {
        let root = tempfile::Builder::new().prefix(&format!("aymc-agent-it-{name}-")).tempdir().unwrap();
        let dir = root.path().join("survival");
        fs::create_dir_all(dir.join("logs")).unwrap();
        fs::create_dir_all(dir.join("crash-reports")).unwrap();
        Mc {
            log: dir.join("logs/latest.log"),
            pid_file: dir.join("server.pid"),
            config: root.path().join("agent.toml"),
            dir,
            root,
        }
    }

    /// Writes the agent's config; `extra_server` lines go into `[[servers]]`.
    pub fn write_config(&self, top: &str, extra_server: &str) -> &Path {
        let text = format!(
            "listen = \"127.0.0.1:0\"\n{top}\n[[servers]]\nid = \"{SERVER_ID}\"\nname = \"Survival\"\ndir = \"survival\"\n{extra_server}\n"
        );
        fs::write(&self.config, text).unwrap();
        &self.config
    }

    pub fn append(&self, text: &str) {
        let mut f = OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    pub fn len(&self) -> u64 {
        fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Renames latest.log the way log4j does on a restart.
    pub fn rotate(&self, name: &str) -> PathBuf {
        let to = self.dir.join("logs").join(name);
        fs::rename(&self.log, &to).unwrap();
        to
    }

    pub fn crash_report(&self, name: &str) {
        fs::write(self.dir.join("crash-reports").join(name), "---- Minecraft Crash Report ----\n").unwrap();
    }
}

/// A vanilla line.
pub fn line(time: &str, level: &str, msg: &str) -> String {
    format!("[{time}] [Server thread/{level}]: {msg}\n")
}

/// `n` numbered lines and the byte position of each.
pub fn numbered(from: usize, n: usize, start_pos: u64) -> (String, Vec<u64>) {
    let mut text = String::new();
    let mut positions = Vec::with_capacity(n);
    for i in from..from + n {
        positions.push(start_pos + text.len() as u64);
        text.push_str(&line("12:00:00", "INFO", &format!("line {i}")));
    }
    (text, positions)
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo {}", path.display());
}

/// Removes whatever is at `path` (file, link, FIFO, socket or directory tree), if anything.
pub fn remove(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).unwrap(),
        Ok(_) => fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

pub fn offset(generation: u64, position: u64) -> u64 {
    (generation << 40) + position
}

/// The real binary, started on port 0.
pub struct Agent {
    child: Child,
    pub port: u16,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    pub fn start(config: &Path) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aymc-agent"))
            .arg("--config")
            .arg(config)
            .env("AYMC_LOG", "info")
            .env_remove("STATE_DIRECTORY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let lines = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some((_, rest)) = line.split_once("listening on 127.0.0.1:") {
                    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    let _ = tx.send(port.parse::<u16>().unwrap());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let port = match rx.recv_timeout(WAIT) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                panic!("agent did not listen; stderr: {:?}", stderr.lock().unwrap());
            }
        };
        Agent { child, port, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's peak resident set so far (`VmHWM` in /proc/<pid>/status), bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }

    /// Stderr lines that contain every one of `words`.
    pub fn log_lines(&self, words: &[&str]) -> Vec<String> {
        self.stderr.lock().unwrap().iter().filter(|l| words.iter().all(|w| l.contains(w))).cloned().collect()
    }

    /// Asserts the agent answers `Ping` (within [`opt`]'s deadline).
    pub fn assert_answers(&self, client: &AgentServiceClient) {
        let pong = client.ping_opt(&aymc_proto::agent::PingRequest::new(), opt()).unwrap();
        assert!(!pong.get_agent_id().is_empty());
    }

    /// SIGTERM, then a clean exit within `limit`.
    pub fn stop_within(self, limit: Duration) {
        let started = Instant::now();
        self.stop();
        assert!(started.elapsed() < limit, "SIGTERM took {:?}", started.elapsed());
    }

    pub fn client(&self) -> AgentServiceClient {
        static ENV: OnceLock<Arc<Environment>> = OnceLock::new();
        let env = ENV.get_or_init(|| Arc::new(EnvBuilder::new().cq_count(1).name_prefix("test-grpc").build()));
        let channel = ChannelBuilder::new(Arc::clone(env)).connect(&format!("127.0.0.1:{}", self.port));
        AgentServiceClient::new(channel)
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = wait_for("agent exit", WAIT, || self.child.try_wait().unwrap());
        assert!(status.success(), "agent exited with {status}; stderr: {:?}", self.stderr.lock().unwrap());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client on a connection of its own (grpc shares one between channels to
/// the same address unless told not to), as another process would have.
pub fn own_client(port: u16) -> AgentServiceClient {
    static ENV: OnceLock<Arc<Environment>> = OnceLock::new();
    let env = ENV.get_or_init(|| Arc::new(EnvBuilder::new().cq_count(1).name_prefix("test-own").build()));
    let channel =
        ChannelBuilder::new(Arc::clone(env)).use_local_subchannel_pool(true).connect(&format!("127.0.0.1:{port}"));
    AgentServiceClient::new(channel)
}

/// A client that takes as little as it can without reading: HTTP/2 windows
/// of 16 KiB and no window growth, so the agent's send blocks early.
pub fn stingy_client(port: u16) -> AgentServiceClient {
    static ENV: OnceLock<Arc<Environment>> = OnceLock::new();
    let env = ENV.get_or_init(|| Arc::new(EnvBuilder::new().cq_count(1).name_prefix("test-stingy").build()));
    let channel = ChannelBuilder::new(Arc::clone(env))
        .use_local_subchannel_pool(true)
        .http2_bdp_probe(false)
        .stream_initial_window_size(16 * 1024)
        .connect(&format!("127.0.0.1:{port}"));
    AgentServiceClient::new(channel)
}

/// A TCP relay on 127.0.0.1 to the agent whose connections come from
/// `source`, another loopback address: to the agent, another host. Blocking
/// copies, so a client that does not read holds the agent back as it would
/// directly.
pub struct Relay {
    pub port: u16,
}

impl Relay {
    pub fn start(source: Ipv4Addr, agent_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(down) = conn else { return };
                let Ok(up) = connect_from(source, SocketAddrV4::new(Ipv4Addr::LOCALHOST, agent_port)) else { return };
                for (mut from, mut to) in [(down.try_clone().unwrap(), up.try_clone().unwrap()), (up, down)] {
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Relay { port }
    }
}

/// A TCP connection to `to` from the address `source`.
fn connect_from(source: Ipv4Addr, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let addr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor owned by the returned
    // stream from the moment it exists; the addresses outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = addr(source, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = addr(*to.ip(), to.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Waits (bounded) for a stream's first item or error, so the call is known
/// to have reached the agent; returns the stream unread past it.
pub fn arrived<T: Send + 'static>(mut stream: grpcio::ClientSStreamReceiver<T>) -> grpcio::ClientSStreamReceiver<T> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        futures::executor::block_on(stream.next());
        let _ = tx.send(stream);
    });
    rx.recv_timeout(WAIT).expect("a stream's first answer")
}

pub fn logs_req(after: u64) -> StreamLogsRequest {
    let mut req = StreamLogsRequest::new();
    req.set_server_id(SERVER_ID.to_string());
    req.set_after_offset(after);
    req
}

pub fn opt() -> CallOption {
    CallOption::default().timeout(Duration::from_secs(5))
}

pub fn server_req() -> ServerRequest {
    let mut r = ServerRequest::new();
    r.set_server_id(SERVER_ID.to_string());
    r
}

/// Items of a server stream, read on a thread, with bounded waits. Holds a
/// clone of the client: grpcio cancels calls when their channel is dropped.
pub struct Tap<T> {
    rx: mpsc::Receiver<Result<T, String>>,
    _client: AgentServiceClient,
}

impl<T: Send + 'static> Tap<T> {
    pub fn new(client: &AgentServiceClient, mut stream: grpcio::ClientSStreamReceiver<T>) -> Tap<T> {
        let (tx, rx) = mpsc::channel();
        // Read on grpcio's own completion-queue thread: no wake-up of another
        // thread per message.
        client.spawn(async move {
            while let Some(item) = stream.next().await {
                let end = item.is_err();
                if tx.send(item.map_err(|e| e.to_string())).is_err() || end {
                    break;
                }
            }
        });
        Tap { rx, _client: client.clone() }
    }

    /// The next item within `timeout`, or `None`. Polls (1 ms naps) rather
    /// than blocking, so a fast stream does not pay a wake-up per item.
    pub fn next(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.rx.try_recv() {
                Ok(Ok(item)) => return Some(item),
                Ok(Err(e)) => panic!("stream failed: {e}"),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) if Instant::now() >= deadline => return None,
                Err(mpsc::TryRecvError::Empty) => thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Exactly `n` items, each within [`WAIT`] of the one before.
    pub fn take(&self, n: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next(WAIT) {
                Some(item) => out.push(item),
                None => panic!("got {} of {n} items", out.len()),
            }
        }
        out
    }

    /// Asserts nothing arrives for `d` (kept short: it is a fixed wait).
    pub fn quiet(&self, d: Duration) {
        if let Ok(item) = self.rx.recv_timeout(d) {
            panic!("unexpected item: {}", if item.is_ok() { "an entry" } else { "an error" });
        }
    }

    /// The stream's error, within [`WAIT`].
    pub fn error(&self) -> String {
        match self.rx.recv_timeout(WAIT) {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => panic!("an item instead of an error"),
            Err(_) => panic!("no error"),
        }
    }
}

pub fn stream_logs(client: &AgentServiceClient, after: u64) -> Tap<LogEntry> {
    Tap::new(client, client.stream_logs(&logs_req(after)).unwrap())
}

pub fn watch_status(client: &AgentServiceClient) -> Tap<ServerStatus> {
    Tap::new(client, client.watch_status(&server_req()).unwrap())
}

/// A fake Minecraft server answering the Server List Ping with `players`.
pub struct FakeSlp {
    pub port: u16,
    pub pings: Arc<AtomicUsize>,
}

impl FakeSlp {
    pub fn start(online: i32, max: i32) -> FakeSlp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let pings = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&pings);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                if answer(conn, online, max).is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        FakeSlp { port, pings }
    }
}

fn answer(mut conn: TcpStream, online: i32, max: i32) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    // Handshake: length, id 0, protocol, address, port, next state 1.
    let len = slp::read_varint(&mut conn)? as usize;
    let mut handshake = vec![0; len];
    conn.read_exact(&mut handshake)?;
    let mut h = handshake.as_slice();
    assert_eq!(slp::read_varint(&mut h)?, 0, "handshake id");
    slp::read_varint(&mut h)?;
    let host_len = slp::read_varint(&mut h)? as usize;
    h = &h[host_len + 2..];
    assert_eq!(slp::read_varint(&mut h)?, 1, "next state: status");
    // Status request: length 1, id 0.
    let mut request = [0u8; 2];
    conn.read_exact(&mut request)?;
    assert_eq!(request, [1, 0]);
    let json = format!(
        r#"{{"version":{{"name":"Paper 1.21.1","protocol":767}},"players":{{"max":{max},"online":{online},"sample":[]}},"description":{{"text":"A Minecraft Server"}}}}"#
    );
    let mut body = vec![0];
    slp::write_varint(&mut body, json.len() as i32);
    body.extend_from_slice(json.as_bytes());
    let mut packet = Vec::new();
    slp::write_varint(&mut packet, body.len() as i32);
    packet.extend_from_slice(&body);
    conn.write_all(&packet)
}

/// A child process standing in for the server's Java process.
pub struct FakeJava(pub Child);

impl FakeJava {
    pub fn start(pid_file: &Path) -> FakeJava {
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        File::create(pid_file).unwrap().write_all(format!("{}\n", child.id()).as_bytes()).unwrap();
        FakeJava(child)
    }

    /// Kills it and reaps it (no zombie left behind).
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for FakeJava {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
