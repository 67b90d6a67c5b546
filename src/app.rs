//! What the connection handlers work with, apart from the connection
//! itself: the hub, the token checker, the configuration, the agents' link
//! state and the stored-logs query thread. The reactor owns one [`App`] and
//! hands it to [`endpoints`](crate::endpoints) and
//! [`dispatch`](crate::dispatch) with the connection an event is for.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::time::Instant;

use crate::alerts::Alerts;
use crate::auth::Authenticator;
use crate::caps::Caps;
use crate::config::Config;
use crate::connlog::ConnLog;
use crate::hub::Hub;
use crate::link::{AgentState, Link};
use crate::logs_api::Queries;
use crate::protocol::{Publish, Time};
use crate::proxy;
use crate::store::{Recovered, Store};

/// See the module docs.
pub struct App {
    /// Clients, channels, history.
    pub hub: Hub,
    /// Token validation and the channel ACL.
    pub auth: Authenticator,
    /// The validated configuration.
    pub cfg: Config,
    /// Link state per configured agent, in config order (stats).
    pub agents: Vec<AgentState>,
    /// The stored-logs query thread (with on-disk history).
    pub queries: Option<Queries>,
    /// When the hub started (stats).
    pub started: Instant,
    /// Open connections (stats).
    pub connections: usize,
    /// What the connection caps count.
    pub caps: Caps,
    /// Proxied connections' refusals and fallbacks (stats).
    pub proxied: proxy::Counters,
    /// Connect and disconnect lines, summed up during storms.
    pub connlog: ConnLog,
    /// Alert rules and webhooks.
    pub alerts: Alerts,
}

impl App {
    /// Everything the handlers need: the hub (refilled from `recovered`),
    /// every configured agent as not connected yet, and, with on-disk
    /// history, the query thread answering through `link`.
    ///
    /// # Errors
    /// The query thread cannot be spawned.
    pub fn new(
        cfg: Config,
        auth: Authenticator,
        store: Option<Store>,
        recovered: Option<Recovered>,
        link: Link,
    ) -> std::io::Result<App> {
        let queries = store.as_ref().map(|store| Queries::spawn(store, link)).transpose()?;
        let hub = Hub::new(&cfg.limits, &cfg.history, store, recovered);
        let agents = cfg
            .agents
            .iter()
            .map(|a| AgentState {
                id: a.id,
                address: a.address.clone(),
                connected: false,
                since: None,
                last_error: None,
                streams: 0,
                refused: 0,
            })
            .collect();
        let now = Instant::now();
        Ok(App {
            alerts: Alerts::new(&cfg.alerts),
            hub,
            auth,
            caps: Caps::new(&cfg.limits),
            cfg,
            agents,
            queries,
            started: now,
            connections: 0,
            proxied: proxy::Counters::default(),
            connlog: ConnLog::new(now),
        })
    }

    /// Publishes a message (from an agent or the publish API) after the
    /// alert rules have seen it, then the alerts they raise. Returns the
    /// recipients of the message itself. `now` is the reactor's turn time
    /// (the rules' windows and cool-downs).
    pub fn publish(&mut self, mut msg: Publish, now: Instant) -> usize {
        if let Publish::Alert(_) = msg {
            // Webhooks get the id and time clients get.
            msg.stamp(Time::now());
        }
        let raised = self.alerts.observe(&msg, now);
        let recipients = self.hub.publish(&self.auth, msg);
        for alert in raised {
            self.hub.publish(&self.auth, Publish::Alert(alert));
        }
        recipients
    }

    /// Publishes the follow-up alerts of cool-downs that ended.
    pub fn tick_alerts(&mut self, now: Instant) {
        for alert in self.alerts.tick(now) {
            self.hub.publish(&self.auth, Publish::Alert(alert));
        }
    }

    /// Records an agent's link state.
    pub fn agent_state(&mut self, state: AgentState) {
        match self.agents.iter_mut().find(|a| a.id == state.id) {
            Some(slot) => *slot = state,
            None => self.agents.push(state),
        }
    }
}
