//! The web client (docs/WEBCLIENT.md): Converse.js, embedded at build time from `web/dist/` by
//! `build.rs`, served under `/web/<id>/` (`<id>` is a content hash, so those URLs never change
//! meaning and are cached for a year), and `/`, a page that loads it with settings taken from the
//! server's configuration (domain, whether registration is open).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::HttpState;

pub struct Asset {
    /// Path under `/web/<id>/`.
    pub path: &'static str,
    /// `body` is a gzip member (RFC 1952) of the file rather than the file itself.
    pub gzip: bool,
    pub body: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// Scripts only from this origin, plus WebAssembly compilation ('wasm-unsafe-eval' allows no JavaScript
/// eval) for OMEMO's curve25519 module; no plugins, no `<base>`, no framing. Images, media and connections stay open: Converse shows
/// avatars, link previews and uploads from other origins.
const CSP: &str = "script-src 'self' 'wasm-unsafe-eval'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// `GET /`: the client page.
pub async fn index(State(state): State<HttpState>) -> Response {
    let config = &state.c2s.server.config;
    // The runtime switch (docs/REGISTRATION.md), not the config: the sign-up link follows the admin API.
    let registration = state.c2s.server.registration_enabled.load(std::sync::atomic::Ordering::Relaxed);
    let body = render_index(&config.domain, registration);
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// The page: `web/index.html` with the placeholders filled in. Values go into HTML through
/// [`html_escape`]; the settings are one JSON object inside `<script type="application/json">`, with
/// `<`, `>` and `&` written as `\u003c`… so no value can end the script element.
pub fn render_index(domain: &str, registration: bool) -> String {
    let assets = format!("/web/{WEB_ID}");
    let settings = serde_json::json!({
        "domain": domain,
        "registration": registration,
        "assets_path": assets,
        "converse_version": CONVERSE_VERSION,
    });
    let json = settings.to_string().replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026");
    INDEX_TEMPLATE
        .replace("{{TITLE}}", &super::html_escape(&format!("{domain} · chat")))
        .replace("{{DOMAIN}}", &super::html_escape(domain))
        .replace("{{ASSETS}}", &super::html_escape(&assets))
        .replace("{{CONFIG}}", &json)
}

/// `GET /web/{id}/{*path}`: one embedded file. Another `id` (a page from an older build) is 404.
pub async fn asset(Path((id, path)): Path<(String, String)>, headers: HeaderMap) -> Response {
    if id != WEB_ID {
        return not_found();
    }
    let Ok(i) = ASSETS.binary_search_by(|a| a.path.cmp(path.as_str())) else {
        return not_found();
    };
    let asset = &ASSETS[i];
    let mut response = if !asset.gzip {
        asset.body.into_response()
    } else if accepts_gzip(&headers) {
        let mut r = asset.body.into_response();
        r.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        match gunzip(asset.body) {
            Some(body) => body.into_response(),
            None => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(asset.path)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if asset.gzip {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    response
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CACHE_CONTROL, "no-cache")], "not found\n").into_response()
}

/// Whether `Accept-Encoding` lists gzip (or `*`) with a non-zero quality.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let values = headers.get_all(header::ACCEPT_ENCODING);
    values.iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        if !coding.eq_ignore_ascii_case("gzip") && coding != "*" {
            return false;
        }
        // "q=0" (or 0.0, 0.00 …) refuses the coding.
        !parts.any(|p| p.trim().strip_prefix("q=").is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)))
    })
}

/// Inflates one gzip member as written by build.rs (fixed 10-byte header, 8-byte trailer).
fn gunzip(gz: &[u8]) -> Option<Vec<u8>> {
    let deflate = gz.get(10..gz.len().checked_sub(8)?)?;
    miniz_oxide::inflate::decompress_to_vec(deflate).ok()
}

fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "html" => "text/html; charset=utf-8",
        "wasm" => "application/wasm",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "ttf" => "font/ttf",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ogg" => "audio/ogg",
        "mp3" => "audio/mpeg",
        _ if !path.contains('.') => "text/plain; charset=utf-8", // LICENSE, VERSION
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_sorted_and_the_client_is_embedded() {
        assert!(ASSETS.windows(2).all(|w| w[0].path < w[1].path));
        for needed in ["converse.min.js", "converse.min.css", "kabar-web.js", "emoji.json", "webfonts/muli.ttf"] {
            assert!(ASSETS.iter().any(|a| a.path == needed), "{needed} is not embedded");
        }
        assert!(!CONVERSE_VERSION.is_empty());
    }

    #[test]
    fn gzip_round_trip() {
        let js = ASSETS.iter().find(|a| a.path == "kabar-web.js").expect("kabar-web.js");
        assert!(js.gzip);
        let plain = gunzip(js.body).expect("inflates");
        assert!(String::from_utf8(plain).expect("utf-8").contains("converse.initialize"));
    }

    #[test]
    fn settings_cannot_break_out_of_the_page() {
        let page = render_index("</script><script>alert(1)</script>&\"'", true);
        assert!(!page.contains("<script>alert"));
        assert!(!page.contains("{{"));
        let start = page.find("id=\"kabar-config\">").expect("config element") + "id=\"kabar-config\">".len();
        let end = start + page[start..].find("</script>").expect("end of config");
        let v: serde_json::Value = serde_json::from_str(&page[start..end]).expect("JSON");
        assert_eq!(v["domain"], "</script><script>alert(1)</script>&\"'");
        assert_eq!(v["registration"], true);
        assert_eq!(v["assets_path"], format!("/web/{WEB_ID}"));
    }

    #[test]
    fn accept_encoding() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).expect("header"));
            m
        };
        assert!(accepts_gzip(&h("gzip, deflate, br, zstd")));
        assert!(accepts_gzip(&h("br;q=1.0, gzip;q=0.5")));
        assert!(accepts_gzip(&h("*")));
        assert!(!accepts_gzip(&h("gzip;q=0")));
        assert!(!accepts_gzip(&h("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
        assert_eq!(content_type("curve25519_compiled.wasm"), "application/wasm");
        assert_eq!(content_type("chunkjs/locales/de-LC_MESSAGES-converse-po.js"), "text/javascript; charset=utf-8");
    }
}
