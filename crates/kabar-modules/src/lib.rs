//! Feature modules. Each file implements one feature (named after its RFC/XEP) as a
//! [`kabar_core::Module`]; [`default_modules`] is the list the server registers, in order.
//! Modules never reach into each other's state: they share only the core's API, events and the
//! storage traits, each using its own key-value store names.

pub mod blocking;
pub mod carbons;
pub mod disco;
pub mod last;
pub mod mam;
pub mod offline;
pub mod ping;
pub mod presence;
pub mod push;
pub mod register;
pub mod roster;
pub mod rostermanager;
pub mod session;
pub mod vcard;
pub mod version;

use std::sync::Arc;

use kabar_core::{Config, Module};

/// The modules a server runs, in the order they see events.
pub fn default_modules(config: &Config) -> Vec<Arc<dyn Module>> {
    let _ = config;
    vec![
        Arc::new(session::SessionModule::new()),
        Arc::new(disco::DiscoModule::new()),
        Arc::new(ping::PingModule::new()),
        Arc::new(version::VersionModule::new()),
        Arc::new(vcard::VcardModule::new()),
        Arc::new(blocking::BlockingModule::new()),
        Arc::new(last::LastModule::new()),
        Arc::new(register::RegisterModule::new()),
        // Before carbons and offline: they copy or store the message with its archive stanza-id.
        Arc::new(mam::MamModule::new()),
        Arc::new(carbons::CarbonsModule::new()),
        Arc::new(push::PushModule::new()),
        // Last: modules above may observe presence; presence answers Handled for all of it.
        Arc::new(roster::RosterModule::new()),
        Arc::new(presence::PresenceModule::new()),
        Arc::new(offline::OfflineModule::new()),
    ]
}
