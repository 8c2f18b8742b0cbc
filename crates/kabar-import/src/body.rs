//! Turning a header's `rest` plus its continuation lines into an [`Entry`]:
//! sender / system split, media markers, deletions and edits.

use crate::header::is_invisible_mark;
use crate::{ChatMessage, Entry, Format, MediaKind};

const LRM: char = '\u{200E}';

const EDITED_SUFFIX: &str = "<This message was edited>";

/// Longest sender name accepted before the first `": "` (in chars). Beyond
/// that the line is far more likely system text containing a colon.
const MAX_SENDER_CHARS: usize = 100;

fn trim_marks_and_space(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || is_invisible_mark(c))
}

fn join_body(first: &str, cont: &[&str]) -> String {
    let mut out = String::with_capacity(first.len() + cont.iter().map(|l| l.len() + 1).sum::<usize>());
    out.push_str(first);
    for (i, line) in cont.iter().enumerate() {
        if i > 0 || !first.is_empty() {
            out.push('\n');
        }
        out.push_str(line);
    }
    // Trailing blank lines and spaces carry nothing (and a trailing newline
    // at the end of the file would otherwise end up in the last body).
    let kept = out.trim_end().len();
    out.truncate(kept);
    out
}

/// Splits `Sender: body`. `None` means system text (no plausible sender).
fn split_sender(rest: &str) -> Option<(&str, &str)> {
    let (sender, body) = match rest.find(": ") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None if rest.ends_with(':') => (&rest[..rest.len() - 1], ""),
        None => return None,
    };
    let sender_trimmed = trim_marks_and_space(sender);
    if sender_trimmed.is_empty()
        || sender_trimmed.chars().count() > MAX_SENDER_CHARS
        || sender_trimmed.contains(['"', '\u{201C}', '\u{201D}'])
    {
        return None;
    }
    Some((sender_trimmed, body))
}

/// Media kind from an attachment file name (Android `IMG-20201231-WA0001.jpg`,
/// iOS `00000012-PHOTO-2020-12-31-21-41-05.jpg`).
pub(crate) fn kind_from_file_name(name: &str) -> MediaKind {
    let upper = name.to_ascii_uppercase();
    let tagged = |tag: &str| upper.starts_with(&format!("{tag}-")) || upper.contains(&format!("-{tag}-"));
    if tagged("PHOTO") || tagged("IMG") {
        return MediaKind::Image;
    }
    if tagged("VIDEO") || tagged("VID") {
        return MediaKind::Video;
    }
    if tagged("AUDIO") || tagged("AUD") || tagged("PTT") {
        return MediaKind::Audio;
    }
    if tagged("STICKER") || tagged("STK") {
        return MediaKind::Sticker;
    }
    if tagged("GIF") {
        return MediaKind::Gif;
    }
    let ext = upper.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "JPG" | "JPEG" | "PNG" | "HEIC" | "HEIF" => MediaKind::Image,
        "WEBP" => MediaKind::Sticker,
        "GIF" => MediaKind::Gif,
        "MP4" | "MOV" | "3GP" | "MKV" | "WEBM" => MediaKind::Video,
        "OPUS" | "OGG" | "M4A" | "MP3" | "AAC" | "AMR" | "WAV" => MediaKind::Audio,
        "VCF" => MediaKind::Contact,
        _ => MediaKind::Document,
    }
}

/// What a body's first line says about media. `caption` is whatever text
/// remains on that line; following lines are always caption too.
struct MediaHit<'a> {
    kind: MediaKind,
    attachment: Option<&'a str>,
    caption: &'a str,
}

fn media_marker(first: &str) -> Option<MediaHit<'_>> {
    let hit = |kind, attachment, caption| Some(MediaHit { kind, attachment, caption });
    let line = trim_marks_and_space(first);

    if line.eq_ignore_ascii_case("<Media omitted>") {
        return hit(MediaKind::Unknown, None, "");
    }
    // iOS: `<attached: 00000012-PHOTO-2020-12-31-21-41-05.jpg>`
    if let Some(after) = line.strip_prefix("<attached: ") {
        if let Some(end) = after.find('>') {
            let name = after[..end].trim();
            return hit(kind_from_file_name(name), Some(name), trim_marks_and_space(&after[end + 1..]));
        }
    }
    // Android: `IMG-20201231-WA0001.jpg (file attached)`
    if let Some(name) = line.strip_suffix("(file attached)") {
        let name = trim_marks_and_space(name);
        if !name.is_empty() {
            return hit(kind_from_file_name(name), Some(name), "");
        }
    }
    // iOS: `image omitted`, `video omitted`, ...
    const OMITTED: [(&str, MediaKind); 6] = [
        ("image omitted", MediaKind::Image),
        ("video omitted", MediaKind::Video),
        ("audio omitted", MediaKind::Audio),
        ("sticker omitted", MediaKind::Sticker),
        ("GIF omitted", MediaKind::Gif),
        ("Contact card omitted", MediaKind::Contact),
    ];
    for (marker, kind) in OMITTED {
        if line.eq_ignore_ascii_case(marker) {
            return hit(kind, None, "");
        }
    }
    // iOS: `Laporan Q4.pdf • ‎3 pages ‎document omitted` (the caption keeps
    // the document description).
    if let Some(desc) = line.strip_suffix("document omitted") {
        let desc = desc.trim_end_matches(|c: char| c.is_whitespace() || is_invisible_mark(c));
        let desc = desc.trim_end_matches('\u{2022}');
        return hit(MediaKind::Document, None, trim_marks_and_space(desc));
    }
    const CALLS: [(&str, MediaKind); 4] = [
        ("Missed voice call", MediaKind::MissedVoiceCall),
        ("Missed video call", MediaKind::MissedVideoCall),
        ("Voice call", MediaKind::VoiceCall),
        ("Video call", MediaKind::VideoCall),
    ];
    for (marker, kind) in CALLS {
        if let Some(after) = line.strip_prefix(marker) {
            // `Missed voice call`, `Missed voice call, Tap to call back`,
            // `Voice call, 12 min` — but not `Voice calls are fun`.
            if after.is_empty() || after.starts_with(',') {
                return hit(kind, None, "");
            }
        }
    }
    // iOS: `‎Location: https://maps.google.com/?q=-6.2,106.8`
    if let Some(url) = line.strip_prefix("Location: ") {
        if url.starts_with("https://") || url.starts_with("http://") {
            return hit(MediaKind::Location, None, url.trim());
        }
    }
    None
}

fn is_deleted_marker(body: &str, format: Format) -> bool {
    let b = trim_marks_and_space(body);
    let b = b.strip_suffix('.').unwrap_or(b);
    b == "This message was deleted" || b == "You deleted this message" || (format == Format::Android && b == "null")
}

/// Builds the entry for one header line (`rest`) and its continuation lines.
pub(crate) fn finish(format: Format, line: usize, timestamp: i64, rest: &str, cont: &[&str]) -> Entry {
    // iOS system lines without a sender start with U+200E right after `] `.
    let split = if format == Format::Ios && rest.starts_with(LRM) { None } else { split_sender(rest) };
    let Some((sender, first)) = split else {
        return Entry::System { line, timestamp, text: join_body(rest.trim_start_matches(LRM), cont) };
    };

    let mut body = join_body(first, cont);
    let mut edited = false;
    if let Some(head) = body.strip_suffix(EDITED_SUFFIX) {
        edited = true;
        let kept = head.trim_end_matches(|c: char| c.is_whitespace() || is_invisible_mark(c)).len();
        body.truncate(kept);
    }

    let lead_marked = body.starts_with(LRM);
    let sender = sender.to_owned();
    let msg = |body: String, media, attachment: Option<&str>, deleted| {
        Entry::Message(ChatMessage {
            line,
            timestamp,
            sender: sender.clone(),
            body,
            media,
            attachment: attachment.map(str::to_owned),
            deleted,
            edited,
        })
    };

    if is_deleted_marker(&body, format) {
        return msg(String::new(), None, None, true);
    }

    let (first_line, more) = match body.split_once('\n') {
        Some((f, m)) => (f, Some(m)),
        None => (body.as_str(), None),
    };
    if let Some(hit) = media_marker(first_line) {
        let mut caption = hit.caption.to_owned();
        if let Some(more) = more {
            if !caption.is_empty() {
                caption.push('\n');
            }
            caption.push_str(more);
        }
        return msg(caption, Some(hit.kind), hit.attachment, false);
    }

    // iOS marks group events and the encryption notice with a leading LRM
    // after a pseudo-sender (the group or contact name): `Family: ‎Alice added Bob`.
    if lead_marked && format == Format::Ios {
        return Entry::System { line, timestamp, text: body.trim_start_matches(LRM).to_owned() };
    }

    let body = if lead_marked { body.trim_start_matches(LRM).to_owned() } else { body };
    msg(body, None, None, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: Entry) -> ChatMessage {
        match e {
            Entry::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn file_name_kinds() {
        assert_eq!(kind_from_file_name("IMG-20201231-WA0001.jpg"), MediaKind::Image);
        assert_eq!(kind_from_file_name("VID-20201231-WA0002.mp4"), MediaKind::Video);
        assert_eq!(kind_from_file_name("PTT-20201231-WA0003.opus"), MediaKind::Audio);
        assert_eq!(kind_from_file_name("STK-20201231-WA0004.webp"), MediaKind::Sticker);
        assert_eq!(kind_from_file_name("00000012-PHOTO-2020-12-31-21-41-05.jpg"), MediaKind::Image);
        assert_eq!(kind_from_file_name("00000013-AUDIO-2020-12-31-21-41-05.opus"), MediaKind::Audio);
        assert_eq!(kind_from_file_name("Laporan Q4.pdf"), MediaKind::Document);
        assert_eq!(kind_from_file_name("Budi.vcf"), MediaKind::Contact);
    }

    #[test]
    fn sender_split_rejects_quoted_system_text() {
        assert_eq!(split_sender("Alice: hi: there"), Some(("Alice", "hi: there")));
        assert_eq!(split_sender("Alice changed the subject from \"A: B\" to \"C\""), None);
        assert_eq!(split_sender("Alice added Bob"), None);
        assert_eq!(split_sender("\u{202A}+62 812-3456-7890\u{202C}: halo"), Some(("+62 812-3456-7890", "halo")));
    }

    #[test]
    fn edited_suffix_with_lrm() {
        let m = message(finish(Format::Ios, 1, 0, "Alice: oke siap \u{200E}<This message was edited>", &[]));
        assert!(m.edited);
        assert_eq!(m.body, "oke siap");
    }

    #[test]
    fn attachment_caption_spans_lines() {
        let m = message(finish(Format::Android, 1, 0, "Bob: IMG-20201231-WA0001.jpg (file attached)", &["Kembang api!", "🎆"]));
        assert_eq!(m.media, Some(MediaKind::Image));
        assert_eq!(m.attachment.as_deref(), Some("IMG-20201231-WA0001.jpg"));
        assert_eq!(m.body, "Kembang api!\n🎆");
    }

    #[test]
    fn voice_calls_prefix_needs_comma() {
        let m = message(finish(Format::Ios, 1, 0, "Alice: Voice calls are fine", &[]));
        assert_eq!(m.media, None);
    }
}
