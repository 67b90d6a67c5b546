//! The two pieces of state every rule keeps per server: a [`Window`] of
//! recent occurrence times (bounded by the rule's threshold) and a
//! [`Gate`] that lets one alert through per cool-down and counts the
//! occurrences it holds back, for one follow-up alert when the cool-down
//! ends. Pure: times are passed in.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// What an occurrence says, for the alert's `message` and `data`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detail {
    /// The alert's message.
    pub message: String,
    /// Rule-specific `data` keys (besides `rule` and `count`).
    pub data: Map<String, Value>,
}

/// The times of the last occurrences within a window, at most `threshold`
/// of them: enough to tell whether `threshold` fall within the window.
#[derive(Debug, Clone, Default)]
pub struct Window {
    hits: VecDeque<Instant>,
}

impl Window {
    /// Records an occurrence at `now`. Returns the occurrences within
    /// `window` when they reach `threshold` (the condition holds).
    pub fn hit(&mut self, now: Instant, window: Duration, threshold: u32) -> Option<u32> {
        while self.hits.front().is_some_and(|t| now.saturating_duration_since(*t) > window) {
            self.hits.pop_front();
        }
        self.hits.push_back(now);
        let threshold = threshold.max(1) as usize;
        while self.hits.len() > threshold {
            self.hits.pop_front();
        }
        (self.hits.len() >= threshold).then_some(self.hits.len() as u32)
    }

    /// When the last occurrence was.
    pub fn last(&self) -> Option<Instant> {
        self.hits.back().copied()
    }
}

/// One alert per cool-down; the occurrences during it are counted.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    /// The cool-down ends then.
    until: Option<Instant>,
    /// Occurrences held back since the last alert.
    suppressed: u32,
    /// The latest held-back occurrence (refreshed at most once a second).
    latest: Option<(Instant, Detail)>,
}

/// How often the detail of a held-back occurrence is refreshed: at most
/// one allocation a second however often a rule matches.
const DETAIL_EVERY: Duration = Duration::from_secs(1);

impl Gate {
    /// The condition held at `now` with `count` occurrences in its window:
    /// `Some(count)` (plus any held back) when an alert goes out, which
    /// starts a cool-down of `cooldown`; `None` while cooling down (the
    /// occurrence is counted, and `detail` kept for the follow-up).
    pub fn pass(
        &mut self,
        now: Instant,
        cooldown: Duration,
        count: u32,
        detail: impl FnOnce() -> Detail,
    ) -> Option<(u32, Detail)> {
        if self.until.is_some_and(|u| now < u) {
            self.suppressed = self.suppressed.saturating_add(1);
            if self.latest.as_ref().is_none_or(|(t, _)| now.saturating_duration_since(*t) >= DETAIL_EVERY) {
                self.latest = Some((now, detail()));
            }
            return None;
        }
        let count = count.saturating_add(std::mem::take(&mut self.suppressed));
        self.latest = None;
        self.until = (!cooldown.is_zero()).then(|| now + cooldown);
        Some((count, detail()))
    }

    /// When the cool-down ends, if one runs.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// At the end of a cool-down: the occurrences held back during it and
    /// the latest one's detail, for a follow-up alert, which starts a new
    /// cool-down; `None` (and the gate opens) when there were none, or
    /// when the cool-down has not ended.
    pub fn expire(&mut self, now: Instant, cooldown: Duration) -> Option<(u32, Detail)> {
        if self.until.is_none_or(|u| now < u) {
            return None;
        }
        let n = std::mem::take(&mut self.suppressed);
        let latest = self.latest.take();
        match latest {
            Some((_, detail)) if n > 0 => {
                self.until = (!cooldown.is_zero()).then(|| now + cooldown);
                Some((n, detail))
            }
            _ => {
                self.until = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(msg: &str) -> Detail {
        Detail { message: msg.into(), data: Map::new() }
    }

    #[test]
    fn a_window_holds_the_condition_only_with_threshold_hits_inside_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = Window::default();
        assert_eq!(w.hit(t0, s(10), 3), None);
        assert_eq!(w.hit(t0 + s(5), s(10), 3), None);
        // The first hit is 11 s old at the third: it no longer counts.
        assert_eq!(w.hit(t0 + s(11), s(10), 3), None);
        assert_eq!(w.hit(t0 + s(12), s(10), 3), Some(3));
        // Never more than the threshold is kept.
        assert_eq!(w.hit(t0 + s(13), s(10), 3), Some(3));
        assert_eq!(w.hits.len(), 3);
        assert_eq!(w.last(), Some(t0 + s(13)));
    }

    #[test]
    fn one_alert_per_cooldown_then_a_follow_up_with_the_count_held_back() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut g = Gate::default();
        assert_eq!(g.pass(t0, s(60), 3, || d("first")), Some((3, d("first"))));
        assert_eq!(g.pass(t0 + s(1), s(60), 3, || d("second")), None);
        assert_eq!(g.pass(t0 + s(2), s(60), 3, || d("third")), None);
        // Not yet over.
        assert_eq!(g.expire(t0 + s(59), s(60)), None);
        assert_eq!(g.expire(t0 + s(60), s(60)), Some((2, d("third"))));
        // The follow-up started a new cool-down; nothing happened in it.
        assert_eq!(g.pass(t0 + s(61), s(60), 1, || d("x")), None);
        assert_eq!(g.expire(t0 + s(120), s(60)), Some((1, d("x"))));
        assert_eq!(g.expire(t0 + s(180), s(60)), None);
        assert_eq!(g.until(), None);
        // Open again: the next occurrence alerts at once.
        assert_eq!(g.pass(t0 + s(181), s(60), 1, || d("again")), Some((1, d("again"))));
    }

    #[test]
    fn the_held_back_detail_is_refreshed_at_most_once_a_second() {
        let t0 = Instant::now();
        let mut g = Gate::default();
        let cool = Duration::from_secs(60);
        g.pass(t0, cool, 1, || d("a"));
        let mut calls = 0;
        for i in 0..100 {
            g.pass(t0 + Duration::from_millis(1 + i), cool, 1, || {
                calls += 1;
                d("b")
            });
        }
        assert_eq!(calls, 1);
        assert_eq!(g.expire(t0 + cool, cool).map(|(n, _)| n), Some(100));
    }

    #[test]
    fn a_zero_cooldown_lets_every_occurrence_through() {
        let t0 = Instant::now();
        let mut g = Gate::default();
        for i in 0..5 {
            assert_eq!(g.pass(t0 + Duration::from_millis(i), Duration::ZERO, 1, || d("x")).map(|(n, _)| n), Some(1));
        }
        assert_eq!(g.until(), None);
    }
}
