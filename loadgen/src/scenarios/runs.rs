//! The scenarios themselves: fan-out (and its ramp), many channels fed by
//! the bench agent, idle connections, connect storms and slow consumers.

use super::*;

/// Scenarios 1 and 2: `n` subscribers of one logs channel, publish API.
pub(super) fn fanout(o: &Opts, clients: usize, rates: &[f64], secs: f64, ramp: bool) -> Result<Value, Error> {
    let n = o.clients.unwrap_or(clients);
    let rates = if o.rates.is_empty() { rates.to_vec() } else { o.rates.clone() };
    let secs = o.duration.unwrap_or(secs);
    let (mut bench, base, server, mut engine, connect) = one_logs_channel(o, n)?;
    add_publisher(&mut engine, &bench, &server, o.publishers)?;
    let mut steps = Vec::new();
    let mut best: Option<(f64, Outcome)> = None;
    for rate in rates {
        let step = Step { rate, sources: 1, secs, warmup: o.warmup, readers: n as u64 };
        let (json, outcome) = measure(o, &mut engine, &mut bench, &Source::Api, &step)?;
        let pass = json["pass"].as_bool() == Some(true);
        steps.push(json);
        if pass {
            best = Some((rate, outcome));
        } else if ramp {
            break;
        }
    }
    let per_cpu = steps.iter().filter_map(|s| s["frames_per_hub_cpu_s"].as_f64()).fold(0.0, f64::max);
    let mut result = if ramp {
        match &best {
            Some((rate, out)) => json!({
                "max_rate_lines": rate,
                "max_passing_fps": rate * n as f64,
                "max_delivered_fps": out.delivered.round(),
                "p99_ms_at_max": round3(out.p99),
                "target_fps": 2_000_000,
                // A passing step delivered every frame it offered.
                "met": rate * n as f64 >= 2_000_000.0,
            }),
            None => json!({ "max_rate_lines": 0, "max_passing_fps": 0, "max_delivered_fps": 0, "met": false }),
        }
    } else {
        let last = steps.last().cloned().unwrap_or_default();
        json!({
            "delivered_fps": last["delivered_fps"],
            "offered_fps": last["offered_fps"],
            "latency": last["latency"],
            "clean": last["undelivered_frames"] == 0 && last["dropped_reported"] == 0 && last["seq_missing"] == 0,
        })
    };
    result["max_frames_per_hub_cpu_s"] = json!(per_cpu);
    result["hub_cpu_core_at_last_step"] = steps.last().map_or(Value::Null, |s| s["hub_cpu_core"].clone());
    Ok(json!({
        "params": { "clients": n, "seconds_per_step": secs, "warmup_s": o.warmup, "publishers": o.publishers,
                    "sample_every": o.sample, "tracked": o.tracked, "p99_limit_ms": o.p99_limit_ms },
        "connect": connect,
        "steps": steps,
        "result": result,
        "hub": hub_summary(&mut bench, base),
    }))
}

/// Scenario 3: many channels, a few subscribers each, fed by the bench agent.
pub(super) fn many_channels(o: &Opts) -> Result<Value, Error> {
    let channels = o.channels.unwrap_or(2000);
    let per = o.per_channel.unwrap_or(5);
    let rates = if o.rates.is_empty() { vec![50.0] } else { o.rates.clone() };
    let secs = o.duration.unwrap_or(10.0);
    let agent = BenchAgent::start(channels)?;
    let mut bench = Bench::start(o, Some(SocketAddr::from(([127, 0, 0, 1], agent.port))))?;
    let base = baseline(&bench);
    let deadline = now_us() + 60_000_000;
    while agent.streaming() < channels && now_us() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if agent.streaming() < channels {
        return Err(bench.failed(&format!("the hub opened {} of {channels} log streams", agent.streaming())));
    }
    info!("hub streams all {channels} servers' logs");
    let servers: Vec<Uuid> = agent.servers().iter().filter_map(|s| Uuid::try_parse(s).ok()).collect();
    let watch: Vec<Vec<Uuid>> = (0..channels * per).map(|i| vec![servers[i / per]]).collect();
    let specs = bench.clients(o, &watch, |i| vec![logs(&servers[i / per])])?;
    let mut engine = Engine::new(bench.hub.addr, o.sample, o.window.unwrap_or(1000))?;
    let connect = connect_all(&mut engine, specs, 120)?;
    require_all(&bench, &connect, channels * per)?;
    let mut steps = Vec::new();
    let mut best = 0.0;
    let mut last = None;
    for &rate in &rates {
        let step = Step { rate, sources: channels as u64, secs, warmup: o.warmup, readers: per as u64 };
        let (json, outcome) = measure(o, &mut engine, &mut bench, &Source::Agent(&agent), &step)?;
        let pass = json["pass"].as_bool() == Some(true);
        steps.push(json);
        last = Some((rate, outcome));
        if pass {
            best = rate;
        } else if rates.len() > 1 {
            break;
        }
    }
    let (rate, outcome) = last.ok_or("no rate to run")?;
    let step = steps.last().cloned().unwrap_or_default();
    let mut result = json!({
        "rate_per_channel": rate,
        "lines_in_per_s": rate * channels as f64,
        "offered_fps": rate * (channels * per) as f64,
        "delivered_fps": outcome.delivered.round(),
        "latency": step["latency"],
        "clean": outcome.clean,
        "hub_cpu_core": step["hub_cpu_core"],
        "hub_cpu_us_per_line": step["hub_cpu_us_per_line"],
        "hub_peak_rss": bench.hub.peak_rss(),
    });
    if rates.len() > 1 {
        result["max_rate_per_channel"] = json!(best);
        result["max_lines_in_per_s"] = json!(best * channels as f64);
    }
    let hub = hub_summary(&mut bench, base);
    bench.hub.stop();
    agent.stop();
    Ok(json!({
        "params": { "channels": channels, "per_channel": per, "rates_per_channel": rates, "seconds": secs,
                    "warmup_s": o.warmup, "sample_every": o.sample, "tracked": o.tracked },
        "connect": connect,
        "steps": steps,
        "result": result,
        "hub": hub,
    }))
}

/// Scenario 4: idle connections with three subscriptions each.
pub(super) fn idle(o: &Opts) -> Result<Value, Error> {
    let n = o.clients.unwrap_or(10_000);
    let settle = o.settle.unwrap_or(10.0);
    let mut bench = Bench::start(o, None)?;
    let before = baseline(&bench);
    let servers: Vec<Uuid> = (0..(n / 10).max(1)).map(|_| Uuid::new_v4()).collect();
    let watch: Vec<Vec<Uuid>> = (0..n).map(|i| vec![servers[i % servers.len()]]).collect();
    let specs = bench.clients(o, &watch, |i| {
        let s = servers[i % servers.len()];
        ["logs", "metrics", "status"].iter().map(|k| format!("server:{s}:{k}")).collect()
    })?;
    let mut engine = Engine::new(bench.hub.addr, o.sample, o.window.unwrap_or(1000))?;
    let connect = connect_all(&mut engine, specs, 120)?;
    require_all(&bench, &connect, n)?;
    let right_after = bench.hub.rss();
    let until = engine.tally.last_subscribed_at + (settle * 1e6) as u64;
    engine.run_until(until, |_| false)?;
    let after = bench.hub.rss();
    let open = engine.open_clients();
    if open != n {
        return Err(bench.failed(&format!("{} of {n} idle clients were closed", n - open)));
    }
    let per_conn = (after as f64 - before as f64) / n as f64;
    info!("idle: baseline {} KiB, after {} KiB: {per_conn:.0} bytes per connection", before / 1024, after / 1024);
    Ok(json!({
        "params": { "clients": n, "channels_per_client": 3, "servers": servers.len(), "settle_s": settle },
        "connect": connect,
        "result": {
            "baseline_rss": before,
            "rss_after_connect": right_after,
            "rss_after_settle": after,
            "bytes_per_connection": per_conn.round(),
            "met": per_conn < 800.0 && before <= 8 * 1024 * 1024,
        },
        "hub": hub_summary(&mut bench, before),
    }))
}

/// Scenario 5: connect, authenticate and subscribe as fast as possible.
pub(super) fn connect_storm(o: &Opts) -> Result<Value, Error> {
    let n = o.clients.unwrap_or(10_000);
    let window = o.window.unwrap_or(n);
    let mut bench = Bench::start(o, None)?;
    let base = baseline(&bench);
    let servers: Vec<Uuid> = (0..(n / 10).max(1)).map(|_| Uuid::new_v4()).collect();
    let watch: Vec<Vec<Uuid>> = (0..n).map(|i| vec![servers[i % servers.len()]]).collect();
    let mint = now_us();
    let specs = bench.clients(o, &watch, |i| vec![logs(&servers[i % servers.len()])])?;
    let mint_s = (now_us() - mint) as f64 / 1e6;
    let mut engine = Engine::new(bench.hub.addr, o.sample, window)?;
    let cpu = CpuMeter::start(&bench.hub.pid);
    let connect = connect_all(&mut engine, specs, 120)?;
    let (hub_cpu_s, _) = cpu.read(&bench.hub.pid);
    let subscribed = connect["subscribed"].as_u64().unwrap_or(0);
    if subscribed < n as u64 {
        warn!("{} of {n} clients did not subscribe: {}", n as u64 - subscribed, connect["failures"]);
    }
    let per_second = connect["per_second"].as_f64().unwrap_or(0.0);
    Ok(json!({
        "params": { "clients": n, "window": window, "alg": o.alg, "tokens_minted_s": round3(mint_s) },
        "result": {
            "alg": o.alg,
            "per_second": per_second,
            "time_to_subscribed": connect["time_to_subscribed"],
            "subscribed": subscribed,
            "hub_cpu_s": round3(hub_cpu_s),
            "hub_cpu_us_per_connection": (hub_cpu_s * 1e6 / subscribed.max(1) as f64).round(),
            "met": subscribed == n as u64 && per_second >= 10_000.0,
        },
        "connect": connect,
        "hub": hub_summary(&mut bench, base),
    }))
}

/// Scenario 6: scenario 1 at a fixed rate, then the same with `slow`
/// clients that stop reading.
pub(super) fn slow_consumer(o: &Opts) -> Result<Value, Error> {
    let n = o.clients.unwrap_or(1000);
    let slow = o.slow.unwrap_or(10).min(n.saturating_sub(1));
    let rate = o.rates.first().copied().unwrap_or(1600.0);
    let secs = o.duration.unwrap_or(6.0);
    let slow_secs = o.slow_duration.unwrap_or(15.0);
    let mut bench = Bench::start(o, None)?;
    let base = baseline(&bench);
    let server = Uuid::new_v4();
    let mut specs = bench.clients(o, &vec![vec![server]; n], |_| vec![logs(&server)])?;
    for spec in &mut specs[n - slow..] {
        spec.rcvbuf = Some(SLOW_RCVBUF);
    }
    let mut engine = Engine::new(bench.hub.addr, o.sample, o.window.unwrap_or(1000))?;
    let connect = connect_all(&mut engine, specs, 120)?;
    require_all(&bench, &connect, n)?;
    add_publisher(&mut engine, &bench, &server, o.publishers)?;
    let step = Step { rate, sources: 1, secs, warmup: o.warmup, readers: n as u64 };
    let (all_reading, a) = measure(o, &mut engine, &mut bench, &Source::Api, &step)?;
    // The last clients stop reading; none of them is tracked (tracked ones
    // are spread from index 0 with a stride of n / tracked).
    // The hub logs each disconnect with its close code.
    let closed_before = bench.hub.log_count("(4008)");
    for i in n - slow..n {
        engine.pause(i);
    }
    // Until the kernel's buffers of a stalled connection are full, the hub
    // sees nothing: its send buffer (autotuned up to tcp_wmem's maximum)
    // and the client's receive buffer. The fill phase lasts until they are
    // full and `client_queue` frames more are queued, at the measured frame
    // size; the measured phase comes after it.
    let frame_bytes = (engine.tally.bytes as f64 / engine.tally.frames.max(1) as f64).max(100.0);
    let buffered = tcp_wmem_max() + f64::from(SLOW_RCVBUF) + 256.0 * frame_bytes;
    let fill_secs = o
        .fill_duration
        .unwrap_or_else(|| (buffered / (rate * frame_bytes) * 1.2 + 2.0).clamp(o.warmup + 1.0, 60.0).round());
    info!("{slow} clients stop reading; {fill_secs} s for their buffers to fill, then {slow_secs} s measured");
    let step = Step { rate, sources: 1, secs: fill_secs, warmup: o.warmup, readers: (n - slow) as u64 };
    let (filling, f) = measure(o, &mut engine, &mut bench, &Source::Api, &step)?;
    let step = Step { rate, sources: 1, secs: slow_secs, warmup: o.warmup, readers: (n - slow) as u64 };
    let (with_slow, b) = measure(o, &mut engine, &mut bench, &Source::Api, &step)?;
    let closed = bench.hub.log_count("(4008)") - closed_before;
    let ratio = if a.p99 > 0.0 { b.p99 / a.p99 } else { 0.0 };
    let dropped = filling["hub_counters"]["dropped"].as_f64().unwrap_or(0.0)
        + with_slow["hub_counters"]["dropped"].as_f64().unwrap_or(0.0);
    Ok(json!({
        "params": { "clients": n, "slow": slow, "rate_lines": rate, "seconds": secs, "fill_seconds": fill_secs,
                    "slow_seconds": slow_secs, "warmup_s": o.warmup, "slow_rcvbuf": SLOW_RCVBUF },
        "connect": connect,
        "steps": [all_reading, filling, with_slow],
        "result": {
            "rate_lines": rate,
            "p99_ms_all_reading": round3(a.p99),
            "p99_ms_while_filling": round3(f.p99),
            "p99_ms_with_slow": round3(b.p99),
            "p99_ratio": round3(ratio),
            "others_clean": f.clean && b.clean,
            "slow_clients_closed_by_hub": closed,
            "hub_dropped_for_slow": dropped,
            "met": f.clean && b.clean && ratio <= 1.10,
        },
        "hub": hub_summary(&mut bench, base),
    }))
}

/// The largest send buffer TCP autotuning may give a socket (bytes).
pub(super) fn tcp_wmem_max() -> f64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4_194_304.0)
}
