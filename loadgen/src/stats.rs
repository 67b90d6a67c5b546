//! What the receivers count: delivered frames, latency samples, drops
//! (`MESSAGES_DROPPED` reports and `seq` gaps), handshake times; the clock
//! every stamp uses; and the small summaries (percentiles, CPU, RSS) the
//! scenarios report.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// Microseconds of `CLOCK_MONOTONIC`: one clock for the publishers' stamps
/// and the receivers, whatever thread they run on.
pub fn now_us() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Counters of everything the clients received.
#[derive(Debug, Default)]
pub struct Tally {
    /// `log_entry` frames received.
    pub frames: u64,
    /// Bytes read from WebSocket connections.
    pub bytes: u64,
    /// One latency sample every this many `log_entry` frames.
    pub sample_every: u32,
    countdown: u32,
    /// `(send stamp, latency)` in microseconds, for sampled frames.
    pub samples: Vec<(u64, u32)>,
    /// `MESSAGES_DROPPED` errors received.
    pub drop_reports: u64,
    /// Sum of their `dropped` counts.
    pub dropped: u64,
    /// Missing seqs seen on tracked connections.
    pub seq_missing: u64,
    /// Seqs that went backwards or repeated on tracked connections.
    pub seq_disorder: u64,
    /// Connections that got `SUBSCRIBED`.
    pub subscribed: usize,
    /// Connect start to `SUBSCRIBED`, microseconds, one per connection.
    pub sub_times: Vec<u32>,
    /// Stamp of the last `SUBSCRIBED`.
    pub last_subscribed_at: u64,
    /// Other `error` codes received, by code.
    pub errors: BTreeMap<String, u64>,
    /// Connections that failed (handshake refused, closed, IO error), by reason.
    pub failures: BTreeMap<String, u64>,
    /// Close frames received, by code.
    pub closes: BTreeMap<u16, u64>,
}

impl Tally {
    /// A tally sampling one frame in `sample_every`.
    pub fn new(sample_every: u32) -> Tally {
        Tally { sample_every: sample_every.max(1), countdown: 1, ..Tally::default() }
    }

    /// True once every `sample_every` calls.
    #[inline]
    pub fn sample_tick(&mut self) -> bool {
        self.countdown -= 1;
        if self.countdown == 0 {
            self.countdown = self.sample_every;
            true
        } else {
            false
        }
    }

    /// Records a failed connection.
    pub fn fail(&mut self, reason: impl Into<String>) {
        *self.failures.entry(reason.into()).or_insert(0) += 1;
    }

    /// A copy of the counters that steps diff against.
    pub fn snapshot(&self) -> TallySnapshot {
        TallySnapshot {
            frames: self.frames,
            drop_reports: self.drop_reports,
            dropped: self.dropped,
            seq_missing: self.seq_missing,
            seq_disorder: self.seq_disorder,
            samples: self.samples.len(),
        }
    }
}

/// The counters of a [`Tally`] at one moment.
#[derive(Debug, Default, Clone, Copy)]
pub struct TallySnapshot {
    /// See [`Tally::frames`].
    pub frames: u64,
    /// See [`Tally::drop_reports`].
    pub drop_reports: u64,
    /// See [`Tally::dropped`].
    pub dropped: u64,
    /// See [`Tally::seq_missing`].
    pub seq_missing: u64,
    /// See [`Tally::seq_disorder`].
    pub seq_disorder: u64,
    /// Length of [`Tally::samples`].
    pub samples: usize,
}

/// Percentiles of a set of microsecond values.
#[derive(Debug, Default, Clone, Copy)]
pub struct Percentiles {
    /// How many values.
    pub n: usize,
    /// Median, ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// Largest, ms.
    pub max: f64,
}

impl Percentiles {
    /// Sorts `values` (microseconds) and summarizes them in milliseconds.
    pub fn of(values: &mut [u32]) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            f64::from(values[rank - 1]) / 1000.0
        };
        Percentiles { n: values.len(), p50: at(0.50), p99: at(0.99), max: at(1.0) }
    }

    /// As JSON (ms, three decimals).
    pub fn json(&self) -> Value {
        json!({ "n": self.n, "p50_ms": round3(self.p50), "p99_ms": round3(self.p99), "max_ms": round3(self.max) })
    }
}

/// Rounds to three decimals for the report.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// CPU seconds (user + system) of a process from `/proc/<pid>/stat`
/// (`self` for this process, `thread-self` for the calling thread).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / tck.max(1.0))
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kb: u64 = line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// CPU time and wall time of a process between two moments.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    cpu: f64,
    wall: u64,
}

impl CpuMeter {
    /// Starts measuring `pid` ("self" for this process).
    pub fn start(pid: &str) -> CpuMeter {
        CpuMeter { cpu: cpu_seconds(pid).unwrap_or(0.0), wall: now_us() }
    }

    /// `(cpu seconds used, share of one core)` since the start.
    pub fn read(&self, pid: &str) -> (f64, f64) {
        let cpu = cpu_seconds(pid).unwrap_or(0.0) - self.cpu;
        let wall = (now_us() - self.wall) as f64 / 1e6;
        (cpu, if wall > 0.0 { cpu / wall } else { 0.0 })
    }
}

/// Busy and total jiffies of one CPU from `/proc/stat` (busy: everything
/// but idle and iowait, so softirq work and other processes count too).
fn cpu_jiffies(cpu: usize) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu} ");
    let line = stat.lines().find(|l| l.starts_with(&name))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

/// How busy one CPU was between two moments, whoever kept it busy.
#[derive(Debug, Clone, Copy)]
pub struct CoreMeter {
    cpu: usize,
    start: (u64, u64),
}

impl CoreMeter {
    /// Starts measuring CPU `cpu`.
    pub fn start(cpu: usize) -> CoreMeter {
        CoreMeter { cpu, start: cpu_jiffies(cpu).unwrap_or((0, 0)) }
    }

    /// The busy share of the CPU since the start.
    pub fn read(&self) -> f64 {
        let (busy, total) = cpu_jiffies(self.cpu).unwrap_or(self.start);
        let (db, dt) = (busy.saturating_sub(self.start.0), total.saturating_sub(self.start.1));
        if dt == 0 {
            0.0
        } else {
            db as f64 / dt as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.n, p.p50, p.p99, p.max), (100, 50.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(&mut []).n, 0);
    }

    #[test]
    fn proc_readings_of_this_process() {
        assert!(cpu_seconds("self").is_some());
        assert!(status_bytes("self", "VmRSS").unwrap() > 0);
    }
}
