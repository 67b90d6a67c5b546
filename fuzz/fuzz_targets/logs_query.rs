//! The logs endpoint's query string: `Request::query_param` (percent
//! decoding) into `LogQuery::from_params`, then the FTS5 query and a page
//! from memory over a few kept entries. Never a panic; an accepted query
//! has `limit` in 1..=1000.
use aymc_hub::http::Request;
use aymc_hub::store::{fts_query, memory_page, LogQuery, MAX_LIMIT};
use uuid::Uuid;

const SERVER: Uuid = Uuid::from_u128(0x550e8400_e29b_41d4_a716_446655440000);

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let query = String::from_utf8_lossy(data).into_owned();
        let req = Request { query, ..Request::default() };
        let Ok(q) = LogQuery::from_params(SERVER, |n| req.query_param(n)) else { return };
        assert!((1..=MAX_LIMIT).contains(&q.limit));
        if let Some(text) = q.q.as_deref() {
            if let Some(fts) = fts_query(text) {
                assert!(fts.starts_with('"') && fts.ends_with('"'));
            }
        }
        let kept: Vec<(u64, Vec<u8>)> = (1..=5u64)
            .map(|seq| {
                let level = ["DEBUG", "INFO", "WARN", "ERROR", "INFO"][(seq - 1) as usize];
                let env = format!(
                    r#"{{"type":"log_entry","channel":"server:{SERVER}:logs","data":{{"server_id":"{SERVER}","timestamp":"2026-11-28T15:30:0{seq}.000Z","level":"{level}","source":"server","message":"line {seq} Done","exception":"at x"}},"timestamp":"2026-11-28T15:30:0{seq}.000Z","seq":{seq},"epoch":"e"}}"#
                );
                (seq, env.into_bytes())
            })
            .collect();
        let page = memory_page(&q, kept.iter().map(|(s, e)| (*s, e.as_slice())));
        assert!(page.messages.len() <= q.limit);
        let _ = page.to_json();
    });
}
