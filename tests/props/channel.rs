//! `Channel::parse`: every channel of section 3 round-trips in lower case
//! whatever the case of its UUID; the fixed parts are lower case only; any
//! string is safe to parse.

use aymc_hub::protocol::{Channel, ChannelKind};
use proptest::prelude::*;

use crate::support::uuid;

fn kind() -> impl Strategy<Value = ChannelKind> {
    prop::sample::select(
        &[ChannelKind::Logs, ChannelKind::Metrics, ChannelKind::Status, ChannelKind::Notifications][..],
    )
}

fn name(kind: ChannelKind, id: &str) -> String {
    match kind {
        ChannelKind::Logs => format!("server:{id}:logs"),
        ChannelKind::Metrics => format!("server:{id}:metrics"),
        ChannelKind::Status => format!("server:{id}:status"),
        ChannelKind::Notifications => format!("user:{id}:notifications"),
    }
}

proptest! {
    #[test]
    fn channels_round_trip_in_lower_case(kind in kind(), id in uuid(), upper in prop::collection::vec(any::<bool>(), 36)) {
        let mixed: String = id
            .hyphenated()
            .to_string()
            .chars()
            .zip(upper)
            .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
            .collect();
        let sent = name(kind, &mixed);
        let c = Channel::parse(&sent).expect("a channel");
        prop_assert_eq!(c, Channel { kind, id });
        prop_assert_eq!(c.to_string(), sent.to_ascii_lowercase());
        prop_assert_eq!(Channel::parse(&c.to_string()), Some(c));
    }

    #[test]
    fn fixed_parts_are_lower_case_only(kind in kind(), id in uuid(), at in any::<prop::sample::Index>()) {
        let good = name(kind, &id.hyphenated().to_string());
        // Upper-case one letter outside the UUID.
        let fixed: Vec<usize> = good
            .char_indices()
            .filter(|&(i, c)| c.is_ascii_lowercase() && !(good.find(':').unwrap() < i && i < good.rfind(':').unwrap()))
            .map(|(i, _)| i)
            .collect();
        let i = fixed[at.index(fixed.len())];
        let mut bad = good.clone();
        bad.replace_range(i..=i, &good[i..=i].to_ascii_uppercase());
        prop_assert_eq!(Channel::parse(&bad), None);
    }

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        if let Some(c) = Channel::parse(&s) {
            prop_assert_eq!(c.to_string(), s.to_ascii_lowercase());
        }
    }

    #[test]
    fn near_channels_never_panic(kind in kind(), id in uuid(), junk in "[:a-zA-Z0-9{}-]{0,6}", at in any::<prop::sample::Index>()) {
        let good = name(kind, &id.hyphenated().to_string());
        let i = at.index(good.len() + 1);
        let s = format!("{}{junk}{}", &good[..i], &good[i..]);
        if let Some(c) = Channel::parse(&s) {
            prop_assert_eq!(c.to_string(), s.to_ascii_lowercase());
        }
    }
}
