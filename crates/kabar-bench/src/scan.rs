//! Byte-level stanza splitting and field extraction for the generator's hot receive paths.
//!
//! Building a full element tree per received stanza (rxml + minidom) cost about 80 % of the
//! generator's CPU in the MUC fan-out scenario, which made the generator, not the server, the limit.
//! [`Splitter`] finds the boundaries of top-level stanzas with a byte scan (tags, quoted attribute
//! values, CDATA, comments and processing instructions), so a connection can hand whole stanzas to
//! kabar-xml's framer while logging in and then switch to reading raw stanza bytes without losing
//! a partial stanza the framer would hold. [`tags`], [`attr`] and [`child_text`] read the few fields
//! a reader needs from a stanza's bytes. Anything unusual is left to a full parse ([`parse_stanza`]).

use std::ops::Range;

use anyhow::{anyhow, bail, Result};
use kabar_xml::{Element, Limits, StreamEvent, StreamFramer};

/// What a piece of the stream is. A piece's bytes run from the end of the previous piece, so the
/// concatenated pieces are exactly the bytes received (whitespace between stanzas included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Everything up to and including the `<stream:stream …>` start tag.
    Header,
    /// One complete top-level element (a stanza, features, SASL, …).
    Stanza,
    /// Up to and including `</stream:stream>`.
    Close,
}

/// Incremental splitter of one XML stream into [`Piece`]s. Bytes are appended with [`push`],
/// complete pieces taken with [`next_piece`] (ranges into [`bytes`]), and [`compact`] drops what
/// was handed out.
///
/// [`push`]: Splitter::push
/// [`next_piece`]: Splitter::next_piece
/// [`bytes`]: Splitter::bytes
/// [`compact`]: Splitter::compact
pub struct Splitter {
    buf: Vec<u8>,
    /// Start of the piece being assembled (everything before it has been handed out).
    start: usize,
    /// Next byte to scan; always at a markup boundary (text or the `<` of an unfinished tag).
    pos: usize,
    /// 0 outside the stream root, 1 between stanzas, ≥ 2 inside a stanza.
    depth: u32,
    max_piece: usize,
}

impl Splitter {
    pub fn new(max_piece: usize) -> Splitter {
        Splitter {
            buf: Vec::with_capacity(4096),
            start: 0,
            pos: 0,
            depth: 0,
            max_piece,
        }
    }

    /// A new stream starts (after STARTTLS or SASL success).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.pos = 0;
        self.depth = 0;
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub fn bytes(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// Drops the pieces already handed out; ranges from before are invalid afterwards.
    pub fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.pos -= self.start;
            self.start = 0;
        }
    }

    fn take(&mut self, end: usize, kind: Piece) -> Option<(Piece, Range<usize>)> {
        let r = self.start..end;
        self.start = end;
        self.pos = end;
        Some((kind, r))
    }

    fn need_more(&self) -> Result<Option<(Piece, Range<usize>)>> {
        if self.buf.len() - self.start > self.max_piece {
            bail!("stanza larger than {} bytes", self.max_piece);
        }
        Ok(None)
    }

    /// The next complete piece, or None until more bytes arrive.
    pub fn next_piece(&mut self) -> Result<Option<(Piece, Range<usize>)>> {
        loop {
            // An unfinished piece may not grow past the limit (a complete one is checked below).
            let Some(lt) = find(&self.buf, self.pos, b"<") else {
                self.pos = self.buf.len();
                return self.need_more();
            };
            let Some(tag) = scan_tag(&self.buf, lt)? else {
                self.pos = lt;
                return self.need_more();
            };
            if tag.end - self.start > self.max_piece {
                bail!("stanza larger than {} bytes", self.max_piece);
            }
            self.pos = tag.end;
            match tag.kind {
                TagKind::Other => {}
                TagKind::End => match self.depth {
                    0 => bail!("end tag outside the stream"),
                    1 => {
                        self.depth = 0;
                        return Ok(self.take(tag.end, Piece::Close));
                    }
                    2 => {
                        self.depth = 1;
                        return Ok(self.take(tag.end, Piece::Stanza));
                    }
                    _ => self.depth -= 1,
                },
                TagKind::Empty => match self.depth {
                    0 => bail!("empty stream root"),
                    1 => return Ok(self.take(tag.end, Piece::Stanza)),
                    _ => {}
                },
                TagKind::Start => {
                    self.depth += 1;
                    if self.depth == 1 {
                        return Ok(self.take(tag.end, Piece::Header));
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagKind {
    Start,
    End,
    Empty,
    /// `<?…?>`, `<!--…-->`, `<![CDATA[…]]>`, `<!…>`: no effect on nesting.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub kind: TagKind,
    /// Offset of the `<`.
    pub start: usize,
    /// Offset just past the closing `>`.
    pub end: usize,
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// The markup construct starting at `buf[lt] == b'<'`, or None when it is not complete yet.
fn scan_tag(buf: &[u8], lt: usize) -> Result<Option<Tag>> {
    let Some(&c) = buf.get(lt + 1) else {
        return Ok(None);
    };
    let other = |close: &[u8], from: usize| {
        find(buf, from, close).map(|i| Tag {
            kind: TagKind::Other,
            start: lt,
            end: i + close.len(),
        })
    };
    match c {
        b'?' => Ok(other(b"?>", lt + 2)),
        b'!' => {
            let rest = &buf[lt..];
            if rest.len() < 9 {
                // `<![CDATA[` and `<!--` cannot be told apart from a prefix yet.
                return Ok(None);
            }
            if rest.starts_with(b"<![CDATA[") {
                Ok(other(b"]]>", lt + 9))
            } else if rest.starts_with(b"<!--") {
                Ok(other(b"-->", lt + 4))
            } else {
                Ok(other(b">", lt + 2))
            }
        }
        b'/' => Ok(find(buf, lt + 2, b">").map(|i| Tag {
            kind: TagKind::End,
            start: lt,
            end: i + 1,
        })),
        b'>' | b'<' => bail!("malformed tag at byte {lt}"),
        _ => {
            // A start tag: the first `>` outside a quoted attribute value ends it.
            let mut quote = 0u8;
            for (i, &b) in buf.iter().enumerate().skip(lt + 1) {
                if quote != 0 {
                    if b == quote {
                        quote = 0;
                    }
                } else if b == b'\'' || b == b'"' {
                    quote = b;
                } else if b == b'<' {
                    bail!("'<' inside a tag at byte {i}");
                } else if b == b'>' {
                    let kind = if buf[i - 1] == b'/' {
                        TagKind::Empty
                    } else {
                        TagKind::Start
                    };
                    return Ok(Some(Tag {
                        kind,
                        start: lt,
                        end: i + 1,
                    }));
                }
            }
            Ok(None)
        }
    }
}

/// The markup constructs of a complete element's bytes, in order (text is skipped).
pub fn tags(el: &[u8]) -> impl Iterator<Item = Tag> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let lt = find(el, pos, b"<")?;
        let t = scan_tag(el, lt).ok()??;
        pos = t.end;
        Some(t)
    })
}

/// The qualified name of the tag at the start of `tag` (`<message …` → `message`).
pub fn tag_name(tag: &[u8]) -> &[u8] {
    let s = tag
        .strip_prefix(b"</")
        .or_else(|| tag.strip_prefix(b"<"))
        .unwrap_or(tag);
    let end = s
        .iter()
        .position(|b| b.is_ascii_whitespace() || *b == b'/' || *b == b'>')
        .unwrap_or(s.len());
    &s[..end]
}

/// An element's bytes without the whitespace before it.
pub fn trim_start(b: &[u8]) -> &[u8] {
    let i = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    &b[i..]
}

/// The raw (still escaped) value of attribute `name` on the element's start tag.
pub fn attr<'a>(el: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let first = tags(el).next()?;
    let tag = &el[first.start..first.end];
    let mut i = 1 + tag_name(tag).len();
    loop {
        while tag.get(i)?.is_ascii_whitespace() {
            i += 1;
        }
        let n0 = i;
        while !matches!(tag.get(i)?, b'=' | b'/' | b'>') && !tag[i].is_ascii_whitespace() {
            i += 1;
        }
        let n = &tag[n0..i];
        if n.is_empty() {
            return None;
        }
        while tag.get(i)?.is_ascii_whitespace() {
            i += 1;
        }
        if *tag.get(i)? != b'=' {
            return None;
        }
        i += 1;
        while tag.get(i)?.is_ascii_whitespace() {
            i += 1;
        }
        let q = *tag.get(i)?;
        if q != b'\'' && q != b'"' {
            return None;
        }
        let v0 = i + 1;
        let v1 = v0 + tag.get(v0..)?.iter().position(|b| *b == q)?;
        if n == name {
            return Some(&tag[v0..v1]);
        }
        i = v1 + 1;
    }
}

/// The character data of the first child element named `name` (qualified name as on the wire)
/// directly under the root, up to that child's first markup. None when there is no such child or
/// it is empty-tagged.
pub fn child_text<'a>(el: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut depth = 0u32;
    let mut it = tags(el);
    while let Some(t) = it.next() {
        match t.kind {
            TagKind::Start => {
                depth += 1;
                if depth == 2 && tag_name(&el[t.start..t.end]) == name {
                    let end = it.next()?.start;
                    return Some(&el[t.end..end]);
                }
            }
            TagKind::End => depth = depth.checked_sub(1)?,
            TagKind::Empty | TagKind::Other => {}
        }
    }
    None
}

/// Whether the root has a direct child element named `name` (qualified name as on the wire).
pub fn has_child(el: &[u8], name: &[u8]) -> bool {
    let mut depth = 0u32;
    for t in tags(el) {
        let at_child = match t.kind {
            TagKind::Start => {
                depth += 1;
                depth == 2
            }
            TagKind::Empty => depth == 1,
            TagKind::End => {
                depth = depth.saturating_sub(1);
                false
            }
            TagKind::Other => false,
        };
        if at_child && tag_name(&el[t.start..t.end]) == name {
            return true;
        }
    }
    false
}

/// A full parse of one stanza's bytes (as received inside a `jabber:client` stream), for the rare
/// stanzas a fast path does not handle and for cross-checking the byte scan.
pub fn parse_stanza(el: &[u8]) -> Result<Element> {
    let mut f = StreamFramer::new(Limits {
        max_stanza_bytes: 1 << 20,
        max_depth: 64,
    });
    let mut out = Vec::new();
    f.feed(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
        &mut out,
    )
    .and_then(|()| f.feed(el, &mut out))
    .map_err(|e| anyhow!("bad XML: {e}"))?;
    out.into_iter()
        .find_map(|ev| match ev {
            StreamEvent::Element(e) => Some(e),
            _ => None,
        })
        .ok_or_else(|| anyhow!("no complete element"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' id='a>b' version='1.0'>\
        <stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>\n \
        <message from='r@c/n' type='groupchat'><body>fan 12 3 x&gt;y</body><x a=\"q'>\"/></message>\
        <presence/><iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>\
        <message><body><![CDATA[a</body>]]></body></message></stream:stream>";

    fn split_all(chunks: &[&[u8]]) -> Vec<(Piece, Vec<u8>)> {
        let mut s = Splitter::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            s.compact();
            s.push(c);
            while let Some((k, r)) = s.next_piece().expect("well-formed") {
                out.push((k, s.bytes(r).to_vec()));
            }
        }
        out
    }

    #[test]
    fn splitter_pieces_cover_the_stream_exactly_and_end_on_stanza_boundaries() {
        let pieces = split_all(&[STREAM]);
        let kinds: Vec<Piece> = pieces.iter().map(|p| p.0).collect();
        assert_eq!(
            kinds,
            [
                Piece::Header,
                Piece::Stanza,
                Piece::Stanza,
                Piece::Stanza,
                Piece::Stanza,
                Piece::Stanza,
                Piece::Close
            ]
        );
        let joined: Vec<u8> = pieces.iter().flat_map(|p| p.1.clone()).collect();
        assert_eq!(joined, STREAM);
        assert!(trim_start(&pieces[2].1).starts_with(b"<message from='r@c/n'"));
        assert!(pieces[2].1.ends_with(b"</message>"));
        assert_eq!(pieces[3].1, b"<presence/>");
    }

    #[test]
    fn splitter_gives_the_same_pieces_whatever_the_read_boundaries() {
        let whole = split_all(&[STREAM]);
        for size in [1, 2, 3, 7, 64] {
            let chunks: Vec<&[u8]> = STREAM.chunks(size).collect();
            assert_eq!(split_all(&chunks), whole, "chunk size {size}");
        }
    }

    #[test]
    fn splitter_pieces_parse_like_the_whole_stream() {
        // Feeding the framer piece by piece must give the same events as the whole stream.
        let mut f = StreamFramer::new(Limits::default());
        let mut whole = Vec::new();
        f.feed(STREAM, &mut whole)
            .expect("framer accepts the stream");
        let mut f = StreamFramer::new(Limits::default());
        let mut pieced = Vec::new();
        for (_, p) in split_all(&[STREAM]) {
            f.feed(&p, &mut pieced).expect("framer accepts each piece");
        }
        assert_eq!(format!("{whole:?}"), format!("{pieced:?}"));
    }

    #[test]
    fn splitter_skips_comments_and_processing_instructions_inside_stanzas() {
        let st = b"<stream:stream><message><!-- </message> --><?pi </x>?><body>b</body></message>";
        let pieces = split_all(&[st]);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[1].0, Piece::Stanza);
        assert!(pieces[1].1.ends_with(b"<body>b</body></message>"));
        assert_eq!(child_text(&pieces[1].1, b"body"), Some(&b"b"[..]));
    }

    #[test]
    fn splitter_refuses_an_oversized_stanza_and_a_stray_end_tag() {
        let mut s = Splitter::new(64);
        s.push(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>");
        assert!(matches!(s.next_piece(), Ok(Some((Piece::Header, _)))));
        s.push(&[b'a'; 10]);
        s.push(b"<message>");
        s.push(&[b'x'; 100]);
        assert!(s.next_piece().is_err());
        let mut s = Splitter::new(64);
        s.push(b"</x>");
        assert!(s.next_piece().is_err());
    }

    #[test]
    fn attr_reads_raw_values_with_either_quote_and_spacing() {
        let el = b"<message from = \"r@c/a'b\" type='groupchat' id='x&amp;y'><body/></message>";
        assert_eq!(attr(el, b"from"), Some(&b"r@c/a'b"[..]));
        assert_eq!(attr(el, b"type"), Some(&b"groupchat"[..]));
        assert_eq!(attr(el, b"id"), Some(&b"x&amp;y"[..]));
        assert_eq!(attr(el, b"to"), None);
        assert_eq!(attr(b"<presence/>", b"type"), None);
        assert_eq!(attr(b"<iq type='get'/>", b"type"), Some(&b"get"[..]));
    }

    #[test]
    fn child_text_reads_a_direct_child_only() {
        let el = b"<message type='groupchat'><x><body>nested</body></x>\
                   <body>fan 5 7 xx</body><delay stamp='1'/></message>";
        assert_eq!(child_text(el, b"body"), Some(&b"fan 5 7 xx"[..]));
        assert_eq!(
            child_text(b"<message><x><body>n</body></x></message>", b"body"),
            None
        );
        assert_eq!(child_text(b"<message><body/></message>", b"body"), None);
        assert_eq!(
            child_text(b"<message><body></body></message>", b"body"),
            Some(&b""[..])
        );
        assert!(has_child(b"<message><subject/></message>", b"subject"));
        assert!(has_child(
            b"<message><subject>s</subject></message>",
            b"subject"
        ));
        assert!(!has_child(
            b"<message><x><subject/></x></message>",
            b"subject"
        ));
        assert!(!has_child(b"<subject/>", b"subject"));
        assert_eq!(tag_name(b"<stream:error>"), b"stream:error");
        assert_eq!(tag_name(b"</message>"), b"message");
    }

    #[test]
    fn parse_stanza_builds_the_element_for_the_slow_path() {
        let el = parse_stanza(
            b"<iq type='get' id='p&amp;1' from='b'><ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .expect("parses");
        assert_eq!(el.name(), "iq");
        assert_eq!(el.attr("id"), Some("p&1"));
        assert!(parse_stanza(b"<iq><unclosed></iq>").is_err());
    }
}
