//! Embeds the web client (docs/WEBCLIENT.md) into the binary: every file of `web/dist/` (the pinned
//! Converse.js release, refreshed by `web/update.sh`) plus kabar's own `web/index.html` and
//! `web/kabar-web.js`. Text files are stored gzip-compressed (served as-is to browsers that accept
//! gzip, inflated for the others); a content hash of everything names the URL prefix
//! (`/web/<id>/`), so the files can be cached forever and a new build changes every URL.
//!
//! Output: `$OUT_DIR/web_assets.rs`, included by `src/http/web.rs`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// Files at least this big whose type compresses are stored gzipped.
const GZIP_MIN: usize = 512;

/// Served at `/` when web/index.html is missing (same placeholders, no client).
const FALLBACK_INDEX: &str = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{{TITLE}}</title>\n\
<script type=\"application/json\" id=\"kabar-config\">{{CONFIG}}</script></head>\n\
<body><p>This kabar build has no web client (web/ was missing at build time). Any XMPP client can log in \
to {{DOMAIN}}.</p><!-- {{ASSETS}} --></body></html>\n";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let web = manifest.join("../../web");
    let dist = web.join("dist");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let store = out.join("web");
    let _ = fs::remove_dir_all(&store);
    fs::create_dir_all(&store).expect("create $OUT_DIR/web");
    println!("cargo:rerun-if-changed={}", dist.display());
    println!("cargo:rerun-if-changed={}", web.join("index.html").display());
    println!("cargo:rerun-if-changed={}", web.join("kabar-web.js").display());

    // (URL path under /web/<id>/, source file)
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    if dist.is_dir() {
        walk(&dist, &dist, &mut files);
    } else {
        println!("cargo:warning=web/dist/ is missing: the web client is not embedded (run web/update.sh)");
    }
    if web.join("kabar-web.js").is_file() {
        files.push(("kabar-web.js".into(), web.join("kabar-web.js")));
    }
    files.sort();

    // Without web/ (a partial checkout) the server still builds; `/` then says the client is missing.
    let index = fs::read_to_string(web.join("index.html")).unwrap_or_else(|_| {
        println!("cargo:warning=web/index.html is missing: `/` serves a placeholder page");
        FALLBACK_INDEX.to_string()
    });
    let version = fs::read_to_string(dist.join("VERSION")).map(|v| v.trim().to_string()).unwrap_or_default();

    let mut id_hash = Fnv::new();
    id_hash.write(index.as_bytes());
    let mut table = String::new();
    for (n, (path, src)) in files.iter().enumerate() {
        let data = fs::read(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
        id_hash.write(path.as_bytes());
        id_hash.write(&[0]);
        id_hash.write(&data);
        let gzip = data.len() >= GZIP_MIN && compressible(path);
        let stored = if gzip { gzip_encode(&data) } else { data };
        let file = store.join(format!("{n}.bin"));
        fs::write(&file, &stored).expect("write embedded file");
        writeln!(
            table,
            "    Asset {{ path: {path:?}, gzip: {gzip}, body: include_bytes!({:?}) }},",
            file.display().to_string()
        )
        .expect("fmt");
    }

    let mut code = String::new();
    writeln!(code, "/// Content hash of the embedded files: the `/web/<id>/` prefix.").expect("fmt");
    writeln!(code, "pub const WEB_ID: &str = \"{:012x}\";", id_hash.finish() & 0xffff_ffff_ffff).expect("fmt");
    writeln!(code, "/// Converse.js version (web/dist/VERSION); empty when web/dist/ is missing.").expect("fmt");
    writeln!(code, "pub const CONVERSE_VERSION: &str = {version:?};").expect("fmt");
    writeln!(code, "/// The page template served at `/` (web/index.html).").expect("fmt");
    writeln!(code, "pub const INDEX_TEMPLATE: &str = {index:?};").expect("fmt");
    writeln!(code, "/// Sorted by path.").expect("fmt");
    writeln!(code, "pub static ASSETS: &[Asset] = &[\n{table}];").expect("fmt");
    fs::write(out.join("web_assets.rs"), code).expect("write web_assets.rs");
}

fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let mut entries: Vec<_> = fs::read_dir(dir).expect("read web/dist").filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, files);
        } else if let Ok(rel) = path.strip_prefix(root) {
            let rel: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            files.push((rel.join("/"), path));
        }
    }
}

fn compressible(path: &str) -> bool {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    matches!(ext, "js" | "css" | "json" | "svg" | "ttf" | "wasm" | "ico" | "html" | "txt") || !path.contains('.')
}

/// RFC 1952 member: fixed 10-byte header (no name, no mtime), raw DEFLATE, CRC-32, size.
fn gzip_encode(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 0xff];
    out.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(data, 9));
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
        *slot = c;
    }
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// FNV-1a 64: a stable content hash for the URL prefix (not security-relevant).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}
