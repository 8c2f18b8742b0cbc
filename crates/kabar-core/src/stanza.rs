//! Stanza helpers: kinds, addressing, and RFC 6120 §8.3 stanza errors.

use jid::Jid;
use kabar_xml::{elem, Element, ElementExt};

use crate::ns;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Message,
    Presence,
    Iq,
}

impl Kind {
    pub fn of(el: &Element) -> Option<Kind> {
        if el.ns() != ns::CLIENT {
            return None;
        }
        match el.name() {
            "message" => Some(Kind::Message),
            "presence" => Some(Kind::Presence),
            "iq" => Some(Kind::Iq),
            _ => None,
        }
    }
}

/// RFC 6120 §8.3.2 error types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl ErrorType {
    fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

/// A stanza error to send back (RFC 6120 §8.3.3 conditions).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{condition} ({kind:?})")]
pub struct StanzaError {
    pub kind: ErrorType,
    pub condition: &'static str,
    pub text: Option<String>,
    /// An application-specific condition element, e.g. XEP-0191's <blocked/>.
    pub app: Option<Element>,
}

impl StanzaError {
    pub fn new(kind: ErrorType, condition: &'static str) -> Self {
        StanzaError { kind, condition, text: None, app: None }
    }
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }
    pub fn with_app(mut self, app: Element) -> Self {
        self.app = Some(app);
        self
    }
    pub fn service_unavailable() -> Self {
        Self::new(ErrorType::Cancel, "service-unavailable")
    }
    pub fn feature_not_implemented() -> Self {
        Self::new(ErrorType::Cancel, "feature-not-implemented")
    }
    pub fn bad_request() -> Self {
        Self::new(ErrorType::Modify, "bad-request")
    }
    pub fn not_allowed() -> Self {
        Self::new(ErrorType::Cancel, "not-allowed")
    }
    pub fn forbidden() -> Self {
        Self::new(ErrorType::Auth, "forbidden")
    }
    pub fn item_not_found() -> Self {
        Self::new(ErrorType::Cancel, "item-not-found")
    }
    pub fn jid_malformed() -> Self {
        Self::new(ErrorType::Modify, "jid-malformed")
    }
    pub fn internal_server_error() -> Self {
        Self::new(ErrorType::Cancel, "internal-server-error")
    }
    pub fn not_acceptable() -> Self {
        Self::new(ErrorType::Modify, "not-acceptable")
    }
    pub fn conflict() -> Self {
        Self::new(ErrorType::Cancel, "conflict")
    }
    pub fn remote_server_not_found() -> Self {
        Self::new(ErrorType::Cancel, "remote-server-not-found")
    }
    pub fn resource_constraint() -> Self {
        Self::new(ErrorType::Wait, "resource-constraint")
    }
    pub fn policy_violation() -> Self {
        Self::new(ErrorType::Modify, "policy-violation")
    }

    pub fn to_element(&self) -> Element {
        let mut error = elem("error", ns::CLIENT)
            .with_attr("type", self.kind.as_str())
            .with_child(elem(self.condition, ns::STANZAS));
        if let Some(text) = &self.text {
            error.append_child(elem("text", ns::STANZAS).with_text(text.clone()));
        }
        if let Some(app) = &self.app {
            error.append_child(app.clone());
        }
        error
    }
}

pub fn stanza_type(el: &Element) -> Option<&str> {
    el.attr("type")
}

/// The `to` address; `Ok(None)` when absent, `Err` when malformed.
pub fn to_jid(el: &Element) -> Result<Option<Jid>, StanzaError> {
    parse_addr(el.attr("to"))
}

pub fn from_jid(el: &Element) -> Result<Option<Jid>, StanzaError> {
    parse_addr(el.attr("from"))
}

fn parse_addr(value: Option<&str>) -> Result<Option<Jid>, StanzaError> {
    match value {
        None => Ok(None),
        Some(s) => parse_jid(s).map(Some).map_err(|_| StanzaError::jid_malformed()),
    }
}

/// [`parse_jid`] for a bare JID (a resource is an error).
pub fn parse_bare(s: &str) -> Result<jid::BareJid, jid::Error> {
    parse_jid(s)?.try_into_full().err().ok_or(jid::Error::ResourceInBareJid)
}

/// Parses and normalises a JID to a fixed point. The `jid` crate's stringprep is not idempotent
/// for some characters (found by fuzzing: U+03F9 becomes U+03A3, which a second pass lowercases to
/// U+03C3), so an address the server stamped could compare unequal to itself once re-parsed.
/// Re-parsing until stable keeps every address the server stores or compares canonical.
pub fn parse_jid(s: &str) -> Result<Jid, jid::Error> {
    let mut jid = Jid::new(s)?;
    for _ in 0..3 {
        let again = Jid::new(jid.as_str())?;
        if again == jid {
            break;
        }
        jid = again;
    }
    Ok(jid)
}

/// The error reply to `stanza`, or `None` when none may be sent (never answer an error with an
/// error, RFC 6120 §8.3.1).
pub fn error_reply(stanza: &Element, err: &StanzaError) -> Option<Element> {
    if stanza_type(stanza) == Some("error") {
        return None;
    }
    let mut reply = elem(stanza.name(), ns::CLIENT).with_attr("type", "error");
    if let Some(id) = stanza.attr("id") {
        reply.set_attr_str("id", id);
    }
    if let Some(from) = stanza.attr("from") {
        reply.set_attr_str("to", from);
    }
    if let Some(to) = stanza.attr("to") {
        reply.set_attr_str("from", to);
    }
    // Echo the payload of messages and presence so the sender can tell what failed. IQ payloads
    // are not echoed: they may carry secrets (XEP-0077 passwords) or be large (vCards).
    if stanza.name() != "iq" {
        for child in stanza.children() {
            if child.name() != "error" {
                reply.append_child(child.clone());
            }
        }
    }
    reply.append_child(err.to_element());
    Some(reply)
}

/// An `iq type='result'` answering `iq`, with an optional payload.
pub fn iq_result(iq: &Element, payload: Option<Element>) -> Element {
    let mut reply = elem("iq", ns::CLIENT).with_attr("type", "result");
    if let Some(id) = iq.attr("id") {
        reply.set_attr_str("id", id);
    }
    if let Some(from) = iq.attr("from") {
        reply.set_attr_str("to", from);
    }
    if let Some(to) = iq.attr("to") {
        reply.set_attr_str("from", to);
    }
    if let Some(payload) = payload {
        reply.append_child(payload);
    }
    reply
}

/// The first child element, the payload of an IQ.
pub fn payload(el: &Element) -> Option<&Element> {
    el.children().next()
}

/// XEP-0203 delay element.
pub fn delay(from: &str, unix_secs: u64) -> Element {
    elem("delay", ns::DELAY).with_attr("from", from).with_attr("stamp", crate::time::xep0082(unix_secs))
}
