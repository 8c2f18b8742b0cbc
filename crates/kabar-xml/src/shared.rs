//! One stanza serialised once for many recipients that differ only in `to` (a MUC room's
//! fan-out). Every recipient's copy is the shared bytes with ` to="…"` spliced in after the element
//! name, so the per-recipient cost is a memcpy instead of a tree clone and a serialisation.

use bytes::{BufMut, Bytes, BytesMut};
use minidom::Element;
use rxml::writer::TrackNamespace;
use rxml::{Encoder, Namespace};

use crate::writer::{nc, write_element};
use crate::{WriteError, NS_STREAMS};

/// See the module comment. Built from an element without `to`.
#[derive(Debug)]
pub struct SharedEncoding {
    ns: String,
    /// As a child of a stream whose default namespace is `ns` (TCP/TLS streams).
    in_stream: Bytes,
    /// On its own, declaring its namespace (RFC 7395 WebSocket and XEP-0206 BOSH frames).
    standalone: Bytes,
    /// `<` + the element name: where ` to="…"` goes in both encodings.
    head: usize,
}

impl SharedEncoding {
    /// Serialises `el` (which must not carry `to`: each recipient's is added) both ways.
    pub fn new(el: &Element) -> Result<SharedEncoding, WriteError> {
        if el.attr("to").is_some() {
            return Err(WriteError::new("a shared stanza carries no `to` of its own"));
        }
        let ns = el.ns();
        let mut stream_enc = Encoder::new();
        stream_enc.ns_tracker_mut().declare_fixed(None, Namespace::from(ns.clone()));
        stream_enc.ns_tracker_mut().declare_fixed(Some(nc("stream")?), Namespace::from(NS_STREAMS.to_string()));
        let mut in_stream = BytesMut::new();
        write_element(&mut stream_enc, el, &mut in_stream, None).map_err(WriteError::new)?;
        let mut standalone = BytesMut::new();
        write_element(&mut Encoder::new(), el, &mut standalone, None).map_err(WriteError::new)?;
        let head = 1 + el.name().len();
        // Splicing after `<name` is only right when the encoder wrote the name unprefixed.
        for bytes in [&in_stream, &standalone] {
            let starts = bytes.get(..head).is_some_and(|h| h[0] == b'<' && &h[1..] == el.name().as_bytes());
            let then = bytes.get(head).copied();
            if !starts || !matches!(then, Some(b' ' | b'>' | b'/')) {
                return Err(WriteError::new("unexpected encoding of a shared stanza's start tag"));
            }
        }
        Ok(SharedEncoding { ns, in_stream: in_stream.freeze(), standalone: standalone.freeze(), head })
    }

    /// The namespace the in-stream bytes assume as the stream's default.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Appends the copy for `to` as written inside a stream whose default namespace is [`ns`].
    ///
    /// [`ns`]: SharedEncoding::ns
    pub fn write_in_stream(&self, to: &str, out: &mut BytesMut) {
        splice(&self.in_stream, self.head, to, out);
    }

    /// Appends the copy for `to` as a standalone document element.
    pub fn write_standalone(&self, to: &str, out: &mut BytesMut) {
        splice(&self.standalone, self.head, to, out);
    }

    /// Bytes held (both encodings), for sizing.
    pub fn len(&self) -> usize {
        self.in_stream.len() + self.standalone.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn splice(bytes: &Bytes, head: usize, to: &str, out: &mut BytesMut) {
    out.reserve(bytes.len() + to.len() + 8);
    out.put_slice(&bytes[..head]);
    out.put_slice(b" to=\"");
    escape_attr(to, out);
    out.put_u8(b'"');
    out.put_slice(&bytes[head..]);
}

/// Attribute value escaping for a double-quoted value; whitespace other than space is written as
/// character references so attribute-value normalisation (XML 1.0 §3.3.3) keeps it.
fn escape_attr(value: &str, out: &mut BytesMut) {
    let mut rest = value;
    while let Some(i) = rest.find(['&', '<', '>', '"', '\t', '\n', '\r']) {
        out.put_slice(&rest.as_bytes()[..i]);
        let c = rest.as_bytes()[i];
        out.put_slice(match c {
            b'&' => b"&amp;".as_slice(),
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\t' => b"&#9;",
            b'\n' => b"&#10;",
            _ => b"&#13;",
        });
        rest = &rest[i + 1..];
    }
    out.put_slice(rest.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{elem, ElementExt, HeaderAttrs, Limits, StreamEvent, StreamFramer, StreamWriter, NS_CLIENT};

    fn sample() -> Element {
        elem("message", NS_CLIENT)
            .with_attr("from", "room@conference.localhost/owner")
            .with_attr("type", "groupchat")
            .with_attr("id", "m1")
            .with_child(elem("body", NS_CLIENT).with_text("<&'\"> text"))
            .with_child(elem("stanza-id", "urn:xmpp:sid:0").with_attr("id", "s1").with_attr("by", "room@conference.localhost"))
    }

    const TRICKY_TO: &str = "reader@localhost/a&b<c\"d'e>f\tg";

    #[test]
    fn shared_copy_in_a_stream_parses_to_the_stanza_with_its_recipient() {
        let el = sample();
        let enc = SharedEncoding::new(&el).expect("encodes");
        let mut w = StreamWriter::new();
        w.open(&HeaderAttrs { content_ns: NS_CLIENT, from: Some("localhost"), to: None, id: "x", version: Some("1.0"), lang: None })
            .expect("header");
        assert!(w.shared(&enc, TRICKY_TO), "same default namespace: the shared bytes are used");
        assert!(w.shared(&enc, "other@localhost/r"));
        w.close().expect("close");
        let mut framer = StreamFramer::new(Limits::default());
        let mut out = Vec::new();
        framer.feed(&w.take(), &mut out).expect("parses");
        let got: Vec<&Element> = out.iter().filter_map(|e| if let StreamEvent::Element(e) = e { Some(e) } else { None }).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], &el.clone().with_attr("to", TRICKY_TO));
        assert_eq!(got[1], &el.with_attr("to", "other@localhost/r"));
    }

    #[test]
    fn shared_standalone_copy_parses_to_the_stanza_with_its_recipient() {
        let el = sample();
        let enc = SharedEncoding::new(&el).expect("encodes");
        let mut out = BytesMut::new();
        enc.write_standalone(TRICKY_TO, &mut out);
        let parsed = Element::from_reader(&out[..]).expect("parses");
        assert_eq!(parsed, el.with_attr("to", TRICKY_TO));
    }

    #[test]
    fn shared_bytes_are_refused_by_a_stream_of_another_namespace() {
        let enc = SharedEncoding::new(&sample()).expect("encodes");
        let mut w = StreamWriter::new();
        w.open(&HeaderAttrs { content_ns: crate::NS_COMPONENT, from: None, to: None, id: "x", version: None, lang: None })
            .expect("header");
        assert!(!w.shared(&enc, "a@b/c"), "the caller falls back to writing the element");
    }

    #[test]
    fn a_stanza_with_its_own_to_is_not_shared() {
        assert!(SharedEncoding::new(&sample().with_attr("to", "x@y")).is_err());
    }
}
