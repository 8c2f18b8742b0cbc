//! XEP-0215: External Service Discovery (`urn:xmpp:extdisco:2`) for STUN/TURN, so audio/video
//! calls (Jingle) find a relay.
//!
//! The services come from `[external_services]` (docs/CALLS.md). Both requests are IQ gets to the
//! server's domain from a local account:
//! * `<services/>` (optionally `type='turn'`, §3.1/§3.2): every configured service of that type;
//! * `<credentials><service host type [port]/></credentials>` (§3.3): the one service named,
//!   with fresh credentials; `<item-not-found/>` when there is no such service.
//!
//! Credentials follow the TURN REST API scheme (draft-uberti-behave-turn-rest-00 §2.2), which
//! coturn implements as `use-auth-secret` + `static-auth-secret`: username `<expiry unix
//! time>:<bare JID>`, password `base64(HMAC-SHA1(secret, username))`, and `expires` says when.
//! They are handed out in the `<services/>` answer too (as Prosody and ejabberd do), with
//! `restricted='1'`, so clients that never send `<credentials/>` still get through.

#![allow(clippy::result_large_err)]

use async_trait::async_trait;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use kabar_core::config::{ExternalService, ExternalServicesConfig};
use kabar_core::module::IqResult;
use kabar_core::time::{unix_now, xep0082};
use kabar_core::{Config, IqRequest, Module, Server, StanzaError};
use kabar_xml::{elem, Element, ElementExt};
use sha1::Sha1;
use tracing::warn;

pub const NS_EXTDISCO: &str = "urn:xmpp:extdisco:2";

/// TURN REST credentials for `user`, valid until `expires` (unix seconds).
pub fn turn_rest_credentials(secret: &[u8], user: &str, expires: u64) -> (String, String) {
    let username = format!("{expires}:{user}");
    // HMAC takes keys of any length; this cannot fail.
    let mut mac =
        <Hmac<Sha1> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

fn default_port(type_: &str) -> u16 {
    if type_.ends_with('s') {
        5349
    } else {
        3478
    }
}

pub struct ExtDiscoModule {
    config: ExternalServicesConfig,
    secret: Option<Vec<u8>>,
}

impl ExtDiscoModule {
    pub fn new(config: &Config) -> ExtDiscoModule {
        let ext = &config.external_services;
        let secret = match (&ext.secret, &ext.secret_file) {
            (Some(s), _) => Some(s.as_bytes().to_vec()),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(text) => text.lines().next().map(|l| l.trim().as_bytes().to_vec()).filter(|s| !s.is_empty()),
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "extdisco: cannot read the TURN secret file; TURN services get no credentials");
                    None
                }
            },
            (None, None) => None,
        };
        ExtDiscoModule { config: ext.clone(), secret }
    }

    fn gets_credentials(&self, service: &ExternalService) -> bool {
        self.secret.is_some() && service.credentials.unwrap_or(matches!(service.type_.as_str(), "turn" | "turns"))
    }

    fn service_element(&self, service: &ExternalService, user: &str, with_credentials: bool) -> Element {
        let port = service.port.unwrap_or_else(|| default_port(&service.type_));
        let mut el = elem("service", NS_EXTDISCO)
            .with_attr("host", service.host.as_str())
            .with_attr("port", port.to_string())
            .with_attr("type", service.type_.as_str());
        if let Some(t) = &service.transport {
            el.set_attr_str("transport", t.as_str());
        }
        if let Some(n) = &service.name {
            el.set_attr_str("name", n.as_str());
        }
        if self.gets_credentials(service) {
            el.set_attr_str("restricted", "1");
            if let (true, Some(secret)) = (with_credentials, &self.secret) {
                let expires = unix_now().saturating_add(self.config.credentials_ttl_secs);
                let (username, password) = turn_rest_credentials(secret, user, expires);
                el.set_attr_str("username", username);
                el.set_attr_str("password", password);
                el.set_attr_str("expires", xep0082(expires));
            }
        }
        el
    }
}

#[async_trait]
impl Module for ExtDiscoModule {
    fn name(&self) -> &'static str {
        "extdisco"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        kabar_core::Hooks::NONE
    }

    fn server_features(&self) -> Vec<&'static str> {
        if self.config.service.is_empty() {
            Vec::new()
        } else {
            vec![NS_EXTDISCO]
        }
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        if self.config.service.is_empty() {
            Vec::new()
        } else {
            vec![("services", NS_EXTDISCO), ("credentials", NS_EXTDISCO)]
        }
    }

    async fn handle_iq(&self, server: &Server, iq: &IqRequest) -> IqResult {
        let Some(payload) = iq.payload() else { return Err(StanzaError::bad_request()) };
        if iq.is_set {
            return Err(StanzaError::bad_request());
        }
        if iq.to_account.is_some() {
            return Err(StanzaError::service_unavailable());
        }
        // Relays cost bandwidth: only the server's own accounts learn them (and get credentials).
        let user = iq.from.to_bare();
        if user.domain().as_str() != server.domain || user.node().is_none() {
            return Err(StanzaError::forbidden());
        }
        match payload.name() {
            "services" => {
                let wanted = payload.attr("type");
                let mut out = elem("services", NS_EXTDISCO);
                if let Some(t) = wanted {
                    out.set_attr_str("type", t);
                }
                for s in self.config.service.iter().filter(|s| wanted.is_none_or(|t| t == s.type_)) {
                    out.append_child(self.service_element(s, user.as_str(), true));
                }
                Ok(Some(out))
            }
            _ => {
                let Some(req) = payload.children().find(|c| c.name() == "service" && c.ns() == NS_EXTDISCO) else {
                    return Err(StanzaError::bad_request().with_text("Name the service: <service host='…' type='…'/>"));
                };
                let (Some(host), Some(type_)) = (req.attr("host"), req.attr("type")) else {
                    return Err(StanzaError::bad_request().with_text("A service needs host and type"));
                };
                let port: Option<u16> = match req.attr("port") {
                    Some(p) => {
                        Some(p.trim().parse().map_err(|_| StanzaError::bad_request().with_text("Invalid port"))?)
                    }
                    None => None,
                };
                let found = self.config.service.iter().find(|s| {
                    s.host == host
                        && s.type_ == type_
                        && port.is_none_or(|p| p == s.port.unwrap_or_else(|| default_port(&s.type_)))
                        && req.attr("transport").is_none_or(|t| s.transport.as_deref().is_none_or(|st| st == t))
                });
                let Some(service) = found else { return Err(StanzaError::item_not_found()) };
                if !self.gets_credentials(service) {
                    // XEP-0215 §3.3: credentials for a service that needs none.
                    return Err(StanzaError::item_not_found().with_text("This service needs no credentials"));
                }
                Ok(Some(elem("credentials", NS_EXTDISCO).with_child(self.service_element(
                    service,
                    user.as_str(),
                    true,
                ))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TURN REST scheme with a vector computed independently:
    /// `printf '%s' '1700000000:alice@localhost' | openssl dgst -sha1 -hmac 'north' -binary | base64`.
    #[test]
    fn turn_rest_password_is_base64_hmac_sha1_of_the_username() {
        let (user, pass) = turn_rest_credentials(b"north", "alice@localhost", 1_700_000_000);
        assert_eq!(user, "1700000000:alice@localhost");
        assert_eq!(pass, OPENSSL_VECTOR);
    }

    /// RFC 2202 test case 2 for HMAC-SHA1 (key "Jefe"), the primitive underneath.
    #[test]
    fn hmac_sha1_matches_rfc2202_case_2() {
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(b"Jefe").expect("any key length");
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }

    const OPENSSL_VECTOR: &str = "ZpZzWpxGMEIfiWJAF3AWU309EHI=";
}
