//! Section 1's token order on random combinations: the query parameter
//! `token`, then `Authorization` with scheme Bearer (any case; other
//! schemes are ignored), then the `token` cookie; the first present one
//! wins even when empty or when a later one looks better.

use aymc_hub::http::{parse_head, TokenSource};
use proptest::prelude::*;

/// A token value as clients send them (JWT alphabet), sometimes empty.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![1 => Just(String::new()), 6 => "[A-Za-z0-9._~-]{1,24}"]
}

#[derive(Debug, Clone)]
struct Combo {
    /// `token` in the query, and whether it is percent-encoded.
    query: Option<(String, bool)>,
    /// Other query parameters before and after it.
    query_noise: (Vec<String>, Vec<String>),
    /// `Authorization: <scheme> <value>`.
    auth: Option<(String, String)>,
    /// `token` cookie, quoted or not, among other cookies.
    cookie: Option<(String, bool)>,
    cookie_noise: Vec<String>,
}

fn noise() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![
            "[a-z]{1,6}=[a-z0-9]{0,6}".prop_filter("not the token itself", |p| !p.starts_with("token=")),
            Just("tokens=x".to_string()),
            Just("xtoken=y".to_string()),
            Just("Token=z".to_string()),
            Just("tok".to_string()),
        ],
        0..3,
    )
}

fn combo() -> impl Strategy<Value = Combo> {
    let scheme = prop_oneof![
        4 => prop::sample::select(&["Bearer", "bearer", "BEARER", "bEaReR"][..]).prop_map(str::to_string),
        1 => prop::sample::select(&["Basic", "Token", "Bearerx", "Digest"][..]).prop_map(str::to_string),
    ];
    (
        prop::option::of((value(), any::<bool>())),
        (noise(), noise()),
        prop::option::of((scheme, value())),
        prop::option::of((value(), any::<bool>())),
        noise(),
    )
        .prop_map(|(query, query_noise, auth, cookie, cookie_noise)| Combo {
            query,
            query_noise,
            auth,
            cookie,
            cookie_noise,
        })
}

fn percent_encode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn head(c: &Combo) -> String {
    let mut params = c.query_noise.0.clone();
    if let Some((t, enc)) = &c.query {
        params.push(format!("token={}", if *enc { percent_encode(t) } else { t.clone() }));
    }
    params.extend(c.query_noise.1.iter().cloned());
    let query = if params.is_empty() { String::new() } else { format!("?{}", params.join("&")) };
    let mut s = format!("GET /api/v1/ws{query} HTTP/1.1\r\nHost: hub\r\n");
    if let Some((scheme, v)) = &c.auth {
        s.push_str(&format!("Authorization: {scheme} {v}\r\n"));
    }
    let mut cookies = c.cookie_noise.clone();
    if let Some((t, quoted)) = &c.cookie {
        cookies.insert(cookies.len() / 2, if *quoted { format!("token=\"{t}\"") } else { format!("token={t}") });
    }
    if !cookies.is_empty() {
        s.push_str(&format!("Cookie: {}\r\n", cookies.join("; ")));
    }
    s + "\r\n"
}

fn expected(c: &Combo) -> TokenSource {
    if let Some((t, _)) = &c.query {
        return TokenSource::Found(t.clone());
    }
    if let Some((scheme, v)) = &c.auth {
        if scheme.eq_ignore_ascii_case("bearer") {
            return TokenSource::Found(v.clone());
        }
    }
    match &c.cookie {
        Some((t, _)) => TokenSource::Found(t.clone()),
        None => TokenSource::None,
    }
}

proptest! {
    #[test]
    fn the_first_present_source_wins(c in combo()) {
        let text = head(&c);
        let (req, _) = parse_head(text.as_bytes(), 8192, 64).unwrap().expect("a complete head");
        prop_assert_eq!(req.token(), expected(&c), "{}", text);
        let from_cookie = c.query.is_none()
            && !c.auth.as_ref().is_some_and(|(s, _)| s.eq_ignore_ascii_case("bearer"))
            && c.cookie.as_ref().is_some_and(|(t, _)| !t.is_empty());
        prop_assert_eq!(req.token_from_cookie(), from_cookie, "{}", text);
    }
}
