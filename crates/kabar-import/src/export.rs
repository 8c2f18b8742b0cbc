//! Loading an export from disk: a plain `.txt`, or a `.zip` holding the chat
//! text next to the media. The zip reader is minimal on purpose: central
//! directory (incl. ZIP64), stored and DEFLATE entries, CRC-32 check, and a
//! hard cap on what is read or inflated.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Default cap on the chat text (after decompression): 200 MiB.
pub const MAX_EXPORT_BYTES: u64 = 200 * 1024 * 1024;

/// Cap on the zip central directory we are willing to load.
const MAX_CENTRAL_DIRECTORY: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("chat text is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("not a readable zip archive: {0}")]
    BadZip(String),
    #[error("zip entry {name:?} uses unsupported compression method {method}")]
    UnsupportedCompression { name: String, method: u16 },
    #[error("zip entry {0:?} is encrypted")]
    Encrypted(String),
    #[error("no chat .txt file in the zip archive")]
    NoChatFile,
    #[error("several candidate chat files in the zip archive: {0:?}")]
    AmbiguousChatFile(Vec<String>),
}

/// Reads an export (`.txt`, or `.zip` recognised by its signature) with the
/// default [`MAX_EXPORT_BYTES`] cap. Invalid UTF-8 is replaced with U+FFFD;
/// UTF-16 with a BOM is decoded.
pub fn read_export(path: &Path) -> Result<String, ImportError> {
    read_export_with_limit(path, MAX_EXPORT_BYTES)
}

/// [`read_export`] with an explicit cap on the chat text's size in bytes.
/// For a zip this bounds the declared and the actually inflated size, so a
/// zip bomb fails fast with [`ImportError::TooLarge`].
pub fn read_export_with_limit(path: &Path, limit: u64) -> Result<String, ImportError> {
    let io = |source| ImportError::Io { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut magic = [0u8; 4];
    let is_zip = len >= 22 && {
        file.read_exact(&mut magic).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        // Local file header, or the end record of an empty archive.
        &magic == b"PK\x03\x04" || &magic == b"PK\x05\x06"
    };
    let bytes = if is_zip {
        read_chat_from_zip(&mut file, len, limit).map_err(|e| match e {
            ZipFail::Io(source) => io(source),
            ZipFail::Import(e) => e,
        })?
    } else {
        if len > limit {
            return Err(ImportError::TooLarge { limit });
        }
        let mut buf = Vec::with_capacity(len as usize);
        file.take(limit + 1).read_to_end(&mut buf).map_err(io)?;
        if buf.len() as u64 > limit {
            return Err(ImportError::TooLarge { limit });
        }
        buf
    };
    Ok(decode_text(bytes))
}

fn decode_text(bytes: Vec<u8>) -> String {
    let utf16 = |bytes: &[u8], le: bool| {
        let units = bytes.chunks_exact(2).map(|p| if le { u16::from_le_bytes([p[0], p[1]]) } else { u16::from_be_bytes([p[0], p[1]]) });
        char::decode_utf16(units).map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER)).collect()
    };
    if let Some(rest) = bytes.strip_prefix(b"\xFF\xFE") {
        return utf16(rest, true);
    }
    if let Some(rest) = bytes.strip_prefix(b"\xFE\xFF") {
        return utf16(rest, false);
    }
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

enum ZipFail {
    Io(std::io::Error),
    Import(ImportError),
}

impl From<std::io::Error> for ZipFail {
    fn from(e: std::io::Error) -> Self {
        ZipFail::Io(e)
    }
}

impl From<ImportError> for ZipFail {
    fn from(e: ImportError) -> Self {
        ZipFail::Import(e)
    }
}

fn bad(msg: impl Into<String>) -> ZipFail {
    ZipFail::Import(ImportError::BadZip(msg.into()))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn read_at(file: &mut File, offset: u64, len: usize) -> Result<Vec<u8>, ZipFail> {
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    file.read_exact(&mut buf)?;
    Ok(buf)
}

struct ZipEntry {
    name: String,
    flags: u16,
    method: u16,
    crc32: u32,
    compressed: u64,
    uncompressed: u64,
    local_header: u64,
}

/// Locates the central directory: (offset, size, entry count).
fn central_directory(file: &mut File, len: u64) -> Result<(u64, u64, u64), ZipFail> {
    const EOCD: usize = 22;
    let tail_len = len.min((EOCD + u16::MAX as usize) as u64);
    let tail = read_at(file, len - tail_len, tail_len as usize)?;
    let pos = (0..=tail.len() - EOCD)
        .rev()
        .find(|&p| tail[p..].starts_with(b"PK\x05\x06"))
        .ok_or_else(|| bad("no end of central directory record"))?;
    let eocd = &tail[pos..pos + EOCD];
    let mut count = u64::from(u16_at(eocd, 10));
    let mut size = u64::from(u32_at(eocd, 12));
    let mut offset = u64::from(u32_at(eocd, 16));
    if count == 0xFFFF || size == 0xFFFF_FFFF || offset == 0xFFFF_FFFF {
        // ZIP64: a 20-byte locator precedes the end record.
        let eocd_at = len - tail_len + pos as u64;
        let locator_at = eocd_at.checked_sub(20).ok_or_else(|| bad("truncated ZIP64 locator"))?;
        let locator = read_at(file, locator_at, 20)?;
        if !locator.starts_with(b"PK\x06\x07") {
            return Err(bad("missing ZIP64 locator"));
        }
        let record_at = u64_at(&locator, 8);
        if record_at.checked_add(56).is_none_or(|end| end > len) {
            return Err(bad("ZIP64 end record out of range"));
        }
        let record = read_at(file, record_at, 56)?;
        if !record.starts_with(b"PK\x06\x06") {
            return Err(bad("bad ZIP64 end record"));
        }
        count = u64_at(&record, 32);
        size = u64_at(&record, 40);
        offset = u64_at(&record, 48);
    }
    if size > MAX_CENTRAL_DIRECTORY {
        return Err(bad("central directory too large"));
    }
    if offset.checked_add(size).is_none_or(|end| end > len) {
        return Err(bad("central directory out of range"));
    }
    Ok((offset, size, count))
}

fn entries(file: &mut File, len: u64) -> Result<Vec<ZipEntry>, ZipFail> {
    let (offset, size, count) = central_directory(file, len)?;
    let cd = read_at(file, offset, size as usize)?;
    let mut out = Vec::new();
    let mut p = 0usize;
    while out.len() as u64 != count {
        if p + 46 > cd.len() || !cd[p..].starts_with(b"PK\x01\x02") {
            return Err(bad("truncated central directory"));
        }
        let h = &cd[p..p + 46];
        let (name_len, extra_len, comment_len) = (u16_at(h, 28) as usize, u16_at(h, 30) as usize, u16_at(h, 32) as usize);
        let end = p + 46 + name_len + extra_len + comment_len;
        if end > cd.len() {
            return Err(bad("truncated central directory entry"));
        }
        let name = String::from_utf8_lossy(&cd[p + 46..p + 46 + name_len]).into_owned();
        let mut entry = ZipEntry {
            name,
            flags: u16_at(h, 8),
            method: u16_at(h, 10),
            crc32: u32_at(h, 16),
            compressed: u64::from(u32_at(h, 20)),
            uncompressed: u64::from(u32_at(h, 24)),
            local_header: u64::from(u32_at(h, 42)),
        };
        // ZIP64 extended information (0x0001): only the saturated fields,
        // in this order.
        let mut extra = &cd[p + 46 + name_len..p + 46 + name_len + extra_len];
        while extra.len() >= 4 {
            let (id, data_len) = (u16_at(extra, 0), u16_at(extra, 2) as usize);
            let data = extra.get(4..4 + data_len).ok_or_else(|| bad("truncated extra field"))?;
            if id == 0x0001 {
                let mut q = 0usize;
                for field in [&mut entry.uncompressed, &mut entry.compressed, &mut entry.local_header] {
                    if *field == 0xFFFF_FFFF {
                        if q + 8 > data.len() {
                            return Err(bad("truncated ZIP64 extra field"));
                        }
                        *field = u64_at(data, q);
                        q += 8;
                    }
                }
            }
            extra = &extra[4 + data_len..];
        }
        out.push(entry);
        p = end;
    }
    Ok(out)
}

/// `_chat.txt` (iOS), else a `.txt` whose name mentions WhatsApp (Android:
/// `WhatsApp Chat with NAME.txt`), else the only top-level `.txt`.
fn pick_chat(entries: &[ZipEntry]) -> Result<&ZipEntry, ImportError> {
    let candidates: Vec<&ZipEntry> = entries
        .iter()
        .filter(|e| !e.name.ends_with('/') && !e.name.starts_with("__MACOSX/"))
        .filter(|e| e.name.to_ascii_lowercase().ends_with(".txt"))
        .collect();
    let base = |e: &&ZipEntry| e.name.rsplit('/').next().unwrap_or("").to_owned();
    let tiers: [&dyn Fn(&&ZipEntry) -> bool; 3] = [
        &|e| base(e) == "_chat.txt",
        &|e| base(e).to_ascii_lowercase().contains("whatsapp"),
        &|e| !e.name.contains('/'),
    ];
    for tier in tiers {
        let hits: Vec<&ZipEntry> = candidates.iter().copied().filter(|e| tier(e)).collect();
        match hits.len() {
            0 => continue,
            1 => return Ok(hits[0]),
            _ => return Err(ImportError::AmbiguousChatFile(hits.iter().map(|e| e.name.clone()).collect())),
        }
    }
    Err(ImportError::NoChatFile)
}

fn read_chat_from_zip(file: &mut File, len: u64, limit: u64) -> Result<Vec<u8>, ZipFail> {
    let all = entries(file, len)?;
    let entry = pick_chat(&all)?;
    if entry.flags & 0x0001 != 0 {
        return Err(ImportError::Encrypted(entry.name.clone()).into());
    }
    if entry.uncompressed > limit {
        return Err(ImportError::TooLarge { limit }.into());
    }
    let local = entry.local_header.checked_add(30).filter(|&end| end <= len).ok_or_else(|| bad("local header out of range"))?;
    let lh = read_at(file, entry.local_header, 30)?;
    if !lh.starts_with(b"PK\x03\x04") {
        return Err(bad("bad local file header"));
    }
    let data_at = local + u64::from(u16_at(&lh, 26)) + u64::from(u16_at(&lh, 28));
    if data_at.checked_add(entry.compressed).is_none_or(|end| end > len) {
        return Err(bad("entry data out of range"));
    }
    // DEFLATE can expand incompressible input by a few bytes per 16 KiB block.
    if entry.compressed > limit + limit / 64 + 1024 {
        return Err(ImportError::TooLarge { limit }.into());
    }
    let raw = read_at(file, data_at, entry.compressed as usize)?;
    let data = match entry.method {
        0 => raw,
        8 if entry.uncompressed == 0 => Vec::new(),
        8 => {
            // Inflate at most the declared size: a lying header cannot make
            // us produce more than `limit` bytes.
            let want = entry.uncompressed as usize;
            match miniz_oxide::inflate::decompress_to_vec_with_limit(&raw, want) {
                Ok(out) => out,
                Err(e) if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput => {
                    return Err(bad(format!("{:?} inflates beyond its declared size", entry.name)))
                }
                Err(e) => return Err(bad(format!("{:?}: corrupt DEFLATE data ({e})", entry.name))),
            }
        }
        method => return Err(ImportError::UnsupportedCompression { name: entry.name.clone(), method }.into()),
    };
    if data.len() as u64 != entry.uncompressed {
        return Err(bad(format!("{:?}: size does not match the directory", entry.name)));
    }
    if crc32(&data) != entry.crc32 {
        return Err(bad(format!("{:?}: CRC-32 mismatch", entry.name)));
    }
    Ok(data)
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE), as zip uses it.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn utf16_and_lossy_decoding() {
        assert_eq!(decode_text(b"\xFF\xFEh\0i\0".to_vec()), "hi");
        assert_eq!(decode_text(b"\xFE\xFF\0h\0i".to_vec()), "hi");
        assert_eq!(decode_text(b"a\xFFb".to_vec()), "a\u{FFFD}b");
    }
}
