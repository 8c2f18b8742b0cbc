//! `kabar import whatsapp`: writes a WhatsApp "Export chat" file (.txt or .zip) into a user's
//! message archive with the original timestamps. Idempotent: each message has a stable key, and a
//! message already imported is skipped, so importing the same export twice adds nothing.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use jid::BareJid;
use kabar_import::{message_keys, parse_text, read_export, ChatMessage, DateOrder, ImportOptions};
use kabar_modules::mam::imported_item;
use kabar_storage::{Direction, SharedStore};

pub struct WhatsappImport<'a> {
    pub store: &'a SharedStore,
    pub owner: BareJid,
    pub peer: BareJid,
    pub file: &'a Path,
    /// The sender name the owner has in the export.
    pub me: Option<String>,
    pub utc_offset_minutes: i32,
    pub date_order: Option<DateOrder>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub imported: usize,
    pub already_present: usize,
    pub system_lines: usize,
    pub malformed: usize,
}

/// Parses `+07:00`, `-0330`, `7`, `UTC+7` into minutes east of UTC.
pub fn parse_utc_offset(s: &str) -> Result<i32> {
    let t = s.trim().trim_start_matches("UTC").trim_start_matches("GMT");
    if t.is_empty() {
        return Ok(0);
    }
    let (sign, rest) = match t.as_bytes()[0] {
        b'-' => (-1, &t[1..]),
        b'+' => (1, &t[1..]),
        _ => (1, t),
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() == 4 => rest.split_at(2),
        None => (rest, "0"),
    };
    let (h, m): (i32, i32) = (h.parse().context("hours")?, m.parse().context("minutes")?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        bail!("'{s}' is not a UTC offset between -14:00 and +14:00");
    }
    Ok(sign * (h * 60 + m))
}

fn body_of(msg: &ChatMessage, group: bool) -> String {
    let mut body = if msg.deleted {
        "[deleted message]".to_string()
    } else {
        match (msg.media, msg.body.is_empty()) {
            (Some(kind), true) => format!("[{}]", kind.tag()),
            (Some(kind), false) => format!("[{}] {}", kind.tag(), msg.body),
            (None, _) => msg.body.clone(),
        }
    };
    if group {
        body = format!("{}: {body}", msg.sender);
    }
    body
}

impl WhatsappImport<'_> {
    pub async fn run(&self) -> Result<Summary> {
        if self.store.credentials(self.owner.as_str()).await?.is_none() {
            bail!("no account {} (create it first with `kabar user add`)", self.owner);
        }
        let text = read_export(self.file).with_context(|| format!("cannot read {}", self.file.display()))?;
        let opts = ImportOptions { date_order: self.date_order, utc_offset_minutes: self.utc_offset_minutes };
        let parsed = parse_text(&text, &opts);
        let me = match &self.me {
            Some(me) if parsed.senders.iter().any(|s| s == me) => me.clone(),
            Some(me) => bail!("'{me}' does not send any message in this export; senders are: {}", parsed.senders.join(", ")),
            None => bail!(
                "say which sender is {} with --me NAME; senders in this export: {}",
                self.owner,
                parsed.senders.join(", ")
            ),
        };
        if parsed.ambiguous_date_order {
            eprintln!(
                "note: the dates in this export do not show whether the day or the month comes first; read them as {:?} (change with --date-order)",
                parsed.date_order
            );
        }
        let group = parsed.senders.len() > 2;
        let keyed = message_keys(&parsed);
        let total = keyed.len();
        let show_progress = std::io::stderr().is_terminal();
        let mut summary = Summary { system_lines: parsed.entries.len() - total, malformed: parsed.malformed.len(), ..Summary::default() };
        // Exports have minute (Android) or second (iOS) resolution; messages sharing a timestamp get
        // ids in file order, so the archive (ordered by time, then id) keeps their order.
        let mut previous = (i64::MIN, 0u32);
        for (done, (key, msg)) in keyed.into_iter().enumerate() {
            let direction = if msg.sender == me { Direction::Out } else { Direction::In };
            let seq = if msg.timestamp == previous.0 { previous.1 + 1 } else { 0 };
            previous = (msg.timestamp, seq);
            let micros = msg.timestamp.saturating_mul(1_000_000);
            let item = imported_item(&self.owner, &self.peer, direction, micros, seq, &body_of(msg, group && direction == Direction::In))?;
            let dedupe = format!("whatsapp:{}:{key}", self.peer);
            if self.store.archive_append(self.owner.as_str(), &item, Some(&dedupe)).await? {
                summary.imported += 1;
            } else {
                summary.already_present += 1;
            }
            if show_progress && (done % 200 == 0 || done + 1 == total) {
                let width = 30;
                let filled = (done + 1) * width / total.max(1);
                eprint!("\r[{}{}] {}/{} messages", "#".repeat(filled), " ".repeat(width - filled), done + 1, total);
                let _ = std::io::stderr().flush();
            }
        }
        if show_progress {
            eprintln!();
        }
        for m in &parsed.malformed {
            eprintln!("line {}: {} — not imported: {:?}", m.line, m.reason, m.text);
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_offsets_in_common_spellings() {
        assert_eq!(parse_utc_offset("+07:00").ok(), Some(420));
        assert_eq!(parse_utc_offset("UTC+7").ok(), Some(420));
        assert_eq!(parse_utc_offset("-0330").ok(), Some(-210));
        assert_eq!(parse_utc_offset("0").ok(), Some(0));
        assert!(parse_utc_offset("+25:00").is_err());
        assert!(parse_utc_offset("abc").is_err());
    }
}
