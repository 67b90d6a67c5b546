//! The scenarios of the benchmark issue, each one run: start the hub, set
//! up clients and a source of lines, measure, return one JSON object whose
//! `result` holds the figures `scripts/bench` tabulates.
//!
//! A measured step publishes `rate * duration` lines; the first `warmup`
//! seconds are left out of the delivered rate and the latency samples;
//! then the step drains (waits until every queued frame has arrived, 5 s
//! at most) so that a late frame or a `MESSAGES_DROPPED` report is not
//! missed, and compares what arrived with what the hub accepted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{info, warn};
use serde_json::{json, Value};
use tempfile::TempDir;
use uuid::Uuid;

use crate::bench_agent::{BenchAgent, RunReport};
use crate::cli::Opts;
use crate::engine::{ClientSpec, Engine};
use crate::frames;
use crate::hubproc::{pin_self, HubProc, HubSpec};
use crate::publisher::Publisher;
use crate::stats::{now_us, round3, CoreMeter, CpuMeter, Percentiles};
use crate::tokens::{self, Signer};
use crate::{bench_line, Error};

mod burst;
mod reader_check;
mod runs;

use burst::publish_burst;
use reader_check::reader_check;
use runs::{connect_storm, fanout, idle, many_channels, slow_consumer};

/// How long a step may take to drain after its last line.
const DRAIN_US: u64 = 5_000_000;
/// Extra time after a drained step for late `MESSAGES_DROPPED` reports.
const LINGER_US: u64 = 300_000;
/// Connections the hub may hold in every scenario.
const MAX_CONNECTIONS: usize = 20_000;
/// `SO_RCVBUF` of the slow consumers: with loopback's autotuned buffers a
/// client that stops reading would absorb tens of seconds of traffic
/// before the hub noticed anything.
const SLOW_RCVBUF: u32 = 32 * 1024;

/// Runs the scenario `o.scenario`.
///
/// # Errors
/// Whatever stops the run: the hub does not start, clients cannot connect...
pub fn run(o: &Opts) -> Result<Value, Error> {
    // One descriptor per client: raise the soft limit to the hard one (0: unknown).
    let fds = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    if let Some(cpu) = o.cpu.into_iter().chain(o.hub_cpu).find(|&c| c >= cpus) {
        return Err(format!("CPU {cpu} does not exist ({cpus} online); use --cpu/--hub-cpu or --no-pin").into());
    }
    if let Some(cpu) = o.cpu {
        // Before any thread starts, so that they all inherit it.
        pin_self(cpu)?;
    }
    let mut result = match o.scenario.as_str() {
        "fanout-1k" => fanout(o, 1000, &[500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 3500.0, 4000.0], 5.0, true),
        "fanout-10k" => fanout(o, 10_000, &[100.0], 10.0, false),
        "many-channels" => many_channels(o),
        "idle" => idle(o),
        "connect-storm" => connect_storm(o),
        "publish-burst" => publish_burst(o),
        "slow-consumer" => slow_consumer(o),
        "reader-check" => reader_check(o),
        other => Err(format!("unknown scenario {other}").into()),
    }?;
    result["scenario"] = json!(o.scenario);
    result["pinned"] = json!({ "hub_cpu": o.hub_cpu, "loadgen_cpu": o.cpu });
    result["loadgen_fd_limit"] = json!(fds);
    result["load_average"] = json!(std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    Ok(result)
}

/// A started hub with its directory and the key its tokens need. The
/// directory goes last (fields drop in order): after the hub has stopped.
struct Bench {
    hub: HubProc,
    signer: Signer,
    _dir: TempDir,
}

impl Bench {
    fn start(o: &Opts, agent: Option<SocketAddr>) -> Result<Bench, Error> {
        // Removed on drop unless `--keep`.
        let dir = tempfile::Builder::new()
            .prefix("aymc-loadgen-")
            .disable_cleanup(o.keep)
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let (signer, keys) = if o.alg == "es256" { tokens::es256(dir.path())? } else { tokens::hs256()? };
        let spec = HubSpec {
            bin: o.hub.clone(),
            cpu: o.hub_cpu,
            keys,
            max_connections: MAX_CONNECTIONS,
            agent,
            set: o.hub_set.clone(),
        };
        let hub = HubProc::start(&spec, dir.path())?;
        info!("hub pid {} on {} (dir {})", hub.pid, hub.addr, dir.path().display());
        Ok(Bench { hub, signer, _dir: dir })
    }

    /// One user token per client, allowed the servers it watches.
    fn clients(
        &self,
        o: &Opts,
        watch: &[Vec<Uuid>],
        channels: impl Fn(usize) -> Vec<String>,
    ) -> Result<Vec<ClientSpec>, Error> {
        let n = watch.len();
        let every = (n / o.tracked.max(1)).max(1);
        watch
            .iter()
            .enumerate()
            .map(|(i, servers)| {
                Ok(ClientSpec {
                    token: self.signer.token(Uuid::new_v4(), "user", servers)?,
                    channels: channels(i),
                    tracked: o.tracked > 0 && i % every == 0 && i / every < o.tracked,
                    rcvbuf: None,
                    deflate: o.deflate,
                })
            })
            .collect()
    }

    fn failed(&self, what: &str) -> Error {
        format!("{what}\nlast lines of the hub's log:\n{}", self.hub.log_tail(15)).into()
    }
}

fn logs(server: &Uuid) -> String {
    format!("server:{server}:logs")
}

/// A hub with `n` clients subscribed to the logs channel of one new server:
/// the hub, its idle RSS, the server, the engine and the connect figures.
fn one_logs_channel(o: &Opts, n: usize) -> Result<(Bench, u64, Uuid, Engine, Value), Error> {
    let bench = Bench::start(o, None)?;
    let base = baseline(&bench);
    let server = Uuid::new_v4();
    let specs = bench.clients(o, &vec![vec![server]; n], |_| vec![logs(&server)])?;
    let mut engine = Engine::new(bench.hub.addr, o.sample, o.window.unwrap_or(1000))?;
    let connect = connect_all(&mut engine, specs, 120)?;
    require_all(&bench, &connect, n)?;
    Ok((bench, base, server, engine, connect))
}

/// Connects `specs` (at most `engine.window` handshakes in flight) and waits
/// for every `SUBSCRIBED`, `timeout_s` at most. Returns the connect figures.
fn connect_all(engine: &mut Engine, specs: Vec<ClientSpec>, timeout_s: u64) -> Result<Value, Error> {
    let n = specs.len();
    let before = engine.tally.subscribed;
    let start = now_us();
    engine.add_clients(specs);
    engine.run_until(start + timeout_s * 1_000_000, |e| !e.handshaking())?;
    let subscribed = engine.tally.subscribed - before;
    let took = engine.tally.last_subscribed_at.saturating_sub(start).max(1);
    let mut times = engine.tally.sub_times[before..].to_vec();
    let p = Percentiles::of(&mut times);
    info!(
        "{subscribed}/{n} clients subscribed in {:.2} s ({:.0}/s)",
        took as f64 / 1e6,
        subscribed as f64 * 1e6 / took as f64
    );
    Ok(json!({
        "clients": n,
        "subscribed": subscribed,
        "seconds": round3(took as f64 / 1e6),
        "per_second": (subscribed as f64 * 1e6 / took as f64).round(),
        "time_to_subscribed": p.json(),
        "failures": engine.tally.failures,
        "errors": engine.tally.errors,
    }))
}

fn require_all(bench: &Bench, connect: &Value, n: usize) -> Result<(), Error> {
    if connect["subscribed"].as_u64() != Some(n as u64) {
        let (subscribed, failures, errors) = (&connect["subscribed"], &connect["failures"], &connect["errors"]);
        return Err(
            bench.failed(&format!("only {subscribed} of {n} clients subscribed; failures {failures}, errors {errors}"))
        );
    }
    Ok(())
}

/// Where a step's lines come from.
enum Source<'a> {
    /// The publisher in `engine.publisher`.
    Api,
    /// The bench agent.
    Agent(&'a BenchAgent),
}

/// One measured step: `sources` channels get `rate` lines/s each for
/// `secs`; `readers` clients get (and read) every line of a channel.
struct Step {
    rate: f64,
    sources: u64,
    secs: f64,
    warmup: f64,
    readers: u64,
}

/// What a step found, beside its JSON.
struct Outcome {
    p99: f64,
    delivered: f64,
    /// Nothing dropped, missing or refused.
    clean: bool,
}

fn measure(
    o: &Opts,
    engine: &mut Engine,
    bench: &mut Bench,
    source: &Source,
    s: &Step,
) -> Result<(Value, Outcome), Error> {
    let hub = &mut bench.hub;
    let per_source = (s.rate * s.secs).round() as u64;
    let lines = per_source * s.sources;
    let snap = engine.tally.snapshot();
    let hub0 = hub.counters()?;
    let (accepted0, recipients0, refused0) = match &engine.publisher {
        Some(p) => (p.accepted, p.recipients, p.refused.values().sum::<u64>()),
        None => (0, 0, 0),
    };
    let t0 = now_us() + 50_000;
    let mut agent_run: Option<JoinHandle<RunReport>> = None;
    match source {
        Source::Api => {
            let p = engine.publisher.as_mut().ok_or("no publisher")?;
            p.max_behind = 0;
            p.start(s.rate, lines, t0);
        }
        Source::Agent(agent) => agent_run = Some(agent.run(s.rate, per_source, t0)),
    }
    let w0 = t0 + (s.warmup * 1e6) as u64;
    let w1 = t0 + (s.secs * 1e6) as u64;
    engine.run_until(w0, |_| false)?;
    let (frames0, hub_cpu, my_cpu) = (engine.tally.frames, CpuMeter::start(&hub.pid), CpuMeter::start("self"));
    let cores = (o.hub_cpu.map(CoreMeter::start), o.cpu.map(CoreMeter::start));
    engine.run_until(w1, |_| false)?;
    let frames1 = engine.tally.frames;
    let (hub_cpu_s, hub_core) = hub_cpu.read(&hub.pid);
    let (_, my_core) = my_cpu.read("self");
    let (hub_core_busy, my_core_busy) = (cores.0.map(|c| round3(c.read())), cores.1.map(|c| round3(c.read())));
    let deadline = w1 + DRAIN_US;
    let (sent, agent_report) = match agent_run {
        Some(handle) => {
            engine.run_until(deadline + DRAIN_US, |_| handle.is_finished())?;
            let report = handle.join().map_err(|_| "the bench agent's generator panicked")?;
            (report.sent, Some(report))
        }
        None => {
            engine.run_until(deadline, |e| e.publisher.as_ref().is_some_and(Publisher::finished))?;
            (engine.publisher.as_ref().map_or(0, |p| p.accepted - accepted0), None)
        }
    };
    let expected = sent * s.readers;
    engine.run_until(deadline, |e| e.tally.frames - snap.frames >= expected)?;
    engine.run_until(now_us() + LINGER_US, |_| false)?;
    let t = &engine.tally;
    let received = t.frames - snap.frames;
    let mut lat: Vec<u32> =
        t.samples[snap.samples..].iter().filter(|(stamp, _)| (w0..w1).contains(stamp)).map(|&(_, l)| l).collect();
    let p = Percentiles::of(&mut lat);
    let delivered = (frames1 - frames0) as f64 * 1e6 / (w1 - w0) as f64;
    let hub1 = hub.counters()?;
    let [hub_in, hub_out, hub_dropped] = [0, 1, 2].map(|i| hub1[i] - hub0[i]);
    let missing = expected.saturating_sub(received);
    let dropped_reported = t.dropped - snap.dropped;
    let seq_missing = t.seq_missing - snap.seq_missing;
    let (refused, behind, recipients) = match &engine.publisher {
        Some(pb) if matches!(source, Source::Api) => {
            (pb.refused.values().sum::<u64>() - refused0, pb.max_behind, pb.recipients - recipients0)
        }
        _ => (0, 0, 0),
    };
    let short = lines.saturating_sub(sent);
    let clean = missing == 0 && dropped_reported == 0 && seq_missing == 0 && refused == 0 && short == 0;
    let pass = clean && p.n > 0 && p.p99 <= o.p99_limit_ms;
    info!(
        "rate {} lines/s x {} channels x {} readers: delivered {:.0} frames/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, \
         undelivered {missing}, dropped {dropped_reported}, seq gaps {seq_missing}, hub cpu {:.0}% (core {:.0}% busy), \
         loadgen cpu {:.0}% (core {:.0}% busy) {}",
        s.rate,
        s.sources,
        s.readers,
        delivered,
        p.p50,
        p.p99,
        p.max,
        hub_core * 100.0,
        hub_core_busy.unwrap_or(0.0) * 100.0,
        my_core * 100.0,
        my_core_busy.unwrap_or(0.0) * 100.0,
        if pass { "PASS" } else { "FAIL" }
    );
    let mut step = json!({
        "rate_lines": s.rate,
        "offered_fps": s.rate * (s.sources * s.readers) as f64,
        "seconds": s.secs,
        "lines_due": lines,
        "lines_sent": sent,
        "delivered_fps": delivered.round(),
        "latency": p.json(),
        "expected_frames": expected,
        "received_frames": received,
        "undelivered_frames": missing,
        "dropped_reported": dropped_reported,
        "drop_reports": t.drop_reports - snap.drop_reports,
        "seq_missing": seq_missing,
        "seq_disorder": t.seq_disorder - snap.seq_disorder,
        "hub_counters": { "in": hub_in, "out": hub_out, "dropped": hub_dropped },
        "hub_cpu_s": round3(hub_cpu_s),
        "hub_cpu_core": round3(hub_core),
        "frames_per_hub_cpu_s": ((frames1 - frames0) as f64 / hub_cpu_s.max(1e-6)).round(),
        // Hub CPU per line taken in: the frames delivered in the window, per reader.
        "hub_cpu_us_per_line": round3(hub_cpu_s * 1e6 * s.readers as f64 / (frames1 - frames0).max(1) as f64),
        "loadgen_cpu_core": round3(my_core),
        "hub_core_busy": hub_core_busy,
        "loadgen_core_busy": my_core_busy,
        "hub_rss": hub.rss(),
        "pass": pass,
    });
    if matches!(source, Source::Api) {
        step["publisher"] = json!({ "refused": refused, "max_behind": behind, "recipients": recipients });
    }
    if let Some(r) = agent_report {
        step["agent"] = json!({ "sent": r.sent, "skipped": r.skipped, "max_outstanding": r.max_outstanding });
    }
    if !hub.alive() {
        return Err(bench.failed("the hub died during the step"));
    }
    Ok((step, Outcome { p99: p.p99, delivered, clean }))
}

/// Replaces the engine's publisher by one with `conns` connections (at most
/// that many requests in flight) and waits until they are all connected.
fn add_publisher(engine: &mut Engine, bench: &Bench, server: &Uuid, conns: usize) -> Result<(), Error> {
    let token = bench.signer.token(Uuid::new_v4(), "service", &[])?;
    let mut p = Publisher::new(bench.hub.addr, &token, &server.to_string(), conns);
    p.connect(engine.registry())?;
    engine.publisher = Some(p);
    let want = conns.max(1);
    engine.run_until(now_us() + 5_000_000, |e| e.publisher.as_ref().is_some_and(|p| p.ready() == want))?;
    if engine.publisher.as_ref().map_or(0, Publisher::ready) != want {
        return Err(bench.failed("the publisher connections did not all connect"));
    }
    Ok(())
}

/// Figures every scenario reports about the hub at the end.
fn hub_summary(bench: &mut Bench, baseline_rss: u64) -> Value {
    json!({
        "cpu_s": round3(bench.hub.cpu()),
        "rss": bench.hub.rss(),
        "peak_rss": bench.hub.peak_rss(),
        "baseline_rss": baseline_rss,
    })
}

/// Waits a moment after start so the hub's RSS is its idle baseline.
fn baseline(bench: &Bench) -> u64 {
    std::thread::sleep(Duration::from_millis(1000));
    bench.hub.rss()
}
