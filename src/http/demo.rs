//! The browser demo page and its JavaScript client, served from the binary: `GET /` (the page),
//! `/voxd.js` (the client a front-end imports), `/voxd-audio.js` (its pure audio code: PCM16
//! framing, resampling, the jitter buffer), `/voxd-worklets.js` (the AudioWorklet processors),
//! and the page's own `/demo.js` and `/demo.css`. docs/browser.md describes the page and the
//! client.
//!
//! The files live in `web/` and are compiled in with `include_bytes!`: no build step, no CDN, no
//! file read at run time, and a binary serves the page that matches its own protocol. Each
//! response is a static slice with static headers; the only per-request work is comparing
//! `If-None-Match` with the asset's ETag, a hash of its bytes computed at compile time. Assets are
//! `Cache-Control: no-cache`: a browser revalidates on each load and gets a 304 until the binary
//! changes. The routes are open (no API key): a browser cannot send one when it navigates, and the
//! page carries no secret. The page passes its own `?token=` on to `/ws`. The JavaScript files
//! allow any origin (CORS), so a front-end elsewhere can import `/voxd.js` from voxd.
//! `[server] demo_page = false` leaves the routes out, so they answer 404.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;

/// One embedded file and how it is served.
struct Asset {
    /// The route.
    path: &'static str,
    /// `Content-Type`.
    content_type: &'static str,
    /// The file's bytes.
    body: &'static [u8],
    /// A strong ETag: the FNV-1a 64 hash of `body`, quoted.
    etag: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// What the page may load and connect to: its own files only, and WebSockets (`'self'` does not
/// cover `ws:` in every browser). No inline script or style, no third-party origin.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// FNV-1a 64 of `bytes`, at compile time.
const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `"<16 hex digits of fnv1a64(bytes)>"`, as ASCII bytes.
const fn etag(bytes: &[u8]) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = fnv1a64(bytes);
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

/// An `Asset` for `web/<file>` at `path`, its ETag computed at compile time.
macro_rules! asset {
    ($path:literal, $file:literal, $content_type:expr) => {{
        const BODY: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $file));
        const TAG: [u8; 18] = etag(BODY);
        Asset {
            path: $path,
            content_type: $content_type,
            body: BODY,
            etag: match std::str::from_utf8(&TAG) {
                Ok(tag) => tag,
                Err(_) => panic!("an ETag is ASCII"),
            },
        }
    }};
}

static ASSETS: [Asset; 6] = [
    asset!("/", "index.html", HTML),
    asset!("/demo.css", "demo.css", CSS),
    asset!("/demo.js", "demo.js", JS),
    asset!("/voxd.js", "voxd.js", JS),
    asset!("/voxd-audio.js", "voxd-audio.js", JS),
    asset!("/voxd-worklets.js", "voxd-worklets.js", JS),
];

/// Adds the demo page's routes to `router`.
pub(super) fn routes<S: Clone + Send + Sync + 'static>(mut router: Router<S>) -> Router<S> {
    for asset in &ASSETS {
        router = router.route(
            asset.path,
            get(move |headers: HeaderMap| async move { serve(asset, &headers) }),
        );
    }
    router
}

/// The asset, or 304 when the client's copy is current.
fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == asset.etag || t == "*");
    let (status, body) = if fresh {
        (StatusCode::NOT_MODIFIED, Body::empty())
    } else {
        (StatusCode::OK, Body::from(asset.body))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.content_type == JS {
        // A front-end on another origin may import the client as a module (and its worklets),
        // which needs CORS. The files are public and carry no credentials.
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    if asset.content_type == HTML {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        );
        // The page's URL may carry `?token=`: never send it on as a referrer.
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_the_hash_of_each_file_and_differ() {
        for a in &ASSETS {
            assert_eq!(
                a.etag,
                format!("\"{:016x}\"", fnv1a64(a.body)),
                "{}",
                a.path
            );
        }
        let mut tags: Vec<_> = ASSETS.iter().map(|a| a.etag).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), ASSETS.len());
    }

    #[test]
    fn a_matching_if_none_match_gets_304_and_any_other_the_file() {
        let asset = &ASSETS[3];
        let mut h = HeaderMap::new();
        assert_eq!(serve(asset, &h).status(), StatusCode::OK);
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"x\", W/{}", asset.etag)).unwrap(),
        );
        assert_eq!(serve(asset, &h).status(), StatusCode::NOT_MODIFIED);
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        assert_eq!(serve(asset, &h).status(), StatusCode::OK);
    }
}
