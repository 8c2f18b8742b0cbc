//! XEP-0401 easy user onboarding, with XEP-0379 pre-authenticated roster subscription and
//! XEP-0445 pre-authenticated in-band registration. See docs/INVITES.md.
//!
//! An invite is a random token (24 alphanumeric characters, ~143 bits) that lets its holder:
//! * create an account on this server even while open registration is off: on the web landing page
//!   (`/invite/<token>`, served by the binary) or in-band ([`handle_pre_auth`]: XEP-0445
//!   `<preauth/>` then XEP-0077 registration on the same stream);
//! * subscribe to the inviter's presence without asking (XEP-0379: a `subscribe` carrying
//!   `<preauth xmlns='urn:xmpp:pars:0' token='…'/>` is pre-approved here, and the inviter
//!   subscribes back).
//!
//! When an account is created with an invite that has an inviter, the two are put in each other's
//! roster with subscription `both` (pushes and presence as the roster/presence modules send them,
//! through [`crate::rostermanager`]), and the inviter gets a chat message saying who joined.
//!
//! Storage (key-value store, no other module's names): `invites` under the empty user holds one
//! JSON record per invite keyed by the SHA-256 of its token, so the stored data never contains a
//! usable token; `invites-own` under the inviter's JID indexes a user's invites (for the per-user
//! limit); `invite-usernames` under the empty user maps a username an invite reserves (XEP-0445 §5)
//! to that invite. Uses are counted under one lock per process: a multi-use invite cannot be used
//! more often than allowed by concurrent redemptions on one node.
//!
//! Error conditions: an unknown, expired, used-up or revoked token in `<preauth/>` is
//! `<item-not-found/>` (XEP-0445 §4); a registration on a stream whose invite became unusable
//! after `<preauth/>` is `<not-authorized/>`. Expiry is checked at `<preauth/>` only (XEP-0445 §4:
//! later steps of the same stream are not refused for expiry).

// StanzaError (the core's IQ error type) is what the XMPP-facing helpers return.
#![allow(clippy::result_large_err)]

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use jid::{BareJid, Jid};
use kabar_core::accounts::{self, AccountError};
use kabar_core::admission::{Refusal, Work};
use kabar_core::stanza::{self, StanzaError};
use kabar_core::time::{unix_now, xep0082};
use kabar_core::{ns, Config, ErrorType, Event, Flow, Module, Server};
use kabar_storage::{RosterItem, SharedStore, StoreError, Subscription};
use kabar_xml::{elem, Element, ElementExt};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::adhoc::{self, AdhocCommand, AdhocCommands, CommandReply, CommandRequest, NS_DATA};
use crate::register::{self, MAX_PASSWORD_BYTES, NS_REGISTER};
use crate::rostermanager as rm;

/// XEP-0379 / XEP-0445 `<preauth/>`.
pub const NS_PARS: &str = "urn:xmpp:pars:0";
/// XEP-0445 §3 stream feature.
pub const NS_IBR_TOKEN: &str = "urn:xmpp:ibr-token:0";
/// The stream feature earlier XEP-0401 versions (and clients that follow them) use.
pub const NS_INVITE_FEATURE: &str = "urn:xmpp:invite";
pub const NODE_INVITE: &str = "urn:xmpp:invite#invite";
pub const NODE_CREATE_ACCOUNT: &str = "urn:xmpp:invite#create-account";
/// FORM_TYPE of the command results (XEP-0401 §5.1).
pub const FORM_TYPE_INVITATION: &str = "urn:xmpp:invite#invitation";

const STORE: &str = "invites";
const STORE_OWN: &str = "invites-own";
const STORE_NAMES: &str = "invite-usernames";
const TOKEN_LEN: usize = 24;
/// Bounds admins may choose through the admin API or the CLI.
pub const MAX_USES_LIMIT: u32 = 10_000;
pub const MAX_EXPIRY_SECS: u64 = 366 * 86_400;

/// One invite as stored (never the token itself).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Invite {
    /// Hex SHA-256 of the token: the storage key and the id the admin API shows.
    pub id: String,
    /// Who invites (bare JID); `None` for an account-only invite an admin created.
    pub inviter: Option<String>,
    /// The username an account created with it must take (XEP-0445 §5), normalised.
    pub username: Option<String>,
    /// Unix seconds.
    pub created: u64,
    pub expires: u64,
    pub max_uses: u32,
    pub uses: u32,
    pub revoked: bool,
    /// Accounts created with it.
    #[serde(default)]
    pub invitees: Vec<String>,
    /// Whether redeeming it makes the invitee and the inviter contacts.
    pub roster: bool,
}

/// Why an invite cannot be used now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Valid,
    Expired,
    UsedUp,
    Revoked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Valid => "valid",
            Status::Expired => "expired",
            Status::UsedUp => "used",
            Status::Revoked => "revoked",
        }
    }
}

impl Invite {
    pub fn status(&self, now: u64) -> Status {
        if self.revoked {
            Status::Revoked
        } else if self.uses >= self.max_uses {
            Status::UsedUp
        } else if now >= self.expires {
            Status::Expired
        } else {
            Status::Valid
        }
    }

    /// Whether it creates accounts only (no inviter to befriend).
    pub fn account_only(&self) -> bool {
        self.inviter.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    #[error("invitations are disabled on this server")]
    Disabled,
    #[error("no such invitation")]
    NotFound,
    #[error("the invitation is {}", .0.as_str())]
    Unusable(Status),
    #[error("{0} already has {1} unused invitations; wait until they are used or expire")]
    LimitReached(String, usize),
    #[error("'{0}' is not a valid username")]
    InvalidUsername(String),
    #[error("the username is not available")]
    UsernameTaken,
    #[error("this invitation is for the username '{0}'")]
    WrongUsername(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("too many accounts were created from this address recently; try again later")]
    RateLimited,
    /// Admission control sheds registrations first when the node is overloaded.
    #[error("{}", .0.text())]
    Busy(Refusal),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to create.
#[derive(Clone, Debug, Default)]
pub struct NewInvite {
    pub inviter: Option<BareJid>,
    pub username: Option<String>,
    /// Default: `invites.expiry_secs`.
    pub expires_in_secs: Option<u64>,
    /// Default: `invites.max_uses`.
    pub max_uses: Option<u32>,
    /// Befriend inviter and invitee on redemption (ignored without an inviter).
    pub roster: bool,
    /// Apply `invites.max_active_per_user` (users yes; admins and the CLI no).
    pub limited: bool,
}

/// A created invite with its token and the addresses to hand out.
#[derive(Clone, Debug)]
pub struct Created {
    pub invite: Invite,
    pub token: String,
    /// XEP-0401 `uri`: `xmpp:inviter?roster;preauth=T;ibr=y` or `xmpp:[user@]domain?register;preauth=T`.
    pub uri: String,
    /// XEP-0401 `landing-url`: `<public url>/invite/<token>`.
    pub landing_url: String,
}

/// Serialises every read-modify-write of invite records in this process.
static LOCK: Mutex<()> = Mutex::const_new(());

pub fn token_id(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A token as we hand them out; anything else is not looked up at all.
pub fn plausible_token(token: &str) -> bool {
    (16..=64).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn new_token() -> String {
    rand::rng().sample_iter(&rand::distr::Alphanumeric).take(TOKEN_LEN).map(char::from).collect()
}

/// The HTTPS base URL clients reach (as the binary's listener computes it).
pub fn public_url(config: &Config) -> String {
    let url = config.http.public_url.clone().unwrap_or_else(|| {
        let port = config.http.listen.first().map(|a| a.port()).unwrap_or(5443);
        format!("https://{}:{port}", config.domain)
    });
    url.trim_end_matches('/').to_string()
}

/// The XEP-0401 URI and landing URL of an invite.
pub fn addresses(config: &Config, invite: &Invite, token: &str) -> (String, String) {
    let uri = match (&invite.inviter, &invite.username) {
        (Some(inviter), _) if invite.roster => format!("xmpp:{inviter}?roster;preauth={token};ibr=y"),
        (_, Some(user)) => format!("xmpp:{user}@{}?register;preauth={token}", config.domain),
        _ => format!("xmpp:{}?register;preauth={token}", config.domain),
    };
    (uri, format!("{}/invite/{token}", public_url(config)))
}

fn encode(invite: &Invite) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(invite).map_err(|e| StoreError::Backend(format!("invite encoding: {e}")))
}

async fn load(store: &SharedStore, id: &str) -> Result<Option<Invite>, StoreError> {
    match store.kv_get("", STORE, id).await? {
        None => Ok(None),
        Some(bytes) => match serde_json::from_slice(&bytes) {
            Ok(invite) => Ok(Some(invite)),
            Err(e) => {
                warn!(invite = id, error = %e, "unreadable invite record ignored");
                Ok(None)
            }
        },
    }
}

async fn save(store: &SharedStore, invite: &Invite) -> Result<(), StoreError> {
    store.kv_put("", STORE, &invite.id, &encode(invite)?).await
}

/// The invite a token names, whatever its state (`None`: unknown or not a token at all).
pub async fn find(store: &SharedStore, token: &str) -> Result<Option<Invite>, StoreError> {
    if !plausible_token(token) {
        return Ok(None);
    }
    load(store, &token_id(token)).await
}

/// The invite, if usable now.
pub async fn check(store: &SharedStore, token: &str, now: u64) -> Result<Invite, InviteError> {
    let invite = find(store, token).await?.ok_or(InviteError::NotFound)?;
    match invite.status(now) {
        Status::Valid => Ok(invite),
        s => Err(InviteError::Unusable(s)),
    }
}

/// Every stored invite, by id.
pub async fn list(store: &SharedStore) -> Result<Vec<Invite>, StoreError> {
    Ok(store.kv_list("", STORE).await?.into_iter().filter_map(|(_, v)| serde_json::from_slice(&v).ok()).collect())
}

/// Usable invites of one inviter.
pub async fn active_of(store: &SharedStore, inviter: &BareJid, now: u64) -> Result<Vec<Invite>, StoreError> {
    let mut out = Vec::new();
    for (id, _) in store.kv_list(inviter.as_str(), STORE_OWN).await? {
        match load(store, &id).await? {
            Some(inv) if inv.status(now) == Status::Valid => out.push(inv),
            Some(_) => {}
            None => {
                store.kv_delete(inviter.as_str(), STORE_OWN, &id).await?;
            }
        }
    }
    Ok(out)
}

/// Whether a usable invite reserves `username` (normalised localpart) for its holder.
pub async fn username_reserved(store: &SharedStore, username: &str, now: u64) -> Result<bool, StoreError> {
    let Some(id) = store.kv_get("", STORE_NAMES, username).await? else { return Ok(false) };
    let id = String::from_utf8_lossy(&id).into_owned();
    Ok(matches!(load(store, &id).await?, Some(inv) if inv.status(now) == Status::Valid))
}

/// Normalised localpart of `username` on `domain`.
fn localpart(username: &str, domain: &str) -> Result<String, InviteError> {
    let username = username.trim();
    if username.is_empty() || username.contains(['@', '/']) {
        return Err(InviteError::InvalidUsername(username.to_string()));
    }
    let jid =
        accounts::parse_account(username, domain).map_err(|_| InviteError::InvalidUsername(username.to_string()))?;
    Ok(jid.node().map(|n| n.as_str().to_string()).unwrap_or_default())
}

/// Creates an invite (`now`: Unix seconds). Users' invites count against
/// `invites.max_active_per_user`; a reserved username must be free.
pub async fn create(store: &SharedStore, config: &Config, new: NewInvite, now: u64) -> Result<Created, InviteError> {
    let cfg = &config.invites;
    if !cfg.enabled {
        return Err(InviteError::Disabled);
    }
    let max_uses = new.max_uses.unwrap_or(cfg.max_uses);
    if !(1..=MAX_USES_LIMIT).contains(&max_uses) {
        return Err(InviteError::BadRequest(format!("max_uses must be between 1 and {MAX_USES_LIMIT}")));
    }
    let ttl = new.expires_in_secs.unwrap_or(cfg.expiry_secs);
    if !(1..=MAX_EXPIRY_SECS).contains(&ttl) {
        return Err(InviteError::BadRequest(format!("the lifetime must be between 1 and {MAX_EXPIRY_SECS} seconds")));
    }
    let username = match &new.username {
        Some(u) => Some(localpart(u, &config.domain)?),
        None => None,
    };
    if username.is_some() && max_uses != 1 {
        return Err(InviteError::BadRequest("an invite for one username can be used once".into()));
    }
    let _guard = LOCK.lock().await;
    if let Some(inviter) = &new.inviter {
        if new.limited {
            let active = active_of(store, inviter, now).await?.len();
            if active >= cfg.max_active_per_user {
                return Err(InviteError::LimitReached(inviter.to_string(), active));
            }
        }
    }
    if let Some(user) = &username {
        let jid = accounts::parse_account(user, &config.domain)?;
        if store.credentials(jid.as_str()).await?.is_some() || username_reserved(store, user, now).await? {
            return Err(InviteError::UsernameTaken);
        }
    }
    let token = new_token();
    let invite = Invite {
        id: token_id(&token),
        inviter: new.inviter.as_ref().map(|j| j.to_string()),
        username: username.clone(),
        created: now,
        expires: now.saturating_add(ttl),
        max_uses,
        uses: 0,
        revoked: false,
        invitees: Vec::new(),
        roster: new.roster && new.inviter.is_some(),
    };
    save(store, &invite).await?;
    if let Some(inviter) = &new.inviter {
        store.kv_put(inviter.as_str(), STORE_OWN, &invite.id, b"").await?;
    }
    if let Some(user) = &username {
        store.kv_put("", STORE_NAMES, user, invite.id.as_bytes()).await?;
    }
    let (uri, landing_url) = addresses(config, &invite, &token);
    info!(invite = %invite.id, inviter = ?invite.inviter, username = ?invite.username, "invite created");
    Ok(Created { invite, token, uri, landing_url })
}

/// Revokes an invite by id; false when there is none.
pub async fn revoke(store: &SharedStore, id: &str) -> Result<bool, StoreError> {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(false);
    }
    let _guard = LOCK.lock().await;
    let Some(mut invite) = load(store, id).await? else { return Ok(false) };
    if !invite.revoked {
        invite.revoked = true;
        save(store, &invite).await?;
        info!(invite = %id, "invite revoked");
    }
    Ok(true)
}

// --- redemption ----------------------------------------------------------------------------------

/// How [`register`] treats expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Refuse an expired invite (the web page).
    Check,
    /// Already checked at `<preauth/>` on this stream (XEP-0445 §4).
    Checked,
}

/// Creates an account with an invite: checks the username (the invite's own, the configured
/// reserved names, other invites' reservations, taken names) and password, the per-IP
/// registration limit, derives the SCRAM keys (off the async threads, bounded by the core), then
/// consumes one use, and finally befriends inviter and invitee and greets the inviter.
pub async fn register(
    server: &Server,
    client_ip: IpAddr,
    token: &str,
    username: &str,
    password: &str,
    expiry: Expiry,
) -> Result<BareJid, InviteError> {
    // `registration.mode = "closed"` (docs/REGISTRATION.md) stops invites too.
    if !server.config.invites.enabled || !server.registration.mode().admits_invites() {
        return Err(InviteError::Disabled);
    }
    let now = unix_now();
    let invite = find(&server.store, token).await?.ok_or(InviteError::NotFound)?;
    match invite.status(now) {
        Status::Valid => {}
        Status::Expired if expiry == Expiry::Checked => {}
        s => return Err(InviteError::Unusable(s)),
    }
    let node = localpart(username, &server.domain)?;
    let jid = accounts::parse_account(&node, &server.domain)?;
    match &invite.username {
        Some(reserved) if reserved != &node => return Err(InviteError::WrongUsername(reserved.clone())),
        Some(_) => {}
        None => {
            let reg = &server.config.registration;
            if reg.reserved_usernames.iter().any(|r| r.to_lowercase() == node.to_lowercase())
                || username_reserved(&server.store, &node, now).await?
            {
                return Err(InviteError::UsernameTaken);
            }
        }
    }
    check_password(server, password).map_err(|e| InviteError::BadRequest(e.text.unwrap_or_default()))?;
    server.admit(Work::Registration).map_err(InviteError::Busy)?;
    let key = register::limiter_key(client_ip);
    if !server.registrations_by_ip.would_allow(&key) {
        return Err(InviteError::RateLimited);
    }
    if server.account_exists(&jid).await {
        return Err(InviteError::UsernameTaken);
    }
    let creds = accounts::derive(password).await?;
    let invite = {
        let _guard = LOCK.lock().await;
        // Another redemption may have taken the last use while the keys were derived.
        let mut invite = load(&server.store, &invite.id).await?.ok_or(InviteError::NotFound)?;
        match invite.status(now) {
            Status::Valid => {}
            Status::Expired if expiry == Expiry::Checked => {}
            s => return Err(InviteError::Unusable(s)),
        }
        if !server.registrations_by_ip.allow(&key) {
            return Err(InviteError::RateLimited);
        }
        match server.store.create_account(jid.as_str(), &creds).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists) => return Err(InviteError::UsernameTaken),
            Err(e) => return Err(e.into()),
        }
        invite.uses += 1;
        invite.invitees.push(jid.to_string());
        save(&server.store, &invite).await?;
        if invite.uses >= invite.max_uses {
            if let Some(user) = &invite.username {
                let _ = server.store.kv_delete("", STORE_NAMES, user).await;
            }
        }
        invite
    };
    server.metrics.registrations.inc();
    info!(account = %jid, invite = %invite.id, inviter = ?invite.inviter, ip = %client_ip, "account registered with an invite");
    if let Some(inviter) = invite.inviter.as_deref().filter(|_| invite.roster) {
        if let Ok(inviter) = stanza::parse_bare(inviter) {
            if server.account_exists(&inviter).await {
                if let Err(e) = befriend(server, &inviter, &jid).await {
                    warn!(error = %e, inviter = %inviter, invitee = %jid, "could not link the rosters of an invite");
                }
                greet(server, &inviter, &jid).await;
            }
        }
    }
    Ok(jid)
}

fn check_password(server: &Server, password: &str) -> Result<(), StanzaError> {
    let min = server.config.registration.min_password_length.max(1);
    if password.chars().count() < min {
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

/// Puts `a` and `b` (both local) in each other's roster with subscription `both`, pushes the
/// items to interested resources, and exchanges the current presence of their available resources.
pub async fn befriend(server: &Server, a: &BareJid, b: &BareJid) -> Result<(), StoreError> {
    for (user, contact) in [(a, b), (b, a)] {
        let _guard = rm::lock_user(user).await;
        let mut item = rm::get_item(server, user, contact)
            .await?
            .unwrap_or_else(|| RosterItem { jid: contact.to_string(), ..Default::default() });
        if item.subscription != Subscription::Both || item.ask || item.approved {
            item.subscription = Subscription::Both;
            item.ask = false;
            item.approved = false;
            rm::save_and_push(server, user, &item).await?;
        }
        rm::clear_pending_in(server, user, contact).await?;
    }
    rm::send_available_presence(server, a, &Jid::from(b.clone())).await;
    rm::send_available_presence(server, b, &Jid::from(a.clone())).await;
    Ok(())
}

/// The "joined" notice: a chat message from the server to the inviter (stored offline when no
/// session is available).
async fn greet(server: &Server, inviter: &BareJid, invitee: &BareJid) {
    let msg = elem("message", ns::CLIENT)
        .with_attr("from", server.domain.as_str())
        .with_attr("to", inviter.as_str())
        .with_attr("type", "chat")
        .with_attr("id", format!("invite-{}", &new_token()[..12]))
        .with_child(elem("body", ns::CLIENT).with_text(format!("{invitee} joined via your invite. Say hello!")));
    server.route(msg).await;
}

// --- in-band (before authentication) -------------------------------------------------------------

/// Stream features offered before authentication when invites are on (XEP-0445 §3, and the
/// earlier `urn:xmpp:invite` some clients look for).
pub fn pre_auth_features(server: &Server) -> Vec<Element> {
    if !server.config.invites.enabled {
        return Vec::new();
    }
    vec![elem("register", NS_IBR_TOKEN), elem("register", NS_INVITE_FEATURE)]
}

/// Whether the c2s layer should hand this pre-authentication IQ to [`handle_pre_auth`].
pub fn is_pre_auth_iq(iq: &Element) -> bool {
    iq.name() == "iq" && (iq.get_child("preauth", NS_PARS).is_some() || iq.get_child("query", NS_REGISTER).is_some())
}

/// Answers a pre-authentication IQ: `<preauth/>` (XEP-0445 §4) validates a token and remembers it
/// in `stream_invite` for the rest of the stream; a `jabber:iq:register` IQ on a stream with a
/// validated invite registers with it, any other goes to the register module's
/// [`register::handle_pre_auth`] (open registration).
pub async fn handle_pre_auth(
    server: &Server,
    client_ip: IpAddr,
    iq: &Element,
    stream_invite: &mut Option<String>,
) -> Element {
    let result = if let Some(preauth) = iq.get_child("preauth", NS_PARS) {
        preauth_iq(server, iq, preauth, stream_invite).await
    } else if let Some(token) = stream_invite.clone() {
        register_iq(server, client_ip, iq, &token).await
    } else {
        return register::handle_pre_auth(server, client_ip, iq).await;
    };
    let mut reply = elem("iq", ns::CLIENT);
    if let Some(id) = iq.attr("id") {
        reply.set_attr_str("id", id);
    }
    match result {
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

async fn preauth_iq(
    server: &Server,
    iq: &Element,
    preauth: &Element,
    stream_invite: &mut Option<String>,
) -> Result<Option<Element>, StanzaError> {
    if stanza::stanza_type(iq) != Some("set") || iq.children().count() != 1 {
        return Err(StanzaError::bad_request());
    }
    if !server.config.invites.enabled {
        return Err(StanzaError::service_unavailable());
    }
    let token = preauth.attr("token").unwrap_or("");
    match check(&server.store, token, unix_now()).await {
        Ok(_) => {
            *stream_invite = Some(token.to_string());
            Ok(None)
        }
        Err(InviteError::Store(e)) => {
            warn!(error = %e, "invite lookup failed");
            Err(StanzaError::internal_server_error())
        }
        Err(_) => Err(StanzaError::item_not_found().with_text("The provided token is invalid or expired")),
    }
}

async fn register_iq(
    server: &Server,
    client_ip: IpAddr,
    iq: &Element,
    token: &str,
) -> Result<Option<Element>, StanzaError> {
    let is_set = match stanza::stanza_type(iq) {
        Some("get") => false,
        Some("set") => true,
        _ => return Err(StanzaError::bad_request()),
    };
    let mut children = iq.children();
    let query = match (children.next(), children.next()) {
        (Some(q), None) if q.is("query", NS_REGISTER) => q,
        _ => return Err(StanzaError::service_unavailable()),
    };
    let invite = match find(&server.store, token).await {
        Ok(Some(inv)) if matches!(inv.status(unix_now()), Status::Valid | Status::Expired) => inv,
        Ok(_) => return Err(not_authorized()),
        Err(e) => {
            warn!(error = %e, "invite lookup failed");
            return Err(StanzaError::internal_server_error());
        }
    };
    if !is_set {
        let mut username = elem("username", NS_REGISTER);
        if let Some(u) = &invite.username {
            username = username.with_text(u.as_str());
        }
        return Ok(Some(
            elem("query", NS_REGISTER)
                .with_child(
                    elem("instructions", NS_REGISTER)
                        .with_text("Choose a username and password for your invited account."),
                )
                .with_child(username)
                .with_child(elem("password", NS_REGISTER)),
        ));
    }
    if query.has_child("remove", NS_REGISTER) {
        return Err(StanzaError::new(ErrorType::Auth, "not-authorized"));
    }
    let text = |name: &str| query.get_child(name, NS_REGISTER).map(|c| c.text());
    let (Some(username), Some(password)) = (text("username"), text("password")) else {
        return Err(StanzaError::not_acceptable().with_text("Both a username and a password are required"));
    };
    register(server, client_ip, token, &username, &password, Expiry::Checked).await.map(|_| None).map_err(stanza_error)
}

fn not_authorized() -> StanzaError {
    StanzaError::new(ErrorType::Auth, "not-authorized").with_text("The invitation is no longer valid")
}

/// The XMPP error for a failed redemption (the web page maps [`InviteError`] to HTTP itself).
pub fn stanza_error(e: InviteError) -> StanzaError {
    match e {
        InviteError::Disabled => StanzaError::service_unavailable(),
        InviteError::NotFound | InviteError::Unusable(_) => not_authorized(),
        InviteError::UsernameTaken => StanzaError::conflict().with_text("The requested username is not available"),
        InviteError::InvalidUsername(_)
        | InviteError::Account(AccountError::InvalidJid(_) | AccountError::WrongDomain(..)) => {
            StanzaError::not_acceptable().with_text("The requested username is invalid")
        }
        InviteError::WrongUsername(u) => {
            StanzaError::not_acceptable().with_text(format!("This invitation is for the username '{u}'"))
        }
        InviteError::BadRequest(t) => StanzaError::not_acceptable().with_text(t),
        InviteError::Account(AccountError::BadPassword(t)) => StanzaError::not_acceptable().with_text(t),
        InviteError::Account(AccountError::Exists) => StanzaError::conflict(),
        InviteError::RateLimited => StanzaError::new(ErrorType::Wait, "policy-violation")
            .with_text("Too many accounts were created from this address recently; try again later"),
        InviteError::LimitReached(..) => StanzaError::resource_constraint().with_text(e.to_string()),
        InviteError::Busy(r) => StanzaError::new(ErrorType::Wait, "resource-constraint").with_text(r.text()),
        InviteError::Account(_) | InviteError::Store(_) => {
            warn!(error = %e, "invite registration failed");
            StanzaError::internal_server_error()
        }
    }
}

// --- the module: XEP-0379 subscriptions, XEP-0050 commands ----------------------------------------

pub struct InviteModule;

impl InviteModule {
    /// Registers the XEP-0401 commands with the ad-hoc registry.
    pub fn new(commands: &Arc<AdhocCommands>) -> InviteModule {
        commands.register(Arc::new(InviteCommand));
        commands.register(Arc::new(CreateAccountCommand));
        InviteModule
    }
}

#[async_trait]
impl Module for InviteModule {
    fn name(&self) -> &'static str {
        "invite"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        use kabar_core::Hooks as H;
        H::ON_INBOUND_PRESENCE | H::ON_ACCOUNT_DELETED
    }

    async fn on_event(&self, server: &Server, event: &Event<'_>) -> Flow {
        match event {
            Event::InboundPresence { to, stanza } => {
                if stanza::stanza_type(stanza) == Some("subscribe") {
                    if let Some(token) = stanza.get_child("preauth", NS_PARS).and_then(|p| p.attr("token")) {
                        preauthorized_subscription(server, to, stanza, token).await;
                    }
                }
                Flow::Continue
            }
            Event::AccountDeleted { jid, .. } => {
                revoke_all_of(server, jid).await;
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }
}

/// XEP-0379 §3.4: a subscription request to the inviter carrying a valid token of theirs is
/// pre-approved (the presence module, which sees the request next, then approves it as RFC 6121
/// §3.4 says), and the inviter subscribes back so both end up subscribed.
async fn preauthorized_subscription(server: &Server, to: &Jid, request: &Element, token: &str) {
    if !server.config.invites.enabled {
        return;
    }
    let user = to.to_bare();
    let Ok(Some(from)) = stanza::from_jid(request) else { return };
    let contact = from.to_bare();
    if contact == user || !server.account_exists(&user).await {
        return;
    }
    let now = unix_now();
    let result: Result<bool, StoreError> = async {
        {
            let _guard = LOCK.lock().await;
            let Some(mut invite) = find(&server.store, token).await? else { return Ok(false) };
            if invite.status(now) != Status::Valid || invite.inviter.as_deref() != Some(user.as_str()) {
                return Ok(false);
            }
            invite.uses += 1;
            save(&server.store, &invite).await?;
        }
        let ask_back = {
            let _guard = rm::lock_user(&user).await;
            let mut item = rm::get_item(server, &user, &contact)
                .await?
                .unwrap_or_else(|| RosterItem { jid: contact.to_string(), ..Default::default() });
            let ask_back = !item.subscription.has_to() && !item.ask;
            let approve = !item.subscription.has_from() && !item.approved;
            if approve || ask_back {
                item.approved |= approve;
                item.ask |= ask_back;
                rm::save_and_push(server, &user, &item).await?;
            }
            ask_back
        };
        if ask_back {
            server.route(rm::subscription_stanza("subscribe", &user, &contact)).await;
        }
        Ok(true)
    }
    .await;
    match result {
        Ok(true) => info!(inviter = %user, contact = %contact, "subscription pre-authorised by an invite"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "pre-authorised subscription failed"),
    }
}

async fn revoke_all_of(server: &Server, user: &BareJid) {
    let Ok(all) = list(&server.store).await else { return };
    let _guard = LOCK.lock().await;
    for mut invite in all {
        if invite.inviter.as_deref() == Some(user.as_str()) && !invite.revoked {
            invite.revoked = true;
            if let Err(e) = save(&server.store, &invite).await {
                warn!(error = %e, "could not revoke a deleted account's invite");
            }
        }
    }
}

/// XEP-0401 §5.1 / §5.4 result form.
fn result_form(created: &Created) -> Element {
    let field = |var: &str, kind: &str, value: &str| {
        elem("field", NS_DATA)
            .with_attr("var", var)
            .with_attr("type", kind)
            .with_child(elem("value", NS_DATA).with_text(value))
    };
    elem("x", NS_DATA)
        .with_attr("type", "result")
        .with_child(field("FORM_TYPE", "hidden", FORM_TYPE_INVITATION))
        .with_child(field("uri", "text-single", &created.uri))
        .with_child(field("landing-url", "text-single", &created.landing_url))
        .with_child(field("expire", "text-single", &xep0082(created.invite.expires)))
}

fn command_error(e: InviteError) -> StanzaError {
    match e {
        InviteError::Disabled => StanzaError::service_unavailable().with_text(e.to_string()),
        InviteError::LimitReached(..) => StanzaError::resource_constraint().with_text(e.to_string()),
        InviteError::UsernameTaken => StanzaError::conflict().with_text(e.to_string()),
        InviteError::InvalidUsername(_)
        | InviteError::BadRequest(_)
        | InviteError::Account(AccountError::InvalidJid(_)) => adhoc::bad_payload(e.to_string()),
        other => {
            warn!(error = %other, "invite command failed");
            StanzaError::internal_server_error()
        }
    }
}

/// `urn:xmpp:invite#invite`: any local user, no form (XEP-0401 §5.1).
struct InviteCommand;

#[async_trait]
impl AdhocCommand for InviteCommand {
    fn node(&self) -> &'static str {
        NODE_INVITE
    }
    fn name(&self) -> &'static str {
        "Invite user"
    }
    async fn execute(&self, server: &Server, request: &CommandRequest<'_>) -> Result<CommandReply, StanzaError> {
        let inviter = request.from.to_bare();
        let new = NewInvite { inviter: Some(inviter), roster: true, limited: true, ..Default::default() };
        let created = create(&server.store, &server.config, new, unix_now()).await.map_err(command_error)?;
        Ok(CommandReply::Completed {
            note: format!("Share this link: {}", created.landing_url),
            result: Some(result_form(&created)),
        })
    }
}

/// `urn:xmpp:invite#create-account`: `invites.admins` only (XEP-0401 §5.4).
struct CreateAccountCommand;

#[async_trait]
impl AdhocCommand for CreateAccountCommand {
    fn node(&self) -> &'static str {
        NODE_CREATE_ACCOUNT
    }
    fn name(&self) -> &'static str {
        "Create account"
    }
    async fn execute(&self, server: &Server, request: &CommandRequest<'_>) -> Result<CommandReply, StanzaError> {
        let admin = request.from.to_bare();
        let allowed =
            server.config.invites.admins.iter().any(|a| stanza::parse_bare(a.trim()).ok().as_ref() == Some(&admin));
        if !allowed {
            return Err(
                StanzaError::forbidden().with_text("Only invitation administrators may create account invitations")
            );
        }
        let Some(_) = request.form else {
            return Ok(CommandReply::Form(
                adhoc::form("Create an account invitation", "Leave the username empty to let the invitee choose one.")
                    .with_child(adhoc::text_field("username", "Username", "text-single"))
                    .with_child(adhoc::text_field("roster-subscription", "Add me as a contact", "boolean")),
            ));
        };
        let username = request.field("username").map(|u| u.trim().to_string()).filter(|u| !u.is_empty());
        let roster = matches!(request.field("roster-subscription").as_deref(), Some("1" | "true"));
        let new =
            NewInvite { inviter: roster.then_some(admin), username, roster, limited: false, ..Default::default() };
        let created = create(&server.store, &server.config, new, unix_now()).await.map_err(command_error)?;
        Ok(CommandReply::Completed {
            note: format!("Share this link: {}", created.landing_url),
            result: Some(result_form(&created)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_alphanumeric_and_distinct_and_ids_are_their_sha256() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(plausible_token(&a));
        assert_ne!(a, b);
        assert_eq!(token_id("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(!plausible_token("short"));
        assert!(!plausible_token("has spaces in it, not a token"));
    }
}
