//! XEP-0199: XMPP Ping (server side).
//!
//! An `<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>` addressed to the server (§4.2
//! client-to-server ping), with no `to`, or to a local account's bare JID (which the server answers
//! on the account's behalf, RFC 6120 §10.5.3.3) gets an empty result. Pings to a full JID are routed
//! to that session by the core and never reach this module. The server's own keepalive pings to
//! idle clients are the c2s layer's business (`[ping]` in the configuration).

use async_trait::async_trait;
use kabar_core::module::IqResult;
use kabar_core::{IqRequest, Module, Server, StanzaError};

pub const NS_PING: &str = "urn:xmpp:ping";

pub struct PingModule;

impl PingModule {
    pub fn new() -> Self {
        PingModule
    }
}

impl Default for PingModule {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Module for PingModule {
    fn name(&self) -> &'static str {
        "ping"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        kabar_core::Hooks::NONE
    }

    fn server_features(&self) -> Vec<&'static str> {
        vec![NS_PING]
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        vec![("ping", NS_PING)]
    }

    async fn handle_iq(&self, _server: &Server, iq: &IqRequest) -> IqResult {
        if iq.is_set {
            // §3: a ping is always an IQ-get.
            return Err(StanzaError::bad_request());
        }
        Ok(None)
    }
}
