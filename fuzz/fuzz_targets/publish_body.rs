//! `Publish::from_api` on arbitrary bytes: never a panic; a body it accepts
//! encodes into an envelope that, stripped of what the hub adds
//! (`timestamp`, `seq`, `epoch`), is accepted again and encodes the same
//! (exactly: serde_json runs with `float_roundtrip`).
use aymc_hub::protocol::{Publish, Time};
use serde_json::Value;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(mut p) = Publish::from_api(data) else { return };
        let now = Time::from_unix_ms(1_795_879_800_123).expect("a valid time");
        let seq = p.channel().map(|_| (7, "e"));
        p.stamp(now);
        let first: Value = serde_json::from_slice(&p.encode(now, seq)).expect("the hub encodes JSON");
        let mut stripped = first.clone();
        let obj = stripped.as_object_mut().expect("an envelope is an object");
        for key in ["timestamp", "seq", "epoch"] {
            obj.remove(key);
        }
        let body = serde_json::to_vec(&stripped).expect("re-encode");
        let mut again = Publish::from_api(&body)
            .unwrap_or_else(|e| panic!("re-encoded body refused: {e}\n{}", String::from_utf8_lossy(&body)));
        again.stamp(now);
        let second: Value = serde_json::from_slice(&again.encode(now, seq)).expect("JSON");
        assert_eq!(first, second, "{first}\nbecame\n{second}");
        assert_eq!(again.channel(), p.channel());
    });
}
