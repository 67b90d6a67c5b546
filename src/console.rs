//! The web console's files, embedded in the binary from `console/` (PROTOCOL.md
//! 11.7): the page, its script and styles, and the JavaScript client. They
//! hold no data, so they need no token; the page gets a strict
//! `Content-Security-Policy`. No IO here.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

/// The page's `Content-Security-Policy`: everything from the hub itself,
/// WebSockets to it, no inline script or style, never framed.
pub const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; \
                       script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// One embedded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
    /// An HTML page (gets the `Content-Security-Policy`).
    pub html: bool,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The file served at `path`, if any.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, body): (&str, &[u8]) = match path {
        "/" => (HTML, include_bytes!("../console/index.html")),
        "/console.js" => (JS, include_bytes!("../console/console.js")),
        "/console.css" => (CSS, include_bytes!("../console/console.css")),
        "/charts.js" => (JS, include_bytes!("../console/charts.js")),
        "/aymc-client.js" => (JS, include_bytes!("../console/aymc-client.js")),
        "/aymc-client.d.ts" => (TEXT, include_bytes!("../console/aymc-client.d.ts")),
        _ => return None,
    };
    Some(Asset { content_type, body, html: content_type == HTML })
}

/// The headers of an asset's `200` besides `Content-Type` and
/// `Content-Length`.
pub fn headers(asset: &Asset) -> Vec<(&'static str, &'static str)> {
    let mut headers =
        vec![("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")];
    if asset.html {
        headers.push(("Content-Security-Policy", CSP));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_file_has_its_type_and_only_the_page_a_policy() {
        let page = asset("/").unwrap();
        assert_eq!(page.content_type, "text/html; charset=utf-8");
        assert!(std::str::from_utf8(page.body).unwrap().contains("aymc-hub console"));
        assert!(headers(&page).contains(&("Content-Security-Policy", CSP)));
        for path in ["/console.js", "/charts.js", "/aymc-client.js", "/aymc-client.d.ts", "/console.css"] {
            let file = asset(path).unwrap();
            assert!(!file.html && !headers(&file).iter().any(|(k, _)| *k == "Content-Security-Policy"), "{path}");
        }
        assert_eq!(asset("/console.xyz"), None);
        assert_eq!(asset("/index.html"), None);
    }
}
