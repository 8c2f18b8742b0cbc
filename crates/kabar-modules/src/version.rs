//! XEP-0092: Software Version, for the server itself.
//!
//! Answers `jabber:iq:version` gets addressed to the server with the name `kabar` and the crate
//! version. The operating system (`<os/>`, optional in §2) is deliberately not disclosed: it helps
//! attackers more than users. Queries to an account's bare JID are not the server's to answer
//! (a client answers for itself at its full JID), so they get <service-unavailable/>.

use async_trait::async_trait;
use kabar_core::module::IqResult;
use kabar_core::{IqRequest, Module, Server, StanzaError};
use kabar_xml::{elem, ElementExt};

pub const NS_VERSION: &str = "jabber:iq:version";

/// The software name reported to XEP-0092 queries.
pub const SOFTWARE_NAME: &str = "kabar";
/// The version reported, the `kabar-modules` crate version (all crates share the workspace version).
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct VersionModule;

impl VersionModule {
    pub fn new() -> Self {
        VersionModule
    }
}

impl Default for VersionModule {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Module for VersionModule {
    fn name(&self) -> &'static str {
        "version"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        kabar_core::Hooks::NONE
    }

    fn server_features(&self) -> Vec<&'static str> {
        vec![NS_VERSION]
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        vec![("query", NS_VERSION)]
    }

    async fn handle_iq(&self, _server: &Server, iq: &IqRequest) -> IqResult {
        if iq.to_account.is_some() {
            return Err(StanzaError::service_unavailable());
        }
        if iq.is_set {
            return Err(StanzaError::not_allowed());
        }
        Ok(Some(
            elem("query", NS_VERSION)
                .with_child(elem("name", NS_VERSION).with_text(SOFTWARE_NAME))
                .with_child(elem("version", NS_VERSION).with_text(SOFTWARE_VERSION)),
        ))
    }
}
