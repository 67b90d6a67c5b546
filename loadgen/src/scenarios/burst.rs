//! publish-burst (issue 11, part 4): does the hub hold its delivered rate and
//! latency when many publish requests are in flight at once? Hubs of this
//! kind have been seen to collapse to a few hundred lines/s with 64-128.
//!
//! One hub, `n` subscribers of one logs channel, the same rate in two steps
//! back to back: published over `--publishers` connections (32), then over
//! `--burst` connections (128). Each connection carries one request at a
//! time, so its count caps the requests in flight; when the hub answers
//! later than a line's interval (it is busy fanning out) the requests pile up
//! to that cap, which each step reports as `max_in_flight`. The burst step
//! passes when its delivered rate and p99 are within 20% of the first's.
//! Frames per hub CPU second, also reported for both, compare the hub's
//! efficiency when the machine does not give it a whole core.

use super::*;

/// How far the burst step may fall from the first: delivered rate at least
/// `1 - TOLERANCE` of it, p99 at most `1 + TOLERANCE` of it.
const TOLERANCE: f64 = 0.2;

/// The scenario. See the module docs.
pub(super) fn publish_burst(o: &Opts) -> Result<Value, Error> {
    let n = o.clients.unwrap_or(1000);
    let rate = o.rates.first().copied().unwrap_or(4000.0);
    let secs = o.duration.unwrap_or(5.0);
    let caps = [o.publishers, o.burst.unwrap_or(128)];
    let (mut bench, base, server, mut engine, connect) = one_logs_channel(o, n)?;
    let mut steps = Vec::new();
    let mut figures = Vec::new();
    for cap in caps {
        add_publisher(&mut engine, &bench, &server, cap)?;
        let step = Step { rate, sources: 1, secs, warmup: o.warmup, readers: n as u64 };
        let (mut json, outcome) = measure(o, &mut engine, &mut bench, &Source::Api, &step)?;
        let in_flight = engine.publisher.as_ref().map_or(0, |p| p.max_in_flight);
        info!("{cap} publish connections: at most {in_flight} requests in flight");
        json["publish_connections"] = json!(cap);
        json["max_in_flight"] = json!(in_flight);
        figures.push((outcome, in_flight, json["frames_per_hub_cpu_s"].clone()));
        steps.push(json);
    }
    let [(first, first_in_flight, first_per_cpu), (burst, burst_in_flight, burst_per_cpu)] =
        <[_; 2]>::try_from(figures).map_err(|_| "publish-burst measures two steps")?;
    let rate_ratio = burst.delivered / first.delivered.max(1.0);
    let p99_ratio = burst.p99 / first.p99.max(0.001);
    let met = rate_ratio >= 1.0 - TOLERANCE && p99_ratio <= 1.0 + TOLERANCE;
    info!(
        "publish-burst: {} connections {:.0} frames/s p99 {:.2} ms; {} connections {:.0} frames/s p99 {:.2} ms: {}",
        caps[0],
        first.delivered,
        first.p99,
        caps[1],
        burst.delivered,
        burst.p99,
        if met { "within 20%" } else { "NOT within 20%" }
    );
    Ok(json!({
        "params": { "clients": n, "rate_lines": rate, "seconds_per_step": secs, "warmup_s": o.warmup,
                    "publish_connections": caps, "sample_every": o.sample, "tracked": o.tracked },
        "connect": connect,
        "steps": steps,
        "result": {
            "delivered_fps": first.delivered.round(),
            "p99_ms": round3(first.p99),
            "max_in_flight": first_in_flight,
            "clean": first.clean,
            "frames_per_hub_cpu_s": first_per_cpu,
            "burst_delivered_fps": burst.delivered.round(),
            "burst_p99_ms": round3(burst.p99),
            "burst_max_in_flight": burst_in_flight,
            "burst_clean": burst.clean,
            "burst_frames_per_hub_cpu_s": burst_per_cpu,
            "delivered_ratio": round3(rate_ratio),
            "p99_ratio": round3(p99_ratio),
            "met": met,
        },
        "hub": hub_summary(&mut bench, base),
    }))
}
