//! `GET /api/v1/servers/{id}/logs` (PROTOCOL.md section 11.4): stored log
//! lines, paged. With on-disk history the query runs on its own thread
//! (the reactor never waits on the disk) and the answer comes back as an
//! [`Event::Reply`]; without it, the reactor answers from its rings. That
//! one thread serves every user, so each query has a deadline
//! ([`QUERY_TIMEOUT`]): past it the answer is `503` and the next query
//! runs on the same connection.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::sync::mpsc::{channel, Sender};

use log::warn;

use crate::http;
use crate::link::{Event, Link, Reply};
use crate::store::{render_text, LogQuery, Page, Reader, Store, StoreError, QUERY_TIMEOUT};

/// One query to run.
pub struct Job {
    /// The waiting connection.
    pub key: usize,
    /// Its serial.
    pub serial: u64,
    /// What to look for.
    pub query: LogQuery,
    /// Answer `text/plain` rather than JSON.
    pub text: bool,
    /// Add `Connection: close`.
    pub close: bool,
}

/// The sending end of the query thread.
pub struct Queries {
    tx: Sender<Job>,
}

impl Queries {
    /// Starts the query thread over `store`'s database.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn spawn(store: &Store, link: Link) -> std::io::Result<Queries> {
        let (tx, rx) = channel::<Job>();
        let store = store.clone();
        std::thread::Builder::new().name("aymc-queries".into()).spawn(move || {
            let mut reader: Option<Reader> = None;
            for job in rx {
                let result = match reader.take().map_or_else(|| store.reader(), Ok) {
                    Ok(r) => {
                        let page = r.query(&job.query);
                        if !matches!(page, Err(StoreError::Sqlite(_))) {
                            reader = Some(r);
                        }
                        page
                    }
                    Err(e) => Err(e),
                };
                let response = match result {
                    Ok(page) => answer(&page, job.text, job.close),
                    Err(StoreError::InvalidQuery(msg)) => http::error(400, &msg, &[], job.close),
                    Err(StoreError::Timeout(_)) => {
                        warn!("stored logs query of server {} stopped after {QUERY_TIMEOUT:?}", job.query.server);
                        http::error(
                            503,
                            &format!(
                                "the query ran longer than {} s and was stopped; narrow it (fewer or rarer words, \
                                 a time range) and retry",
                                QUERY_TIMEOUT.as_secs()
                            ),
                            &[("Retry-After", "5")],
                            job.close,
                        )
                    }
                    Err(e) => {
                        warn!("stored logs query failed: {e}");
                        http::error(
                            503,
                            "the log history cannot be read now; retry later",
                            &[("Retry-After", "5")],
                            job.close,
                        )
                    }
                };
                link.send(Event::Reply(Reply { key: job.key, serial: job.serial, response }));
            }
        })?;
        Ok(Queries { tx })
    }

    /// Queues a query; false when the thread is gone.
    pub fn send(&self, job: Job) -> bool {
        self.tx.send(job).is_ok()
    }
}

/// The `200` answer for a page: JSON, or `text/plain` lines.
pub fn answer(page: &Page, text: bool, close: bool) -> Vec<u8> {
    if text {
        http::response(200, "text/plain; charset=utf-8", &[], render_text(page).as_bytes(), close)
    } else {
        http::response(200, "application/json", &[], page.to_json().as_bytes(), close)
    }
}
