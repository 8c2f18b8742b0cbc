//! Feature modules. Each file implements one feature (named after its RFC/XEP) as a
//! [`kabar_core::Module`]; [`default_modules`] is the list the server registers, in order.
//! Modules never reach into each other's state: they share only the core's API, events and the
//! storage traits, each using its own key-value store names.

pub mod adhoc;
pub mod avatar;
pub mod blocking;
pub mod bookmarks;
pub mod carbons;
pub mod disco;
pub mod extdisco;
pub mod invite;
pub mod last;
pub mod mam;
pub mod muc;
pub mod offline;
pub mod pep;
pub mod pow;
pub mod ping;
pub mod presence;
pub mod private;
pub mod push;
pub mod register;
pub mod roster;
pub mod rostermanager;
pub mod session;
pub mod status;
pub mod upload;
pub mod vcard;
pub mod version;

use std::sync::Arc;

use kabar_core::{Config, Module};

/// The modules a server runs, in the order they see events.
pub fn default_modules(config: &Config) -> Vec<Arc<dyn Module>> {
    let _ = config;
    // XEP-0050 registry: modules below add their commands to it.
    let commands = Arc::new(adhoc::AdhocCommands::new());
    // XEP-0163 PEP: the XEP-0049 private storage (bookmarks view) and the vCard avatar mirror use it.
    let pep = Arc::new(pep::PepModule::new(&config.pep));
    vec![
        Arc::new(session::SessionModule::new()),
        Arc::new(disco::DiscoModule::new()),
        Arc::new(ping::PingModule::new()),
        Arc::new(version::VersionModule::new()),
        Arc::new(vcard::VcardModule::new().with_observer(Arc::new(avatar::VcardToAvatar::new(pep.clone())))),
        // PEP sees presence before the presence module (which handles all of it) and catches its
        // own disco#info answers in the inbound filter.
        pep.clone(),
        Arc::new(private::PrivateModule::new(pep.clone())),
        Arc::new(blocking::BlockingModule::new()),
        Arc::new(last::LastModule::new()),
        Arc::new(register::RegisterModule::with_config(&config.registration)),
        // Outage monitor: its status bot answers messages to status@<domain> (a Filter hook).
        Arc::new(status::StatusModule::new(config, &commands)),
        Arc::new(adhoc::AdhocModule::new(commands.clone())),
        Arc::new(upload::UploadModule::new(config)),
        Arc::new(extdisco::ExtDiscoModule::new(config)),
        // XEP-0045 multi-user chat at conference.<domain> (a hosted service domain).
        Arc::new(muc::MucModule::new(config)),
        // Before carbons and offline: they copy or store the message with its archive stanza-id.
        Arc::new(mam::MamModule::new()),
        Arc::new(carbons::CarbonsModule::new()),
        Arc::new(push::PushModule::new()),
        // XEP-0401 invites: pre-approves XEP-0379 subscription requests before presence sees them.
        Arc::new(invite::InviteModule::new(&commands)),
        // Last: modules above may observe presence; presence answers Handled for all of it.
        Arc::new(roster::RosterModule::new()),
        Arc::new(presence::PresenceModule::new()),
        Arc::new(offline::OfflineModule::new()),
    ]
}
