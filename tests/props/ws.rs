//! `ws::Decoder::next_frame` (with and without permessage-deflate) and the
//! frame encoders: any bytes give "not yet", a
//! frame or a close code of 1002, 1007 or 1009, never a panic and never
//! more consumed than given; masked frames of any payload and fragmentation
//! round-trip, in any read sizes; what the hub encodes decodes back.

use std::borrow::Cow;

use aymc_hub::ws::{self, Decoder, Incoming, WsError};

use crate::drain::{drain, own, Got};
use proptest::prelude::*;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Feeds `stream` in reads of the given sizes (cycled), keeping the
/// unconsumed tail between reads.
fn feed(stream: &[u8], reads: &[usize], max: usize, inflate: bool) -> (Vec<Got>, Option<WsError>, usize) {
    let mut d = Decoder::default();
    let (mut out, mut pending, mut at) = (Vec::new(), Vec::new(), 0);
    for &n in reads.iter().cycle() {
        if at >= stream.len() {
            break;
        }
        let end = (at + n.max(1)).min(stream.len());
        pending.extend_from_slice(&stream[at..end]);
        at = end;
        let (used, err) = drain(&mut d, &mut pending, max, inflate, &mut out);
        pending.drain(..used);
        if err.is_some() {
            return (out, err, pending.len());
        }
    }
    (out, None, pending.len())
}

/// A client (masked) frame.
fn masked(fin: bool, opcode: u8, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(fin) << 7 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A server frame turned into the client frame a peer would send with the
/// same header and payload: the mask bit set, a mask inserted, the payload
/// masked.
fn mask_server_frame(frame: &[u8], mask: [u8; 4]) -> Vec<u8> {
    assert_eq!(frame[1] & 0x80, 0, "server frames are not masked");
    let header_len = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let mut out = frame[..header_len].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    out.extend(frame[header_len..].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Payload sizes around the length-encoding boundaries, mostly small.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::collection::vec(any::<u8>(), 0..300),
        1 => prop::collection::vec(any::<u8>(), 65_530..65_540),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_give_a_frame_not_yet_or_a_close_code(
        stream in prop::collection::vec(any::<u8>(), 0..400),
        reads in prop::collection::vec(1usize..64, 1..8),
        max in prop_oneof![Just(512 * 1024), 0usize..200],
        inflate in any::<bool>(),
    ) {
        let mut whole = Vec::new();
        let (_, whole_err) = drain(&mut Decoder::default(), &mut stream.clone(), max, inflate, &mut whole);
        let (split, split_err, _) = feed(&stream, &reads, max, inflate);
        prop_assert_eq!(whole, split, "one buffer and small reads must agree");
        prop_assert_eq!(whole_err, split_err);
    }

    #[test]
    fn compressed_frames_of_any_payload_give_a_message_or_a_close_code(
        frames in prop::collection::vec(
            (prop::sample::select(vec![0x41u8, 0x42, 0x01, 0x00, 0x40, 0x49, 0x09]), any::<bool>(),
             prop_oneof![prop::collection::vec(any::<u8>(), 0..300), "[a-c ]{0,300}".prop_map(|t| {
                 let f = ws::message(OpCode::Data(Data::Text), t.as_bytes(), Some(15), 0);
                 ws::payload(&f).to_vec()
             })], any::<[u8; 4]>()),
            1..5,
        ),
        max in prop_oneof![Just(512 * 1024), 0usize..200],
        reads in prop::collection::vec(1usize..64, 1..8),
    ) {
        // Frames with RSV1 (or not) and any payload: garbage, truncated or
        // valid deflate data all end in a message, "not yet" or
        // 1002/1007/1009, never a panic, the same in one buffer as in
        // small reads.
        let mut stream = Vec::new();
        for (op, fin, payload, mask) in &frames {
            stream.extend(masked(*fin, *op, *mask, payload));
        }
        let mut whole = Vec::new();
        let (_, whole_err) = drain(&mut Decoder::default(), &mut stream.clone(), max, true, &mut whole);
        let (split, split_err, _) = feed(&stream, &reads, max, true);
        prop_assert_eq!(whole, split, "one buffer and small reads must agree");
        prop_assert_eq!(whole_err, split_err);
    }

    #[test]
    fn masked_messages_round_trip_in_any_fragmentation(
        messages in prop::collection::vec(
            (any::<bool>(), payload(), prop::collection::vec(any::<prop::sample::Index>(), 0..4), any::<[u8; 4]>(), any::<Option<Vec<u8>>>()),
            1..4,
        ),
        reads in prop::collection::vec(1usize..5000, 1..6),
    ) {
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for (is_text, bytes, cuts, mask, ping) in &messages {
            // A text message is valid UTF-8 (multi-byte characters included,
            // and cut between fragments: only the whole message must be).
            let bytes: Vec<u8> =
                if *is_text { String::from_utf8_lossy(bytes).into_owned().into_bytes() } else { bytes.clone() };
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut bounds = vec![0];
            bounds.extend(cuts.iter().copied().filter(|&c| c > 0 && c < bytes.len()));
            bounds.push(bytes.len());
            let pieces: Vec<&[u8]> = bounds.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
            for (i, piece) in pieces.iter().enumerate() {
                let opcode = if i > 0 { 0 } else if *is_text { 1 } else { 2 };
                stream.extend(masked(i + 1 == pieces.len(), opcode, *mask, piece));
                // A control frame may come between fragments.
                if let (Some(p), true) = (ping, i + 1 < pieces.len()) {
                    let p = &p[..p.len().min(125)];
                    stream.extend(masked(true, 9, *mask, p));
                    want.push(Got::Ping(p.to_vec()));
                }
            }
            want.push(if *is_text { Got::Text(bytes) } else { Got::Binary });
        }
        let (got, err, left) = feed(&stream, &reads, 512 * 1024, false);
        prop_assert_eq!(err, None);
        prop_assert_eq!(left, 0, "every byte consumed");
        prop_assert_eq!(got, want);
    }

    #[test]
    fn hub_frames_decode_back_once_masked(payload in payload(), mask in any::<[u8; 4]>(), code in 1000u16..5000, reason in "[ -~é]{0,40}") {
        let text: String = payload.iter().map(|b| char::from(b & 0x7f)).collect();
        let cases = [
            (ws::text(text.as_bytes()), Got::Text(text.clone().into_bytes())),
            (ws::frame(OpCode::Data(Data::Binary), &payload), Got::Binary),
            (ws::control(Control::Ping, &payload[..payload.len().min(125)]), Got::Ping(payload[..payload.len().min(125)].to_vec())),
            (ws::control(Control::Pong, &payload[..payload.len().min(125)]), Got::Pong),
            (ws::close(code, &reason), Got::Close(Some(code))),
        ];
        for (frame, want) in cases {
            let mut client = mask_server_frame(&frame, mask);
            let n = client.len();
            let (used, msg) = Decoder::default().next(&mut client, 1 << 20).unwrap().unwrap();
            prop_assert_eq!(used, n);
            prop_assert_eq!(msg.map(own), Some(want));
        }
    }

    #[test]
    fn compressed_messages_decode_back_at_every_window_and_the_limit_holds_on_the_inflated_size(
        words in prop::collection::vec("[a-e ]{0,12}", 0..400),
        bits in 8u8..=15,
        mask in any::<[u8; 4]>(),
        max in 0usize..6000,
    ) {
        let text = words.concat();
        let frame = ws::message(OpCode::Data(Data::Text), text.as_bytes(), Some(bits), 0);
        let mut client = mask_server_frame(&frame, mask);
        let n = client.len();
        let compressed = frame[0] & 0x40 != 0;
        match Decoder::default().next_frame(&mut client, 1 << 20, true) {
            Ok(Some((used, msg))) => {
                prop_assert_eq!(used, n);
                prop_assert_eq!(msg.map(own), Some(Got::Text(text.clone().into_bytes())));
            }
            other => prop_assert!(false, "{:?}", other.map(|o| o.map(|(u, _)| u))),
        }
        let mut client = mask_server_frame(&frame, mask);
        let result = Decoder::default().next_frame(&mut client, max, true).map(|o| o.map(|(u, m)| (u, m.map(own))));
        if text.len() > max || (compressed && ws::payload(&frame).len() > max) {
            prop_assert_eq!(result.err().map(WsError::close_code), Some(1009));
        } else {
            prop_assert_eq!(result, Ok(Some((n, Some(Got::Text(text.into_bytes()))))));
        }
    }

    #[test]
    fn a_message_over_the_limit_is_1009(len in 1usize..400, max in 0usize..400, split in any::<prop::sample::Index>()) {
        let payload = vec![b'a'; len];
        let at = split.index(len + 1);
        let mut stream = masked(false, 1, [9, 8, 7, 6], &payload[..at]);
        stream.extend(masked(true, 0, [1, 2, 3, 4], &payload[at..]));
        let (got, err, _) = feed(&stream, &[stream.len()], max, false);
        if len > max {
            prop_assert_eq!(err.map(WsError::close_code), Some(1009));
            prop_assert!(got.is_empty());
        } else {
            prop_assert_eq!(err, None);
            prop_assert_eq!(got, vec![Got::Text(payload)]);
        }
    }
}

#[test]
fn text_is_borrowed_when_unfragmented() {
    let mut f = masked(true, 1, [1, 2, 3, 4], b"hi");
    let msg = Decoder::default().next(&mut f, 10).unwrap().unwrap().1;
    assert!(matches!(msg, Some(Incoming::Text(Cow::Borrowed(b"hi")))));
}
