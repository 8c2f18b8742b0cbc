//! Recognising message header lines structurally (digits and punctuation in
//! the right places). Range checks (month 13, Feb 30, hour 25) happen later,
//! once the file-wide day/month order is known, so that an impossible date
//! is reported as malformed instead of being mistaken for a continuation line.

use crate::Format;

/// Bidi and BOM marks that WhatsApp sprinkles around lines, names and
/// phone numbers (U+200E LRM before iOS lines and system text, U+202A/U+202C
/// around Android phone numbers, ...).
pub(crate) fn is_invisible_mark(c: char) -> bool {
    matches!(
        c,
        '\u{200E}' | '\u{200F}' | '\u{FEFF}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Horizontal spaces seen inside headers: ASCII space, NBSP, U+202F NARROW
/// NO-BREAK SPACE (iOS / newer Android before AM/PM), thin and figure spaces.
pub(crate) fn is_space_like(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{00A0}' | '\u{202F}' | '\u{2009}' | '\u{2007}')
}

pub(crate) fn strip_leading_marks(s: &str) -> &str {
    s.trim_start_matches(is_invisible_mark)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Meridiem {
    Am,
    Pm,
}

/// A numeric field and how many digits it was written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Num {
    pub value: u32,
    pub digits: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawHeader<'a> {
    pub style: Format,
    pub date: [Num; 3],
    pub hour: u32,
    pub minute: u32,
    pub second: Option<u32>,
    pub meridiem: Option<Meridiem>,
    /// Everything after the header: `Sender: body` or system text.
    pub rest: &'a str,
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }

    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn eat_any(&mut self, set: &[char]) -> Option<char> {
        let c = self.peek()?;
        if set.contains(&c) {
            self.pos += c.len_utf8();
            Some(c)
        } else {
            None
        }
    }

    /// Consumes space-like characters; returns how many.
    fn spaces(&mut self) -> usize {
        let mut n = 0;
        while let Some(c) = self.peek() {
            if !is_space_like(c) {
                break;
            }
            self.pos += c.len_utf8();
            n += 1;
        }
        n
    }

    /// Consumes exactly one space-like character, if present.
    fn one_space(&mut self) -> bool {
        match self.peek() {
            Some(c) if is_space_like(c) => {
                self.pos += c.len_utf8();
                true
            }
            _ => false,
        }
    }

    /// 1..=max ASCII digits.
    fn number(&mut self, max: u8) -> Option<Num> {
        let bytes = self.s.as_bytes();
        let mut value = 0u32;
        let mut digits = 0u8;
        while digits < max {
            match bytes.get(self.pos) {
                Some(b) if b.is_ascii_digit() => {
                    value = value * 10 + u32::from(b - b'0');
                    digits += 1;
                    self.pos += 1;
                }
                _ => break,
            }
        }
        // A longer run of digits is not a header field.
        if digits == 0 || bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        Some(Num { value, digits })
    }

    /// `a/b/c`, `a.b.c` or `a-b-c` (same separator twice).
    fn date(&mut self) -> Option<[Num; 3]> {
        let a = self.number(4)?;
        let sep = self.eat_any(&['/', '.', '-'])?;
        let b = self.number(4)?;
        if !self.eat(sep) {
            return None;
        }
        let c = self.number(4)?;
        if sep == '.' {
            // Some locales write `31.12.20.`
            self.eat('.');
        }
        Some([a, b, c])
    }

    /// `H:MM`, `H:MM:SS` (or with `.` as in `21.41`).
    fn time(&mut self) -> Option<(u32, u32, Option<u32>)> {
        let h = self.number(2)?;
        let sep = self.eat_any(&[':', '.'])?;
        let m = self.number(2)?;
        if m.digits != 2 {
            return None;
        }
        let save = self.pos;
        let mut second = None;
        if self.eat(sep) {
            match self.number(2) {
                Some(s) if s.digits == 2 => second = Some(s.value),
                _ => self.pos = save,
            }
        }
        Some((h.value, m.value, second))
    }

    /// Optional spaces then `AM`/`PM` (also `a.m.`, `p. m.`; any case).
    fn meridiem(&mut self) -> Option<Meridiem> {
        let save = self.pos;
        self.spaces();
        let rest = &self.s[self.pos..];
        const FORMS: [(&str, Meridiem); 6] = [
            ("a. m.", Meridiem::Am),
            ("p. m.", Meridiem::Pm),
            ("a.m.", Meridiem::Am),
            ("p.m.", Meridiem::Pm),
            ("am", Meridiem::Am),
            ("pm", Meridiem::Pm),
        ];
        for (form, m) in FORMS {
            if let Some(head) = rest.get(..form.len()) {
                if head.eq_ignore_ascii_case(form) {
                    let after = rest[form.len()..].chars().next();
                    if !after.is_some_and(char::is_alphanumeric) {
                        self.pos += form.len();
                        return Some(m);
                    }
                }
            }
        }
        self.pos = save;
        None
    }

    /// `,` and/or spaces between date and time.
    fn date_time_gap(&mut self) -> bool {
        let comma = self.eat(',');
        let spaces = self.spaces();
        comma || spaces > 0
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }
}

/// `12/31/20, 9:41 PM - rest` / `31.12.20, 21:41 - rest`.
pub(crate) fn parse_android(line: &str) -> Option<RawHeader<'_>> {
    let mut c = Cursor::new(strip_leading_marks(line));
    let date = c.date()?;
    if !c.date_time_gap() {
        return None;
    }
    let (hour, minute, second) = c.time()?;
    let meridiem = c.meridiem();
    if c.spaces() == 0 {
        return None;
    }
    c.eat_any(&['-', '\u{2013}'])?;
    if c.peek().is_some() && !c.one_space() {
        return None;
    }
    Some(RawHeader { style: Format::Android, date, hour, minute, second, meridiem, rest: c.rest() })
}

/// `[31/12/2020, 21:41:05] rest` / `[12/31/20, 9:41:05 PM] rest`.
pub(crate) fn parse_ios(line: &str) -> Option<RawHeader<'_>> {
    let mut c = Cursor::new(strip_leading_marks(line));
    if !c.eat('[') {
        return None;
    }
    let date = c.date()?;
    if !c.date_time_gap() {
        return None;
    }
    let (hour, minute, second) = c.time()?;
    let meridiem = c.meridiem();
    c.spaces();
    if !c.eat(']') {
        return None;
    }
    if c.peek().is_some() && !c.one_space() {
        return None;
    }
    Some(RawHeader { style: Format::Ios, date, hour, minute, second, meridiem, rest: c.rest() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(value: u32, digits: u8) -> Num {
        Num { value, digits }
    }

    #[test]
    fn android_us_12h() {
        let h = parse_android("12/31/20, 9:41 PM - Alice: hi").unwrap();
        assert_eq!(h.date, [n(12, 2), n(31, 2), n(20, 2)]);
        assert_eq!((h.hour, h.minute, h.second, h.meridiem), (9, 41, None, Some(Meridiem::Pm)));
        assert_eq!(h.rest, "Alice: hi");
    }

    #[test]
    fn android_narrow_nbsp_before_pm() {
        let h = parse_android("12/31/20, 9:41\u{202F}pm - Alice: hi").unwrap();
        assert_eq!(h.meridiem, Some(Meridiem::Pm));
    }

    #[test]
    fn android_year_first_and_dots() {
        let h = parse_android("2020-12-31, 21:41 - A: b").unwrap();
        assert_eq!(h.date, [n(2020, 4), n(12, 2), n(31, 2)]);
        let h = parse_android("31.12.20, 21:41 - A: b").unwrap();
        assert_eq!(h.date, [n(31, 2), n(12, 2), n(20, 2)]);
        assert_eq!(h.meridiem, None);
    }

    #[test]
    fn ios_with_lrm_and_seconds() {
        let h = parse_ios("\u{200E}[12/31/20, 9:41:05\u{202F}PM] Alice: \u{200E}image omitted").unwrap();
        assert_eq!((h.hour, h.minute, h.second), (9, 41, Some(5)));
        assert_eq!(h.rest, "Alice: \u{200E}image omitted");
    }

    #[test]
    fn non_headers() {
        assert!(parse_android("just text").is_none());
        assert!(parse_android("12/31/20 is the date").is_none());
        assert!(parse_android("12/31/20, 9:41 PM Alice: no dash").is_none());
        assert!(parse_android("12/31-20, 9:41 - mixed separators").is_none());
        assert!(parse_ios("[12/31/20, 9:41 PM Alice").is_none());
        assert!(parse_ios("12/31/20, 9:41 PM - Alice: hi").is_none());
        assert!(parse_android("[31/12/2020, 21:41:05] Alice: hi").is_none());
        assert!(parse_android("123456/1/1, 1:00 - x").is_none());
    }

    #[test]
    fn impossible_values_still_look_like_headers() {
        let h = parse_android("31/13/2020, 25:61 - Alice: hi").unwrap();
        assert_eq!(h.date[1].value, 13);
        assert_eq!((h.hour, h.minute), (25, 61));
    }
}
