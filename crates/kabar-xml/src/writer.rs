use bytes::BytesMut;
use minidom::{Element, Node};
use rxml::writer::{SimpleNamespaces, TrackNamespace};
use rxml::{Encoder, Item, Namespace, NcNameStr, XmlVersion};

use crate::NS_STREAMS;

/// Serialises one outgoing XML stream. One encoder lives for the whole stream so stanzas inherit
/// the content namespace declared on the header instead of repeating it.
pub struct StreamWriter {
    encoder: Encoder<SimpleNamespaces>,
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
        StreamWriter { encoder: Encoder::new(), buf: BytesMut::new(), alias: None, content_ns: None }
    }

    /// Elements in namespace `internal` are written in namespace `wire`.
    pub fn with_namespace_alias(mut self, internal: &'static str, wire: &'static str) -> Self {
        self.alias = Some((internal, wire));
        self
    }

    /// Writes the XML declaration and the open `<stream:stream>` tag, starting a fresh stream.
    pub fn open(&mut self, h: &HeaderAttrs<'_>) -> Result<(), WriteError> {
        self.encoder = Encoder::new();
        self.content_ns = Some(h.content_ns.to_string());
        let content_ns = Namespace::from(h.content_ns.to_string());
        let stream_prefix = nc("stream")?;
        self.encoder.ns_tracker_mut().declare_fixed(None, content_ns);
        self.encoder
            .ns_tracker_mut()
            .declare_fixed(Some(stream_prefix), Namespace::from(NS_STREAMS.to_string()));
        self.item(Item::XmlDeclaration(XmlVersion::V1_0))?;
        self.item(Item::ElementHeadStart(Namespace::from(NS_STREAMS.to_string()), nc("stream")?))?;
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
        let mut scratch = BytesMut::new();
        // Encode into scratch first so a failure halfway leaves no partial element in the output.
        write_element(&mut self.encoder, el, &mut scratch, self.alias).map_err(|e| {
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
        self.item(Item::ElementFoot)
    }

    /// Takes the bytes written so far, buffer and all: between writes the stream holds no buffer
    /// (an idle connection's memory, docs/BENCHMARKS.md).
    pub fn take(&mut self) -> BytesMut {
        std::mem::take(&mut self.buf)
    }

    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    fn item(&mut self, item: Item<'_>) -> Result<(), WriteError> {
        self.encoder.encode(item, &mut self.buf).map_err(|e| WriteError(e.to_string()))
    }
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
}
