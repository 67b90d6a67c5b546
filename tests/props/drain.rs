//! Decoding a byte stream with `ws::Decoder` as the reactor does, with the
//! invariants every caller checks; shared by the property tests and the
//! `ws_frames` fuzz target (which includes this file by path).

use aymc_hub::ws::{Decoder, Incoming, WsError};

/// A message as the test sees it (owned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Text(Vec<u8>),
    Binary,
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

pub fn own(m: Incoming<'_>) -> Got {
    match m {
        Incoming::Text(t) => Got::Text(t.into_owned()),
        Incoming::Binary(_) => Got::Binary,
        Incoming::Ping(p) => Got::Ping(p.to_vec()),
        Incoming::Pong => Got::Pong,
        Incoming::Close(c) => Got::Close(c),
    }
}

/// Decodes every whole frame in `buf`, as the reactor does after a read
/// (`inflate`: on a connection that negotiated permessage-deflate): the
/// messages, the bytes consumed, and the error that ended it, if any.
pub fn drain(
    d: &mut Decoder,
    buf: &mut [u8],
    max: usize,
    inflate: bool,
    out: &mut Vec<Got>,
) -> (usize, Option<WsError>) {
    let mut pos = 0;
    loop {
        let left = buf.len() - pos;
        match d.next_frame(&mut buf[pos..], max, inflate) {
            Ok(None) => return (pos, None),
            Ok(Some((used, msg))) => {
                assert!(used > 0 && used <= left, "consumed {used} of {left}");
                pos += used;
                out.extend(msg.map(own));
            }
            Err(e) => {
                assert!(matches!(e.close_code(), 1002 | 1007 | 1009), "{e:?}");
                return (pos, Some(e));
            }
        }
    }
}
