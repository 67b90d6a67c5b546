//! Strategies shared by the properties.

use proptest::prelude::*;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Any UUID.
pub fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// A string that is sometimes one of `likely`, else arbitrary.
pub fn string_like(likely: &'static [&'static str]) -> impl Strategy<Value = String> {
    let weight = if likely.is_empty() { 0 } else { 3 };
    let likely = if likely.is_empty() { &[""][..] } else { likely };
    prop_oneof![
        weight => proptest::sample::select(likely).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

/// Arbitrary JSON, whose object keys are often the ones the parsers look
/// for, so the interesting branches are reached.
pub fn json(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        string_like(keys).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((string_like(keys), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
