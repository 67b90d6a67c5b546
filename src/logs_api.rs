//! `GET /api/v1/servers/{id}/logs` (PROTOCOL.md section 11.4): stored log
//! lines, paged; and the stored side of `GET /api/v1/servers/{id}/metrics`
//! (11.8, [`crate::metrics_api`]). With on-disk history the query runs on its own thread
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
use crate::metrics_api::{MetricsQuery, Summary};
use crate::store::{render_text, LogQuery, Page, Reader, Store, StoreError, QUERY_TIMEOUT};

/// What a query asks for.
pub enum Work {
    /// A page of stored log lines; `text`: answer `text/plain` rather than JSON.
    Logs {
        /// What to look for.
        query: LogQuery,
        /// Answer `text/plain`.
        text: bool,
    },
    /// Stored metrics, downsampled ([`crate::metrics_api`]).
    Metrics(MetricsQuery),
}

impl Work {
    fn server(&self) -> uuid::Uuid {
        match self {
            Work::Logs { query, .. } => query.server,
            Work::Metrics(q) => q.server,
        }
    }

    /// Runs it on `reader`: the `200` answer.
    fn run(&self, reader: &Reader, close: bool) -> Result<Vec<u8>, StoreError> {
        match self {
            Work::Logs { query, text } => reader.query(query).map(|page| answer(&page, *text, close)),
            Work::Metrics(q) => {
                let mut summary = Summary::new(q);
                reader.metrics(q.server, q.from_ms, q.to_ms, |p| summary.add(p))?;
                Ok(http::json(200, &summary.finish("history"), close))
            }
        }
    }
}

/// One query to run.
pub struct Job {
    /// The waiting connection.
    pub key: usize,
    /// Its serial.
    pub serial: u64,
    /// What to run.
    pub work: Work,
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
                        let answer = job.work.run(&r, job.close);
                        if !matches!(answer, Err(StoreError::Sqlite(_))) {
                            reader = Some(r);
                        }
                        answer
                    }
                    Err(e) => Err(e),
                };
                let response = match result {
                    Ok(response) => response,
                    Err(StoreError::InvalidQuery(msg)) => http::error(400, &msg, &[], job.close),
                    Err(StoreError::Timeout(_)) => {
                        warn!("stored history query of server {} stopped after {QUERY_TIMEOUT:?}", job.work.server());
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
                        warn!("stored history query failed: {e}");
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
