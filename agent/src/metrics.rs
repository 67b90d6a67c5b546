//! Process and host metrics from `/proc`: the Java process named by a
//! server's pid file (alive, CPU ticks, RSS, start time), host memory, and
//! [`collect`], which assembles `GetMetrics`' answer with the Server List
//! Ping's player counts and the TPS the log reported. A missing or stale pid
//! file gives zeros (DESIGN.md: unmeasurable fields are 0).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use aymc_proto::agent::ServerMetrics;

use crate::config::ServerSettings;
use crate::slp;
use crate::tenant::{TenantError, TenantPath};

/// How long the Server List Ping may take.
pub const SLP_TIMEOUT: Duration = Duration::from_secs(1);
/// TPS is reported while a TPS line was seen this recently (DESIGN.md).
pub const TPS_FRESH_MS: i64 = 5 * 60 * 1000;

/// A process, told apart from a later one with the same pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcId {
    /// The pid.
    pub pid: i32,
    /// Start time, clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
}

/// The fields of `/proc/<pid>/stat` the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `Z`...
    pub state: char,
    /// Fields 14 + 15: user and system time, clock ticks.
    pub cpu_ticks: u64,
    /// Field 22: start time, clock ticks after boot.
    pub start_ticks: u64,
    /// Field 24: resident set size, pages.
    pub rss_pages: u64,
}

/// Parses `/proc/<pid>/stat` (the command name may hold spaces and parentheses).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (_, rest) = text.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        cpu_ticks: field(14)?.saturating_add(field(15)?),
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

/// `MemTotal` from `/proc/meminfo`, bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes of a pid file read: a pid and its newline fit many times over.
pub const PID_FILE_BYTES: usize = 32;

/// The pid in a pid file: its first line, a positive number, within the
/// first [`PID_FILE_BYTES`] bytes (a pid file is a tenant's file: it may be
/// endless). `Ok(None)` when the file holds no pid.
///
/// # Errors
/// The file is missing, refused (a link, FIFO, socket or device) or unreadable.
pub fn read_pid(pid_file: &TenantPath) -> Result<Option<i32>, TenantError> {
    let head = pid_file.read_head(PID_FILE_BYTES)?;
    let line = match head.iter().position(|&b| b == b'\n') {
        Some(nl) => head.get(..nl).unwrap_or_default(),
        None if head.len() < PID_FILE_BYTES => &head[..],
        None => return Ok(None),
    };
    Ok(std::str::from_utf8(line).ok().and_then(|l| l.trim().parse().ok()).filter(|p| *p > 0))
}

/// The running (not zombie, not dead) process with this pid.
pub fn process(pid: i32) -> Option<(ProcId, ProcStat)> {
    let stat = parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    if matches!(stat.state, 'Z' | 'X' | 'x') {
        return None;
    }
    Some((ProcId { pid, start_ticks: stat.start_ticks }, stat))
}

fn sysconf(name: libc::c_int, fallback: u64) -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0).unwrap_or(fallback)
}

fn clock_ticks() -> u64 {
    sysconf(libc::_SC_CLK_TCK, 100)
}

fn page_size() -> u64 {
    sysconf(libc::_SC_PAGESIZE, 4096)
}

/// Seconds since boot (`/proc/uptime`).
fn system_uptime() -> Option<f64> {
    fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()
}

/// CPU percent of one core between two `GetMetrics` calls, per server.
#[derive(Debug, Default)]
pub struct CpuTracker {
    last: Mutex<Option<(ProcId, u64, Instant)>>,
}

impl CpuTracker {
    /// CPU percent (100 = one core) since the previous sample of the same
    /// process; for the first sample, the average over the process's life.
    pub fn sample(&self, id: ProcId, cpu_ticks: u64, process_age_s: f64) -> f64 {
        let now = Instant::now();
        let tck = clock_ticks() as f64;
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let percent = match *last {
            Some((prev_id, prev_ticks, at)) if prev_id == id => {
                let wall = now.duration_since(at).as_secs_f64();
                if wall > 0.0 {
                    cpu_ticks.saturating_sub(prev_ticks) as f64 / tck / wall * 100.0
                } else {
                    0.0
                }
            }
            _ if process_age_s > 0.0 => cpu_ticks as f64 / tck / process_age_s * 100.0,
            _ => 0.0,
        };
        *last = Some((id, cpu_ticks, now));
        percent
    }
}

/// `GetMetrics` for the server `config` names: the process's CPU (sampled
/// by its `cpu` tracker), RSS and uptime, host memory, players by Server
/// List Ping (may block up to [`SLP_TIMEOUT`]), and `tps`, the newest TPS
/// the log reported with when its line was seen (unix ms).
pub fn collect(config: &ServerSettings, cpu: &CpuTracker, tps: Option<(f64, i64)>, now_ms: i64) -> ServerMetrics {
    let mut m = ServerMetrics::new();
    m.set_server_id(config.id.clone());
    m.set_timestamp(now_ms);
    let memory_total = fs::read_to_string("/proc/meminfo").ok().and_then(|t| parse_mem_total(&t)).unwrap_or(0);
    m.set_memory_total(memory_total);
    let pid = config.pid_path().and_then(|p| read_pid(&p).ok().flatten());
    if let Some((id, stat)) = pid.and_then(process) {
        let age_s = system_uptime().map_or(0.0, |up| (up - stat.start_ticks as f64 / clock_ticks() as f64).max(0.0));
        m.set_cpu_percent(cpu.sample(id, stat.cpu_ticks, age_s));
        let used = stat.rss_pages * page_size();
        m.set_memory_used(used);
        if memory_total > 0 {
            m.set_memory_percent(used as f64 / memory_total as f64 * 100.0);
        }
        m.set_uptime_seconds(age_s as i64);
    }
    if let Some(port) = config.port {
        match slp::query(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), SLP_TIMEOUT) {
            Ok(players) => {
                m.set_players_online(players.online);
                m.set_max_players(players.max);
            }
            Err(e) => log::debug!("server {}: {e}", config.id),
        }
    }
    if let Some((tps, at_ms)) = tps {
        if now_ms - at_ms <= TPS_FRESH_MS {
            m.set_tps(tps);
            m.set_has_tps(true);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (java (the) one) S 1 4242 4242 0 -1 4194560 12345 0 0 0 700 300 0 0 20 0 55 0 98765 6000000000 250000 18446744073709551615 1 1 0 0 0 0 0 4096 16384 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(s, ProcStat { state: 'S', cpu_ticks: 1000, start_ticks: 98765, rss_pages: 250000 });
        assert!(parse_stat("4242 (java) S 1 2").is_none());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn meminfo_total() {
        let text = "MemTotal:       16314512 kB\nMemFree:         1234 kB\n";
        assert_eq!(parse_mem_total(text), Some(16314512 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_stale_pid_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("server.pid");
        let path = TenantPath::new(dir.path(), "server.pid");
        let read = || read_pid(&path).unwrap();
        fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        let (id, stat) = process(read().unwrap()).unwrap();
        assert_eq!(id.pid as u32, std::process::id());
        assert!(stat.rss_pages > 0);
        fs::write(&pid_file, "999999999\n").unwrap();
        assert!(process(read().unwrap()).is_none());
        fs::write(&pid_file, "nope").unwrap();
        assert_eq!(read(), None);
        fs::write(&pid_file, " 42").unwrap();
        assert_eq!(read(), Some(42));
        // A number cut at the read limit is no pid.
        fs::write(&pid_file, "1".repeat(PID_FILE_BYTES + 1)).unwrap();
        assert_eq!(read(), None);
    }

    #[test]
    fn cpu_percent_from_deltas() {
        let t = CpuTracker::default();
        let id = ProcId { pid: 1, start_ticks: 5 };
        let tck = clock_ticks() as f64;
        // First sample: the lifetime average (tck ticks over 2 s = 50%).
        assert!((t.sample(id, tck as u64, 2.0) - 50.0).abs() < 1e-9);
        std::thread::sleep(Duration::from_millis(20));
        let p = t.sample(id, tck as u64, 2.0);
        assert_eq!(p, 0.0);
        // Another process with the same pid starts over.
        assert_eq!(t.sample(ProcId { pid: 1, start_ticks: 6 }, 0, 0.0), 0.0);
    }
}
