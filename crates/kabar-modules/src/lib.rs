//! Feature modules. Each file implements one feature (named after its RFC/XEP) as a
//! [`kabar_core::Module`]; [`default_modules`] is the list the server registers, in order.
//! Modules never reach into each other's state: they share only the core's API, events and the
//! storage traits, each using its own key-value store names.

use std::sync::Arc;

use kabar_core::{Config, Module};

/// The modules a server runs, in the order they see events.
pub fn default_modules(config: &Config) -> Vec<Arc<dyn Module>> {
    let _ = config;
    vec![]
}
