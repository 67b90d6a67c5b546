//! `LogQuery::from_params` (section 9): any parameters, as
//! `Request::query_param` decodes them from any query string, give a query
//! or a sentence for the `400`, never a panic; an accepted query has a
//! limit in 1..=1000 and the values it was given (`q` as its words).

use aymc_hub::http::Request;
use aymc_hub::store::{fts_query, search_words, LogQuery, MAX_LIMIT};
use proptest::prelude::*;

use crate::support::uuid;

const NAMES: &[&str] = &["before_seq", "after_seq", "from", "to", "level", "q", "limit"];

fn param() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![4 => prop::sample::select(NAMES).prop_map(str::to_string), 1 => "[a-z_]{0,10}"];
    let value = prop_oneof![
        any::<String>(),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(&["DEBUG", "info", "Warn", "ERROR", "trace", "FATAL", "warning", "loud"][..])
            .prop_map(str::to_string),
        prop::sample::select(
            &[
                "2026-11-28T15:30:00Z",
                "2026-11-28T15:30:00.123+02:00",
                "2026-11-28T15:30:00 02:00",
                "2026-13-28T15:30:00Z",
                "+999999-01-01T00:00:00Z"
            ][..]
        )
        .prop_map(str::to_string),
    ];
    (name, value)
}

proptest! {
    #[test]
    fn arbitrary_params_never_panic(server in uuid(), params in prop::collection::vec(param(), 0..8)) {
        let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        if let Ok(q) = LogQuery::from_params(server, get) {
            prop_assert!((1..=MAX_LIMIT).contains(&q.limit));
            prop_assert_eq!(q.server, server);
            for (name, field) in [("before_seq", q.before_seq), ("after_seq", q.after_seq)] {
                if let Some(v) = get(name).filter(|v| !v.is_empty()) {
                    prop_assert_eq!(Some(v.parse::<u64>().unwrap()), field);
                }
            }
            // Its words, each once (any Unicode whitespace separates them).
            let words = get("q").map(|v| search_words(&v).join(" ")).filter(|v| !v.is_empty());
            prop_assert_eq!(q.q.clone(), words);
            if let Some(text) = q.q.as_deref() {
                let _ = fts_query(text);
            }
        }
    }

    #[test]
    fn arbitrary_query_strings_never_panic(server in uuid(), query in any::<String>(), pairs in prop::collection::vec(param(), 0..6)) {
        let mut query = query;
        for (k, v) in pairs {
            query.push_str(&format!("&{k}={v}"));
        }
        let req = Request { query, ..Request::default() };
        if let Ok(q) = LogQuery::from_params(server, |n| req.query_param(n)) {
            prop_assert!((1..=MAX_LIMIT).contains(&q.limit));
        }
    }

    #[test]
    fn numbers_are_taken_as_given(server in uuid(), before in any::<u64>(), after in any::<u64>(), limit in 1u64..u64::MAX) {
        let req = Request { query: format!("before_seq={before}&after_seq={after}&limit={limit}"), ..Request::default() };
        let q = LogQuery::from_params(server, |n| req.query_param(n)).unwrap();
        prop_assert_eq!((q.before_seq, q.after_seq), (Some(before), Some(after)));
        prop_assert_eq!(q.limit as u64, limit.min(MAX_LIMIT as u64));
        prop_assert!(!q.is_forward());
    }
}
