//! The command line, turned into [`Opts`] before anything runs. Every
//! scenario has its own defaults (the figures); options override
//! them, which is how `scripts/bench --smoke` makes tiny runs.

use std::path::PathBuf;

use crate::Error;

/// Usage text.
pub const LOADGEN_USAGE: &str = "\
usage: aymc-loadgen SCENARIO [options]
scenarios (defaults in brackets):
  fanout-1k       clients [1000] on one logs channel, publish API; ramp --rate [500,1000,..,4000] lines/s,
                  --duration [5] s per step; reports the highest step with p99 <= --p99-limit and no drop
  fanout-10k      clients [10000], --rate [100] lines/s, --duration [10]
  many-channels   --channels [2000] servers x --per-channel [5] clients, --rate [50] lines/s per server
                  (several: a ramp), --duration [10], fed by the in-process gRPC bench agent
  idle            clients [10000] x 3 channels; RSS --settle [10] s after the last SUBSCRIBED
  connect-storm   clients [10000] connect, authenticate (--alg hs256|es256) and subscribe, --window [10000]
                  handshakes in flight
  slow-consumer   clients [1000], --rate [1600] lines/s; a phase of --duration [6] s with everyone reading,
                  then --slow [10] clients stop reading: a phase while their buffers fill (as long as
                  tcp_wmem's maximum takes at the rate, or --fill-duration S), then one of
                  --slow-duration [15] s, measured
  publish-burst   clients [1000] on one logs channel, --rate [4000] lines/s for --duration [5] s published over
                  --publishers [32] connections, then over --burst [128]: at most that many requests in flight
  reader-check    no hub: a blaster thread on --hub-cpu feeds clients [1000]; measures the reader's capacity
options:
  --clients N  --rate R[,R..]  --duration S  --warmup S [1]  --channels N  --per-channel N  --settle S
  --window N  --alg hs256|es256  --burst N  --slow N  --slow-duration S  --fill-duration S  --p99-limit MS [50]
  --publishers N [32]  --sample N [64] (one latency sample per N frames)  --tracked N [20] (seq-checked clients)
  --deflate (clients offer permessage-deflate)
  --hub PATH [aymc-hub beside this binary]  --hub-cpu N [0]  --cpu N [1]  --no-pin
  --hub-set SECTION.KEY=VALUE (a hub config line, e.g. history.max_bytes=1e9 → [history] max_bytes = 1e9;
  sections limits, history, monitor; repeatable)  --keep (keep the temp dir)  --out FILE (JSON copy)
output: one JSON object on stdout; progress on stderr (LOADGEN_LOG=debug for more)";

/// The scenarios.
pub const SCENARIOS: [&str; 8] = [
    "fanout-1k",
    "fanout-10k",
    "many-channels",
    "idle",
    "connect-storm",
    "slow-consumer",
    "publish-burst",
    "reader-check",
];

/// Validated options.
#[derive(Debug, Clone)]
pub struct Opts {
    /// One of [`SCENARIOS`].
    pub scenario: String,
    /// The hub binary.
    pub hub: PathBuf,
    /// Core for the hub.
    pub hub_cpu: Option<usize>,
    /// Core for the load generator.
    pub cpu: Option<usize>,
    /// `--clients`
    pub clients: Option<usize>,
    /// `--rate` (several: a ramp).
    pub rates: Vec<f64>,
    /// `--duration`, seconds.
    pub duration: Option<f64>,
    /// `--warmup`, seconds excluded at the start of each step.
    pub warmup: f64,
    /// `--channels`
    pub channels: Option<usize>,
    /// `--per-channel`
    pub per_channel: Option<usize>,
    /// `--settle`, seconds.
    pub settle: Option<f64>,
    /// `--window`
    pub window: Option<usize>,
    /// `--alg`: `hs256` or `es256`.
    pub alg: String,
    /// `--burst`: publish connections of publish-burst's second step.
    pub burst: Option<usize>,
    /// `--slow`
    pub slow: Option<usize>,
    /// `--slow-duration`, seconds.
    pub slow_duration: Option<f64>,
    /// `--fill-duration`, seconds.
    pub fill_duration: Option<f64>,
    /// `--p99-limit`, ms.
    pub p99_limit_ms: f64,
    /// `--publishers`
    pub publishers: usize,
    /// `--sample`
    pub sample: u32,
    /// `--tracked`
    pub tracked: usize,
    /// `--hub-set`: `(section, "key = value")`.
    pub hub_set: Vec<(String, String)>,
    /// `--keep`
    pub keep: bool,
    /// `--deflate`: clients offer permessage-deflate.
    pub deflate: bool,
    /// `--out`
    pub out: Option<PathBuf>,
}

fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, Error> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value.parse().map_err(|_| format!("{flag}: '{value}' is not a valid number").into())
}

impl Opts {
    /// Parses the arguments (without the program name). `Ok(None)`: help.
    ///
    /// # Errors
    /// An unknown scenario or option, a missing or malformed value.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Opts>, Error> {
        let mut args = args.into_iter();
        let scenario = match args.next() {
            None => return Ok(None),
            Some(a) if a == "-h" || a == "--help" || a == "help" => return Ok(None),
            Some(a) if SCENARIOS.contains(&a.as_str()) => a,
            Some(a) => return Err(format!("unknown scenario '{a}'").into()),
        };
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let mut o = Opts {
            scenario,
            hub: exe.with_file_name("aymc-hub"),
            hub_cpu: Some(0),
            cpu: Some(1),
            clients: None,
            rates: Vec::new(),
            duration: None,
            warmup: 1.0,
            channels: None,
            per_channel: None,
            settle: None,
            window: None,
            alg: "hs256".into(),
            burst: None,
            slow: None,
            slow_duration: None,
            fill_duration: None,
            p99_limit_ms: 50.0,
            publishers: 32,
            sample: 64,
            tracked: 20,
            hub_set: Vec::new(),
            keep: false,
            deflate: false,
            out: None,
        };
        while let Some(flag) = args.next() {
            let mut value = || args.next();
            match flag.as_str() {
                "--hub" => o.hub = PathBuf::from(value().ok_or("--hub needs a path")?),
                "--hub-cpu" => o.hub_cpu = Some(number(&flag, value())?),
                "--cpu" => o.cpu = Some(number(&flag, value())?),
                "--no-pin" => (o.hub_cpu, o.cpu) = (None, None),
                "--clients" => o.clients = Some(number(&flag, value())?),
                "--rate" => {
                    let list = value().ok_or("--rate needs a value")?;
                    o.rates =
                        list.split(',').map(|r| number(&flag, Some(r.trim().to_string()))).collect::<Result<_, _>>()?;
                    if o.rates.iter().any(|r| *r <= 0.0) {
                        return Err("--rate: rates must be positive".into());
                    }
                }
                "--duration" => o.duration = Some(number(&flag, value())?),
                "--warmup" => o.warmup = number(&flag, value())?,
                "--channels" => o.channels = Some(number(&flag, value())?),
                "--per-channel" => o.per_channel = Some(number(&flag, value())?),
                "--settle" => o.settle = Some(number(&flag, value())?),
                "--window" => o.window = Some(number(&flag, value())?),
                "--alg" => {
                    o.alg = value().ok_or("--alg needs a value")?.to_ascii_lowercase();
                    if o.alg != "hs256" && o.alg != "es256" {
                        return Err(format!("--alg: '{}' is not hs256 or es256", o.alg).into());
                    }
                }
                "--burst" => o.burst = Some(number(&flag, value())?),
                "--slow" => o.slow = Some(number(&flag, value())?),
                "--slow-duration" => o.slow_duration = Some(number(&flag, value())?),
                "--fill-duration" => o.fill_duration = Some(number(&flag, value())?),
                "--p99-limit" => o.p99_limit_ms = number(&flag, value())?,
                "--publishers" => o.publishers = number(&flag, value())?,
                "--sample" => o.sample = number(&flag, value())?,
                "--tracked" => o.tracked = number(&flag, value())?,
                "--hub-set" => {
                    const NEEDS: &str = "--hub-set needs SECTION.KEY=VALUE (section limits, history or monitor)";
                    let kv = value().ok_or(NEEDS)?;
                    let (k, v) = kv.split_once('=').ok_or(NEEDS)?;
                    let (section, key) = k.trim().split_once('.').ok_or(NEEDS)?;
                    if !["limits", "history", "monitor"].contains(&section) {
                        return Err(NEEDS.into());
                    }
                    o.hub_set.push((section.to_string(), format!("{key} = {}", v.trim())));
                }
                "--keep" => o.keep = true,
                "--deflate" => o.deflate = true,
                "--out" => o.out = Some(PathBuf::from(value().ok_or("--out needs a path")?)),
                "-h" | "--help" => return Ok(None),
                other => return Err(format!("unknown option '{other}'").into()),
            }
        }
        for (flag, d) in
            [("--duration", o.duration), ("--slow-duration", o.slow_duration), ("--fill-duration", o.fill_duration)]
        {
            if d.is_some_and(|d| d <= o.warmup) {
                return Err(format!("{flag} must be longer than --warmup").into());
            }
        }
        if o.scenario != "reader-check" && !o.hub.exists() {
            return Err(format!("no hub binary at {} (build it, or pass --hub)", o.hub.display()).into());
        }
        Ok(Some(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Opts>, Error> {
        Opts::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn options_override_defaults() {
        let o = parse(&["reader-check", "--clients", "50", "--rate", "10,20", "--no-pin", "--hub-set", "history.a=1"])
            .unwrap()
            .unwrap();
        assert_eq!(o.clients, Some(50));
        assert_eq!(o.rates, vec![10.0, 20.0]);
        assert_eq!((o.cpu, o.hub_cpu), (None, None));
        assert_eq!(o.hub_set, vec![("history".to_string(), "a = 1".to_string())]);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(parse(&["nope"]).is_err());
        assert!(parse(&["reader-check", "--clients", "x"]).is_err());
        assert!(parse(&["reader-check", "--bogus"]).is_err());
        assert!(parse(&["reader-check", "--duration", "1", "--warmup", "2"]).is_err());
        assert!(parse(&[]).unwrap().is_none());
    }
}
