//! `ws::Decoder::next` on an arbitrary byte stream, read two ways: from one
//! buffer, and in small reads the way the reactor meets it (a pending tail
//! kept between reads). Both must give the same messages and the same
//! verdict; an error's close code is 1002, 1007 or 1009; a frame consumes at
//! least one byte and never more than it was given.
use aymc_hub::ws::{Decoder, Incoming, WsError};

#[derive(Debug, PartialEq, Eq)]
enum Got {
    Text(Vec<u8>),
    Binary,
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

fn own(m: Incoming<'_>) -> Got {
    match m {
        Incoming::Text(t) => Got::Text(t.into_owned()),
        Incoming::Binary => Got::Binary,
        Incoming::Ping(p) => Got::Ping(p.to_vec()),
        Incoming::Pong => Got::Pong,
        Incoming::Close(c) => Got::Close(c),
    }
}

/// Decodes all whole frames of `buf`; returns the messages, the error if
/// one ended it, and the bytes consumed.
fn drain(d: &mut Decoder, buf: &mut [u8], max: usize, out: &mut Vec<Got>) -> (usize, Option<WsError>) {
    let mut pos = 0;
    loop {
        let left = buf.len() - pos;
        match d.next(&mut buf[pos..], max) {
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

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&ctl, stream)) = data.split_first() else { return };
        let max = match ctl & 0x03 {
            0 => 512 * 1024,
            1 => 125,
            2 => 16,
            _ => 0,
        };
        let chunk = usize::from(ctl >> 2) + 1;

        let mut whole = Vec::new();
        let mut d = Decoder::default();
        let mut buf = stream.to_vec();
        let (_, whole_err) = drain(&mut d, &mut buf, max, &mut whole);

        let mut split = Vec::new();
        let mut d = Decoder::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut split_err = None;
        for piece in stream.chunks(chunk) {
            pending.extend_from_slice(piece);
            let (used, err) = drain(&mut d, &mut pending, max, &mut split);
            pending.drain(..used);
            if err.is_some() {
                split_err = err;
                break;
            }
        }
        assert_eq!(whole, split, "messages differ between one buffer and reads of {chunk}");
        assert_eq!(whole_err, split_err);
    });
}
