//! `Publish::from_api` on arbitrary bytes: never a panic; a body it accepts
//! encodes into an envelope that, stripped of what the hub adds
//! (`timestamp`, `seq`, `epoch`), is accepted again and encodes the same
//! (floats within an ulp or two: serde_json parses them exactly only with
//! its `float_roundtrip` feature, which the hub does not enable).
use aymc_hub::protocol::{Publish, Time};
use serde_json::Value;

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) if a.is_f64() || b.is_f64() => {
            let (x, y) = (a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
            x == y
                || (x - y).abs() <= x.abs().max(y.abs()) * 4.0 * f64::EPSILON
                || (x - y).abs() <= 4.0 * f64::from_bits(1)
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((kx, x), (ky, y))| kx == ky && same(x, y))
        }
        _ => a == b,
    }
}

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
        assert!(same(&first, &second), "{first}\nbecame\n{second}");
        assert_eq!(again.channel(), p.channel());
    });
}
