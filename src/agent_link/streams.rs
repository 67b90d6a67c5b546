//! The agent link's streams: `StreamLogs` and `WatchStatus` per server,
//! each resumed with backoff after every break, and the cancel handles
//! that end them all when the agent stops answering.

use super::*;
/// One open stream's registration among its agent's cancel handles:
/// resolves when the agent is found down; dropping it (the stream ended)
/// unregisters it, so a flapping agent holds one handle per open stream,
/// not one per retry.
pub(super) struct CancelHandle {
    shared: Shared,
    key: u64,
    cancelled: oneshot::Receiver<()>,
}

impl CancelHandle {
    /// Registers a cancel handle for a stream of this agent.
    fn new(shared: &Shared) -> CancelHandle {
        let (tx, rx) = oneshot::channel();
        let mut s = shared.borrow_mut();
        let key = s.next_cancel;
        s.next_cancel += 1;
        s.cancels.insert(key, tx);
        CancelHandle { shared: Rc::clone(shared), key, cancelled: rx }
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        // Already gone when `mark_down` cancelled it.
        self.shared.borrow_mut().cancels.remove(&self.key);
    }
}

pub(super) fn stream_opened(shared: &Shared, delta: isize) {
    let mut s = shared.borrow_mut();
    s.streams = s.streams.saturating_add_signed(delta);
    s.report();
}

/// How a followed stream ended.
pub(super) enum Ended {
    /// The call failed (the agent went away, or refused it).
    Failed(grpcio::Error),
    /// The agent ended the stream.
    Closed,
    /// The monitor found the agent down and cancelled it.
    Cancelled,
}

/// Follows an open server stream, handing each item to `on_item`, until it
/// fails, ends, or is cancelled because the agent stopped answering; counts
/// it among the agent's open streams meanwhile.
pub(super) async fn follow<T, S>(shared: &Shared, mut stream: S, mut on_item: impl FnMut(T)) -> Ended
where
    S: futures::Stream<Item = grpcio::Result<T>> + Unpin,
{
    stream_opened(shared, 1);
    let mut cancel = CancelHandle::new(shared);
    let ended = loop {
        match future::select(stream.next(), &mut cancel.cancelled).await {
            Either::Left((Some(Ok(item)), _)) => on_item(item),
            Either::Left((Some(Err(e)), _)) => break Ended::Failed(e),
            Either::Left((None, _)) => break Ended::Closed,
            Either::Right(_) => break Ended::Cancelled,
        }
    };
    drop(cancel);
    stream_opened(shared, -1);
    ended
}

/// One server's `StreamLogs`, resumed from the last offset after every break.
pub(super) async fn stream_logs(shared: Shared, server: Uuid) {
    let mut backoff = Backoff::new();
    loop {
        let (client, offset) = {
            let s = shared.borrow();
            (s.client.clone(), s.servers.get(&server).map_or(0, |t| t.offset))
        };
        let mut req = StreamLogsRequest::new();
        req.set_server_id(server.to_string());
        req.set_after_offset(offset);
        let error = match client.stream_logs_opt(&req, CallOption::default()) {
            Err(e) => e.to_string(),
            Ok(stream) => {
                let mut first = true;
                let ended = follow(&shared, stream, |entry| {
                    backoff.reset();
                    take_entry(&shared, server, entry, std::mem::take(&mut first));
                })
                .await;
                match ended {
                    Ended::Failed(e) => e.to_string(),
                    Ended::Closed => "stream ended".to_string(),
                    Ended::Cancelled => "agent unreachable".to_string(),
                }
            }
        };
        log::debug!("log stream of {server} broke: {error}");
        backoff_sleep(&shared, backoff.step()).await;
    }
}

/// Publishes one entry of a server's log stream (`first`: the first of a
/// newly opened stream, which asked for entries after the server's offset).
///
/// An entry at or below the offset is a repeat and dropped, unless the
/// agent's offsets went back (its state was reset, or the server moved to
/// another agent): a `truncated` entry, or the first entry of a stream, at
/// or below it. Then the entry is taken, the server's offset starts again
/// from it, and one `Log lines lost` alert says so, as for any `truncated`
/// entry.
pub(super) fn take_entry(shared: &Shared, server: Uuid, entry: pb::LogEntry, first: bool) {
    let mut s = shared.borrow_mut();
    let Some(track) = s.servers.get_mut(&server) else { return };
    let (offset, after) = (entry.get_offset(), track.offset);
    let went_back = offset <= after && after > 0 && (first || entry.get_truncated());
    if offset <= after && !went_back {
        return;
    }
    track.offset = offset;
    let name = track.name.clone();
    if went_back {
        warn!("log offsets of server {server} went back from {after} to {offset}; following the agent from there");
        let msg = format!(
            "The agent's log offsets of server '{name}' went back (from {after} to {offset}): its state was reset \
             or the server moved to another agent; lines written meanwhile may be lost"
        );
        s.link.publish(alert(Severity::Warning, "Log lines lost", msg, AlertSource::Server, server));
    } else if entry.get_truncated() {
        let msg = format!("The agent no longer held some lines of server '{name}' after offset {after}; they are lost");
        s.link.publish(alert(Severity::Warning, "Log lines lost", msg, AlertSource::Server, server));
    }
    s.link.publish(Publish::Log(log_entry(server, entry)));
}

/// The hub's log entry for an agent's (its strings are moved, not copied).
pub(super) fn log_entry(server: Uuid, mut e: pb::LogEntry) -> LogEntry {
    let is = |names: &[&str]| names.iter().any(|n| e.get_level().eq_ignore_ascii_case(n));
    let level = if is(&["ERROR", "FATAL", "SEVERE"]) {
        Level::Error
    } else if is(&["WARN", "WARNING"]) {
        Level::Warn
    } else if is(&["DEBUG", "TRACE"]) {
        Level::Debug
    } else {
        Level::Info
    };
    LogEntry {
        server_id: server,
        timestamp: Time::from_unix_ms(e.get_timestamp()).filter(|_| e.get_timestamp() > 0),
        level,
        source: match e.take_source() {
            s if s.is_empty() => "server".to_string(),
            s => s,
        },
        message: e.take_message(),
        exception: e.take_exception(),
        offset: e.get_offset(),
    }
}

/// One server's `WatchStatus`; on `UNIMPLEMENTED` the monitor polls
/// `GetStatus` instead and this task ends.
pub(super) async fn watch_status(shared: Shared, server: Uuid) {
    let mut backoff = Backoff::new();
    let mut broke = false;
    loop {
        let client = shared.borrow().client.clone();
        let mut req = ServerRequest::new();
        req.set_server_id(server.to_string());
        let error = match client.watch_status_opt(&req, CallOption::default()) {
            Err(e) => e,
            Ok(stream) => {
                let ended = follow(&shared, stream, |status| {
                    backoff.reset();
                    if std::mem::take(&mut broke) {
                        shared.borrow_mut().recheck = true;
                    }
                    apply_status(&shared, server, &status);
                })
                .await;
                broke = true;
                match ended {
                    Ended::Failed(e) => e,
                    Ended::Closed | Ended::Cancelled => {
                        backoff_sleep(&shared, backoff.step()).await;
                        continue;
                    }
                }
            }
        };
        if let grpcio::Error::RpcFailure(status) = &error {
            if status.code() == RpcStatusCode::UNIMPLEMENTED {
                info!("agent {} has no WatchStatus; polling GetStatus", shared.borrow().id);
                shared.borrow_mut().poll_status = true;
                return;
            }
        }
        broke = true;
        backoff_sleep(&shared, backoff.step()).await;
    }
}
