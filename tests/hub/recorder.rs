//! A local HTTP server that records what webhooks post to it and answers
//! each request as a test script says: `204`, `429` with `Retry-After`, or
//! never (it holds the connection open). One thread accepts, one thread
//! per connection; everything stops when the recorder drops.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::wait_until;

/// How to answer one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `204 No Content`.
    Ok,
    /// `429 Too Many Requests` with `Retry-After: N` (seconds).
    TooMany(u64),
    /// Nothing: the connection stays open until the recorder drops.
    Hang,
}

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Request {
    /// When its body had arrived.
    pub at: Instant,
    /// `POST /path HTTP/1.1`
    pub line: String,
    /// Header lines, as sent.
    pub headers: Vec<String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {:?}", self.body))
    }
}

/// The recording server; see the module docs.
pub struct Recorder {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

/// A request larger than this is answered as it is, truncated.
const MAX_REQUEST: usize = 1024 * 1024;

impl Recorder {
    /// Starts it; `script(i)` answers the i-th request (from 0).
    pub fn start(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the recorder");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, halt, script) = (Arc::clone(&requests), Arc::clone(&stop), Arc::new(script));
        thread::spawn(move || {
            for stream in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (reqs, halt, script) = (Arc::clone(&reqs), Arc::clone(&halt), Arc::clone(&script));
                thread::spawn(move || serve(stream, &reqs, &halt, &*script));
            }
        });
        Recorder { addr, requests, stop }
    }

    /// A URL on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived; returns them (panics after
    /// `timeout`).
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let ok = wait_until(timeout, || self.requests.lock().unwrap().len() >= n);
        let got = self.requests();
        assert!(ok, "the webhook server got {} requests within {timeout:?}, expected {n}: {got:?}", got.len());
        got
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one request (head and `Content-Length` body), records it, and
/// answers as the script says.
fn serve(mut stream: TcpStream, reqs: &Mutex<Vec<Request>>, stop: &AtomicBool, script: &dyn Fn(usize) -> Answer) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > MAX_REQUEST {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<String> = lines.map(str::to_string).collect();
    let length = headers
        .iter()
        .find_map(|h| h.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0usize)
        .min(MAX_REQUEST);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end..buf.len().min(head_end + length)].to_vec();
    let index = {
        let mut reqs = reqs.lock().unwrap();
        reqs.push(Request { at: Instant::now(), line, headers, body });
        reqs.len() - 1
    };
    let answer = match script(index) {
        Answer::Ok => "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_string(),
        Answer::TooMany(s) => {
            format!(
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {s}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        }
        Answer::Hang => {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            return;
        }
    };
    let _ = stream.write_all(answer.as_bytes());
}
