//! `ws::Decoder::next_frame` on an arbitrary byte stream, read two ways:
//! from one buffer, and in small reads the way the reactor meets it (a
//! pending tail kept between reads). Both must give the same messages and
//! the same verdict; an error's close code is 1002, 1007 or 1009; a frame
//! consumes at least one byte and never more than it was given.
//! The first byte picks the limit (bits 0-1), the read size (bits 2-6) and
//! whether permessage-deflate was negotiated (bit 7: RSV1 frames are then
//! inflated).
use aymc_hub::ws::Decoder;

#[path = "../../tests/props/drain.rs"]
mod drain;
use drain::drain;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&ctl, stream)) = data.split_first() else { return };
        let max = match ctl & 0x03 {
            0 => 512 * 1024,
            1 => 125,
            2 => 16,
            _ => 0,
        };
        let chunk = usize::from((ctl >> 2) & 0x1f) + 1;
        let inflate = ctl & 0x80 != 0;

        let mut whole = Vec::new();
        let mut d = Decoder::default();
        let mut buf = stream.to_vec();
        let (_, whole_err) = drain(&mut d, &mut buf, max, inflate, &mut whole);

        let mut split = Vec::new();
        let mut d = Decoder::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut split_err = None;
        for piece in stream.chunks(chunk) {
            pending.extend_from_slice(piece);
            let (used, err) = drain(&mut d, &mut pending, max, inflate, &mut split);
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
