use minidom::Element;
use rxml::error::EndOrError;
use rxml::{Event, Parse, Parser, WithOptions};

use crate::NS_STREAMS;

/// Limits that rxml does not enforce itself. Both are per stream.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest top-level element, in bytes of input.
    pub max_stanza_bytes: usize,
    /// Deepest nesting inside a stanza (the stanza itself is depth 1).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_stanza_bytes: 256 * 1024, max_depth: 32 }
    }
}

/// The attributes of a received `<stream:stream>` header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
}

#[derive(Debug)]
pub enum StreamEvent {
    Open(StreamHeader),
    Element(Element),
    Close,
}

/// Why the stream must end. [`FramerError::condition`] is the RFC 6120 §4.9.3 stream error to send.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FramerError {
    #[error("XML not well-formed: {0}")]
    NotWellFormed(String),
    #[error("restricted XML construct: {0}")]
    RestrictedXml(String),
    #[error("stanza larger than {0} bytes")]
    StanzaTooLarge(usize),
    #[error("XML nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("root element is not a stream in the streams namespace")]
    InvalidNamespace,
    #[error("text outside any stanza")]
    TextAtTopLevel,
    #[error("data after the end of the stream")]
    AfterClose,
}

impl FramerError {
    pub fn condition(&self) -> &'static str {
        match self {
            FramerError::NotWellFormed(_) => "not-well-formed",
            FramerError::RestrictedXml(_) => "restricted-xml",
            FramerError::StanzaTooLarge(_) | FramerError::TooDeep(_) => "policy-violation",
            FramerError::InvalidNamespace => "invalid-namespace",
            FramerError::TextAtTopLevel => "bad-format",
            FramerError::AfterClose => "not-well-formed",
        }
    }
}

/// Incremental framer for one XML stream. Call [`StreamFramer::reset`] when the stream restarts
/// (after STARTTLS and after SASL success, RFC 6120 §5.4.3.3 and §6.4.6).
pub struct StreamFramer {
    parser: Parser,
    limits: Limits,
    /// Open elements below the stream root; `stack[0]` is the stanza being built.
    stack: Vec<Element>,
    root_open: bool,
    closed: bool,
    stanza_bytes: usize,
    failed: Option<FramerError>,
    /// A `<` arrived (before it, only whitespace is allowed).
    seen_markup: bool,
    /// (namespace on the wire, namespace handed to the core): lets component streams
    /// (`jabber:component:accept`) feed the same core as client streams.
    alias: Option<(&'static str, &'static str)>,
}

impl StreamFramer {
    pub fn new(limits: Limits) -> Self {
        StreamFramer {
            alias: None,
            seen_markup: false,
            parser: new_parser(limits),
            limits,
            stack: Vec::new(),
            root_open: false,
            closed: false,
            stanza_bytes: 0,
            failed: None,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Elements in namespace `wire` are handed out as if they were in `internal`.
    pub fn with_namespace_alias(mut self, wire: &'static str, internal: &'static str) -> Self {
        self.alias = Some((wire, internal));
        self
    }

    /// Starts a fresh stream: the next bytes must be a new stream header.
    pub fn reset(&mut self) {
        let alias = self.alias;
        *self = StreamFramer::new(self.limits);
        self.alias = alias;
    }

    /// Feeds received bytes, appending complete events to `out`. After an error the framer stays
    /// failed: the caller sends the stream error and closes.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), FramerError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let chunk = data;
        let result = self.feed_inner(&mut data, out);
        if let Err(err) = &result {
            let err = refine_error(err.clone(), chunk);
            self.failed = Some(err.clone());
            return Err(err);
        }
        if self.stack.is_empty() {
            // Between stanzas the lexer's token buffers (each reserved at the full token limit,
            // i.e. the stanza limit) hold nothing worth keeping: give them back, so a connection
            // waiting for its next stanza owns no parser buffers and the pages they touched are
            // reused by whichever stream reads next (docs/BENCHMARKS.md, memory per idle
            // connection). Shrinking keeps any unfinished token, so this is safe at any point.
            self.parser.release_temporaries();
            // Likewise the stack of open elements (it grew to hold a stanza's children).
            self.stack = Vec::new();
        }
        result
    }

    fn feed_inner(&mut self, data: &mut &[u8], out: &mut Vec<StreamEvent>) -> Result<(), FramerError> {
        if !self.root_open && !self.seen_markup {
            // Before the first `<` only whitespace may come (XML 1.0 §2.8, a BOM aside). The parser
            // would otherwise wait for a `<` that never comes.
            let rest = data.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(data);
            match rest.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) if rest[i] == b'<' => self.seen_markup = true,
                Some(_) => return Err(FramerError::NotWellFormed("text before the stream header".into())),
                None => {}
            }
        }
        loop {
            if self.closed && !data.is_empty() {
                if data.iter().all(u8::is_ascii_whitespace) {
                    *data = &[];
                    return Ok(());
                }
                return Err(FramerError::AfterClose);
            }
            let before = data.len();
            let event = match self.parser.parse(data, false) {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(()),
                Err(EndOrError::NeedMoreData) => {
                    // Bytes the lexer holds for an unfinished token count towards the stanza.
                    self.count(before - data.len())?;
                    return Ok(());
                }
                Err(EndOrError::Error(e)) => return Err(classify(e)),
            };
            self.count(before - data.len())?;
            self.handle(event, out)?;
        }
    }

    /// Counts bytes towards the current stanza, or towards the stream header before the root is
    /// open: both are bounded by `max_stanza_bytes`.
    fn count(&mut self, consumed: usize) -> Result<(), FramerError> {
        self.stanza_bytes = self.stanza_bytes.saturating_add(consumed);
        if self.stanza_bytes > self.limits.max_stanza_bytes {
            return Err(FramerError::StanzaTooLarge(self.limits.max_stanza_bytes));
        }
        Ok(())
    }

    fn handle(&mut self, event: Event, out: &mut Vec<StreamEvent>) -> Result<(), FramerError> {
        match event {
            Event::XmlDeclaration(..) => {}
            Event::StartElement(_, (ns, name), attrs) => {
                if !self.root_open {
                    if name.as_str() != "stream" || ns.as_str() != NS_STREAMS {
                        return Err(FramerError::InvalidNamespace);
                    }
                    let get = |n: &str| attrs.get(rxml::Namespace::none(), n).map(|v| v.to_string());
                    let header = StreamHeader {
                        to: get("to"),
                        from: get("from"),
                        id: get("id"),
                        version: get("version"),
                        lang: attrs.get(rxml::Namespace::xml(), "lang").map(|v| v.to_string()),
                    };
                    self.root_open = true;
                    self.stanza_bytes = 0;
                    out.push(StreamEvent::Open(header));
                    return Ok(());
                }
                if self.stack.len() >= self.limits.max_depth {
                    return Err(FramerError::TooDeep(self.limits.max_depth));
                }
                let ns = match self.alias {
                    Some((wire, internal)) if ns.as_str() == wire => internal,
                    _ => ns.as_str(),
                };
                let mut el = Element::bare(name.as_str(), ns);
                *el.attrs_mut() = attrs;
                self.stack.push(el);
            }
            Event::Text(_, text) => match self.stack.last_mut() {
                Some(top) => top.append_text(text.as_str()),
                None if text.chars().all(char::is_whitespace) => self.stanza_bytes = 0,
                None => return Err(FramerError::TextAtTopLevel),
            },
            Event::EndElement(_) => match self.stack.pop() {
                Some(el) => match self.stack.last_mut() {
                    Some(parent) => {
                        parent.append_child(el);
                    }
                    None => {
                        self.stanza_bytes = 0;
                        out.push(StreamEvent::Element(el));
                    }
                },
                None => {
                    self.closed = true;
                    out.push(StreamEvent::Close);
                }
            },
        }
        Ok(())
    }
}

fn new_parser(limits: Limits) -> Parser {
    let mut options = rxml::Options::default();
    // One token (name, attribute value, text chunk) can never be larger than a stanza.
    options.max_token_length = limits.max_stanza_bytes.max(1024);
    Parser::with_options(options)
}

fn classify(e: rxml::Error) -> FramerError {
    match e {
        rxml::Error::RestrictedXml(what) => FramerError::RestrictedXml(what.to_string()),
        rxml::Error::UndeclaredEntity => FramerError::RestrictedXml("entity reference".into()),
        other => FramerError::NotWellFormed(other.to_string()),
    }
}

/// rxml reports a DTD as an unexpected character; RFC 6120 §11.1 wants restricted-xml for it.
fn refine_error(err: FramerError, chunk: &[u8]) -> FramerError {
    let has = |needle: &[u8]| chunk.windows(needle.len()).any(|w| w == needle);
    match err {
        FramerError::NotWellFormed(_) if has(b"<!DOCTYPE") || has(b"<!ENTITY") => {
            FramerError::RestrictedXml("document type declaration".into())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

    fn feed_all(framer: &mut StreamFramer, chunks: &[&[u8]]) -> Result<Vec<StreamEvent>, FramerError> {
        let mut out = Vec::new();
        for c in chunks {
            framer.feed(c, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn rfc6120_4_2_header_then_stanzas_split_at_every_byte() {
        let mut doc = HEADER.to_vec();
        doc.extend_from_slice(b"<message to='a@b'><body>hi &amp; bye</body></message> <iq type='get' id='1'/></stream:stream>");
        let mut framer = StreamFramer::new(Limits::default());
        let chunks: Vec<&[u8]> = doc.chunks(1).collect();
        let events = feed_all(&mut framer, &chunks).expect("valid stream");
        assert_eq!(events.len(), 4);
        match &events[0] {
            StreamEvent::Open(h) => {
                assert_eq!(h.to.as_deref(), Some("localhost"));
                assert_eq!(h.version.as_deref(), Some("1.0"));
            }
            other => panic!("expected open, got {other:?}"),
        }
        match &events[1] {
            StreamEvent::Element(el) => {
                assert!(el.is("message", "jabber:client"));
                assert_eq!(el.get_child("body", "jabber:client").map(|b| b.text()), Some("hi & bye".into()));
            }
            other => panic!("expected message, got {other:?}"),
        }
        assert!(matches!(events[3], StreamEvent::Close));
    }

    #[test]
    fn rfc6120_11_1_dtd_is_restricted_xml() {
        let mut framer = StreamFramer::new(Limits::default());
        let err = feed_all(&mut framer, &[b"<?xml version='1.0'?><!DOCTYPE foo [<!ENTITY x 'y'>]><stream:stream/>"])
            .expect_err("DTD must be refused");
        assert_eq!(err.condition(), "restricted-xml");
    }

    #[test]
    fn rfc6120_11_1_comment_and_pi_are_restricted_xml() {
        for bad in [&b"<!-- hi -->"[..], b"<?foo bar?>"] {
            let mut framer = StreamFramer::new(Limits::default());
            let err = feed_all(&mut framer, &[HEADER, bad]).expect_err("must be refused");
            assert_eq!(err.condition(), "restricted-xml", "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn rfc6120_11_1_undeclared_entity_is_refused() {
        let mut framer = StreamFramer::new(Limits::default());
        let err = feed_all(&mut framer, &[HEADER, b"<message>&xxe;</message>"]).expect_err("refused");
        assert_eq!(err.condition(), "restricted-xml");
    }

    #[test]
    fn rfc6120_4_9_3_12_oversized_stanza_is_policy_violation() {
        let limits = Limits { max_stanza_bytes: 1000, max_depth: 8 };
        let mut framer = StreamFramer::new(limits);
        let body = vec![b'a'; 5000];
        let err = feed_all(&mut framer, &[HEADER, b"<message><body>", &body]).expect_err("too big");
        assert_eq!(err, FramerError::StanzaTooLarge(1000));
        assert_eq!(err.condition(), "policy-violation");
    }

    #[test]
    fn many_small_stanzas_do_not_add_up_to_the_limit() {
        let limits = Limits { max_stanza_bytes: 200, max_depth: 8 };
        let mut framer = StreamFramer::new(limits);
        let mut chunks: Vec<&[u8]> = vec![HEADER];
        for _ in 0..100 {
            chunks.push(b"<presence/> ");
        }
        let events = feed_all(&mut framer, &chunks).expect("each stanza is small");
        assert_eq!(events.len(), 101);
    }

    #[test]
    fn rfc6120_4_9_3_13_text_before_the_header_is_refused_at_once() {
        for bad in [&b"hello world"[..], b"\xff\xfe\xfd", b"  \x01<stream>"] {
            let mut framer = StreamFramer::new(Limits::default());
            let err = feed_all(&mut framer, &[bad]).expect_err("refused");
            assert_eq!(err.condition(), "not-well-formed", "{bad:?}");
        }
        let mut framer = StreamFramer::new(Limits::default());
        assert!(feed_all(&mut framer, &[b"  "]).is_ok(), "whitespace alone waits for more");
    }

    #[test]
    fn rfc6120_4_9_3_12_oversized_stream_header_is_policy_violation() {
        let limits = Limits { max_stanza_bytes: 2000, max_depth: 8 };
        let mut framer = StreamFramer::new(limits);
        let mut header = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'".to_vec();
        for i in 0..500 {
            header.extend_from_slice(format!(" a{i}='b'").as_bytes());
        }
        let err = feed_all(&mut framer, &[&header]).expect_err("too big");
        assert_eq!(err.condition(), "policy-violation");
    }

    #[test]
    fn deep_nesting_is_policy_violation() {
        let limits = Limits { max_stanza_bytes: 100_000, max_depth: 4 };
        let mut framer = StreamFramer::new(limits);
        let err = feed_all(&mut framer, &[HEADER, b"<a><b><c><d><e>"]).expect_err("too deep");
        assert_eq!(err.condition(), "policy-violation");
    }

    #[test]
    fn rfc6120_4_9_3_10_wrong_stream_namespace() {
        let mut framer = StreamFramer::new(Limits::default());
        let err = feed_all(&mut framer, &[b"<stream:stream xmlns:stream='urn:wrong'>"]).expect_err("bad ns");
        assert_eq!(err.condition(), "invalid-namespace");
    }

    #[test]
    fn malformed_xml_is_not_well_formed_and_stays_failed() {
        let mut framer = StreamFramer::new(Limits::default());
        let err = feed_all(&mut framer, &[HEADER, b"<message></iq>"]).expect_err("mismatch");
        assert_eq!(err.condition(), "not-well-formed");
        assert!(feed_all(&mut framer, &[b"<presence/>"]).is_err());
    }

    #[test]
    fn rfc6120_4_2_stanzas_split_across_reads_at_every_boundary_kind() {
        // The framer gives back the lexer's buffers whenever it is between stanzas; whatever was
        // pending then (whitespace, half a tag, an entity) must carry over to the next read.
        let stanzas = b"<message to='a@b'><body>x &amp; &#x41;y</body></message> \n<presence/><iq type='get' id='&lt;1'/>";
        let mut doc = HEADER.to_vec();
        doc.extend_from_slice(stanzas);
        let whole = feed_all(&mut StreamFramer::new(Limits::default()), &[&doc]).expect("valid stream");
        for split in 1..doc.len() {
            let (a, b) = doc.split_at(split);
            let parts = feed_all(&mut StreamFramer::new(Limits::default()), &[a, b]).expect("valid stream");
            assert_eq!(format!("{parts:?}"), format!("{whole:?}"), "split at {split}");
        }
        assert_eq!(whole.len(), 4);
    }

    #[test]
    fn rfc6120_4_9_3_12_limit_still_counts_a_stanza_fed_in_pieces() {
        let limits = Limits { max_stanza_bytes: 1000, max_depth: 8 };
        let mut framer = StreamFramer::new(limits);
        let mut out = Vec::new();
        framer.feed(HEADER, &mut out).expect("header");
        framer.feed(b"<presence/>", &mut out).expect("small stanza");
        framer.feed(b"<message><body>", &mut out).expect("start");
        let mut err = None;
        for _ in 0..20 {
            if let Err(e) = framer.feed(&[b'a'; 100], &mut out) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(FramerError::StanzaTooLarge(1000)));
    }

    #[test]
    fn reset_accepts_a_new_header() {
        let mut framer = StreamFramer::new(Limits::default());
        feed_all(&mut framer, &[HEADER, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"]).expect("ok");
        framer.reset();
        let events = feed_all(&mut framer, &[HEADER]).expect("restart");
        assert!(matches!(events[0], StreamEvent::Open(_)));
    }
}
