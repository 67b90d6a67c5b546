//! Client-side WebSocket framing, built for counting rather than decoding:
//! [`FrameReader`] walks the hub's (unmasked) frames through large reads,
//! parsing only the 2-10 byte headers, and copies a payload only when the
//! [`Handler`] asks for it (sampled or tracked frames) or when the frame is
//! not a `log_entry` (control replies, errors). A compressed frame
//! (permessage-deflate, RSV1) is always captured and inflated, once per
//! distinct payload (every client gets the same bytes). A frame whose bytes are all
//! in the read buffer is handed over in place, without a copy. Also the
//! frame encoder (the masked frames a client sends; the hub's integration
//! tests use it too), and the few byte searches that pull the send stamp and
//! `seq` out of a `log_entry`.

/// What every `log_entry` envelope starts with (the hub writes `type` first).
const LOG_PREFIX: &[u8] = b"{\"type\":\"log_entry\"";
/// Frames larger than this are a protocol error for the load generator.
const MAX_FRAME: u64 = 64 * 1024 * 1024;
/// A captured payload buffer above this size is released after use.
const KEEP_CAPTURE: usize = 64 * 1024;
/// Bit of the opcode byte [`parse_header`] returns for RSV1 (compressed).
const COMPRESSED: u8 = 0x40;

/// Flags a [`Handler`] returns from [`Handler::want`] for a text frame.
pub mod want {
    /// Take a latency sample from this frame.
    pub const SAMPLE: u8 = 1;
    /// Check this frame's `seq` (tracked connections: every frame).
    pub const SEQ: u8 = 2;
}

/// Receives what a [`FrameReader`] finds.
pub trait Handler {
    /// Called once per text frame (before its payload is seen when it spans
    /// reads): which of [`want`]'s flags apply. Non-zero flags capture the
    /// payload.
    fn want(&mut self) -> u8;
    /// A `log_entry` frame; `payload` is present when `flags` is non-zero.
    fn log_entry(&mut self, payload: Option<&[u8]>, flags: u8);
    /// Any other text frame (notifications, errors, pongs), whole.
    fn other_text(&mut self, payload: &[u8]);
    /// A Ping with its payload (the connection must answer with a Pong).
    fn ping(&mut self, payload: &[u8]);
    /// A Close frame with its code, if any.
    fn close(&mut self, code: Option<u16>);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// Count only.
    Skip,
    /// Keep the first bytes, enough to tell a `log_entry` from the rest.
    Prefix,
    /// Keep the whole payload.
    Full,
}

/// Per-connection frame state. Holds no allocation between frames unless a
/// payload spanning reads had to be captured.
#[derive(Debug)]
pub struct FrameReader {
    hdr: [u8; 10],
    hdr_len: usize,
    in_frame: bool,
    remaining: usize,
    opcode: u8,
    capture: Capture,
    flags: u8,
    buf: Vec<u8>,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            hdr: [0; 10],
            hdr_len: 0,
            in_frame: false,
            remaining: 0,
            opcode: 0,
            capture: Capture::Skip,
            flags: 0,
            buf: Vec::new(),
        }
    }
}

/// Parses a server frame header: `(opcode, header length, payload length)`,
/// or `None` when `b` does not hold the whole header yet.
#[inline]
fn parse_header(b: &[u8]) -> Result<Option<(u8, usize, usize)>, &'static str> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[1] & 0x80 != 0 {
        return Err("the hub sent a masked frame");
    }
    let opcode = b[0] & (0x0f | COMPRESSED);
    let (hlen, len) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return Ok(None);
            }
            (4, u64::from(u16::from_be_bytes([b[2], b[3]])))
        }
        127 => {
            if b.len() < 10 {
                return Ok(None);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (10, u64::from_be_bytes(n))
        }
        n => (2, u64::from(n)),
    };
    if len > MAX_FRAME {
        return Err("frame over 64 MiB");
    }
    Ok(Some((opcode, hlen, len as usize)))
}

impl FrameReader {
    /// Walks `data`, the next bytes of the stream, calling `h` for each
    /// complete frame.
    ///
    /// # Errors
    /// The stream is not a valid server frame stream (masked or oversized frames).
    pub fn feed(&mut self, data: &[u8], h: &mut impl Handler) -> Result<(), &'static str> {
        let mut pos = 0;
        while pos < data.len() {
            if self.in_frame {
                let take = self.remaining.min(data.len() - pos);
                self.absorb(&data[pos..pos + take]);
                pos += take;
                self.remaining -= take;
                if self.remaining == 0 {
                    self.finish(h);
                }
            } else if self.hdr_len == 0 {
                let rest = &data[pos..];
                match parse_header(rest)? {
                    Some((op, hlen, plen)) if rest.len() - hlen >= plen => {
                        complete(op, &rest[hlen..hlen + plen], h);
                        pos += hlen + plen;
                    }
                    Some((op, hlen, plen)) => {
                        pos += hlen;
                        self.begin(op, plen, h);
                    }
                    None => {
                        self.hdr[..rest.len()].copy_from_slice(rest);
                        self.hdr_len = rest.len();
                        return Ok(());
                    }
                }
            } else {
                let old = self.hdr_len;
                let take = (self.hdr.len() - old).min(data.len() - pos);
                self.hdr[old..old + take].copy_from_slice(&data[pos..pos + take]);
                match parse_header(&self.hdr[..old + take])? {
                    Some((op, hlen, plen)) => {
                        pos += hlen - old;
                        self.hdr_len = 0;
                        self.begin(op, plen, h);
                    }
                    None => {
                        self.hdr_len = old + take;
                        pos += take;
                    }
                }
            }
        }
        Ok(())
    }

    fn begin(&mut self, opcode: u8, len: usize, h: &mut impl Handler) {
        self.in_frame = true;
        self.remaining = len;
        self.opcode = opcode;
        self.buf.clear();
        self.flags = 0;
        self.capture = match opcode {
            // Compressed: decided on the whole payload.
            op if op & COMPRESSED != 0 => Capture::Full,
            1 => {
                self.flags = h.want();
                if self.flags != 0 {
                    Capture::Full
                } else {
                    Capture::Prefix
                }
            }
            8..=10 => Capture::Full,
            _ => Capture::Skip,
        };
        if len == 0 {
            self.finish(h);
        }
    }

    fn absorb(&mut self, mut bytes: &[u8]) {
        if self.capture == Capture::Prefix {
            let take = (LOG_PREFIX.len() - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == LOG_PREFIX.len() {
                self.capture = if self.buf == LOG_PREFIX { Capture::Skip } else { Capture::Full };
            }
        }
        if self.capture == Capture::Full {
            self.buf.extend_from_slice(bytes);
        }
    }

    fn finish(&mut self, h: &mut impl Handler) {
        self.in_frame = false;
        let payload = std::mem::take(&mut self.buf);
        match self.opcode {
            1 if payload.starts_with(LOG_PREFIX) || self.capture == Capture::Skip => {
                let flags = self.flags;
                h.log_entry((flags != 0).then_some(&payload[..]), flags);
            }
            op => complete(op, &payload, h),
        }
        self.buf = payload;
        self.buf.clear();
        if self.buf.capacity() > KEEP_CAPTURE {
            self.buf = Vec::new();
        }
    }
}

/// Hands one whole frame's payload to `h`.
#[inline]
fn complete(opcode: u8, payload: &[u8], h: &mut impl Handler) {
    if opcode & COMPRESSED != 0 {
        return compressed(opcode & 0x0f, payload, h);
    }
    match opcode {
        1 if payload.starts_with(LOG_PREFIX) => {
            let flags = h.want();
            h.log_entry((flags != 0).then_some(payload), flags);
        }
        1 => h.other_text(payload),
        8 => h.close((payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))),
        9 => h.ping(payload),
        _ => {}
    }
}

/// Hands a compressed frame's payload to `h`, inflated. Every subscriber
/// gets the same compressed bytes of a message (the hub compresses once),
/// so a payload is inflated once and remembered by its hash for the
/// clients that follow.
fn compressed(opcode: u8, payload: &[u8], h: &mut impl Handler) {
    let hash = hash(payload);
    let slot = (hash % KNOWN_SLOTS as u64) as usize;
    let known = KNOWN.with(|k| match &k.borrow()[slot] {
        (h, bytes) if *h == hash => Some(std::rc::Rc::clone(bytes)),
        _ => None,
    });
    let inflated = known.unwrap_or_else(|| {
        let bytes: std::rc::Rc<[u8]> = inflate(payload, usize::MAX).into();
        KNOWN.with(|k| k.borrow_mut()[slot] = (hash, std::rc::Rc::clone(&bytes)));
        bytes
    });
    complete(opcode, &inflated, h);
}

/// Compressed payloads remembered with their inflated bytes.
const KNOWN_SLOTS: usize = 4096;

/// FNV-1a over 8-byte words, seeded with the length: fast enough per
/// frame; a collision would need the same length and hash.
fn hash(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap_or_default())).wrapping_mul(0x0100_0000_01b3);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h | 1
}

thread_local! {
    static KNOWN: std::cell::RefCell<Vec<(u64, std::rc::Rc<[u8]>)>> =
        std::cell::RefCell::new(vec![(0, std::rc::Rc::from(&[][..])); KNOWN_SLOTS]);
    static INFLATER: std::cell::RefCell<flate2::Decompress> = std::cell::RefCell::new(flate2::Decompress::new(false));
}

/// The first `limit` bytes of a compressed message (RFC 7692: raw deflate
/// without its `00 00 ff ff` tail); what inflates before an error when the
/// data is corrupt.
pub fn inflate(payload: &[u8], limit: usize) -> Vec<u8> {
    INFLATER.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let mut out = Vec::with_capacity(limit.min(payload.len() * 8 + 64));
        for mut input in [payload, &[0, 0, 0xff, 0xff][..]] {
            while out.len() < limit {
                if out.len() == out.capacity() {
                    out.reserve(out.capacity().min(limit - out.len()));
                }
                let (before, had) = (d.total_in(), out.len());
                if d.decompress_vec(input, &mut out, flate2::FlushDecompress::Sync).is_err() {
                    return out;
                }
                input = &input[(d.total_in() - before) as usize..];
                if (input.is_empty() && out.len() < out.capacity()) || (out.len() == had && d.total_in() == before) {
                    break;
                }
            }
        }
        out.truncate(limit);
        out
    })
}

/// Appends one frame to `out`: FIN set when `fin`, the payload masked with
/// `mask` when there is one (a client must mask its frames, a server must
/// not). Any opcode, so tests can also build frames a hub must refuse.
pub fn encode_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(if fin { 0x80 | opcode } else { opcode });
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// Appends a masked client frame (FIN set) to `out`.
pub fn client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    encode_frame(out, true, opcode, payload, Some([0x5a, 0x3c, 0x96, 0xe1]));
}

/// Appends an unmasked server text frame (what the hub sends) to `out`;
/// used by the reader self-check.
pub fn server_text(out: &mut Vec<u8>, payload: &[u8]) {
    encode_frame(out, true, 1, payload, None);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

fn digits(b: &[u8]) -> Option<u64> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    Some(b[..n].iter().fold(0u64, |acc, c| acc * 10 + u64::from(c - b'0')))
}

/// The marker that starts every bench line's `message`; the send stamp
/// (microseconds of `CLOCK_MONOTONIC`) follows it.
pub const STAMP_MARK: &[u8] = b"\"message\":\"t=";

/// The send stamp of a bench `log_entry`.
pub fn stamp(payload: &[u8]) -> Option<u64> {
    let at = find(payload, STAMP_MARK)? + STAMP_MARK.len();
    digits(&payload[at..])
}

/// The envelope's `seq` (the last `"seq":` in the frame: it comes after `data`).
pub fn seq(payload: &[u8]) -> Option<u64> {
    let at = rfind(payload, b"\"seq\":")? + 6;
    digits(&payload[at..])
}

/// True when `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen {
        logs: Vec<Option<Vec<u8>>>,
        others: Vec<Vec<u8>>,
        pings: usize,
        closes: Vec<Option<u16>>,
        every: u8,
    }

    impl Handler for Seen {
        fn want(&mut self) -> u8 {
            self.every
        }
        fn log_entry(&mut self, payload: Option<&[u8]>, _flags: u8) {
            self.logs.push(payload.map(<[u8]>::to_vec));
        }
        fn other_text(&mut self, payload: &[u8]) {
            self.others.push(payload.to_vec());
        }
        fn ping(&mut self, _payload: &[u8]) {
            self.pings += 1;
        }
        fn close(&mut self, code: Option<u16>) {
            self.closes.push(code);
        }
    }

    fn log(n: usize, size: usize) -> Vec<u8> {
        let mut p = format!("{{\"type\":\"log_entry\",\"data\":{{\"message\":\"t={n} ").into_bytes();
        p.resize(size - 20, b'x');
        p.extend_from_slice(format!("\"}},\"seq\":{n:07}}}").as_bytes());
        p
    }

    fn stream() -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut logs = 0;
        for (i, size) in [70, 125, 126, 400, 70_000, 200].into_iter().enumerate() {
            server_text(&mut out, &log(i + 1, size));
            logs += 1;
        }
        server_text(&mut out, b"{\"type\":\"notification\",\"data\":{\"code\":\"SUBSCRIBED\"}}");
        out.extend_from_slice(&[0x89, 0x00, 0x88, 0x02, 0x0f, 0xa0]);
        server_text(&mut out, &log(9, 300));
        (out, logs + 1)
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_frames() {
        let (bytes, logs) = stream();
        for every in [0, want::SAMPLE] {
            for chunk in [1, 2, 3, 7, 64, 1000, bytes.len()] {
                let mut r = FrameReader::default();
                let mut seen = Seen { every, ..Seen::default() };
                for part in bytes.chunks(chunk) {
                    r.feed(part, &mut seen).unwrap();
                }
                assert_eq!(seen.logs.len(), logs, "chunk {chunk}");
                assert_eq!(seen.others.len(), 1, "chunk {chunk}");
                assert!(contains(&seen.others[0], b"\"SUBSCRIBED\""));
                assert_eq!(seen.pings, 1);
                assert_eq!(seen.closes, vec![Some(4000)]);
                if every != 0 {
                    let stamps: Vec<u64> = seen.logs.iter().map(|p| stamp(p.as_ref().unwrap()).unwrap()).collect();
                    assert_eq!(stamps, vec![1, 2, 3, 4, 5, 6, 9]);
                    let seqs: Vec<u64> = seen.logs.iter().map(|p| seq(p.as_ref().unwrap()).unwrap()).collect();
                    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6, 9]);
                } else {
                    assert!(seen.logs.iter().all(Option::is_none));
                }
            }
        }
    }

    /// A compressed server text frame (RSV1), as the hub sends them.
    fn deflated(out: &mut Vec<u8>, payload: &[u8]) {
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        let mut z = Vec::with_capacity(payload.len() + 64);
        c.compress_vec(payload, &mut z, flate2::FlushCompress::Sync).unwrap();
        z.truncate(z.len() - 4);
        let at = out.len();
        encode_frame(out, true, 1, &z, None);
        out[at] |= 0x40;
    }

    #[test]
    fn compressed_frames_are_counted_and_inflated_when_wanted() {
        let mut bytes = Vec::new();
        for (i, size) in [300, 70_000, 1000].into_iter().enumerate() {
            deflated(&mut bytes, &log(i + 1, size));
        }
        deflated(&mut bytes, format!("{{\"type\":\"error\",\"data\":\"{}\"}}", "y".repeat(400)).as_bytes());
        for every in [0, want::SAMPLE] {
            for chunk in [1, 5, 64, bytes.len()] {
                let mut r = FrameReader::default();
                let mut seen = Seen { every, ..Seen::default() };
                for part in bytes.chunks(chunk) {
                    r.feed(part, &mut seen).unwrap();
                }
                assert_eq!(seen.logs.len(), 3, "chunk {chunk}");
                assert_eq!(seen.others.len(), 1);
                assert!(seen.others[0].starts_with(b"{\"type\":\"error\""));
                if every != 0 {
                    let seqs: Vec<u64> = seen.logs.iter().map(|p| seq(p.as_ref().unwrap()).unwrap()).collect();
                    assert_eq!(seqs, vec![1, 2, 3]);
                    assert_eq!(seen.logs[1].as_deref(), Some(&log(2, 70_000)[..]));
                }
            }
        }
    }

    #[test]
    fn masked_frames_from_the_hub_are_refused() {
        let mut r = FrameReader::default();
        let err = r.feed(&[0x81, 0x81, 1, 2, 3, 4, 5], &mut Seen::default());
        assert!(err.is_err());
    }

    #[test]
    fn client_frames_are_masked_with_the_right_length() {
        let mut out = Vec::new();
        client_frame(&mut out, 1, &[b'a'; 200]);
        assert_eq!(&out[..4], &[0x81, 0x80 | 126, 0, 200]);
        assert_eq!(out.len(), 4 + 4 + 200);
        assert_eq!(out[8] ^ out[4], b'a');
    }
}
