//! The small core every kabar feature hangs off: configuration, the session directory, stanza
//! routing and the module registry. Feature modules (roster, presence, disco …) live in
//! `kabar-modules` and reach the core only through [`Server`] and the [`Module`] trait.

pub mod accounts;
pub mod admission;
pub mod cluster;
pub mod config;
pub mod metrics;
pub mod module;
pub mod monitor_config;
pub mod ns;
pub mod ratelimit;
pub mod registration;
pub mod server;
pub mod sessions;
pub mod stanza;
pub mod time;

pub use config::Config;
pub use jid::{BareJid, FullJid, Jid};
pub use module::{Event, Flow, IqRequest, Module};
pub use module::Hooks;
pub use server::Server;
pub use sessions::{Outbound, SessionDirectory, SessionInfo};
pub use stanza::{ErrorType, StanzaError};
