//! `read_export` on plain text and on zip archives built here at run time
//! (stored and DEFLATE entries, bombs, lies, corruption).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use kabar_import::{parse_text, read_export, read_export_with_limit, Format, ImportError, ImportOptions, MediaKind};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/whatsapp").join(name);
    std::fs::read(path).unwrap()
}

/// A fresh file under Cargo's per-target temp dir.
fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kabar-import-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

struct ZipItem<'a> {
    name: &'a str,
    data: &'a [u8],
    deflate: bool,
    /// Uncompressed size to write in the headers, if not the real one.
    declared_size: Option<u32>,
    flags: u16,
}

fn item<'a>(name: &'a str, data: &'a [u8], deflate: bool) -> ZipItem<'a> {
    ZipItem { name, data, deflate, declared_size: None, flags: 0x0800 }
}

/// Minimal zip writer: local headers + central directory + end record.
fn build_zip(items: &[ZipItem<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for it in items {
        let payload = if it.deflate { miniz_oxide::deflate::compress_to_vec(it.data, 6) } else { it.data.to_vec() };
        let method: u16 = if it.deflate { 8 } else { 0 };
        let crc = crc32(it.data);
        let size = it.declared_size.unwrap_or(it.data.len() as u32);
        let offset = out.len() as u32;
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes()); // version needed
            v.extend_from_slice(&it.flags.to_le_bytes());
            v.extend_from_slice(&method.to_le_bytes());
            v.extend_from_slice(&0x6000u16.to_le_bytes()); // time 12:00
            v.extend_from_slice(&0x5221u16.to_le_bytes()); // date 2021-01-01
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&(it.name.len() as u16).to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // extra length
        };
        out.extend_from_slice(b"PK\x03\x04");
        common(&mut out);
        out.extend_from_slice(it.name.as_bytes());
        out.extend_from_slice(&payload);

        central.extend_from_slice(b"PK\x01\x02");
        central.extend_from_slice(&0x031Eu16.to_le_bytes()); // made by: unix, 3.0
        common(&mut central);
        central.extend_from_slice(&0u16.to_le_bytes()); // comment length
        central.extend_from_slice(&0u16.to_le_bytes()); // disk
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(it.name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&(items.len() as u16).to_le_bytes());
    out.extend_from_slice(&(items.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

fn read_zip(items: &[ZipItem<'_>]) -> Result<String, ImportError> {
    read_export(&temp_file("export.zip", &build_zip(items)))
}

#[test]
fn plain_txt_export_is_read_as_is() {
    let bytes = fixture("android_us_12h.txt");
    let text = read_export(&temp_file("WhatsApp Chat with Alice.txt", &bytes)).unwrap();
    assert_eq!(text.as_bytes(), &bytes[..]);
}

#[test]
fn ios_zip_with_media_finds_chat_txt_and_parses() {
    let chat = fixture("ios_24h.txt");
    let photo = [0xFFu8, 0xD8, 0xFF, 0xE0, 1, 2, 3, 4];
    let text = read_zip(&[
        item("00000012-PHOTO-2020-12-31-21-41-30.jpg", &photo, false),
        item("notes.txt", b"not the chat", true),
        item("_chat.txt", &chat, true),
    ])
    .unwrap();
    assert_eq!(text.as_bytes(), &chat[..]);
    let p = parse_text(&text, &ImportOptions { date_order: None, utc_offset_minutes: 420 });
    assert_eq!(p.format, Format::Ios);
    let photo_msg = p.messages().find(|m| m.media == Some(MediaKind::Image) && m.attachment.is_some()).unwrap();
    assert_eq!(photo_msg.attachment.as_deref(), Some("00000012-PHOTO-2020-12-31-21-41-30.jpg"));
    assert_eq!(photo_msg.timestamp, 1_609_372_800 + 14 * 3_600 + 41 * 60 + 30);
}

#[test]
fn android_zip_stored_entry_named_whatsapp_chat_with() {
    let chat = fixture("android_eu_24h.txt");
    let text = read_zip(&[
        item("VID-20210101-WA0002.mp4", b"\0\0\0\x18ftypmp42", false),
        item("WhatsApp Chat with Keluarga.txt", &chat, false),
        item("Catatan.txt", b"a shared document", false),
    ])
    .unwrap();
    assert_eq!(text.as_bytes(), &chat[..]);
}

#[test]
fn zip_with_a_single_txt_of_another_name_is_accepted() {
    let chat = fixture("android_de_dots.txt");
    let text = read_zip(&[item("Chat WhatsApp dengan Budi.TXT", &chat, true)]).unwrap();
    assert_eq!(text.as_bytes(), &chat[..]);
    let text = read_zip(&[item("export-2021.txt", &chat, true), item("media/readme.txt", b"x", false)]).unwrap();
    assert_eq!(text.as_bytes(), &chat[..]);
}

#[test]
fn zip_without_chat_or_with_two_chats_is_rejected() {
    let err = read_zip(&[item("IMG-20210101-WA0001.jpg", b"jpeg", false)]).unwrap_err();
    assert!(matches!(err, ImportError::NoChatFile), "{err}");
    let err = read_zip(&[item("a.txt", b"1", false), item("b.txt", b"2", false)]).unwrap_err();
    assert!(matches!(err, ImportError::AmbiguousChatFile(ref names) if names == &["a.txt", "b.txt"]), "{err}");
}

#[test]
fn zip_bomb_over_the_cap_is_rejected_before_inflating() {
    let zeros = vec![0u8; 1 << 20]; // 1 MiB of zeros deflates to ~1 KiB
    let zip = build_zip(&[item("_chat.txt", &zeros, true)]);
    assert!(zip.len() < 8 * 1024);
    let path = temp_file("bomb.zip", &zip);
    let err = read_export_with_limit(&path, 64 * 1024).unwrap_err();
    assert!(matches!(err, ImportError::TooLarge { limit: 65_536 }), "{err}");
    // Under a cap that fits, the same archive is fine.
    assert_eq!(read_export_with_limit(&path, 2 << 20).unwrap().len(), 1 << 20);
}

#[test]
fn zip_entry_lying_about_its_size_is_rejected() {
    let zeros = vec![0u8; 1 << 20];
    let err = read_zip(&[ZipItem { declared_size: Some(100), ..item("_chat.txt", &zeros, true) }]).unwrap_err();
    assert!(matches!(err, ImportError::BadZip(ref m) if m.contains("inflates beyond")), "{err}");
}

#[test]
fn zip_crc_mismatch_and_encryption_are_errors() {
    let chat = fixture("ambiguous.txt");
    let mut zip = build_zip(&[item("_chat.txt", &chat, false)]);
    let at = 30 + "_chat.txt".len(); // first data byte
    zip[at] ^= 0x01;
    let err = read_export(&temp_file("crc.zip", &zip)).unwrap_err();
    assert!(matches!(err, ImportError::BadZip(ref m) if m.contains("CRC")), "{err}");

    let err = read_zip(&[ZipItem { flags: 0x0801, ..item("_chat.txt", &chat, false) }]).unwrap_err();
    assert!(matches!(err, ImportError::Encrypted(_)), "{err}");
}

#[test]
fn oversized_plain_text_and_missing_file() {
    let path = temp_file("big.txt", &vec![b'a'; 5000]);
    assert!(matches!(read_export_with_limit(&path, 4999), Err(ImportError::TooLarge { limit: 4999 })));
    assert_eq!(read_export_with_limit(&path, 5000).unwrap().len(), 5000);
    let err = read_export(Path::new("/nonexistent/kabar-import/_chat.txt")).unwrap_err();
    assert!(matches!(err, ImportError::Io { .. }), "{err}");
}

#[test]
fn corrupted_zips_never_panic() {
    let chat = fixture("ios_12h_nbsp.txt");
    let good = build_zip(&[item("IMG-1.jpg", b"xx", false), item("_chat.txt", &chat, true)]);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..400 {
        let mut zip = good.clone();
        match round % 3 {
            0 => zip.truncate(next() as usize % zip.len()),
            _ => {
                for _ in 0..1 + next() % 4 {
                    let i = next() as usize % zip.len();
                    zip[i] = next() as u8;
                }
            }
        }
        // Keep the signature so the zip path is taken.
        if zip.len() >= 4 {
            zip[..4].copy_from_slice(b"PK\x03\x04");
        }
        let _ = read_export(&temp_file("fuzz.zip", &zip));
    }
}
