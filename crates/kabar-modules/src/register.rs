//! XEP-0077: In-Band Registration.
//!
//! After authentication (the [`Module`], for the sender's own account only):
//! * get (§3.1, "already registered"): `<query><registered/><username>…</username></query>`;
//! * set with `<remove/>` as the only child (§3.2): deletes the account with
//!   [`accounts::delete`], tells every module ([`Event::AccountDeleted`]), answers the request and
//!   then closes every session of the account with a `<not-authorized/>` stream error;
//! * set with `<username/>` (optional; must name the own account, else `<forbidden/>`) and
//!   `<password/>` (§3.3): changes the password. An empty or too short password is refused with
//!   `<not-acceptable/>` and the old one kept.
//!
//! Before authentication the c2s layer calls [`handle_pre_auth`] for `jabber:iq:register` IQs and
//! [`pre_auth_feature`] for the stream feature (section "Stream Feature").
//!
//! # Anti-abuse policy for account creation
//! * **Modes** (docs/REGISTRATION.md), [`Server::registration`], starting as `registration.mode`
//!   (or `open`/`invite-only` from `registration.enabled`, off by default) and switched at runtime
//!   by the admin API ([`set_mode`]):
//!   - `open`: the stream feature is offered and anyone may register;
//!   - `proof-of-work`: the registration form also carries a `urn:kabar:pow:0` challenge
//!     ([`crate::pow`]) in an XEP-0004 form (§5 extensibility); a submission without a solved
//!     challenge gets `<not-allowed/>` with a text saying so, a wrong, expired, foreign or reused
//!     one `<not-acceptable/>`. The check runs before any store access;
//!   - `invite-only` and `closed`: requests without an invite fail with `<service-unavailable/>`
//!     and the stream feature is hidden (invites are `invite.rs`'s; `closed` refuses them too).
//! * **Per-IP rate**: at most `registration.per_ip_per_hour` successful registrations per client
//!   address per hour (token bucket [`Server::registrations_by_ip`], refilled smoothly). IPv6
//!   clients are counted per /64, since one host usually owns a whole /64; IPv4-mapped IPv6
//!   addresses count as their IPv4 address. Over the limit, requests fail with
//!   `<policy-violation/>` of type `wait` (a local policy the client may retry later), checked
//!   before the username is looked up so the limit also slows down probing for taken names.
//! * **Reserved names**: `registration.reserved_usernames`, compared case-insensitively with the
//!   normalised (RFC 7622 nodeprep'd) username, are refused with `<conflict/>`, exactly like a
//!   taken name.
//! * **Minimum password length**: `registration.min_password_length` characters, at registration
//!   and at password change (`<not-acceptable/>`). Passwords are also capped at
//!   [`MAX_PASSWORD_BYTES`].
//! * Usernames must be valid localparts (no `@` or `/`, valid after normalisation); anything else
//!   is `<not-acceptable/>`. A taken name is `<conflict/>` (§3.1). Error replies never echo the
//!   submitted form (§3.3 advises against returning passwords).

// `StanzaError` (kabar-core's IQ error type) is what every helper here returns; boxing it would
// only add noise.
#![allow(clippy::result_large_err)]

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use jid::BareJid;
use kabar_core::accounts::{self, AccountError};
use kabar_core::admission::Work;
use kabar_core::config::RegistrationConfig;
use kabar_core::module::IqResult;
use kabar_core::registration::RegistrationMode;
use kabar_core::sessions::Outbound;
use kabar_core::stanza;
use kabar_core::{ns, ErrorType, Event, IqRequest, Module, Server, StanzaError};
use kabar_xml::{elem, Element, ElementExt};
use tracing::{info, warn};

use crate::pow::{PowError, PowGate, NS_POW};

pub const NS_REGISTER: &str = "jabber:iq:register";
/// Longest password accepted, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
const NS_DATA: &str = "jabber:x:data";
/// Form fields of the proof-of-work extension (docs/REGISTRATION.md).
pub const POW_CHALLENGE: &str = "urn:kabar:pow:0#challenge";
pub const POW_DIFFICULTY: &str = "urn:kabar:pow:0#difficulty";
pub const POW_ALGORITHM: &str = "urn:kabar:pow:0#algorithm";
pub const POW_NONCE: &str = "urn:kabar:pow:0#nonce";

pub struct RegisterModule {
    /// Proof-of-work challenges (`registration.mode = "proof-of-work"`).
    pow: PowGate,
}

impl RegisterModule {
    pub fn new() -> Self {
        Self::with_config(&RegistrationConfig::default())
    }

    pub fn with_config(config: &RegistrationConfig) -> Self {
        RegisterModule { pow: PowGate::new(config.pow_challenge_ttl_secs, config.pow_max_remembered) }
    }

    /// Used proof-of-work challenges remembered now (for `/metrics`).
    pub fn pow_remembered(&self) -> usize {
        self.pow.remembered()
    }
}

/// The register module's proof-of-work gate, when the module is registered.
fn pow_gate(server: &Server) -> Option<&PowGate> {
    server.modules().iter().find_map(|m| (m.as_ref() as &dyn std::any::Any).downcast_ref::<RegisterModule>()).map(|m| &m.pow)
}

/// Switches the registration mode at runtime (admin API) and keeps `registration_enabled`, which
/// the stream feature and older readers use, in step. Returns the previous mode.
pub fn set_mode(server: &Server, mode: RegistrationMode) -> RegistrationMode {
    let before = server.registration.swap_mode(mode);
    server.registration_enabled.store(mode.is_public(), Ordering::Relaxed);
    before
}

/// The older on/off switch (`PUT /registration {enabled}`): "on" opens registration unless it is
/// already public (proof of work stays on), "off" leaves only invites unless it is already closed.
pub fn set_public(server: &Server, enabled: bool) -> RegistrationMode {
    let current = server.registration.mode();
    let mode = match (enabled, current.is_public()) {
        (true, false) => RegistrationMode::Open,
        (false, true) => RegistrationMode::InviteOnly,
        _ => current,
    };
    set_mode(server, mode);
    mode
}

impl Default for RegisterModule {
    fn default() -> Self {
        Self::new()
    }
}

fn child_text(query: &Element, name: &str) -> Option<String> {
    query.get_child(name, NS_REGISTER).map(|c| c.text())
}

fn check_password(server: &Server, password: &str) -> Result<(), StanzaError> {
    let min = server.config.registration.min_password_length;
    if password.chars().count() < min.max(1) {
        return Err(
            StanzaError::not_acceptable().with_text(format!("The password must have at least {min} characters"))
        );
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(StanzaError::not_acceptable()
            .with_text(format!("The password must have at most {MAX_PASSWORD_BYTES} bytes")));
    }
    Ok(())
}

fn account_error(e: AccountError) -> StanzaError {
    match e {
        AccountError::Exists => StanzaError::conflict(),
        AccountError::NotFound => StanzaError::item_not_found(),
        AccountError::BadPassword(msg) => StanzaError::not_acceptable().with_text(msg),
        AccountError::InvalidJid(_) | AccountError::WrongDomain(..) => {
            StanzaError::not_acceptable().with_text("The requested username is invalid")
        }
        AccountError::Store(e) => {
            warn!(error = %e, "account store failure during registration");
            StanzaError::internal_server_error()
        }
    }
}

/// The key the registration limiter counts under: the address, or its /64 for IPv6.
pub fn limiter_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The `<register xmlns='http://jabber.org/features/iq-register'/>` stream feature (section
/// "Stream Feature"), offered before authentication only when registration is enabled.
pub fn pre_auth_feature(server: &Server) -> Option<Element> {
    server.registration_enabled.load(Ordering::Relaxed).then(|| elem("register", ns::REGISTER_FEATURE))
}

/// Answers a `jabber:iq:register` IQ received before authentication (§3.1) and returns the reply
/// to write to the stream. `client_ip` is the peer address of the connection, for the per-IP limit.
/// See the module documentation for the policy.
pub async fn handle_pre_auth(server: &Server, client_ip: IpAddr, iq: &Element) -> Element {
    let mut reply = elem("iq", ns::CLIENT);
    if let Some(id) = iq.attr("id") {
        reply.set_attr_str("id", id);
    }
    match pre_auth(server, client_ip, iq).await {
        Ok(payload) => {
            reply.set_attr_str("type", "result");
            if let Some(p) = payload {
                reply.append_child(p);
            }
        }
        Err(err) => {
            reply.set_attr_str("type", "error");
            reply.append_child(err.to_element());
        }
    }
    reply
}

async fn pre_auth(server: &Server, client_ip: IpAddr, iq: &Element) -> Result<Option<Element>, StanzaError> {
    let is_set = match (iq.name(), stanza::stanza_type(iq)) {
        ("iq", Some("get")) => false,
        ("iq", Some("set")) => true,
        _ => return Err(StanzaError::bad_request()),
    };
    let mut children = iq.children();
    let query = match (children.next(), children.next()) {
        (Some(q), None) if q.name() == "query" && q.ns() == NS_REGISTER => q,
        _ => return Err(StanzaError::service_unavailable()),
    };
    let reg = &server.config.registration;
    let pow = match server.registration.mode() {
        RegistrationMode::Open => None,
        RegistrationMode::ProofOfWork => Some(pow_gate(server).ok_or_else(|| {
            StanzaError::service_unavailable().with_text("Proof-of-work registration is not available on this server")
        })?),
        RegistrationMode::InviteOnly => {
            return Err(StanzaError::service_unavailable().with_text("Registration on this server needs an invite"))
        }
        RegistrationMode::Closed => {
            return Err(StanzaError::service_unavailable().with_text("Registration on this server is closed"))
        }
    };
    let key = limiter_key(client_ip);
    if !is_set {
        let mut form = elem("query", NS_REGISTER)
            .with_child(
                elem("instructions", NS_REGISTER)
                    .with_text("Choose a username and password to create an account on this server."),
            )
            .with_child(elem("username", NS_REGISTER))
            .with_child(elem("password", NS_REGISTER));
        if let Some(gate) = pow {
            form.append_child(pow_form(server, gate, &key));
        }
        return Ok(Some(form));
    }
    if query.has_child("remove", NS_REGISTER) {
        // Cancelling a registration needs an authenticated stream (§3.2).
        return Err(StanzaError::new(ErrorType::Auth, "not-authorized"));
    }
    let submitted = query.get_child("x", NS_DATA).filter(|x| x.attr("type") == Some("submit"));
    let field = |name: &str| submitted.and_then(|x| form_value(x, name)).or_else(|| child_text(query, name));
    let (Some(username), Some(password)) = (field("username"), field("password")) else {
        return Err(StanzaError::not_acceptable().with_text("Both a username and a password are required"));
    };
    // Checked before anything touches the store, so an unsolved flood cannot even probe names.
    let ticket = match pow {
        Some(gate) => Some((gate, check_pow(server, gate, submitted, &key)?)),
        None => None,
    };
    if username.is_empty() || username.contains(['@', '/']) {
        return Err(StanzaError::not_acceptable().with_text("The requested username is invalid"));
    }
    let jid = accounts::parse_account(&username, &server.domain).map_err(account_error)?;
    let node = jid.node().map(|n| n.as_str().to_lowercase()).unwrap_or_default();
    if reg.reserved_usernames.iter().any(|r| r.to_lowercase() == node) {
        return Err(StanzaError::conflict().with_text("The requested username is not available"));
    }
    // XEP-0445 §5: a username an invite reserves is kept for the invitee until the invite expires.
    if crate::invite::username_reserved(&server.store, &node, kabar_core::time::unix_now()).await.unwrap_or(false) {
        return Err(StanzaError::conflict().with_text("The requested username is not available"));
    }
    check_password(server, &password)?;
    // Overload: registrations are the first new work shed (RFC 6120 §8.3.3.18, type wait).
    server.admit(Work::Registration).map_err(|r| StanzaError::new(ErrorType::Wait, "resource-constraint").with_text(r.text()))?;
    let over_limit = || {
        StanzaError::new(ErrorType::Wait, "policy-violation")
            .with_text("Too many accounts were created from this address recently; try again later")
    };
    if !server.registrations_by_ip.would_allow(&key) {
        return Err(over_limit());
    }
    if server.account_exists(&jid).await {
        return Err(StanzaError::conflict());
    }
    // Used up only now: a solution spent on a taken name or a full limiter could be retried.
    if let Some((gate, ticket)) = ticket {
        gate.consume(ticket, kabar_core::time::unix_now()).map_err(|e| pow_error(server, e))?;
    }
    if !server.registrations_by_ip.allow(&key) {
        return Err(over_limit());
    }
    accounts::create(&server.store, &jid, &password).await.map_err(account_error)?;
    server.metrics.registrations.inc();
    if ticket.is_some() {
        server.registration.pow.accepted.inc();
    }
    info!(account = %jid, ip = %client_ip, proof_of_work = ticket.is_some(), "account registered in-band");
    Ok(None)
}

/// The XEP-0004 form (XEP-0077 §5 extensibility) carrying a fresh `urn:kabar:pow:0` challenge.
fn pow_form(server: &Server, gate: &PowGate, client: &str) -> Element {
    let difficulty = server.registration.pow_difficulty();
    let challenge = gate.issue(client, difficulty, kabar_core::time::unix_now());
    server.registration.pow.issued.inc();
    let field = |var: &str, kind: &str, label: Option<&str>, value: Option<&str>| {
        let mut f = elem("field", NS_DATA).with_attr("var", var).with_attr("type", kind);
        if let Some(label) = label {
            f.set_attr_str("label", label);
            // Not for the nonce: a browser form would refuse to submit with it empty, and the
            // web client's script fills it in only on submission (web/kabar-web.js).
            if var != POW_NONCE {
                f.append_child(elem("required", NS_DATA));
            }
        }
        if let Some(v) = value {
            f.append_child(elem("value", NS_DATA).with_text(v));
        }
        f
    };
    let label = format!("Proof of work: a nonce such that SHA-256(challenge \":\" nonce) starts with {difficulty} zero bits");
    elem("x", NS_DATA)
        .with_attr("type", "form")
        .with_child(elem("title", NS_DATA).with_text("Account registration"))
        .with_child(elem("instructions", NS_DATA).with_text(format!(
            "This server asks new accounts for a proof of work ({NS_POW}): choose a username and password and let your client solve the challenge."
        )))
        .with_child(field("FORM_TYPE", "hidden", None, Some(NS_REGISTER)))
        .with_child(field("username", "text-single", Some("Username"), None))
        .with_child(field("password", "text-private", Some("Password"), None))
        .with_child(field(POW_CHALLENGE, "hidden", None, Some(&challenge)))
        .with_child(field(POW_DIFFICULTY, "hidden", None, Some(&difficulty.to_string())))
        .with_child(field(POW_ALGORITHM, "hidden", None, Some("sha-256")))
        .with_child(field(POW_NONCE, "text-single", Some(&label), None))
}

/// The first value of the field `var` in a submitted XEP-0004 form.
fn form_value(x: &Element, var: &str) -> Option<String> {
    x.children()
        .find(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))
        .and_then(|f| f.get_child("value", NS_DATA))
        .map(|v| v.text())
}

fn check_pow(
    server: &Server,
    gate: &PowGate,
    submitted: Option<&Element>,
    client: &str,
) -> Result<crate::pow::Ticket, StanzaError> {
    let challenge = submitted.and_then(|x| form_value(x, POW_CHALLENGE));
    let nonce = submitted.and_then(|x| form_value(x, POW_NONCE));
    let (Some(challenge), Some(nonce)) = (challenge, nonce) else {
        server.registration.pow.missing.inc();
        return Err(StanzaError::not_allowed().with_text(format!(
            "This server requires a proof of work to register: fetch the registration form and submit it with a solved {NS_POW} challenge"
        )));
    };
    let now = kabar_core::time::unix_now();
    gate.check(challenge.trim(), nonce.trim(), client, server.registration.pow_difficulty(), now)
        .map_err(|e| pow_error(server, e))
}

fn pow_error(server: &Server, e: PowError) -> StanzaError {
    let counters = &server.registration.pow;
    match e {
        PowError::Malformed | PowError::Forged | PowError::Outdated => counters.invalid.inc(),
        PowError::Expired => counters.expired.inc(),
        PowError::Wrong => counters.wrong.inc(),
        PowError::Reused => counters.reused.inc(),
        PowError::Full => {}
    }
    match e {
        PowError::Full => StanzaError::new(ErrorType::Wait, "resource-constraint").with_text(e.to_string()),
        _ => StanzaError::not_acceptable().with_text(e.to_string()),
    }
}

fn own_account(server: &Server, iq: &IqRequest) -> Result<BareJid, StanzaError> {
    match &iq.to_account {
        Some(account) if iq.from_account_itself() => Ok(account.clone()),
        Some(_) => Err(StanzaError::forbidden()),
        None if iq.from.node().is_some() && server.is_local(&iq.from) => Ok(iq.from.to_bare()),
        None => Err(StanzaError::new(ErrorType::Cancel, "unexpected-request")),
    }
}

#[async_trait]
impl Module for RegisterModule {
    fn name(&self) -> &'static str {
        "register"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        kabar_core::Hooks::NONE
    }

    fn server_features(&self) -> Vec<&'static str> {
        vec![NS_REGISTER]
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        vec![("query", NS_REGISTER)]
    }

    async fn handle_iq(&self, server: &Server, iq: &IqRequest) -> IqResult {
        let account = own_account(server, iq)?;
        let Some(query) = iq.payload() else { return Err(StanzaError::bad_request()) };
        let node = account.node().map(|n| n.as_str().to_string()).unwrap_or_default();
        if !iq.is_set {
            return Ok(Some(
                elem("query", NS_REGISTER)
                    .with_child(elem("registered", NS_REGISTER))
                    .with_child(elem("username", NS_REGISTER).with_text(node)),
            ));
        }
        if query.has_child("remove", NS_REGISTER) {
            if query.children().count() != 1 {
                return Err(StanzaError::bad_request());
            }
            // Read the roster first: contacts are told after the data is gone.
            let roster = server.store.roster(account.as_str()).await.map(|(items, _)| items).unwrap_or_default();
            accounts::delete(&server.store, &account).await.map_err(account_error)?;
            info!(account = %account, "account deleted in-band");
            server.notify(Event::AccountDeleted { jid: &account, roster: &roster }).await;
            // §3.2: answer, then end every session of the account with <not-authorized/>. The
            // result is written to the requesting session here so it precedes the close; the
            // core's own copy of the result queues behind the close and is never written.
            let mut reply = stanza::iq_result(&iq.stanza, None);
            if iq.stanza.attr("to").is_none() {
                reply.remove_attr_str("from");
            }
            if let Ok(full) = iq.from.try_as_full() {
                server.deliver(full, reply).await;
            }
            for session in server.sessions.sessions(&account) {
                let _ = server.sessions.send(
                    &session.jid,
                    Outbound::Close { condition: "not-authorized", text: Some("The account was deleted".into()) },
                );
            }
            return Ok(None);
        }
        let Some(password) = child_text(query, "password") else { return Err(StanzaError::bad_request()) };
        if let Some(username) = child_text(query, "username") {
            let named = accounts::parse_account(username.trim(), &server.domain).ok();
            if named.as_ref() != Some(&account) {
                return Err(StanzaError::forbidden().with_text("Only the own account's password can be changed"));
            }
        }
        check_password(server, &password)?;
        accounts::set_password(&server.store, &account, &password).await.map_err(account_error)?;
        info!(account = %account, "password changed in-band");
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_groups_ipv6_by_64_and_unmaps_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limiter_key(a), limiter_key(b));
        assert_ne!(limiter_key(a), limiter_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(limiter_key(mapped), "192.0.2.7");
    }
}
