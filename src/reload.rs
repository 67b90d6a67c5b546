//! SIGHUP: what a reloaded configuration may change in a running hub, and
//! how. [`apply`] compares the running [`Config`] with the one just read
//! and validated, takes what is safe to change without a restart into the
//! [`App`], and returns the one log line that says what changed and what
//! waits for a restart. Reads no file itself (the reactor's reload hook
//! does) and touches no socket.
//!
//! Applied: `[limits]` (new caps apply to what comes next; connections
//! already open keep their per-connection timers and rate bucket) except
//! `max_idle_channels`, `auth.allowed_origins`, the `[[servers]]` owners
//! for the channel ACL, and `[alerts]` (rules and webhooks; see
//! [`Alerts::reload`](crate::alerts::Alerts::reload)). Everything else
//! (listen, keys, issuer, history, agents, server names, trusted proxies,
//! `[log]`...) is reported as needing a restart and stays as it runs.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::HashMap;
use std::fmt::Debug;

use uuid::Uuid;

use crate::app::App;
use crate::config::{Config, ConfigError, Limits};

/// Whether two values differ (the config types compare by their `Debug`
/// form: they hold floats-free plain data, and deriving `PartialEq` on
/// every one of them only for this is not worth it).
fn differs<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

/// The `[limits]` keys whose values differ, in the file's order.
fn limits_changed(old: &Limits, new: &Limits) -> Vec<String> {
    let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return vec!["limits".into()];
    };
    old.iter().filter(|(k, v)| new.get(*k) != Some(v)).map(|(k, _)| format!("limits.{k}")).collect()
}

/// Reads and validates the configuration again (what `main` gives).
pub type ReloadFn = Box<dyn FnMut() -> Result<Config, ConfigError>>;

/// SIGHUP: load and validate the configuration again with `load`; on
/// success take what can change safely ([`apply`]), else keep running as
/// is. Without a hook it only says there is nothing to reload.
pub fn on_sighup(load: Option<&mut ReloadFn>, app: &mut App) {
    let Some(load) = load else {
        log::warn!("SIGHUP: no reload hook; nothing reloaded");
        return;
    };
    match load() {
        Ok(new) => log::info!("{}", apply(app, new).line()),
        Err(e) => log::error!("config reload failed, keeping the running config: {e}"),
    }
}

/// The owners map of a `[[servers]]` list.
pub fn owners(cfg: &Config) -> HashMap<Uuid, Uuid> {
    cfg.servers.iter().filter_map(|s| Some((s.id, s.owner?))).collect()
}

/// What a reload changes, split in applied and needing a restart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Keys taken into the running hub.
    pub applied: Vec<String>,
    /// Keys that changed in the file but wait for a restart.
    pub restart: Vec<String>,
}

impl Changes {
    /// The one log line.
    pub fn line(&self) -> String {
        let list = |v: &[String]| if v.is_empty() { "nothing".to_string() } else { v.join(", ") };
        format!("config reloaded: applied {}; needs a restart: {}", list(&self.applied), list(&self.restart))
    }
}

/// Compares `old` (running) and `new` (just loaded).
pub fn diff(old: &Config, new: &Config, running_owners: &HashMap<Uuid, Uuid>) -> Changes {
    let mut c = Changes::default();
    for key in limits_changed(&old.limits, &new.limits) {
        if key == "limits.max_idle_channels" {
            c.restart.push(key);
        } else {
            c.applied.push(key);
        }
    }
    if differs(&old.auth.allowed_origins, &new.auth.allowed_origins) {
        c.applied.push("auth.allowed_origins".into());
    }
    if &owners(new) != running_owners {
        c.applied.push("servers.owner".into());
    }
    if differs(&old.alerts, &new.alerts) {
        c.applied.push("alerts".into());
    }
    let (oa, na) = (&old.auth, &new.auth);
    let restart = [
        ("listen", differs(&old.listen, &new.listen)),
        ("trusted_proxies", differs(&old.trusted_proxies, &new.trusted_proxies)),
        ("proxy_protocol", old.proxy_protocol != new.proxy_protocol),
        (
            "auth keys",
            differs(&oa.jwt_secret, &na.jwt_secret)
                || differs(&oa.jwt_public_key, &na.jwt_public_key)
                || differs(&oa.jwt_secret_file, &na.jwt_secret_file),
        ),
        (
            "auth claims (issuer, audience, leeway_s, expiry_notice_s)",
            differs(
                &(&oa.issuer, &oa.audience, oa.leeway_s, oa.expiry_notice_s),
                &(&na.issuer, &na.audience, na.leeway_s, na.expiry_notice_s),
            ),
        ),
        ("monitor", differs(&old.monitor, &new.monitor)),
        ("history", differs(&old.history, &new.history)),
        ("log", differs(&old.log, &new.log)),
        ("agents", differs(&old.agents, &new.agents)),
        (
            "servers (ids, names, agents; owners in crash notifications)",
            differs(
                &old.servers.iter().map(|s| (s.id, &s.name, s.agent, s.owner)).collect::<Vec<_>>(),
                &new.servers.iter().map(|s| (s.id, &s.name, s.agent, s.owner)).collect::<Vec<_>>(),
            ),
        ),
    ];
    c.restart.extend(restart.into_iter().filter(|(_, changed)| *changed).map(|(k, _)| k.to_string()));
    c
}

/// Takes what can change from `new` into `app` and returns what changed.
/// `app.cfg` keeps the running values of everything else.
pub fn apply(app: &mut App, new: Config) -> Changes {
    let changes = diff(&app.cfg, &new, app.auth.owners());
    let mut limits = new.limits.clone();
    limits.max_idle_channels = app.cfg.limits.max_idle_channels;
    app.hub.set_limits(&limits);
    app.caps.set_limits(&limits);
    app.cfg.limits = limits;
    app.cfg.auth.allowed_origins = new.auth.allowed_origins.clone();
    app.auth.set_owners(owners(&new));
    app.alerts.reload(&new.alerts);
    app.cfg.alerts = new.alerts;
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;

    #[test]
    fn diff_splits_applied_and_restart() {
        let old = Config::default();
        let mut new = Config::default();
        assert_eq!(
            diff(&old, &new, &HashMap::new()).line(),
            "config reloaded: applied nothing; needs a restart: nothing"
        );
        new.limits.max_subscriptions = 3;
        new.limits.max_idle_channels = 5;
        new.listen = "127.0.0.1:1".parse().unwrap();
        new.auth.allowed_origins = Some(vec!["https://a".into()]);
        let id = Uuid::new_v4();
        new.servers.push(ServerConfig { id, name: None, agent: None, owner: Some(Uuid::new_v4()) });
        let c = diff(&old, &new, &HashMap::new());
        assert_eq!(c.applied, ["limits.max_subscriptions", "auth.allowed_origins", "servers.owner"]);
        assert_eq!(c.restart[..2], ["limits.max_idle_channels", "listen"]);
        // Owners already running are not reported again.
        let c = diff(&old, &new, &owners(&new));
        assert!(!c.applied.contains(&"servers.owner".to_string()));
    }
}
