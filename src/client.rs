//! What a client *is*, apart from the socket that carries it: its outgoing
//! queue and, once upgraded, its session (identity, subscriptions, rate
//! limit, its own timers). The [`Hub`](crate::hub::Hub) keeps one
//! [`Client`] per open connection, under the connection's key; nothing here
//! does IO or knows about sockets.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use crate::auth::{Identity, Role};
use crate::config::Limits;
use crate::outq::OutQueue;

/// One subscription of a client: the channel and the client's position in
/// that channel's subscriber list (O(1) removal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sub {
    /// The hub's channel index.
    pub channel: u32,
    /// Index in the channel's subscriber list.
    pub pos: u32,
}

/// The token bucket of PROTOCOL.md section 7 and the window of refusals.
#[derive(Debug)]
pub struct RateLimit {
    tokens: f32,
    last: Instant,
    /// Allocated only while a client is being refused: 8 bytes per idle
    /// connection instead of 48.
    refusals: Option<Box<Refusals>>,
}

/// A client being refused: when, within the last 10 s, and when it was
/// last told.
#[derive(Debug, Default)]
struct Refusals {
    times: VecDeque<Instant>,
    /// When the last `RATE_LIMITED` error was sent.
    last_error: Option<Instant>,
}

/// What the rate limiter says about one incoming data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// Handle it.
    Allow,
    /// Ignore it and send `RATE_LIMITED`.
    RefuseAndTell,
    /// Ignore it silently (an error went out less than a second ago).
    Refuse,
    /// Close with `1008`.
    Abuse,
}

impl RateLimit {
    fn new(burst: u32, now: Instant) -> RateLimit {
        RateLimit { tokens: burst as f32, last: now, refusals: None }
    }

    /// Takes a token for one data message.
    pub fn check(&mut self, rate: u32, burst: u32, now: Instant) -> Rate {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate as f32).min(burst as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Rate::Allow;
        }
        let window = Duration::from_secs(10);
        let refusals = self.refusals.get_or_insert_with(Box::default);
        let times = &mut refusals.times;
        while times.front().is_some_and(|t| now.saturating_duration_since(*t) > window) {
            times.pop_front();
        }
        times.push_back(now);
        if times.len() > 10 * rate as usize {
            return Rate::Abuse;
        }
        match refusals.last_error {
            Some(t) if now.saturating_duration_since(t) < Duration::from_secs(1) => Rate::Refuse,
            _ => {
                refusals.last_error = Some(now);
                Rate::RefuseAndTell
            }
        }
    }

    fn release(&mut self, now: Instant) {
        // Quiet for 10 s: the last error is older than that too.
        let quiet =
            |r: &Refusals| r.times.back().is_none_or(|t| now.saturating_duration_since(*t) > Duration::from_secs(10));
        if self.refusals.as_deref().is_some_and(quiet) {
            self.refusals = None;
        }
    }
}

/// An upgraded client's session.
#[derive(Debug)]
pub struct Session {
    /// The token's identity.
    pub identity: Identity,
    /// Subscriptions (up to four without an allocation of their own).
    pub subs: SmallVec<[Sub; 4]>,
    /// Rate limit state.
    pub rate: RateLimit,
    /// When the next Ping goes out.
    pub next_ping: Instant,
    /// When `TOKEN_EXPIRING` is due (unix s); `i64::MAX` once sent.
    pub notice_at: i64,
    /// permessage-deflate was negotiated: the window (bits) the hub
    /// compresses with.
    pub deflate: Option<u8>,
}

impl Session {
    /// A new session for a validated identity.
    pub fn new(identity: Identity, limits: &Limits, expiry_notice_s: u64, now: Instant) -> Session {
        let mut s = Session {
            identity,
            subs: SmallVec::new(),
            rate: RateLimit::new(limits.rate_burst, now),
            next_ping: now + Duration::from_secs(limits.ping_interval_s),
            notice_at: i64::MAX,
            deflate: None,
        };
        s.schedule_notice(expiry_notice_s);
        s
    }

    /// Replaces the identity (in-band `auth`): a new token gets its own
    /// `TOKEN_EXPIRING`, `expiry_notice_s` before it expires.
    pub fn set_identity(&mut self, identity: Identity, expiry_notice_s: u64) {
        self.identity = identity;
        self.schedule_notice(expiry_notice_s);
    }

    fn schedule_notice(&mut self, expiry_notice_s: u64) {
        let ahead = i64::try_from(expiry_notice_s).unwrap_or(i64::MAX);
        self.notice_at = self.identity.exp.saturating_sub(ahead);
    }

    /// Who this is, for log lines.
    pub fn describe(&self) -> String {
        let role = match self.identity.role {
            Role::Admin => "admin",
            Role::Service => "service",
            Role::User => "user",
        };
        format!("{} ({role})", self.identity.user)
    }
}

/// One connection as the hub sees it.
#[derive(Debug, Default)]
pub struct Client {
    /// Bytes waiting for the socket.
    pub out: OutQueue,
    /// Set once upgraded; `None` for HTTP exchanges and closing clients.
    pub session: Option<Session>,
    /// Listed in the hub's list of replies to flush.
    pub(crate) dirty: bool,
    /// Listed in the hub's list of live messages to flush.
    pub(crate) fanout: bool,
}

impl Client {
    /// Frees buffers an idle client does not need.
    pub fn release(&mut self, now: Instant) {
        self.out.release();
        if let Some(session) = &mut self.session {
            session.rate.release(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_refuses_over_burst_tells_once_per_second_and_closes_on_abuse() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(2, t0);
        assert_eq!(r.check(1, 2, t0), Rate::Allow);
        assert_eq!(r.check(1, 2, t0), Rate::Allow);
        assert_eq!(r.check(1, 2, t0), Rate::RefuseAndTell);
        assert_eq!(r.check(1, 2, t0), Rate::Refuse);
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(r.check(1, 2, t1), Rate::Allow, "refilled");
        let mut last = Rate::Allow;
        for _ in 0..10 {
            last = r.check(1, 2, t1);
        }
        assert_eq!(last, Rate::Abuse, "more than 10 x rate refused within 10 s");
    }
}
