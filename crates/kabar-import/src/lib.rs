//! Parser for WhatsApp "Export chat" files, for importing chat history into
//! kabar.
//!
//! WhatsApp writes `_chat.txt` (iOS) or `WhatsApp Chat with NAME.txt`
//! (Android), optionally zipped together with the media. [`read_export`]
//! loads either form as text; [`parse_text`] turns the text into
//! [`Entry`]s, reporting every line it could not place as [`Malformed`]
//! (nothing is dropped silently); [`dedupe_key`] / [`message_keys`] give
//! stable per-message keys so that importing the same export twice is a
//! no-op.
//!
//! ```
//! use kabar_import::{message_keys, parse_text, Entry, ImportOptions, MediaKind};
//!
//! let export = "\u{FEFF}12/31/20, 9:41 PM - Alice created group \"Arisan\"\r\n\
//!               12/31/20, 9:42 PM - Alice: Selamat tahun baru! 🎉\r\n\
//!               sampai jumpa\r\n\
//!               1/1/21, 12:00 AM - Budi: IMG-20210101-WA0001.jpg (file attached)\r\n";
//! let parsed = parse_text(export, &ImportOptions { date_order: None, utc_offset_minutes: 7 * 60 });
//! assert!(parsed.malformed.is_empty());
//! assert!(matches!(parsed.entries[0], Entry::System { line: 1, .. }));
//! let keyed = message_keys(&parsed);
//! let (_key, first) = &keyed[0];
//! assert_eq!(first.body, "Selamat tahun baru! 🎉\nsampai jumpa");
//! assert_eq!(first.timestamp, 1_609_425_720); // 2020-12-31 21:42 WIB = 14:42 UTC
//! assert_eq!(keyed[1].1.media, Some(MediaKind::Image));
//! assert_eq!(parsed.senders, ["Alice", "Budi"]);
//! ```
//!
//! # Line formats
//!
//! * Android: `12/31/20, 9:41 PM - Alice: message`, `31/12/2020, 21:41 - …`,
//!   `31.12.20, 21:41 - …`, `2020-12-31, 21:41 - …`; system lines have no
//!   `Sender:` (`… - Alice added Bob`).
//! * iOS: `[31/12/2020, 21:41:05] Alice: message`, `[12/31/20, 9:41:05 PM] …`,
//!   with the U+200E marks and U+202F spaces iOS inserts. iOS system lines
//!   carry a pseudo-sender (group or contact name) and a body starting with
//!   U+200E (`Family: ‎Alice added Bob`); they become [`Entry::System`].
//! * Lines that are not headers continue the previous message.
//! * The day/month order is decided once for the whole file
//!   ([`ImportOptions::date_order`] breaks ties); timestamps are local wall
//!   clock, converted to UTC with [`ImportOptions::utc_offset_minutes`].
//!
//! Only the English media / deletion markers are recognised; exports made
//! in another UI language parse fine but their media placeholders stay
//! plain text.
//!
//! # Dependencies
//!
//! The `.zip` reader is ~200 lines here on top of `miniz_oxide` (raw
//! DEFLATE, one dependency: `adler2`). The `zip` crate (9.x) was not used:
//! it needs Rust 1.89 (the workspace promises 1.85), and even with default
//! features off it always pulls `zeroize` (+ derive / `syn`), `getrandom`,
//! `indexmap`, `typed-path`, `memchr`, `constant_time_eq`, `crc32fast`,
//! while its `deflate` feature adds the `zopfli` compressor and `zlib-rs`.

use std::collections::{HashMap, HashSet};

mod body;
mod date;
mod export;
mod header;

pub use export::{read_export, read_export_with_limit, ImportError, MAX_EXPORT_BYTES};

use header::{Meridiem, Num, RawHeader};

/// How the caller wants the import done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Day/month order to use when the file itself does not settle it (all
    /// first and second date fields ≤ 12). `None` means day-first.
    /// `Some(YearFirst)` is always obeyed: it makes `yy/mm/dd` readable.
    pub date_order: Option<DateOrder>,
    /// Offset of the exporting phone's local time from UTC, in minutes
    /// (WIB / UTC+7 = 420). Export timestamps carry no zone.
    pub utc_offset_minutes: i32,
}

/// Order of the fields in the export's dates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DateOrder {
    /// `31/12/2020`, `31.12.20`
    DayFirst,
    /// `12/31/20`
    MonthFirst,
    /// `2020-12-31`
    YearFirst,
}

/// Which app wrote the export (decided by the majority of header lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// `date, time - Sender: body`
    Android,
    /// `[date, time] Sender: body`
    Ios,
}

/// What a message's media placeholder said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    Sticker,
    Gif,
    Document,
    Contact,
    Location,
    /// Android `<Media omitted>`: some media, kind not stated.
    Unknown,
    VoiceCall,
    VideoCall,
    MissedVoiceCall,
    MissedVideoCall,
}

impl MediaKind {
    /// A short English name ("image", "missed voice call" …).
    pub fn tag(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
            MediaKind::Sticker => "sticker",
            MediaKind::Gif => "gif",
            MediaKind::Document => "document",
            MediaKind::Contact => "contact",
            MediaKind::Location => "location",
            MediaKind::Unknown => "unknown",
            MediaKind::VoiceCall => "voice-call",
            MediaKind::VideoCall => "video-call",
            MediaKind::MissedVoiceCall => "missed-voice-call",
            MediaKind::MissedVideoCall => "missed-video-call",
        }
    }
}

/// One parsed item, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Message(ChatMessage),
    /// Encryption notice, group created / member added, ... `text` has no
    /// sender prefix (for iOS the pseudo-sender is dropped).
    System { line: usize, timestamp: i64, text: String },
}

/// A chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// 1-based line number of the header line.
    pub line: usize,
    /// Unix seconds, UTC.
    pub timestamp: i64,
    /// Display name or phone number as exported (bidi marks removed).
    pub sender: String,
    /// Text, continuation lines joined with `\n`. For media it is the
    /// caption (empty if none); for deleted messages it is empty; the
    /// `<This message was edited>` suffix is removed.
    pub body: String,
    pub media: Option<MediaKind>,
    /// Attached file name, when the export names one (`<attached: …>` or
    /// `… (file attached)`): look for it next to the chat file in the zip.
    pub attachment: Option<String>,
    /// "This message was deleted", "You deleted this message", Android `null`.
    pub deleted: bool,
    /// The body had the `<This message was edited>` suffix.
    pub edited: bool,
}

/// A line that could not be placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// 1-based line number.
    pub line: usize,
    /// The line as written (line ending removed).
    pub text: String,
    pub reason: String,
}

/// Result of [`parse_text`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub entries: Vec<Entry>,
    pub malformed: Vec<Malformed>,
    pub format: Format,
    /// The order used for every non-`yyyy-…` date in the file.
    pub date_order: DateOrder,
    /// The file did not settle day-first vs month-first; `date_order` came
    /// from [`ImportOptions::date_order`] (or the day-first default).
    pub ambiguous_date_order: bool,
    /// Distinct message senders, in order of first appearance.
    pub senders: Vec<String>,
}

impl Entry {
    /// 1-based line number of the entry's header line.
    pub fn line(&self) -> usize {
        match self {
            Entry::Message(m) => m.line,
            Entry::System { line, .. } => *line,
        }
    }

    /// Unix seconds, UTC.
    pub fn timestamp(&self) -> i64 {
        match self {
            Entry::Message(m) => m.timestamp,
            Entry::System { timestamp, .. } => *timestamp,
        }
    }
}

impl Parsed {
    /// The messages, without system entries.
    pub fn messages(&self) -> impl Iterator<Item = &ChatMessage> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Message(m) => Some(m),
            Entry::System { .. } => None,
        })
    }
}

/// What pass 1 learns about the header lines of one style.
#[derive(Default)]
struct Tally {
    headers: usize,
    first_line: Option<usize>,
    /// Headers whose first field is not a 4-digit year.
    short: usize,
    /// First field in 13..=31: only possible as a day.
    day_first_votes: usize,
    /// Second field in 13..=31: only possible as a day.
    month_first_votes: usize,
}

impl Tally {
    fn add(&mut self, h: &RawHeader<'_>, idx: usize) {
        self.headers += 1;
        self.first_line.get_or_insert(idx);
        let [a, b, _] = h.date;
        if a.digits == 4 {
            return;
        }
        self.short += 1;
        if (13..=31).contains(&a.value) {
            self.day_first_votes += 1;
        }
        if (13..=31).contains(&b.value) {
            self.month_first_votes += 1;
        }
    }

    /// Decides day-first vs month-first from the file's own dates.
    fn date_order(&self, opts: &ImportOptions) -> (DateOrder, bool) {
        if opts.date_order == Some(DateOrder::YearFirst) {
            return (DateOrder::YearFirst, false);
        }
        if self.short == 0 {
            let order = if self.headers == 0 { opts.date_order.unwrap_or(DateOrder::DayFirst) } else { DateOrder::YearFirst };
            return (order, false);
        }
        match (self.day_first_votes, self.month_first_votes) {
            (0, 0) => (opts.date_order.unwrap_or(DateOrder::DayFirst), true),
            // Contradicting evidence: the majority wins (day-first on a tie);
            // the other lines then fail validation and are reported.
            (d, m) if d >= m => (DateOrder::DayFirst, false),
            _ => (DateOrder::MonthFirst, false),
        }
    }
}

fn year_of(n: Num) -> Result<i64, String> {
    match n.digits {
        2 => Ok(2000 + i64::from(n.value)),
        4 if n.value >= 1970 => Ok(i64::from(n.value)),
        4 => Err(format!("impossible date: year {}", n.value)),
        d => Err(format!("impossible date: {d}-digit year {}", n.value)),
    }
}

/// Validates a header and converts it to UTC unix seconds.
fn timestamp_of(h: &RawHeader<'_>, order: DateOrder, offset: i32) -> Result<i64, String> {
    let [a, b, c] = h.date;
    let (y, m, d) = if a.digits == 4 {
        (a, b, c)
    } else {
        match order {
            DateOrder::DayFirst => (c, b, a),
            DateOrder::MonthFirst => (c, a, b),
            DateOrder::YearFirst => (a, b, c),
        }
    };
    if m.digits > 2 || d.digits > 2 {
        return Err("impossible date: day and month have at most 2 digits".into());
    }
    let year = year_of(y)?;
    let month = m.value;
    if !(1..=12).contains(&month) {
        return Err(format!("impossible date: month {month}"));
    }
    let dim = date::days_in_month(year, month);
    if d.value == 0 || d.value > dim {
        return Err(format!("impossible date: day {} in {year:04}-{month:02} (has {dim} days)", d.value));
    }
    let hour = match h.meridiem {
        None if h.hour <= 23 => h.hour,
        None => return Err(format!("impossible time: hour {}", h.hour)),
        Some(_) if !(1..=12).contains(&h.hour) => return Err(format!("impossible time: hour {} on a 12-hour clock", h.hour)),
        Some(Meridiem::Am) => h.hour % 12,
        Some(Meridiem::Pm) => h.hour % 12 + 12,
    };
    if h.minute > 59 {
        return Err(format!("impossible time: minute {}", h.minute));
    }
    let second = h.second.unwrap_or(0);
    if second > 59 {
        return Err(format!("impossible time: second {second}"));
    }
    Ok(date::local_to_unix(year, month, d.value, hour, h.minute, second, offset))
}

enum State<'a> {
    Start,
    Open { line: usize, timestamp: i64, rest: &'a str, cont: Vec<&'a str> },
    AfterMalformed { header_line: usize },
}

/// Parses an export's text. Never panics, never drops a non-blank line:
/// whatever is not part of an entry is listed in [`Parsed::malformed`].
pub fn parse_text(text: &str, opts: &ImportOptions) -> Parsed {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let lines = || text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l));

    // Pass 1: tally structural headers of either style (nothing is kept, so
    // memory stays flat on a 200 MiB export). The majority style wins, so an
    // iOS-looking line quoted inside an Android chat is just text.
    let (mut android, mut ios) = (Tally::default(), Tally::default());
    for (idx, line) in lines().enumerate() {
        if let Some(h) = header::parse_android(line) {
            android.add(&h, idx);
        }
        if let Some(h) = header::parse_ios(line) {
            ios.add(&h, idx);
        }
    }
    let format = match ios.headers.cmp(&android.headers) {
        std::cmp::Ordering::Greater => Format::Ios,
        std::cmp::Ordering::Less => Format::Android,
        std::cmp::Ordering::Equal => match (ios.first_line, android.first_line) {
            (Some(i), Some(a)) if i < a => Format::Ios,
            (Some(_), None) => Format::Ios,
            _ => Format::Android,
        },
    };
    let (tally, parse_header): (&Tally, fn(&str) -> Option<RawHeader<'_>>) = match format {
        Format::Android => (&android, header::parse_android),
        Format::Ios => (&ios, header::parse_ios),
    };

    // Pass 2: one day/month order for the whole file.
    let (date_order, ambiguous_date_order) = tally.date_order(opts);

    // Pass 3: entries.
    let mut entries = Vec::new();
    let mut malformed = Vec::new();
    let mut state = State::Start;
    let close = |state: State<'_>, entries: &mut Vec<Entry>| {
        if let State::Open { line, timestamp, rest, cont } = state {
            entries.push(body::finish(format, line, timestamp, rest, &cont));
        }
    };
    for (idx, raw) in lines().enumerate() {
        let line_no = idx + 1;
        if let Some(h) = parse_header(raw) {
            let previous = std::mem::replace(&mut state, State::Start);
            close(previous, &mut entries);
            state = match timestamp_of(&h, date_order, opts.utc_offset_minutes) {
                Ok(timestamp) => State::Open { line: line_no, timestamp, rest: h.rest, cont: Vec::new() },
                Err(reason) => {
                    malformed.push(Malformed { line: line_no, text: raw.to_owned(), reason });
                    State::AfterMalformed { header_line: line_no }
                }
            };
            continue;
        }
        match &mut state {
            State::Open { cont, .. } => cont.push(raw),
            _ if raw.trim_matches(|c: char| c.is_whitespace() || header::is_invisible_mark(c)).is_empty() => {}
            State::AfterMalformed { header_line } => malformed.push(Malformed {
                line: line_no,
                text: raw.to_owned(),
                reason: format!("continuation of the malformed header on line {header_line}"),
            }),
            State::Start => malformed.push(Malformed {
                line: line_no,
                text: raw.to_owned(),
                reason: "text before the first message header".into(),
            }),
        }
    }
    close(state, &mut entries);

    let mut seen = HashSet::new();
    let senders: Vec<String> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Message(m) if seen.insert(m.sender.as_str()) => Some(m.sender.clone()),
            _ => None,
        })
        .collect();

    Parsed { entries, malformed, format, date_order, ambiguous_date_order, senders }
}

/// Stable key for idempotent import: a SHA-256 (truncated to 128 bits, 32
/// hex digits) over the timestamp, sender, body, media kind, attachment
/// name, deleted flag and `occurrence` — the index of this message among
/// the earlier messages of the same export with identical values of all
/// those fields (0 for the first). [`message_keys`] counts it for you.
///
/// The timestamp is UTC, so re-imports must use the same
/// [`ImportOptions::utc_offset_minutes`] to hit the same keys.
pub fn dedupe_key(msg: &ChatMessage, occurrence: usize) -> String {
    use sha2::{Digest, Sha256};
    fn field(h: &mut Sha256, bytes: &[u8]) {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    let mut h = Sha256::new();
    field(&mut h, b"kabar-import/whatsapp/v1");
    field(&mut h, &msg.timestamp.to_be_bytes());
    field(&mut h, msg.sender.as_bytes());
    field(&mut h, msg.body.as_bytes());
    field(&mut h, msg.media.map_or("", MediaKind::tag).as_bytes());
    field(&mut h, msg.attachment.as_deref().unwrap_or("").as_bytes());
    field(&mut h, &[u8::from(msg.deleted)]);
    field(&mut h, &(occurrence as u64).to_be_bytes());
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Keys for every message of `parsed`, in order, with occurrence indexes
/// counted as [`dedupe_key`] describes.
pub fn message_keys(parsed: &Parsed) -> Vec<(String, &ChatMessage)> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    parsed
        .messages()
        .map(|m| {
            let n = seen.entry(dedupe_key(m, 0)).or_insert(0);
            let key = dedupe_key(m, *n);
            *n += 1;
            (key, m)
        })
        .collect()
}
