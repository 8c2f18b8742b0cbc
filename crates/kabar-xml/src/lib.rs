//! Sans-IO XMPP stream framing (RFC 6120 §4, §11).
//!
//! [`StreamFramer`] turns bytes from any transport into [`StreamEvent`]s: the stream header, one
//! [`minidom::Element`] per top-level child (stanza or nonza), and the stream end. It enforces the
//! limits rxml leaves to its users (stanza size, nesting depth) and classifies every failure as the
//! RFC 6120 §4.9.3 stream error condition to answer with. [`StreamWriter`] is the outgoing side.
//!
//! The tree of a stanza is kept whole (all children and attributes, including ones the server does
//! not understand), so a routed stanza leaves exactly as it came, apart from what the server must
//! stamp (`from`).

mod framer;
mod shared;
mod writer;

pub use framer::{FramerError, Limits, StreamEvent, StreamFramer, StreamHeader};
pub use shared::SharedEncoding;
pub use minidom::Element;
pub use writer::{element_to_bytes, element_to_bytes_with_prefixes, HeaderAttrs, StreamWriter, WriteError};

/// `http://etherx.jabber.org/streams`
pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
/// Content namespace of client-to-server streams.
pub const NS_CLIENT: &str = "jabber:client";
/// Content namespace of XEP-0114 component streams.
pub const NS_COMPONENT: &str = "jabber:component:accept";

mod build;
pub use build::{elem, ElementExt};

/// Fuzzing entry point shared by the `xml_framer` fuzz target and the corpus replay test.
#[doc(hidden)]
pub mod fuzz {
    use crate::{Limits, StreamEvent, StreamFramer, StreamWriter};

    /// Feeds `data` to a framer in chunks whose sizes come from the first byte, then writes every
    /// stanza it produced back out (the writer must accept whatever the framer accepts).
    pub fn exercise(data: &[u8]) {
        let Some((&split, rest)) = data.split_first() else { return };
        let chunk = usize::from(split % 64) + 1;
        let mut framer = StreamFramer::new(Limits { max_stanza_bytes: 4096, max_depth: 16 });
        let mut writer = StreamWriter::new();
        let mut out = Vec::new();
        for piece in rest.chunks(chunk) {
            if framer.feed(piece, &mut out).is_err() {
                break;
            }
        }
        for ev in out {
            if let StreamEvent::Element(el) = ev {
                let _ = writer.element(&el);
            }
        }
    }
}
