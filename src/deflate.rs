//! permessage-deflate (RFC 7692): the negotiation of a client's offer, and
//! compressing and inflating one message at a time.
//!
//! The hub always answers with `server_no_context_takeover` and
//! `client_no_context_takeover` (section 7.1.1.1 lets a server add the
//! latter to any offer), so every message is compressed on its own in both
//! directions: a channel message is deflated once and the same bytes go to
//! every client with the same window size, and no connection keeps a zlib
//! window or state of its own. One compressor and one decompressor per
//! thread (the reactor's) are allocated on first use and reset for each
//! message. The only parameter that changes the compressed bytes is the
//! window the client allows the server (`server_max_window_bits`); a window
//! under 15 bits is honoured with a full flush (which empties the
//! dictionary) every `2^bits` bytes of input, so no back-reference reaches
//! further. The hub answers an offered window with one of four (8, 9, 12,
//! 15; the RFC lets it use a smaller one than offered), so a kept message
//! has at most four compressed copies, and a message that would need more
//! than [`MAX_FLUSHES`] full flushes goes plain. No IO here.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";
/// The largest window (32 KiB), the default when the client sets none.
pub const MAX_BITS: u8 = 15;
/// What a sync flush ends with; removed from every compressed message and
/// put back before inflating one (RFC 7692 7.2.1, 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Compression level 1, the fastest: one log message compressed on its own
/// comes out about as small as at zlib's default 6 (scripts/bench-compression
/// corpora: within 1.2 points), at a fraction of the time on the reactor.
const LEVEL: u32 = 1;
/// A message compressed with a window under 15 bits needing more full
/// flushes than this is sent plain: each flush resets the compressor's
/// tables, so a client asking for a small window could otherwise make a
/// large message cost the reactor hundreds of resets.
pub const MAX_FLUSHES: usize = 16;

/// An accepted offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The window the hub compresses with (`server_max_window_bits`, 15
    /// when the offer named none).
    pub bits: u8,
    /// The offer named `server_max_window_bits`: the answer repeats it
    /// (RFC 7692 7.1.2.1).
    pub named: bool,
}

impl Accepted {
    /// The `Sec-WebSocket-Extensions` value of the `101` answer.
    pub fn response(self) -> &'static str {
        const BASE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        const NAMED: [&str; 8] = [
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=8",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=11",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=13",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=14",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15",
        ];
        match self.bits.checked_sub(8).and_then(|i| NAMED.get(usize::from(i))) {
            Some(answer) if self.named => answer,
            _ => BASE,
        }
    }
}

/// Picks the first acceptable `permessage-deflate` offer of a
/// `Sec-WebSocket-Extensions` header.
/// An offer with an unknown parameter, a parameter given twice or a value
/// out of place or out of range is declined (RFC 7692 7.1); other
/// extensions are ignored. `None`: no compression.
pub fn negotiate(header: &str) -> Option<Accepted> {
    header.split(',').find_map(offer)
}

/// One offer: `name *(";" param)`.
fn offer(text: &str) -> Option<Accepted> {
    let mut parts = text.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let (mut bits, mut named) = (MAX_BITS, false);
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => (bits, named) = (window_class(window_bits(v)?), true),
            // The hub inflates any window up to 15 bits; a value only says
            // what the client will use.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
    }
    Some(Accepted { bits, named })
}

/// A quoted-string value without its quotes (RFC 7692 allows either form).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(v),
    }
}

/// The window the hub uses for an offered `server_max_window_bits`: the
/// same or smaller (RFC 7692 7.1.2.1), one of 8, 9, 12 and 15.
fn window_class(bits: u8) -> u8 {
    match bits {
        MAX_BITS.. => MAX_BITS,
        12.. => 12,
        9.. => 9,
        _ => 8,
    }
}

/// `8` to `15`, digits only and no leading zero (the RFC's grammar).
fn window_bits(v: &str) -> Option<u8> {
    if v.starts_with('0') || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=MAX_BITS).contains(b))
}

struct Codec {
    compress: Compress,
    decompress: Decompress,
}

thread_local! {
    static CODEC: RefCell<Option<Box<Codec>>> = const { RefCell::new(None) };
}

fn with_codec<T>(f: impl FnOnce(&mut Codec) -> T) -> T {
    CODEC.with(|cell| {
        let mut slot = cell.borrow_mut();
        let codec = slot.get_or_insert_with(|| {
            Box::new(Codec {
                compress: Compress::new(Compression::new(LEVEL), false),
                decompress: Decompress::new(false),
            })
        });
        f(codec)
    })
}

/// Compresses one message on its own (raw deflate, sync-flushed, the
/// trailing `00 00 ff ff` removed) with back-references of at most
/// `2^bits` bytes; `None` when that takes more than [`MAX_FLUSHES`] full
/// flushes (the message then goes plain).
pub fn compress(payload: &[u8], bits: u8) -> Option<Vec<u8>> {
    let chunk = if bits >= MAX_BITS { payload.len().max(1) } else { 1usize << bits };
    if payload.len() > MAX_FLUSHES.saturating_mul(chunk) {
        return None;
    }
    Some(with_codec(|codec| {
        let c = &mut codec.compress;
        c.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let mut chunks = payload.chunks(chunk).peekable();
        if chunks.peek().is_none() {
            deflate_all(c, &[], FlushCompress::Sync, &mut out);
        }
        while let Some(part) = chunks.next() {
            let flush = if chunks.peek().is_some() { FlushCompress::Full } else { FlushCompress::Sync };
            deflate_all(c, part, flush, &mut out);
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        out
    }))
}

/// Feeds all of `input` and the flush through `c`, growing `out` as needed.
fn deflate_all(c: &mut Compress, mut input: &[u8], flush: FlushCompress, out: &mut Vec<u8>) {
    loop {
        // Room for stored blocks and the flush marker at worst.
        out.reserve(input.len() + input.len() / 64 + 64);
        let before = c.total_in();
        if c.compress_vec(input, out, flush).is_err() {
            return;
        }
        let used = usize::try_from(c.total_in() - before).unwrap_or(input.len());
        input = input.get(used..).unwrap_or_default();
        // Done once the input is in and the flush left spare room.
        if input.is_empty() && out.len() < out.capacity() {
            return;
        }
    }
}

/// Inflating gave more than the limit: the message is too big (`1009`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// Over `max` bytes once inflated; inflating stopped there.
    TooBig,
    /// Not a valid deflate stream.
    Corrupt,
}

/// Inflates one compressed message (its `00 00 ff ff` tail put back) into
/// at most `max` bytes; stops as soon as more would come out, so a deflate
/// bomb costs at most `max` bytes of memory.
///
/// # Errors
/// [`InflateError`].
pub fn inflate(payload: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    // One byte over `max` tells that more would come out.
    let cap = max.saturating_add(1);
    with_codec(|codec| {
        let d = &mut codec.decompress;
        d.reset(false);
        let mut out = Vec::with_capacity(payload.len().saturating_mul(4).clamp(1, cap));
        for mut input in [payload, &TAIL[..]] {
            loop {
                if out.len() == out.capacity() {
                    let room = out.capacity().min(cap - out.len());
                    out.reserve_exact(room);
                }
                let (before_in, before_out) = (d.total_in(), out.len());
                let status = d.decompress_vec(input, &mut out, FlushDecompress::Sync);
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                let used = usize::try_from(d.total_in() - before_in).unwrap_or(input.len());
                input = input.get(used..).unwrap_or_default();
                match status {
                    Err(_) => return Err(InflateError::Corrupt),
                    Ok(Status::StreamEnd) => return Ok(out),
                    // More output may wait even with no input left.
                    Ok(_) if out.len() == out.capacity() => {}
                    Ok(_) if input.is_empty() => break,
                    Ok(_) if used == 0 && out.len() == before_out => return Err(InflateError::Corrupt),
                    Ok(_) => {}
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_first_acceptable_offer() {
        let a = |h: &str| negotiate(h).map(|a| a.bits);
        assert_eq!(a("permessage-deflate"), Some(15));
        assert_eq!(a("permessage-deflate; client_max_window_bits"), Some(15));
        assert_eq!(a("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=10"), Some(9));
        assert_eq!(a("permessage-deflate; server_max_window_bits=\"9\""), Some(9));
        assert_eq!(a("permessage-deflate; server_max_window_bits=7, permessage-deflate"), Some(15));
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; client_max_window_bits=20",
            "permessage-deflate; client_no_context_takeover=1",
            "permessage-deflate; mystery",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(a(bad), None, "{bad}");
        }
        let r = negotiate("permessage-deflate; server_max_window_bits=9").map(Accepted::response);
        assert_eq!(
            r,
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9"
            )
        );
        // Four windows, each the largest not above the offer.
        for (offered, used) in [(8, 8), (9, 9), (10, 9), (11, 9), (12, 12), (13, 12), (14, 12), (15, 15)] {
            let answer = Accepted { bits: offered, named: true }.response();
            assert_eq!(negotiate(answer), Some(Accepted { bits: used, named: true }), "{answer}");
        }
        let plain = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        assert_eq!(negotiate("permessage-deflate").map(Accepted::response), Some(plain));
        assert_eq!(negotiate(plain).map(Accepted::response), Some(plain));
    }

    #[test]
    fn round_trips_at_every_window() {
        let text: Vec<u8> =
            (0..5000).flat_map(|i| format!("[12:00:{:02} INFO]: line {i} ", i % 60).into_bytes()).collect();
        for bits in 8..=15 {
            let text = text.get(..MAX_FLUSHES << bits).unwrap_or(&text);
            let z = compress(text, bits).unwrap();
            assert!(z.len() < text.len() / 3, "{bits}: {} of {}", z.len(), text.len());
            assert_eq!(inflate(&z, text.len()).unwrap(), text, "{bits}");
        }
        assert_eq!(inflate(&compress(b"", 15).unwrap(), 10).unwrap(), b"");
    }

    #[test]
    fn a_small_window_compresses_up_to_max_flushes_chunks_and_leaves_larger_messages_plain() {
        let text = vec![b'a'; (MAX_FLUSHES << 8) + 1];
        assert!(compress(&text[..MAX_FLUSHES << 8], 8).is_some());
        assert_eq!(compress(&text, 8), None);
        assert!(compress(&text, 9).is_some());
        assert!(compress(&vec![b'a'; 10 << 20], 15).is_some(), "one chunk at 15 bits, whatever the size");
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        let bomb = compress(&vec![0u8; 10 << 20], 15).unwrap();
        assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
        assert_eq!(inflate(&bomb, 512 * 1024), Err(InflateError::TooBig));
        assert_eq!(inflate(&compress(&[7; 1000], 15).unwrap(), 1000).unwrap().len(), 1000);
        assert_eq!(inflate(&compress(&[7; 1001], 15).unwrap(), 1000), Err(InflateError::TooBig));
        assert_eq!(inflate(&[0xff, 0xff, 0xff], 1000), Err(InflateError::Corrupt));
    }
}
