//! Not a scenario of the issue: the load generator's own capacity to read,
//! against a blaster that plays a hub doing nothing but writing frames.

use super::*;

/// Not a scenario of the issue: the reader's own capacity. A blaster
/// thread on the hub's core plays a hub that does nothing but write
/// pre-framed `log_entry` frames to every client; the engine reads them as
/// in a real run. `frames_per_loadgen_cpu_s` is what one core can read.
pub(super) fn reader_check(o: &Opts) -> Result<Value, Error> {
    let n = o.clients.unwrap_or(1000);
    let secs = o.duration.unwrap_or(5.0);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let (block, frames_in_block) = blast_block();
    let frame_len = block.len() as f64 / frames_in_block as f64;
    let blaster = {
        let (stop, written, cpu) = (Arc::clone(&stop), Arc::clone(&written), o.hub_cpu);
        std::thread::spawn(move || blast(listener, n, &block, cpu, &stop, &written))
    };
    let specs = (0..n)
        .map(|i| ClientSpec {
            token: "x".into(),
            channels: vec!["c".into()],
            tracked: i < o.tracked,
            rcvbuf: None,
            deflate: false,
        })
        .collect();
    let mut engine = Engine::new(addr, o.sample, o.window.unwrap_or(100))?;
    let connect = connect_all(&mut engine, specs, 60)?;
    let start = now_us() + (o.warmup * 1e6) as u64;
    engine.run_until(start, |_| false)?;
    let (frames0, bytes0, written0) = (engine.tally.frames, engine.tally.bytes, written.load(Ordering::Relaxed));
    // This thread only: the blaster thread is in this process too.
    let cpu = CpuMeter::start("thread-self");
    let end = start + (secs * 1e6) as u64;
    engine.run_until(end, |_| false)?;
    let (cpu_s, core) = cpu.read("thread-self");
    let frames = (engine.tally.frames - frames0) as f64;
    let bytes = (engine.tally.bytes - bytes0) as f64;
    let sent_bytes = (written.load(Ordering::Relaxed) - written0) as f64;
    stop.store(true, Ordering::Relaxed);
    let _ = blaster.join();
    let wall = (end - start) as f64 / 1e6;
    info!(
        "reader: {:.0} frames/s ({:.0} MB/s) at {:.0}% of a core = {:.0} frames per CPU second",
        frames / wall,
        bytes / wall / 1e6,
        core * 100.0,
        frames / cpu_s.max(1e-9)
    );
    Ok(json!({
        "params": { "clients": n, "seconds": secs, "sample_every": o.sample, "frame_bytes": frame_len },
        "connect": connect,
        "result": {
            "frames_per_s": (frames / wall).round(),
            "mb_per_s": round3(bytes / wall / 1e6),
            "loadgen_cpu_core": round3(core),
            "frames_per_loadgen_cpu_s": (frames / cpu_s.max(1e-9)).round(),
            "blaster_frames_per_s": (sent_bytes / frame_len / wall).round(),
            "met": frames / cpu_s.max(1e-9) >= 2_500_000.0,
        },
    }))
}

/// Hub-like `log_entry` frames, about 256 KiB of them, and how many.
pub(super) fn blast_block() -> (Vec<u8>, usize) {
    let server = Uuid::new_v4();
    let mut block = Vec::new();
    let mut count = 0;
    let stamp = now_us();
    while block.len() < 256 * 1024 {
        count += 1;
        let payload = format!(
            "{{\"type\":\"log_entry\",\"channel\":\"server:{server}:logs\",\"data\":{{\"server_id\":\"{server}\",\
             \"timestamp\":\"2026-11-29T06:00:00.000Z\",\"level\":\"INFO\",\"source\":\"server\",\"message\":\"{}\"}},\
             \"timestamp\":\"2026-11-29T06:00:00.000Z\",\"seq\":{count:07},\"epoch\":\"0123456789abcdef\"}}",
            bench_line(stamp, count as u64)
        );
        frames::server_text(&mut block, payload.as_bytes());
    }
    (block, count)
}

/// The blaster: answers `n` upgrades like the hub (101, then `SUBSCRIBED`),
/// then writes `block` over and over to every connection until `stop`.
pub(super) fn blast(
    listener: TcpListener,
    n: usize,
    block: &[u8],
    cpu: Option<usize>,
    stop: &AtomicBool,
    written: &AtomicU64,
) {
    if let Some(cpu) = cpu {
        if let Err(e) = pin_self(cpu) {
            warn!("blaster: {e}");
        }
    }
    let mut conns: Vec<(TcpStream, usize)> = Vec::new();
    let mut subscribed = Vec::new();
    frames::server_text(
        &mut subscribed,
        b"{\"type\":\"notification\",\"data\":{\"code\":\"SUBSCRIBED\",\"message\":\"ok\",\"data\":[\"c\"]}}",
    );
    while conns.len() < n && !stop.load(Ordering::Relaxed) {
        let Ok((mut s, _)) = listener.accept() else { continue };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => head.extend_from_slice(&buf[..k]),
            }
        }
        let text = String::from_utf8_lossy(&head);
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .map(|k| tungstenite::handshake::derive_accept_key(k.trim().as_bytes()))
            .unwrap_or_default();
        let mut answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {key}\r\n\r\n"
        )
        .into_bytes();
        answer.extend_from_slice(&subscribed);
        if s.write_all(&answer).is_ok() && s.set_nonblocking(true).is_ok() {
            conns.push((s, 0));
        }
    }
    while !stop.load(Ordering::Relaxed) {
        for (s, off) in &mut conns {
            if let Ok(k) = s.write(&block[*off..]) {
                *off = (*off + k) % block.len();
                written.fetch_add(k as u64, Ordering::Relaxed);
            }
        }
    }
}
