use bytes::BytesMut;
use minidom::{Element, Node};
use rxml::writer::{SimpleNamespaces, TrackNamespace};
use rxml::{Encoder, Item, Namespace, NcNameStr, XmlVersion};

use crate::NS_STREAMS;

/// Serialises one outgoing XML stream. Stanzas inherit the content namespace declared on the
/// header instead of repeating it, so the encoder must know the header; it exists only while bytes
/// are being produced, though: [`StreamWriter::take`] drops it and the next write rebuilds it in
/// the state the header left (an idle stream then holds no encoder and no namespace maps,
/// docs/BENCHMARKS.md, memory per idle connection).
pub struct StreamWriter {
    encoder: Option<Box<Encoder<SimpleNamespaces>>>,
    /// `</stream:stream>` was written: nothing may follow.
    ended: bool,
    buf: BytesMut,
    /// (internal namespace, namespace on the wire); the inverse of the framer's alias.
    alias: Option<(&'static str, &'static str)>,
    /// The header's default namespace, which [`SharedEncoding`](crate::SharedEncoding) bytes
    /// must match to be spliced in.
    content_ns: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot serialise XML: {0}")]
pub struct WriteError(String);

impl WriteError {
    pub(crate) fn new(why: impl Into<String>) -> WriteError {
        WriteError(why.into())
    }
}

/// Attributes of the header the server sends (RFC 6120 §4.7).
pub struct HeaderAttrs<'a> {
    pub content_ns: &'a str,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub id: &'a str,
    pub version: Option<&'a str>,
    pub lang: Option<&'a str>,
}

impl Default for StreamWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamWriter {
    pub fn new() -> Self {
        StreamWriter { encoder: None, ended: false, buf: BytesMut::new(), alias: None, content_ns: None }
    }

    /// Elements in namespace `internal` are written in namespace `wire`.
    pub fn with_namespace_alias(mut self, internal: &'static str, wire: &'static str) -> Self {
        self.alias = Some((internal, wire));
        self
    }

    /// Writes the XML declaration and the open `<stream:stream>` tag, starting a fresh stream.
    pub fn open(&mut self, h: &HeaderAttrs<'_>) -> Result<(), WriteError> {
        self.content_ns = Some(h.content_ns.to_string());
        self.ended = false;
        let mut encoder = Box::new(Encoder::new());
        declare_stream_namespaces(&mut encoder, h.content_ns)?;
        self.encoder = Some(encoder);
        self.item(Item::XmlDeclaration(XmlVersion::V1_0))?;
        self.item(Item::ElementHeadStart(Namespace::from_str(NS_STREAMS), nc("stream")?))?;
        let attrs = [("from", h.from), ("to", h.to), ("id", Some(h.id)), ("version", h.version)];
        for (name, value) in attrs {
            if let Some(value) = value {
                self.item(Item::Attribute(Namespace::none().clone(), nc(name)?, value))?;
            }
        }
        if let Some(lang) = h.lang {
            self.item(Item::Attribute(Namespace::xml().clone(), nc("lang")?, lang))?;
        }
        self.item(Item::ElementHeadEnd)
    }

    pub fn element(&mut self, el: &Element) -> Result<(), WriteError> {
        let alias = self.alias;
        let encoder = self.encoder()?;
        let mut scratch = BytesMut::new();
        // Encode into scratch first so a failure halfway leaves no partial element in the output.
        write_element(encoder, el, &mut scratch, alias).map_err(|e| {
            // The encoder's element stack may now be off; a new stream would be needed. Callers
            // only pass trees that came from the parser or were built with valid names.
            WriteError(e)
        })?;
        self.buf.extend_from_slice(&scratch);
        Ok(())
    }

    /// Writes the copy of a shared stanza for `to`, when its bytes fit this stream (same default
    /// namespace, no alias); false means the caller writes the element instead.
    pub fn shared(&mut self, enc: &crate::SharedEncoding, to: &str) -> bool {
        if self.alias.is_some() || self.content_ns.as_deref() != Some(enc.ns()) {
            return false;
        }
        enc.write_in_stream(to, &mut self.buf);
        true
    }

    /// Writes `</stream:stream>`.
    pub fn close(&mut self) -> Result<(), WriteError> {
        self.item(Item::ElementFoot)?;
        self.ended = true;
        Ok(())
    }

    /// Takes the bytes written so far, buffer and all, and drops the encoder: between writes the
    /// stream holds neither (an idle connection's memory, docs/BENCHMARKS.md).
    pub fn take(&mut self) -> BytesMut {
        self.encoder = None;
        std::mem::take(&mut self.buf)
    }

    /// The encoder, rebuilt if `take` dropped it: in the state the header left it (inside
    /// `<stream:stream>`, content and `stream` namespaces declared), or fresh before any header.
    fn encoder(&mut self) -> Result<&mut Encoder<SimpleNamespaces>, WriteError> {
        if self.ended {
            return Err(WriteError::new("the stream was already closed"));
        }
        let encoder = match self.encoder.take() {
            Some(encoder) => encoder,
            None => {
                let mut encoder = Box::new(Encoder::new());
                if let Some(content_ns) = &self.content_ns {
                    declare_stream_namespaces(&mut encoder, content_ns)?;
                    // The header again, into a buffer that is thrown away: only the encoder's
                    // state (the open stream element) is wanted.
                    let mut replay = BytesMut::new();
                    let err = |e: rxml::Error| WriteError(e.to_string());
                    encoder.encode(Item::ElementHeadStart(Namespace::from_str(NS_STREAMS), nc("stream")?), &mut replay).map_err(err)?;
                    encoder.encode(Item::ElementHeadEnd, &mut replay).map_err(err)?;
                }
                encoder
            }
        };
        Ok(self.encoder.insert(encoder))
    }

    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    fn item(&mut self, item: Item<'_>) -> Result<(), WriteError> {
        let encoder = self.encoder()?;
        let mut out = BytesMut::new();
        encoder.encode(item, &mut out).map_err(|e| WriteError(e.to_string()))?;
        self.buf.extend_from_slice(&out);
        Ok(())
    }
}

/// The header's declarations: `content_ns` as the default namespace, `stream` for the streams one.
fn declare_stream_namespaces(encoder: &mut Encoder<SimpleNamespaces>, content_ns: &str) -> Result<(), WriteError> {
    let tracker = encoder.ns_tracker_mut();
    tracker.declare_fixed(None, Namespace::from(content_ns.to_string()));
    tracker.declare_fixed(Some(nc("stream")?), Namespace::from_str(NS_STREAMS));
    Ok(())
}

pub(crate) fn nc(name: &str) -> Result<&NcNameStr, WriteError> {
    <&NcNameStr>::try_from(name).map_err(|e| WriteError(format!("{name}: {e}")))
}

pub(crate) fn write_element(
    enc: &mut Encoder<SimpleNamespaces>,
    el: &Element,
    out: &mut BytesMut,
    alias: Option<(&'static str, &'static str)>,
) -> Result<(), String> {
    let name = nc(el.name()).map_err(|e| e.0)?;
    let err = |e: rxml::Error| e.to_string();
    let ns = match alias {
        Some((internal, wire)) if el.ns() == internal => wire.to_string(),
        _ => el.ns(),
    };
    enc.encode(Item::ElementHeadStart(Namespace::from(ns), name), out).map_err(err)?;
    for ((ns, key), value) in el.attrs() {
        enc.encode(Item::Attribute(ns.clone(), key, value), out).map_err(err)?;
    }
    let mut nodes = el.nodes().peekable();
    if nodes.peek().is_some() {
        enc.encode(Item::ElementHeadEnd, out).map_err(err)?;
        for node in nodes {
            match node {
                Node::Element(child) => write_element(enc, child, out, alias)?,
                Node::Text(text) => enc.encode(Item::Text(text), out).map_err(err)?,
            }
        }
    }
    enc.encode(Item::ElementFoot, out).map_err(err)
}

/// Serialises a single element on its own (declaring its namespace), e.g. for storage.
pub fn element_to_bytes(el: &Element) -> Result<Vec<u8>, WriteError> {
    element_to_bytes_with_prefixes(el, &[])
}

/// Like [`element_to_bytes`], declaring `(prefix, namespace)` pairs on the root so attributes in
/// those namespaces use the conventional prefix (e.g. BOSH's `xmpp:version`).
pub fn element_to_bytes_with_prefixes(el: &Element, prefixes: &[(&str, &str)]) -> Result<Vec<u8>, WriteError> {
    let mut enc = Encoder::new();
    for (prefix, ns) in prefixes {
        let prefix = nc(prefix)?;
        if prefix != "xml" && prefix != "xmlns" {
            enc.ns_tracker_mut().declare_fixed(Some(prefix), Namespace::from(ns.to_string()));
        }
    }
    let mut out = BytesMut::new();
    write_element(&mut enc, el, &mut out, None).map_err(WriteError)?;
    Ok(out.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ElementExt, Limits, StreamEvent, StreamFramer, NS_CLIENT};

    #[test]
    fn header_and_stanza_round_trip_through_the_framer() {
        let mut w = StreamWriter::new();
        w.open(&HeaderAttrs {
            content_ns: NS_CLIENT,
            from: Some("localhost"),
            to: None,
            id: "abc",
            version: Some("1.0"),
            lang: Some("en"),
        })
        .expect("header");
        let msg = crate::elem("message", NS_CLIENT)
            .with_attr("to", "a@b")
            .with_child(crate::elem("body", NS_CLIENT).with_text("<&'\">"));
        w.element(&msg).expect("stanza");
        w.close().expect("close");
        let bytes = w.take();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("<message to=\"a@b\">") || text.contains("<message to='a@b'>"), "{text}");

        let mut framer = StreamFramer::new(Limits::default());
        let mut out = Vec::new();
        framer.feed(&bytes, &mut out).expect("parse back");
        assert!(matches!(out[0], StreamEvent::Open(_)));
        match &out[1] {
            StreamEvent::Element(el) => assert_eq!(el, &msg),
            other => panic!("{other:?}"),
        }
        assert!(matches!(out[2], StreamEvent::Close));
    }

    fn header() -> HeaderAttrs<'static> {
        HeaderAttrs { content_ns: NS_CLIENT, from: Some("localhost"), to: None, id: "abc", version: Some("1.0"), lang: None }
    }

    fn stanzas() -> Vec<Element> {
        vec![
            crate::elem("message", NS_CLIENT).with_attr("to", "a@b").with_child(crate::elem("body", NS_CLIENT).with_text("hi")),
            crate::elem("iq", NS_CLIENT).with_attr("type", "get").with_child(crate::elem("ping", "urn:xmpp:ping")),
            crate::elem("r", "urn:xmpp:sm:3"),
        ]
    }

    #[test]
    fn rfc6120_4_7_stanzas_written_after_each_flush_match_one_continuous_stream() {
        // A writer that hands out its bytes (and drops its encoder) between stanzas must write
        // exactly what a writer that never flushed writes: no repeated `xmlns`, same stream end.
        let mut continuous = StreamWriter::new();
        continuous.open(&header()).expect("header");
        for el in stanzas() {
            continuous.element(&el).expect("stanza");
        }
        continuous.close().expect("close");
        let expected = continuous.take();

        let mut flushed = StreamWriter::new();
        flushed.open(&header()).expect("header");
        let mut got = flushed.take().to_vec();
        for el in stanzas() {
            flushed.element(&el).expect("stanza");
            got.extend_from_slice(&flushed.take());
        }
        flushed.close().expect("close");
        got.extend_from_slice(&flushed.take());
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&expected));
        assert!(flushed.element(&stanzas()[0]).is_err(), "nothing after </stream:stream>");
    }

    #[test]
    fn xep0114_component_alias_survives_a_flush() {
        let mut w = StreamWriter::new().with_namespace_alias(NS_CLIENT, "jabber:component:accept");
        w.open(&HeaderAttrs { content_ns: "jabber:component:accept", ..header() }).expect("header");
        w.take();
        w.element(&stanzas()[0]).expect("stanza");
        let text = String::from_utf8_lossy(&w.take()).into_owned();
        assert!(text.starts_with("<message") && !text.contains("xmlns"), "inherits the header's namespace: {text}");
    }
}
