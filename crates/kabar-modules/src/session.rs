//! RFC 3921 §3 legacy session establishment.
//!
//! RFC 6121 dropped the session step, but older clients still send
//! `<iq type='set'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>` after binding and
//! wait for the answer. The server advertises the feature as optional
//! (draft-cridland-xmpp-session-01 §2.1) and answers the request with an empty result; nothing else
//! happens, since a bound resource is already a session in kabar.

use async_trait::async_trait;
use kabar_core::module::IqResult;
use kabar_core::{ns, IqRequest, Module, Server};
use kabar_xml::{elem, Element, ElementExt};

pub struct SessionModule;

impl SessionModule {
    pub fn new() -> Self {
        SessionModule
    }
}

impl Default for SessionModule {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Module for SessionModule {
    fn name(&self) -> &'static str {
        "session"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        kabar_core::Hooks::NONE
    }

    fn stream_features(&self) -> Vec<Element> {
        vec![elem("session", ns::SESSION).with_child(elem("optional", ns::SESSION))]
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        vec![("session", ns::SESSION)]
    }

    async fn handle_iq(&self, _server: &Server, _iq: &IqRequest) -> IqResult {
        // RFC 3921 §3 defines only the set; a get is answered the same way, since refusing it
        // would help nobody.
        Ok(None)
    }
}
