//! Fixture-driven tests for `parse_text`. Expected timestamps were computed
//! by hand from the civil date (2020-12-31T00:00Z = 18627 days = 1609372800,
//! 2021-01-01T00:00Z = 1609459200) minus the export's UTC offset.

use std::path::PathBuf;

use kabar_import::{
    dedupe_key, message_keys, parse_text, read_export, ChatMessage, DateOrder, Entry, Format, ImportOptions,
    MediaKind, Parsed,
};

const DEC31: i64 = 1_609_372_800; // 2020-12-31T00:00:00Z
const JAN1: i64 = 1_609_459_200; // 2021-01-01T00:00:00Z
const H: i64 = 3_600;
const M: i64 = 60;

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/whatsapp").join(name)
}

fn parse_fixture(name: &str, utc_offset_minutes: i32) -> Parsed {
    let text = read_export(&fixture_path(name)).expect("fixture readable");
    parse_text(&text, &ImportOptions { date_order: None, utc_offset_minutes })
}

fn messages(p: &Parsed) -> Vec<&ChatMessage> {
    p.messages().collect()
}

/// (line, timestamp, text) of every system entry.
fn systems(p: &Parsed) -> Vec<(usize, i64, &str)> {
    p.entries
        .iter()
        .filter_map(|e| match e {
            Entry::System { line, timestamp, text } => Some((*line, *timestamp, text.as_str())),
            Entry::Message(_) => None,
        })
        .collect()
}

#[test]
fn android_us_12h_month_first_pm_am_and_media_markers() {
    let p = parse_fixture("android_us_12h.txt", 7 * 60); // WIB
    assert_eq!(p.format, Format::Android);
    assert_eq!(p.date_order, DateOrder::MonthFirst);
    assert!(!p.ambiguous_date_order);
    assert!(p.malformed.is_empty(), "{:?}", p.malformed);
    assert_eq!(p.senders, ["Alice", "Budi Santoso", "+62 812-3456-7890"]);

    // 12/31/20 9:41 PM (U+202F before PM) at UTC+7 = 14:41 UTC.
    let sys = systems(&p);
    assert_eq!(sys.len(), 1);
    assert_eq!(sys[0].0, 1);
    assert_eq!(sys[0].1, DEC31 + 14 * H + 41 * M);
    assert!(sys[0].2.starts_with("Messages and calls are end-to-end encrypted."));

    let m = messages(&p);
    assert_eq!(m.len(), 9);
    assert_eq!((m[0].line, m[0].timestamp, m[0].sender.as_str()), (2, 1_609_425_660, "Alice"));
    assert_eq!(m[0].body, "Happy new year's eve! 🎉");
    assert_eq!((m[1].timestamp, m[1].sender.as_str()), (DEC31 + 14 * H + 42 * M, "Budi Santoso"));
    assert_eq!(m[1].body, "Selamat tahun baru juga! 🥳");
    // 11:59 PM -> 23:59 local -> 16:59 UTC
    assert_eq!(m[2].timestamp, DEC31 + 16 * H + 59 * M);
    assert_eq!((m[2].media, m[2].body.as_str(), m[2].attachment.as_deref()), (Some(MediaKind::Unknown), "", None));
    // 12:00 AM on 1/1/21 is midnight local = 17:00 UTC the day before.
    assert_eq!(m[3].timestamp, DEC31 + 17 * H);
    assert_eq!(m[3].media, Some(MediaKind::Image));
    assert_eq!(m[3].attachment.as_deref(), Some("IMG-20210101-WA0001.jpg"));
    assert_eq!(m[3].body, "");
    for (msg, ts) in m[4..7].iter().zip([DEC31 + 17 * H + 5 * M, DEC31 + 17 * H + 6 * M, DEC31 + 17 * H + 7 * M]) {
        assert!(msg.deleted, "{msg:?}");
        assert_eq!((msg.body.as_str(), msg.media, msg.timestamp), ("", None, ts));
    }
    // 12:30 PM is noon-thirty: 05:30 UTC.
    assert_eq!(m[7].timestamp, JAN1 + 5 * H + 30 * M);
    assert!(m[7].edited && !m[7].deleted);
    assert_eq!(m[7].body, "Jangan lupa makan siang ya");
    // 1/13/21 8:15 AM: the "13" in second position is what makes the file month-first.
    assert_eq!(m[8].timestamp, 1_610_500_500);
    assert_eq!(m[8].sender, "+62 812-3456-7890");
    assert_eq!(m[8].body, "Halo, ini nomor baru saya");
}

#[test]
fn android_eu_24h_day_first_four_digit_year_and_leap_day() {
    let p = parse_fixture("android_eu_24h.txt", 60); // CET
    assert_eq!((p.format, p.date_order, p.ambiguous_date_order), (Format::Android, DateOrder::DayFirst, false));
    assert!(p.malformed.is_empty(), "{:?}", p.malformed);
    assert_eq!(p.senders, ["Alice", "Budi", "Citra Dewi"]);
    let m = messages(&p);
    let got: Vec<(usize, i64, &str, &str)> =
        m.iter().map(|m| (m.line, m.timestamp, m.sender.as_str(), m.body.as_str())).collect();
    assert_eq!(
        got,
        [
            (1, 1_609_447_260, "Alice", "Selamat malam semua 🌙"),
            (2, 1_609_447_260, "Budi", "Malam!"),
            (3, 1_609_455_540, "Alice", "10 detik lagi..."),
            (4, DEC31 + 23 * H, "Budi", "🎆🎆🎆 HAPPY NEW YEAR 🎆🎆🎆"),
            (5, DEC31 + 23 * H, "Budi", "🎆🎆🎆 HAPPY NEW YEAR 🎆🎆🎆"),
            (6, DEC31 + 23 * H + M, "Citra Dewi", "Kembang api dari balkon"),
            (8, JAN1 + 8 * H + 30 * M, "Alice", ""),
            // 2024-02-29 = day 19782; 12:00 CET = 11:00 UTC.
            (9, 19_782 * 86_400 + 11 * H, "Budi", "Tahun kabisat! Leap day 🐸"),
        ]
    );
    assert_eq!(m[5].media, Some(MediaKind::Video));
    assert_eq!(m[5].attachment.as_deref(), Some("VID-20210101-WA0002.mp4"));
    assert_eq!(m[6].media, Some(MediaKind::Audio));
    assert_eq!(m[6].attachment.as_deref(), Some("PTT-20210101-WA0003.opus"));
}

#[test]
fn android_dotted_two_digit_year_is_day_first() {
    let p = parse_fixture("android_de_dots.txt", 0);
    assert_eq!((p.date_order, p.ambiguous_date_order), (DateOrder::DayFirst, false));
    let m = messages(&p);
    assert_eq!(m.len(), 2);
    assert_eq!((m[0].timestamp, m[0].body.as_str()), (DEC31 + 21 * H + 41 * M, "Guten Rutsch! 🍀"));
    assert_eq!((m[1].timestamp, m[1].sender.as_str()), (DEC31 + 21 * H + 45 * M, "Budi"));
}

#[test]
fn android_year_first_iso_dates() {
    let p = parse_fixture("android_iso.txt", 0);
    assert_eq!((p.date_order, p.ambiguous_date_order), (DateOrder::YearFirst, false));
    let m = messages(&p);
    assert_eq!(m.iter().map(|m| m.timestamp).collect::<Vec<_>>(), [DEC31 + 21 * H + 41 * M, JAN1]);
    assert_eq!(m[1].body, "Sip 👍");
}

#[test]
fn ios_24h_seconds_attachments_omitted_media_and_system_lines() {
    let p = parse_fixture("ios_24h.txt", 7 * 60);
    assert_eq!((p.format, p.date_order, p.ambiguous_date_order), (Format::Ios, DateOrder::DayFirst, false));
    assert!(p.malformed.is_empty(), "{:?}", p.malformed);
    // The group name "Keluarga Besar" only appears as pseudo-sender of system lines.
    assert_eq!(p.senders, ["Alice", "Budi"]);

    let base = DEC31 + 14 * H; // 21:xx WIB = 14:xx UTC
    assert_eq!(
        systems(&p),
        [
            (
                1,
                base + 40 * M,
                "Messages and calls are end-to-end encrypted. No one outside of this chat, not even WhatsApp, can read or listen to them."
            ),
            (2, base + 40 * M, "Alice created group “Keluarga Besar”"),
            (3, base + 40 * M + 10, "Alice added Budi"),
        ]
    );

    let m = messages(&p);
    let got: Vec<(usize, i64, &str, Option<MediaKind>, Option<&str>, &str)> = m
        .iter()
        .map(|m| (m.line, m.timestamp, m.sender.as_str(), m.media, m.attachment.as_deref(), m.body.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (4, 1_609_425_665, "Alice", None, None, "Halo semua! 👋"),
            (5, base + 41 * M + 30, "Budi", Some(MediaKind::Image), Some("00000012-PHOTO-2020-12-31-21-41-30.jpg"), ""),
            (6, base + 42 * M, "Budi", Some(MediaKind::Image), None, ""),
            (7, base + 42 * M + 1, "Alice", Some(MediaKind::Video), None, ""),
            (8, base + 42 * M + 2, "Alice", Some(MediaKind::Audio), None, ""),
            (9, base + 42 * M + 3, "Budi", Some(MediaKind::Sticker), None, ""),
            (10, base + 42 * M + 4, "Budi", Some(MediaKind::Document), None, "Laporan Q4.pdf • \u{200E}3 pages"),
            (11, base + 43 * M, "Alice", Some(MediaKind::MissedVoiceCall), None, ""),
            (12, base + 44 * M, "Budi", None, None, ""),
            (13, base + 45 * M, "Alice", None, None, "Sampai jumpa di 2021"),
        ]
    );
    assert!(m[8].deleted);
    assert!(m[9].edited && !m[9].deleted);
    assert!(m[..8].iter().all(|m| !m.deleted && !m.edited));
}

#[test]
fn ios_12h_with_lrm_prefix_and_narrow_nbsp_negative_offset() {
    let p = parse_fixture("ios_12h_nbsp.txt", -5 * 60); // US Eastern
    assert_eq!((p.format, p.date_order, p.ambiguous_date_order), (Format::Ios, DateOrder::MonthFirst, false));
    assert!(p.malformed.is_empty(), "{:?}", p.malformed);
    assert_eq!(p.senders, ["Alice", "Bob"]);
    // 9:41:05 PM EST on Dec 31 is 02:41:05 UTC on Jan 1.
    assert_eq!(systems(&p).iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(), [(1, 1_609_468_865)]);

    let m = messages(&p);
    let got: Vec<(usize, i64, &str, Option<MediaKind>, bool)> =
        m.iter().map(|m| (m.line, m.timestamp, m.sender.as_str(), m.media, m.deleted)).collect();
    assert_eq!(
        got,
        [
            (2, JAN1 + 2 * H + 41 * M + 5, "Alice", None, false),
            (3, JAN1 + 2 * H + 41 * M + 30, "Bob", Some(MediaKind::Image), false),
            (4, 1_609_477_199, "Alice", Some(MediaKind::Audio), false),
            // 12:00:00 AM EST = 05:00:00 UTC
            (5, JAN1 + 5 * H, "Bob", None, false),
            (7, JAN1 + 5 * H + 1, "Alice", Some(MediaKind::MissedVideoCall), false),
            // 12:15 PM EST = 17:15 UTC, 1:05 PM EST = 18:05 UTC
            (8, JAN1 + 17 * H + 15 * M, "Bob", Some(MediaKind::Sticker), false),
            (9, JAN1 + 18 * H + 5 * M, "Alice", None, true),
        ]
    );
    assert_eq!(m[0].body, "Happy New Year's Eve! 🥂");
    assert_eq!(m[2].attachment.as_deref(), Some("00000014-AUDIO-2020-12-31-23-59-59.opus"));
    assert_eq!(m[3].body, "🎆 Selamat tahun baru!\nSemoga sehat selalu 🙏");
}

#[test]
fn multiline_bodies_bom_crlf_and_quoted_foreign_header() {
    let p = parse_fixture("multiline.txt", 0);
    assert_eq!(p.format, Format::Android);
    assert!(p.malformed.is_empty(), "{:?}", p.malformed);
    let m = messages(&p);
    assert_eq!(m.iter().map(|m| m.line).collect::<Vec<_>>(), [1, 6, 7, 10, 13]);
    // BOM stripped from the first sender, no '\r' anywhere, blank line kept.
    assert_eq!(m[0].sender, "Alice");
    assert_eq!(m[0].timestamp, DEC31 + 21 * H + 41 * M);
    assert_eq!(m[0].body, "Daftar belanja untuk besok:\n- beras 5 kg\n- telur 1 kg\n\n- kopi ☕");
    assert_eq!(m[1].body, "Oke, noted 👍");
    // An iOS-style line inside an Android export is text, not a header.
    assert_eq!(
        m[2].body,
        "Line one\n12/31/2020 is not a header without a time\n[31/12/2020, 21:41:05] Quoted: iOS-looking line inside an Android chat"
    );
    assert_eq!(m[3].media, Some(MediaKind::Image));
    assert_eq!(m[3].body, "Ini fotonya\ndua baris caption");
    assert_eq!(m[4].body, "last message with trailing spaces");
    assert!(p.entries.iter().all(|e| match e {
        Entry::Message(m) => !m.body.contains('\r') && !m.sender.contains('\u{FEFF}'),
        Entry::System { text, .. } => !text.contains('\r'),
    }));
}

#[test]
fn malformed_lines_are_reported_with_line_numbers() {
    let p = parse_fixture("malformed.txt", 0);
    assert_eq!(p.date_order, DateOrder::DayFirst);
    let bad: Vec<(usize, &str)> = p.malformed.iter().map(|m| (m.line, m.reason.as_str())).collect();
    assert_eq!(
        bad,
        [
            (1, "text before the first message header"),
            (4, "impossible date: month 13"),
            (5, "continuation of the malformed header on line 4"),
            (6, "impossible date: day 30 in 2021-02 (has 28 days)"),
            (7, "impossible time: hour 25"),
            (8, "impossible time: minute 60"),
            (11, "impossible date: day 29 in 2021-02 (has 28 days)"),
            (12, "impossible time: hour 13 on a 12-hour clock"),
        ]
    );
    assert_eq!(p.malformed[0].text, "Chat exported from WhatsApp");
    assert_eq!(p.malformed[1].text, "31/13/2020, 21:42 - Alice: month 13");
    // The good lines around them survive, with their continuation.
    let m = messages(&p);
    assert_eq!(m.len(), 2);
    assert_eq!((m[0].line, m[0].timestamp, m[0].body.as_str()), (3, DEC31 + 21 * H + 41 * M, "Valid message"));
    assert_eq!((m[1].line, m[1].timestamp), (9, JAN1));
    assert_eq!(m[1].body, "Valid again\nlanjutan pesan yang valid");
}

#[test]
fn ambiguous_dates_default_to_day_first_and_obey_the_option() {
    let text = std::fs::read_to_string(fixture_path("ambiguous.txt")).unwrap();

    let p = parse_text(&text, &ImportOptions::default());
    assert_eq!((p.date_order, p.ambiguous_date_order), (DateOrder::DayFirst, true));
    // 01/02/21 = 1 Feb 2021 10:00; 03/04/21 = 3 Apr 2021 11:30 (UTC).
    assert_eq!(p.messages().map(|m| m.timestamp).collect::<Vec<_>>(), [1_612_173_600, 1_617_449_400]);

    let opts = ImportOptions { date_order: Some(DateOrder::MonthFirst), utc_offset_minutes: 0 };
    let p = parse_text(&text, &opts);
    assert_eq!((p.date_order, p.ambiguous_date_order), (DateOrder::MonthFirst, true));
    // 2 Jan 2021 10:00; 4 Mar 2021 11:30.
    assert_eq!(p.messages().map(|m| m.timestamp).collect::<Vec<_>>(), [1_609_581_600, 1_614_857_400]);

    // Evidence in the file beats the option.
    let us = std::fs::read_to_string(fixture_path("android_us_12h.txt")).unwrap();
    let p = parse_text(&us, &ImportOptions { date_order: Some(DateOrder::DayFirst), utc_offset_minutes: 0 });
    assert_eq!((p.date_order, p.ambiguous_date_order), (DateOrder::MonthFirst, false));
    assert!(p.malformed.is_empty());
}

#[test]
fn year_first_option_reads_two_digit_year_first_dates() {
    let p = parse_text(
        "20/12/31, 21:41 - Alice: yy/mm/dd\n",
        &ImportOptions { date_order: Some(DateOrder::YearFirst), utc_offset_minutes: 0 },
    );
    assert_eq!(p.date_order, DateOrder::YearFirst);
    assert_eq!(p.messages().next().unwrap().timestamp, DEC31 + 21 * H + 41 * M);
}

#[test]
fn group_system_lines_have_no_sender() {
    let p = parse_fixture("group_system_lines.txt", 7 * 60);
    assert!(p.malformed.is_empty(), "{:?}", p.malformed);
    let base = DEC31 + 14 * H; // 9:0x PM WIB = 14:0x UTC
    let sys = systems(&p);
    assert_eq!(
        sys[1..],
        [
            (2, base, "Alice created group \"Arisan RT 05\""),
            (3, base + M, "Alice added Budi"),
            (4, base + M, "Alice added \u{202A}+62 812-3456-7890\u{202C}"),
            (5, base + 2 * M, "Alice changed the subject from \"Arisan: RT 05\" to \"Arisan RT 05 🎉\""),
            (6, base + 3 * M, "Alice changed this group's icon"),
            (8, base + 6 * M, "\u{202A}+62 812-3456-7890\u{202C} left"),
            (9, base + 7 * M, "You were added"),
        ]
    );
    assert_eq!((sys[0].0, sys[0].1), (1, base));
    assert!(sys[0].2.starts_with("Messages and calls are end-to-end encrypted."));
    assert_eq!(p.senders, ["Budi"]);
    let m = messages(&p);
    assert_eq!((m.len(), m[0].line, m[0].timestamp), (1, 7, base + 5 * M));
    assert_eq!(m[0].body, "Terima kasih sudah ditambahkan!");
}

#[test]
fn dedupe_keys_are_stable_across_parses() {
    for name in ["android_us_12h.txt", "android_eu_24h.txt", "ios_24h.txt", "ios_12h_nbsp.txt", "multiline.txt"] {
        let a = parse_fixture(name, 420);
        let b = parse_fixture(name, 420);
        let ka: Vec<String> = message_keys(&a).into_iter().map(|(k, _)| k).collect();
        let kb: Vec<String> = message_keys(&b).into_iter().map(|(k, _)| k).collect();
        assert_eq!(ka, kb, "{name}");
        assert!(ka.iter().all(|k| k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit())));
        let mut unique = ka.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ka.len(), "{name}: keys collide");
    }
}

#[test]
fn identical_messages_in_the_same_minute_get_different_keys() {
    let p = parse_fixture("android_eu_24h.txt", 60);
    let keyed = message_keys(&p);
    let (k4, m4) = &keyed[3];
    let (k5, m5) = &keyed[4];
    assert_eq!((m4.timestamp, &m4.sender, &m4.body), (m5.timestamp, &m5.sender, &m5.body));
    assert_ne!(k4, k5);
    assert_eq!(*k4, dedupe_key(m4, 0));
    assert_eq!(*k5, dedupe_key(m5, 1));
    // Same identity tuple: only the occurrence index tells them apart.
    assert_eq!(dedupe_key(m4, 0), dedupe_key(m5, 0));
}

#[test]
fn dedupe_key_is_pinned() {
    let msg = ChatMessage {
        line: 1,
        timestamp: 1_609_425_660,
        sender: "Alice".into(),
        body: "Halo".into(),
        media: None,
        attachment: None,
        deleted: false,
        edited: false,
    };
    let k0 = dedupe_key(&msg, 0);
    // Fixed value: the key must never change between releases, or re-imports
    // would duplicate history.
    assert_eq!(k0, PINNED_KEY);
    // Line number and the edited flag are not part of the identity.
    let moved = ChatMessage { line: 99, edited: true, ..msg.clone() };
    assert_eq!(dedupe_key(&moved, 0), k0);
    assert_ne!(dedupe_key(&msg, 1), k0);
    assert_ne!(dedupe_key(&ChatMessage { timestamp: msg.timestamp + 1, ..msg.clone() }, 0), k0);
    assert_ne!(dedupe_key(&ChatMessage { sender: "Alicf".into(), ..msg.clone() }, 0), k0);
    assert_ne!(dedupe_key(&ChatMessage { body: "Halo ".into(), ..msg.clone() }, 0), k0);
}

const PINNED_KEY: &str = "0eac18067518fa04c9de259a6d714eff";

#[test]
fn empty_and_headerless_input() {
    let p = parse_text("", &ImportOptions::default());
    assert!(p.entries.is_empty() && p.malformed.is_empty() && p.senders.is_empty());
    assert_eq!((p.format, p.date_order, p.ambiguous_date_order), (Format::Android, DateOrder::DayFirst, false));

    let p = parse_text("\u{FEFF}\r\nhello\r\n\r\nworld", &ImportOptions::default());
    assert!(p.entries.is_empty());
    assert_eq!(p.malformed.iter().map(|m| (m.line, m.text.as_str())).collect::<Vec<_>>(), [(2, "hello"), (4, "world")]);
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_garbage_never_panics() {
    const PIECES: &[&str] = &[
        "0", "1", "2", "9", "12", "13", "31", "00", "2020", "99999", "/", ".", "-", "–", ",", ":", " ", "  ", "[", "]",
        "AM", "pm", "a. m.", "\n", "\r\n", "\r", "\u{200E}", "\u{202F}", "\u{202A}", "\u{FEFF}", ": ", " - ", "Alice",
        "é", "🎉", "日本", "<attached: ", ">", "(file attached)", "<Media omitted>", "image omitted", "document omitted",
        "<This message was edited>", "null", "This message was deleted", "Missed voice call", "Location: https://x",
        "\"", "“", "\u{0}", "\t",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut total_entries, mut total_malformed) = (0, 0);
    for round in 0..3_000 {
        let mut text = String::new();
        for _ in 0..rng.below(120) {
            if rng.below(10) == 0 {
                // an almost-header to reach the validation paths
                text.push_str(&format!(
                    "\n{}/{}/{}, {}:{:02} {}- x: y\n",
                    1 + rng.below(32),
                    1 + rng.below(14),
                    [20, 21, 2020, 2024, 999, 0][rng.below(6)],
                    rng.below(26),
                    rng.below(62),
                    ["", "AM ", "PM "][rng.below(3)]
                ));
            } else {
                text.push_str(PIECES[rng.below(PIECES.len())]);
            }
        }
        let order = [None, Some(DateOrder::DayFirst), Some(DateOrder::MonthFirst), Some(DateOrder::YearFirst)][round % 4];
        let offset = [0, 420, -720, 840, i32::MAX / 60][rng.below(5)];
        let p = parse_text(&text, &ImportOptions { date_order: order, utc_offset_minutes: offset });
        let line_count = text.lines().count();
        let mut last = 0;
        for e in &p.entries {
            let line = match e {
                Entry::Message(m) => m.line,
                Entry::System { line, .. } => *line,
            };
            assert!(line > last && line <= line_count, "round {round}: {text:?}");
            last = line;
        }
        assert!(p.malformed.iter().all(|m| m.line >= 1 && m.line <= line_count));
        let _ = message_keys(&p);
        total_entries += p.entries.len();
        total_malformed += p.malformed.len();
    }
    // The generator really reaches both the entry and the malformed paths.
    assert!(total_entries > 1_000 && total_malformed > 1_000, "{total_entries} {total_malformed}");
    // Raw random bytes, decoded lossily as a reader would.
    for _ in 0..500 {
        let bytes: Vec<u8> = (0..rng.below(400)).map(|_| rng.next() as u8).collect();
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_text(&text, &ImportOptions::default());
    }
}
