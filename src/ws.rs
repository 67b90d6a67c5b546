//! WebSocket framing (RFC 6455, server side) with tungstenite's frame types
//! and buffers of our own (DESIGN.md rule 6): frames are parsed straight out
//! of the reactor's shared read buffer, so an idle connection holds no read
//! buffer; only an incomplete frame or a fragmented message is kept, in a
//! `Vec` that is released as soon as it is complete. Outgoing frames are
//! encoded once into shared bytes; a [`Shared`] frame also carries its
//! compressed variants (permessage-deflate, [`crate::deflate`]), made on
//! first need. No IO here.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::borrow::Cow;
use std::cell::OnceCell;
use std::io::Cursor;
use std::rc::Rc;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::deflate;

/// A violation that RFC 6455 answers with a Close; the variant gives the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// Malformed framing (unmasked, reserved bits or opcode, bad control
    /// frame, bad continuation): close `1002`.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message that is not UTF-8: close `1007`.
    #[error("invalid UTF-8 in a text message")]
    Utf8,
    /// A message over `limits.max_message_bytes`: close `1009`.
    #[error("message too big")]
    TooBig,
}

impl WsError {
    /// The close code that answers it.
    pub fn close_code(self) -> u16 {
        match self {
            WsError::Protocol(_) => 1002,
            WsError::Utf8 => 1007,
            WsError::TooBig => 1009,
        }
    }
}

/// A complete incoming message.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A text message (valid UTF-8).
    Text(Cow<'a, [u8]>),
    /// A binary message (the hub answers `INVALID_MESSAGE`).
    Binary(Cow<'a, [u8]>),
    /// A Ping with its payload (answered with a Pong).
    Ping(&'a [u8]),
    /// A Pong.
    Pong,
    /// A Close with its code, if any.
    Close(Option<u16>),
}

/// Per-connection decoding state: the fragments of a message in progress.
/// Empty (no allocation) between messages.
#[derive(Debug, Default)]
pub struct Decoder {
    /// While a fragmented message arrives: whether it is text, whether it
    /// is compressed (RSV1 on its first frame), the bytes so far.
    fragments: Option<Box<(bool, bool, Vec<u8>)>>,
}

impl Decoder {
    /// A fragmented message is in progress.
    pub fn in_message(&self) -> bool {
        self.fragments.is_some()
    }

    /// Parses the first frame of `buf` (unmasking it in place). Returns the
    /// bytes consumed and, when a message is complete, the message.
    /// `Ok(None)` means `buf` does not hold a whole frame yet.
    ///
    /// # Errors
    /// [`WsError`], after which the connection is closed with its code.
    pub fn next<'a>(
        &mut self,
        buf: &'a mut [u8],
        max: usize,
    ) -> Result<Option<(usize, Option<Incoming<'a>>)>, WsError> {
        self.next_frame(buf, max, false)
    }

    /// [`Decoder::next`] on a connection that negotiated permessage-deflate
    /// when `inflate` is true: a data message whose first frame has RSV1 set
    /// is inflated, and `max` applies to its inflated size too (`1009` as
    /// soon as inflating passes it).
    ///
    /// # Errors
    /// [`WsError`], after which the connection is closed with its code.
    pub fn next_frame<'a>(
        &mut self,
        buf: &'a mut [u8],
        max: usize,
        inflate: bool,
    ) -> Result<Option<(usize, Option<Incoming<'a>>)>, WsError> {
        let mut cursor = Cursor::new(&*buf);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(_) => return Err(WsError::Protocol("reserved opcode")),
        };
        let start = usize::try_from(cursor.position()).map_err(|_| WsError::TooBig)?;
        let len = usize::try_from(len).map_err(|_| WsError::TooBig)?;
        let Some(mask) = header.mask else {
            return Err(WsError::Protocol("client frames must be masked"));
        };
        let is_control = matches!(header.opcode, OpCode::Control(_));
        let starts_message = matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
        // RSV1 marks a compressed message, on its first frame only.
        if header.rsv2 || header.rsv3 || (header.rsv1 && !(inflate && starts_message)) {
            return Err(WsError::Protocol("reserved bits set"));
        }
        if is_control && (len > 125 || !header.is_final) {
            return Err(WsError::Protocol("control frames must be final and at most 125 bytes"));
        }
        let pending = self.fragments.as_ref().map_or(0, |f| f.2.len());
        if !is_control && len.saturating_add(pending) > max {
            return Err(WsError::TooBig);
        }
        let end = start.checked_add(len).ok_or(WsError::TooBig)?;
        let Some(payload) = buf.get_mut(start..end) else {
            return Ok(None);
        };
        unmask(payload, mask);
        let payload: &'a [u8] = payload;
        let message = match header.opcode {
            OpCode::Control(Control::Ping) => Some(Incoming::Ping(payload)),
            OpCode::Control(Control::Pong) => Some(Incoming::Pong),
            OpCode::Control(Control::Close) => Some(Incoming::Close(close_code(payload)?)),
            OpCode::Data(Data::Text | Data::Binary) => {
                if self.fragments.is_some() {
                    return Err(WsError::Protocol("new message before the previous one ended"));
                }
                let is_text = header.opcode == OpCode::Data(Data::Text);
                if header.is_final {
                    Some(complete(is_text, header.rsv1, Cow::Borrowed(payload), max)?)
                } else {
                    self.fragments = Some(Box::new((is_text, header.rsv1, payload.to_vec())));
                    None
                }
            }
            OpCode::Data(Data::Continue) => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(WsError::Protocol("continuation without a message"));
                };
                fragments.2.extend_from_slice(payload);
                if header.is_final {
                    let (is_text, compressed, bytes) = *self.fragments.take().unwrap_or_default();
                    Some(complete(is_text, compressed, Cow::Owned(bytes), max)?)
                } else {
                    None
                }
            }
            _ => return Err(WsError::Protocol("reserved opcode")),
        };
        Ok(Some((end, message)))
    }
}

fn complete(is_text: bool, compressed: bool, bytes: Cow<'_, [u8]>, max: usize) -> Result<Incoming<'_>, WsError> {
    let bytes = if compressed {
        match deflate::inflate(&bytes, max) {
            Ok(inflated) => Cow::Owned(inflated),
            Err(deflate::InflateError::TooBig) => return Err(WsError::TooBig),
            Err(deflate::InflateError::Corrupt) => return Err(WsError::Protocol("invalid compressed data")),
        }
    } else {
        bytes
    };
    if !is_text {
        return Ok(Incoming::Binary(bytes));
    }
    if std::str::from_utf8(&bytes).is_err() {
        return Err(WsError::Utf8);
    }
    Ok(Incoming::Text(bytes))
}

fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close payload of one byte")),
        [a, b, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(WsError::Utf8);
            }
            Ok(Some(u16::from_be_bytes([*a, *b])))
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        if let Ok(four) = <[u8; 4]>::try_from(&*chunk) {
            chunk.copy_from_slice(&(u32::from_ne_bytes(four) ^ word).to_ne_bytes());
        }
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
}

/// Frames `payload` as one unmasked server frame, in shared bytes.
pub fn frame(opcode: OpCode, payload: &[u8]) -> Rc<[u8]> {
    framed(opcode, false, payload)
}

/// Frames a message, compressing it for a client that negotiated
/// permessage-deflate with window `bits` when it is at least `min_bytes`
/// long and compressing makes it smaller (RSV1 set then).
pub fn message(opcode: OpCode, payload: &[u8], deflate: Option<u8>, min_bytes: usize) -> Rc<[u8]> {
    deflate
        .filter(|_| payload.len() >= min_bytes)
        .and_then(|bits| compressed(opcode, payload, bits))
        .unwrap_or_else(|| frame(opcode, payload))
}

/// The compressed frame of a message (RSV1 set) with window `bits`, when
/// compressing makes it smaller.
fn compressed(opcode: OpCode, payload: &[u8], bits: u8) -> Option<Rc<[u8]>> {
    let z = deflate::compress(payload, bits).filter(|z| z.len() < payload.len())?;
    Some(framed(opcode, true, &z))
}

fn framed(opcode: OpCode, rsv1: bool, payload: &[u8]) -> Rc<[u8]> {
    let header = FrameHeader { opcode, rsv1, ..FrameHeader::default() };
    let mut out = Vec::with_capacity(header.len(payload.len() as u64) + payload.len());
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    Rc::from(out)
}

/// A text frame.
pub fn text(payload: &[u8]) -> Rc<[u8]> {
    frame(OpCode::Data(Data::Text), payload)
}

/// A Close frame with a code and a short reason.
pub fn close(code: u16, reason: &str) -> Rc<[u8]> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    frame(OpCode::Control(Control::Close), &payload)
}

/// A Ping (empty) or Pong (echoing `payload`).
pub fn control(op: Control, payload: &[u8]) -> Rc<[u8]> {
    frame(OpCode::Control(op), payload)
}

/// A text frame shared by every client that gets it (subscribers, history
/// rings): the plain frame, and the message compressed for each window
/// size some client needed, made once on first need (PROTOCOL.md 1,
/// "Compression"; DESIGN.md rule 3).
#[derive(Debug)]
pub struct Shared {
    plain: Rc<[u8]>,
    /// Per window size (8 to 15 bits), the message compressed with it, made
    /// on first need (the plain frame when compressing did not make it
    /// smaller); the table is allocated only once some client needs one.
    deflated: OnceCell<Box<Variants>>,
}

/// A frame per window size, 8 to 15 bits.
type Variants = [OnceCell<Rc<[u8]>>; 8];

impl Shared {
    /// Frames a text message once.
    pub fn text(payload: &[u8]) -> Rc<Shared> {
        Rc::new(Shared { plain: text(payload), deflated: OnceCell::new() })
    }

    /// The plain frame.
    pub fn plain(&self) -> &Rc<[u8]> {
        &self.plain
    }

    /// The plain frame's payload.
    pub fn payload(&self) -> &[u8] {
        payload(&self.plain)
    }

    /// The frame for a client: plain without compression (`deflate`
    /// `None`) or under `min_bytes`, else compressed with window `bits`,
    /// compressed at most once per window size.
    pub fn variant(&self, deflate: Option<u8>, min_bytes: usize) -> &Rc<[u8]> {
        let Some(bits) = deflate.filter(|_| self.payload().len() >= min_bytes) else {
            return &self.plain;
        };
        let table = self.deflated.get_or_init(Box::default);
        let Some(slot) = table.get(usize::from(bits).wrapping_sub(8)) else {
            return &self.plain;
        };
        slot.get_or_init(|| {
            compressed(OpCode::Data(Data::Text), self.payload(), bits).unwrap_or_else(|| Rc::clone(&self.plain))
        })
    }
}

/// The payload of an unmasked server frame.
pub fn payload(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.get(header..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn reads_a_text_frame_and_reports_partial_ones() {
        let mut d = Decoder::default();
        let mut bytes = masked(0x81, b"{\"type\":\"ping\"}");
        let n = bytes.len();
        assert_eq!(d.next(&mut bytes.clone()[..n - 1], 1024).unwrap(), None);
        let (used, msg) = d.next(&mut bytes, 1024).unwrap().unwrap();
        assert_eq!(used, n);
        assert_eq!(msg, Some(Incoming::Text(Cow::Borrowed(&b"{\"type\":\"ping\"}"[..]))));
    }

    #[test]
    fn joins_fragments_with_interleaved_control_frames() {
        let mut d = Decoder::default();
        let mut a = masked(0x01, b"hel");
        assert_eq!(d.next(&mut a, 1024).unwrap().unwrap().1, None);
        let mut p = masked(0x89, b"x");
        assert_eq!(d.next(&mut p, 1024).unwrap().unwrap().1, Some(Incoming::Ping(b"x")));
        let mut b = masked(0x80, b"lo");
        let msg = d.next(&mut b, 1024).unwrap().unwrap().1;
        assert_eq!(msg, Some(Incoming::Text(Cow::Owned(b"hello".to_vec()))));
        assert!(d.fragments.is_none());
    }

    #[test]
    fn violations_have_their_close_codes() {
        let code = |bytes: &mut Vec<u8>, max| Decoder::default().next(bytes, max).unwrap_err().close_code();
        assert_eq!(code(&mut vec![0x81, 0x01, b'a'], 1024), 1002, "unmasked");
        assert_eq!(code(&mut masked(0xC1, b"a"), 1024), 1002, "rsv1 without deflate");
        assert_eq!(code(&mut masked(0x83, b"a"), 1024), 1002, "reserved opcode");
        assert_eq!(code(&mut masked(0x80, b"a"), 1024), 1002, "lone continuation");
        assert_eq!(code(&mut masked(0x09, b"a"), 1024), 1002, "fragmented ping");
        assert_eq!(code(&mut masked(0x81, &[0xff, 0xfe]), 1024), 1007);
        assert_eq!(code(&mut masked(0x81, &[b'a'; 300]), 200), 1009);
    }

    #[test]
    fn compressed_messages_are_inflated_within_the_limit() {
        let text = br#"{"type":"subscribe","data":{"channels":["a","a","a","a","a","a","a"]}}"#;
        let z = deflate::compress(text, 15).unwrap();
        let mut d = Decoder::default();
        let mut whole = masked(0xC1, &z);
        let msg = d.next_frame(&mut whole, 1024, true).unwrap().unwrap().1;
        assert_eq!(msg, Some(Incoming::Text(Cow::Owned(text.to_vec()))));
        // Fragmented: RSV1 on the first frame only.
        let (a, b) = z.split_at(z.len() / 2);
        assert_eq!(d.next_frame(&mut masked(0x41, a), 1024, true).unwrap().unwrap().1, None);
        let mut last = masked(0x80, b);
        let msg = d.next_frame(&mut last, 1024, true).unwrap().unwrap().1;
        assert_eq!(msg, Some(Incoming::Text(Cow::Owned(text.to_vec()))));
        let code = |bytes: &mut Vec<u8>, max| Decoder::default().next_frame(bytes, max, true).unwrap_err().close_code();
        assert_eq!(code(&mut masked(0xC1, &z), text.len() - 1), 1009, "over the limit once inflated");
        assert_eq!(
            code(&mut masked(0xC1, &deflate::compress(&[b' '; 1 << 20], 15).unwrap()), 512 * 1024),
            1009,
            "bomb"
        );
        assert_eq!(code(&mut masked(0xC9, b""), 1024), 1002, "compressed ping");
        assert_eq!(code(&mut masked(0xC1, &[0xff; 8]), 1024), 1002, "not deflate");
        let mut d = Decoder::default();
        d.next_frame(&mut masked(0x01, b"ab"), 1024, true).unwrap();
        assert_eq!(
            d.next_frame(&mut masked(0xC0, b"c"), 1024, true).unwrap_err().close_code(),
            1002,
            "rsv1 on a continuation"
        );
    }

    #[test]
    fn a_shared_frame_is_compressed_once_per_window() {
        let json = format!("{{\"type\":\"log_entry\",\"data\":\"{}\"}}", "Can't keep up! ".repeat(40));
        let s = Shared::text(json.as_bytes());
        assert!(Rc::ptr_eq(s.variant(None, 256), s.plain()));
        let a = s.variant(Some(15), 256);
        assert!(Rc::ptr_eq(a, s.variant(Some(15), 256)), "compressed once");
        assert_eq!(a[0], 0xC1, "FIN, RSV1, text");
        assert!(a.len() < s.plain().len() / 4);
        assert_eq!(deflate::inflate(payload(a), 1 << 20).unwrap(), json.as_bytes());
        assert!(!Rc::ptr_eq(a, s.variant(Some(9), 256)));
        assert!(Rc::ptr_eq(s.variant(Some(15), 1 << 20), s.plain()), "under the threshold");
    }

    #[test]
    fn server_frames_are_unmasked_with_the_right_length() {
        let f = text(&[b'x'; 300]);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        assert_eq!(f.len(), 304);
        assert_eq!(&close(1001, "bye")[..], &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
    }
}
