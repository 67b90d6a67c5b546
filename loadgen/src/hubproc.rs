//! The hub under test as a child process: a generated config in a fresh
//! temporary directory, `aymc-hub serve` pinned to its own core with its
//! log in a file, the address read from its `listening on` line, its
//! `/proc` figures and `/metrics` counters, and a SIGTERM at the end.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::stats::{cpu_seconds, status_bytes};
use crate::Error;

/// How the hub authenticates.
#[derive(Debug, Clone)]
pub enum Keys {
    /// `auth.jwt_secret` (HS256).
    Secret(String),
    /// `auth.jwt_public_key` at this path (ES256 for a P-256 key).
    PublicKey(PathBuf),
}

/// What goes into the generated config.
#[derive(Debug, Clone)]
pub struct HubSpec {
    /// The `aymc-hub` binary.
    pub bin: PathBuf,
    /// Pin the hub (all its threads) to this CPU.
    pub cpu: Option<usize>,
    /// Key.
    pub keys: Keys,
    /// `limits.max_connections`.
    pub max_connections: usize,
    /// Address of the bench agent, if any (`[[agents]]`).
    pub agent: Option<SocketAddr>,
    /// Extra `(section, "key = value")` lines (experiments: `--hub-set`).
    pub set: Vec<(String, String)>,
}

/// The running hub.
#[derive(Debug)]
pub struct HubProc {
    child: Child,
    /// Its pid as a string, for `/proc/<pid>`.
    pub pid: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    log: PathBuf,
}

/// Pins the calling thread (and threads it spawns later) to `cpu`.
///
/// # Errors
/// The CPU does not exist or the call is refused.
pub fn pin_self(cpu: usize) -> Result<(), Error> {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(format!("cannot pin to CPU {cpu}: {}", std::io::Error::last_os_error()).into());
    }
    Ok(())
}

impl HubProc {
    /// Writes the config into `dir`, starts the hub and waits (10 s at
    /// most) for its `listening on` line.
    ///
    /// # Errors
    /// The binary cannot start, exits, or never says where it listens.
    pub fn start(spec: &HubSpec, dir: &Path) -> Result<HubProc, Error> {
        let config = dir.join("hub.toml");
        fs::write(&config, render_config(spec)).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let log = dir.join("hub.log");
        let log_file = fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut cmd = Command::new(&spec.bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .env("AYMC_LOG", std::env::var("AYMC_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let cpu = spec.cpu;
        // SAFETY: between fork and exec only async-signal-safe calls
        // (prctl, sched_setaffinity; no allocation).
        unsafe {
            cmd.pre_exec(move || {
                // The hub ends with us, even when we are killed.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(cpu) = cpu {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", spec.bin.display()))?;
        let mut hub = HubProc { pid: child.id().to_string(), child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), log };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = fs::read_to_string(&hub.log).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(|l| l.split("listening on ").nth(1)) {
                hub.addr = addr.trim().parse().map_err(|e| format!("hub printed a bad address '{addr}': {e}"))?;
                return Ok(hub);
            }
            if let Ok(Some(status)) = hub.child.try_wait() {
                return Err(format!("the hub exited ({status}) before listening:\n{}", hub.log_tail(20)).into());
            }
            if Instant::now() > deadline {
                return Err(format!("the hub did not say where it listens within 10 s:\n{}", hub.log_tail(20)).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `n` lines of the hub's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Log lines containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        fs::read_to_string(&self.log).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
    }

    /// CPU seconds used so far (all threads).
    pub fn cpu(&self) -> f64 {
        cpu_seconds(&self.pid).unwrap_or(0.0)
    }

    /// `VmRSS` in bytes.
    pub fn rss(&self) -> u64 {
        status_bytes(&self.pid, "VmRSS").unwrap_or(0)
    }

    /// `VmHWM` (peak RSS) in bytes.
    pub fn peak_rss(&self) -> u64 {
        status_bytes(&self.pid, "VmHWM").unwrap_or(0)
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The message counters of `GET /metrics`: in, out (copies queued), dropped.
    ///
    /// # Errors
    /// The request fails or a counter is missing.
    pub fn counters(&self) -> Result<[f64; 3], Error> {
        let text = self.metrics_text()?;
        let get = |name: &str| -> Result<f64, Error> {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
                })
                .ok_or_else(|| format!("metric {name} missing from /metrics").into())
        };
        Ok([get("aymc_messages_in_total")?, get("aymc_messages_out_total")?, get("aymc_messages_dropped_total")?])
    }

    fn metrics_text(&self) -> Result<String, Error> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        // SAFETY: kill with a pid we own.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        if self.alive() {
            self.stop();
        }
    }
}

fn render_config(spec: &HubSpec) -> String {
    let auth = match &spec.keys {
        Keys::Secret(s) => format!("jwt_secret = \"{s}\""),
        Keys::PublicKey(p) => format!("jwt_public_key = \"{}\"", p.display()),
    };
    let mut toml = format!("listen = \"127.0.0.1:0\"\n\n[auth]\n{auth}\n");
    for section in ["limits", "history", "monitor"] {
        let mut lines: Vec<String> = spec.set.iter().filter(|(s, _)| s == section).map(|(_, l)| l.clone()).collect();
        if section == "limits" {
            lines.insert(0, format!("max_connections = {}", spec.max_connections));
        }
        if !lines.is_empty() {
            toml.push_str(&format!("\n[{section}]\n{}\n", lines.join("\n")));
        }
    }
    if let Some(agent) = spec.agent {
        toml.push_str(&format!("\n[[agents]]\nid = \"6f1c2a9e-0000-4000-8000-00000000be7c\"\naddress = \"{agent}\"\n"));
    }
    toml
}
