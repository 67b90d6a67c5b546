//! systemd's notify protocol, without a crate: one datagram per state to
//! the unix socket `$NOTIFY_SOCKET` names (a path, or an abstract name
//! written `@name`). The reactor sends `READY=1` when its loop starts,
//! `STOPPING=1` when shutdown begins and, with `WATCHDOG_USEC` set,
//! `WATCHDOG=1` from the loop every half of it, so a stuck loop stops
//! them. Sends never block and their failures are ignored (the service
//! manager may have gone).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// A connected notify target. See the module docs.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    watchdog: Option<Duration>,
}

/// The address `NOTIFY_SOCKET` names: `@name` is abstract, else a path.
fn address(value: &str) -> Option<SocketAddr> {
    match value.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok(),
        None if value.starts_with('/') => SocketAddr::from_pathname(value).ok(),
        None => None,
    }
}

/// Half of `WATCHDOG_USEC` when it is set for this process
/// (`WATCHDOG_PID`, when set, must be ours).
fn watchdog_interval(env: &impl Fn(&str) -> Option<String>) -> Option<Duration> {
    if let Some(pid) = env("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec = env("WATCHDOG_USEC")?.trim().parse::<u64>().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for, or `None` when it is unset
    /// or unusable.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Option<Notifier> {
        let addr = address(&env("NOTIFY_SOCKET")?)?;
        let sock = UnixDatagram::unbound().ok()?;
        sock.set_nonblocking(true).ok()?;
        Some(Notifier { sock, addr, watchdog: watchdog_interval(&env) })
    }

    /// Sends one state line (`READY=1`, ...).
    pub fn send(&self, state: &str) {
        if let Err(e) = self.sock.send_to_addr(state.as_bytes(), &self.addr) {
            log::debug!("notify {state}: {e}");
        }
    }

    /// How often to send `WATCHDOG=1`, when the service manager watches.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }
}

/// What the loop tells the service manager, and when the next watchdog
/// ping is due. Without a notify socket every call does nothing.
#[derive(Debug, Default)]
pub struct Systemd {
    notifier: Option<Notifier>,
    next_watchdog: Option<Instant>,
}

impl Systemd {
    /// Over `notifier` (`None`: not run as a notify service).
    pub fn new(notifier: Option<Notifier>) -> Systemd {
        Systemd { notifier, next_watchdog: None }
    }

    /// `READY=1`, and the first watchdog deadline.
    pub fn ready(&mut self, now: Instant) {
        if let Some(notifier) = &self.notifier {
            notifier.send("READY=1");
            self.next_watchdog = notifier.watchdog().map(|every| now + every);
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        if let Some(notifier) = &self.notifier {
            notifier.send("STOPPING=1");
        }
    }

    /// `WATCHDOG=1` when due; only the loop calls it, so a stuck loop
    /// stops the pings.
    pub fn alive(&mut self, now: Instant) {
        let (Some(notifier), Some(due)) = (&self.notifier, self.next_watchdog) else { return };
        if now >= due {
            notifier.send("WATCHDOG=1");
            self.next_watchdog = notifier.watchdog().map(|every| now + every);
        }
    }

    /// When the loop must wake up next for the watchdog.
    pub fn deadline(&self) -> Option<Instant> {
        self.next_watchdog
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstract_and_path_names() {
        assert!(address("@aymc/notify").and_then(|a| a.as_abstract_name().map(<[u8]>::to_vec)).is_some());
        assert_eq!(
            address("/run/systemd/notify").and_then(|a| a.as_pathname().map(|p| p.to_owned())).unwrap(),
            std::path::PathBuf::from("/run/systemd/notify")
        );
        assert!(address("relative").is_none());
    }

    #[test]
    fn watchdog_is_half_and_for_this_pid_only() {
        let env = |k: &str| (k == "WATCHDOG_USEC").then(|| "2000000".to_string());
        assert_eq!(watchdog_interval(&env), Some(Duration::from_secs(1)));
        let other = |k: &str| match k {
            "WATCHDOG_USEC" => Some("2000000".to_string()),
            "WATCHDOG_PID" => Some("1".to_string()),
            _ => None,
        };
        assert_eq!(watchdog_interval(&other), None);
        assert_eq!(watchdog_interval(&|_: &str| None), None);
    }
}
