//! Namespaces the core itself uses.

pub use kabar_xml::{NS_CLIENT as CLIENT, NS_COMPONENT as COMPONENT, NS_STREAMS as STREAMS};
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const DELAY: &str = "urn:xmpp:delay";
pub const CAPS: &str = "http://jabber.org/protocol/caps";
pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
pub const ROSTER_VER_FEATURE: &str = "urn:xmpp:features:rosterver";
pub const PRE_APPROVAL_FEATURE: &str = "urn:xmpp:features:pre-approval";
