//! What the built-in rules read out of a line or a metrics sample: the lag
//! of a `Can't keep up!` line, the tick time of a watchdog line, an
//! `OutOfMemoryError`, an exception's signature, and the memory trend (a
//! least-squares line over the last window of samples). Pure functions and
//! small bounded state; the engine decides what raises an alert.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use super::config::MemoryGrowth;

/// The marker of vanilla's and Paper's overload warning.
pub const CANT_KEEP_UP: &str = "Can't keep up!";
/// The marker of the watchdog's line before it stops the server.
pub const WATCHDOG: &str = "A single server tick took";
/// The marker of an out-of-memory error.
pub const OOM: &str = "OutOfMemoryError";

/// Text put into an alert from a log line, characters at most.
pub const QUOTE_CHARS: usize = 300;
/// A server's name as the engine keeps it and alerts say it, characters
/// at most (a publisher chooses it).
pub const NAME_CHARS: usize = 100;
/// What the rules read of a line's message and of its stack trace, bytes
/// at most: the built-ins' markers and the user regexes look at this much
/// (a pathological regex set costs the reactor per byte read; a line may
/// be as long as its publisher likes).
pub const SCAN_BYTES: usize = 64 * 1024;

/// The first [`SCAN_BYTES`] of `s`, cut on a character boundary.
pub fn head(s: &str) -> &str {
    if s.len() <= SCAN_BYTES {
        return s;
    }
    let mut end = SCAN_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// The first `max` characters of `s` (with `…` when cut).
pub fn quote(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or(s)),
        None => s.to_string(),
    }
}

/// The number right after `marker` in `s` (digits and one dot; `None`
/// for one too long to be finite).
fn number_after(s: &str, marker: &str) -> Option<f64> {
    let rest = s.split_once(marker)?.1.trim_start();
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    rest.get(..end)?.parse().ok().filter(|v: &f64| v.is_finite())
}

/// `Running 2503ms or 50 ticks behind` → (2503, 50).
pub fn behind(message: &str) -> Option<(u64, u64)> {
    let ms = number_after(message, "Running ")?;
    let ticks = number_after(message, "ms or ").unwrap_or(0.0);
    Some((ms as u64, ticks as u64))
}

/// `A single server tick took 60.00 seconds (should be max 0.05)` → 60.0.
pub fn tick_took(message: &str) -> Option<f64> {
    number_after(message, "tick took ")
}

/// The line naming an `OutOfMemoryError`, in the message or the trace.
pub fn oom_line<'a>(message: &'a str, exception: &'a str) -> Option<&'a str> {
    if message.contains(OOM) {
        return Some(message);
    }
    exception.lines().find(|l| l.contains(OOM)).map(str::trim)
}

/// An exception's identity: the class of its first line and its first
/// `at` frame (messages differ between occurrences; these do not).
pub fn signature(exception: &str) -> (&str, &str) {
    let first = exception.lines().next().unwrap_or_default();
    let head = first.split(':').next().unwrap_or_default();
    let class = head.split_whitespace().last().unwrap_or_default();
    let frame = exception.lines().map(str::trim).find(|l| l.starts_with("at ")).unwrap_or_default();
    (class, frame)
}

/// A hash of a signature (the engine keeps hashes, not the strings).
pub fn signature_key(class: &str, frame: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (class, frame).hash(&mut h);
    h.finish()
}

/// `90` → `1 min 30 s`-like text for messages: seconds, minutes or hours.
pub fn span(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

/// A least-squares line through `(x, y)` points: (slope, r²). `None`
/// with fewer than two distinct x.
pub fn fit(points: impl Iterator<Item = (f64, f64)> + Clone) -> Option<(f64, f64)> {
    let (mut n, mut sx, mut sy) = (0.0, 0.0, 0.0);
    for (x, y) in points.clone() {
        n += 1.0;
        sx += x;
        sy += y;
    }
    if n < 2.0 {
        return None;
    }
    let (mx, my) = (sx / n, sy / n);
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in points {
        let (dx, dy) = (x - mx, y - my);
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r2 = if syy <= 0.0 { 0.0 } else { (sxy * sxy) / (sxx * syy) };
    Some((slope, r2))
}

/// Samples kept per window at most: one every window/120.
const SAMPLES: u64 = 120;
/// The trend is fitted at most this often, seconds.
const FIT_EVERY_S: f64 = 60.0;
/// Samples a fit needs at least.
const MIN_SAMPLES: usize = 10;
const MB: f64 = 1_000_000.0;

/// Memory growing steadily: what the alert says.
#[derive(Debug, Clone, PartialEq)]
pub struct Growth {
    /// MB (10^6 bytes) per hour.
    pub mb_per_hour: f64,
    /// How well the line fits.
    pub r2: f64,
    /// The span the samples cover, seconds.
    pub span_s: u64,
    /// Memory used now, bytes.
    pub used: u64,
    /// The host's memory, bytes (0: unknown).
    pub total: u64,
    /// Hours until `used` reaches `total` at this rate (`None`: unknown).
    pub hours_to_full: Option<f64>,
}

/// One server's memory samples over the last window (seconds on the
/// engine's clock, MB), at most [`SAMPLES`] + 1 of them.
#[derive(Debug, Clone, Default)]
pub struct MemoryTrend {
    samples: VecDeque<(f64, f64)>,
    uptime: i64,
    last_fit: Option<f64>,
}

impl MemoryTrend {
    /// Takes a sample at `t` seconds; returns the growth when the fitted
    /// line rises at least as steeply and straight as `cfg` asks. A
    /// restart (uptime going back) or an unmeasured 0 starts afresh.
    pub fn add(&mut self, t: f64, used: u64, total: u64, uptime: i64, cfg: &MemoryGrowth) -> Option<Growth> {
        if used == 0 || uptime < self.uptime {
            self.samples.clear();
            self.last_fit = None;
        }
        self.uptime = uptime;
        if used == 0 {
            return None;
        }
        let window = cfg.window_s as f64;
        while self.samples.front().is_some_and(|(s, _)| t - s > window) {
            self.samples.pop_front();
        }
        let spacing = window / SAMPLES as f64;
        if self.samples.back().is_none_or(|(s, _)| t - s >= spacing) {
            self.samples.push_back((t, used as f64 / MB));
        }
        let first = self.samples.front()?.0;
        let span = t - first;
        if self.samples.len() < MIN_SAMPLES || span < cfg.min_span_s as f64 {
            return None;
        }
        if self.last_fit.is_some_and(|f| t - f < FIT_EVERY_S) {
            return None;
        }
        self.last_fit = Some(t);
        let (slope, r2) = fit(self.samples.iter().copied())?;
        let mb_per_hour = slope * 3600.0;
        if mb_per_hour < cfg.min_mb_per_hour || r2 < cfg.min_r2 {
            return None;
        }
        let hours_to_full = (total > used).then(|| (total - used) as f64 / MB / mb_per_hour);
        Some(Growth { mb_per_hour, r2, span_s: span as u64, used, total, hours_to_full })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_of_a_cant_keep_up_line() {
        let m = "Can't keep up! Is the server overloaded? Running 2503ms or 50 ticks behind";
        assert_eq!(behind(m), Some((2503, 50)));
        assert_eq!(behind("Can't keep up! Did the system time change, or is the server overloaded?"), None);
    }

    #[test]
    fn the_tick_time_of_a_watchdog_line() {
        assert_eq!(tick_took("A single server tick took 60.00 seconds (should be max 0.05)"), Some(60.0));
        assert_eq!(tick_took("A single server tick took"), None);
    }

    #[test]
    fn an_out_of_memory_error_in_the_message_or_the_trace() {
        assert_eq!(
            oom_line("java.lang.OutOfMemoryError: Java heap space", ""),
            Some("java.lang.OutOfMemoryError: Java heap space")
        );
        let trace = "java.util.concurrent.ExecutionException: boom\n\tat a.b(C.java:1)\nCaused by: java.lang.OutOfMemoryError: Metaspace";
        assert_eq!(
            oom_line("Exception in server tick loop", trace),
            Some("Caused by: java.lang.OutOfMemoryError: Metaspace")
        );
        assert_eq!(oom_line("all good", "java.lang.NullPointerException"), None);
    }

    #[test]
    fn an_exception_is_known_by_its_class_and_first_frame() {
        let a = "java.lang.NullPointerException: Cannot invoke \"Entity.tick()\" because \"e\" is null\n\tat net.minecraft.Level.tick(Level.java:1)\n\tat x.y(Z.java:2)";
        let b = "java.lang.NullPointerException: entity 42 is null\n\tat net.minecraft.Level.tick(Level.java:1)";
        assert_eq!(signature(a), ("java.lang.NullPointerException", "at net.minecraft.Level.tick(Level.java:1)"));
        assert_eq!(signature_key(signature(a).0, signature(a).1), signature_key(signature(b).0, signature(b).1));
        let c = "Exception in thread \"main\" java.lang.IllegalStateException: no\n\tat q.r(S.java:3)";
        assert_eq!(signature(c).0, "java.lang.IllegalStateException");
    }

    #[test]
    fn the_head_of_a_long_field_ends_on_a_character_boundary() {
        let s = format!("a{}", "é".repeat(SCAN_BYTES));
        // Byte SCAN_BYTES falls inside an 'é': the head stops before it.
        assert_eq!(head(&s).len(), SCAN_BYTES - 1);
        assert_eq!(head("short"), "short");
    }

    #[test]
    fn quotes_are_cut_on_a_character_boundary() {
        assert_eq!(quote("héllo", 2), "hé…");
        assert_eq!(quote("hi", 2), "hi");
    }

    #[test]
    fn a_straight_line_fits_exactly() {
        let (slope, r2) = fit((0..10).map(|i| (i as f64, 3.0 * i as f64 + 1.0))).unwrap();
        assert!((slope - 3.0).abs() < 1e-9 && (r2 - 1.0).abs() < 1e-9);
        assert_eq!(fit([(1.0, 1.0), (1.0, 2.0)].into_iter()), None);
    }

    fn cfg() -> MemoryGrowth {
        MemoryGrowth::default()
    }

    #[test]
    fn memory_growing_steadily_for_an_hour_is_reported_with_the_time_to_full() {
        let mut trend = MemoryTrend::default();
        let total = 16_000 * 1_000_000;
        let mut found = None;
        // One sample every 30 s for an hour: 2000 MB + 200 MB/h.
        for i in 0..=120u64 {
            let t = i as f64 * 30.0;
            let used = ((2000.0 + 200.0 * t / 3600.0) * MB) as u64;
            if let Some(g) = trend.add(t, used, total, i as i64 * 30, &cfg()) {
                found = Some(g);
            }
        }
        let g = found.expect("a steady rise is found");
        assert!((g.mb_per_hour - 200.0).abs() < 1.0, "{g:?}");
        assert!(g.r2 > 0.99);
        // 16000 - 2200 MB left at 200 MB/h.
        assert!((g.hours_to_full.unwrap() - 69.0).abs() < 1.0, "{g:?}");
        assert!(trend.samples.len() <= SAMPLES as usize + 1);
    }

    #[test]
    fn flat_noisy_or_short_memory_is_not_reported() {
        let mut flat = MemoryTrend::default();
        let mut noisy = MemoryTrend::default();
        let mut short = MemoryTrend::default();
        for i in 0..=120u64 {
            let t = i as f64 * 30.0;
            assert_eq!(flat.add(t, 3_000_000_000, 0, i as i64, &cfg()), None);
            // A sawtooth (garbage collection) with a small rise.
            let saw = if i % 2 == 0 { 1500.0 } else { 2500.0 } + i as f64;
            assert_eq!(noisy.add(t, (saw * MB) as u64, 0, i as i64, &cfg()), None);
        }
        for i in 0..50u64 {
            // 25 minutes of a fast rise: under min_span_s.
            assert_eq!(short.add(i as f64 * 30.0, (1000 + i * 100) * 1_000_000, 0, i as i64, &cfg()), None);
        }
    }

    #[test]
    fn a_restart_starts_the_trend_afresh() {
        let mut trend = MemoryTrend::default();
        for i in 0..100u64 {
            trend.add(i as f64 * 30.0, (1000 + i * 10) * 1_000_000, 0, 1000 + i as i64 * 30, &cfg());
        }
        trend.add(3000.0, 500_000_000, 0, 5, &cfg());
        assert_eq!(trend.samples.len(), 1);
    }
}
