//! `Channel::parse` on arbitrary strings: never a panic; a name it accepts
//! prints as the input in lower case and parses back to the same channel.
use aymc_hub::protocol::Channel;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(name) = std::str::from_utf8(data) else { return };
        if let Some(c) = Channel::parse(name) {
            let printed = c.to_string();
            assert_eq!(printed, name.to_ascii_lowercase());
            assert_eq!(Channel::parse(&printed), Some(c));
        }
    });
}
