//! XEP-0012: Last Activity, answered by the server.
//!
//! * To the server (§5 "Server and Component Query"): `seconds` since the server started.
//! * To a local account's bare JID, or with no `to` for the own account (§3 "Offline User
//!   Query"): allowed for the account itself and for anyone the account's roster gives a presence
//!   subscription to it (`from` or `both`); everyone else gets `<forbidden/>`. When the account has
//!   an available resource the answer is `seconds='0'`; otherwise the seconds since its last
//!   resource went offline, with the status text of its last unavailable presence as the query's
//!   text. An account never seen going offline since it was created gets `<item-not-found/>`.
//!
//! The time is recorded in the key-value store `last` under the key `""` as
//! `<unix seconds>` followed, when there was a status, by `\n` and the status text. It is written
//! when an account's last available resource broadcasts unavailable presence and when a session
//! closes leaving no available resource.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use jid::{BareJid, FullJid};
use kabar_core::module::IqResult;
use kabar_core::time::unix_now;
use kabar_core::{ns, Event, Flow, IqRequest, Module, Server, StanzaError};
use kabar_xml::{elem, Element, ElementExt};
use tracing::warn;

pub const NS_LAST: &str = "jabber:iq:last";
/// The key-value store name this module owns.
pub const STORE: &str = "last";
const KEY: &str = "";
/// Longest status text kept.
const MAX_STATUS_BYTES: usize = 1024;

pub struct LastModule {
    /// Status text of each session's last unavailable broadcast, until the session closes.
    statuses: Mutex<HashMap<FullJid, String>>,
}

impl Default for LastModule {
    fn default() -> Self {
        Self::new()
    }
}

fn backend_error(e: impl std::fmt::Display) -> StanzaError {
    warn!(error = %e, "last-activity store failure");
    StanzaError::internal_server_error()
}

/// Encodes a stored record: unix seconds, then `\n` and the status if any.
pub fn encode_record(unix: u64, status: Option<&str>) -> Vec<u8> {
    let mut s = unix.to_string();
    if let Some(status) = status.filter(|s| !s.is_empty()) {
        s.push('\n');
        s.push_str(status);
    }
    s.into_bytes()
}

/// Decodes a stored record; `None` when it is not one.
pub fn decode_record(bytes: &[u8]) -> Option<(u64, Option<String>)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (time, status) = match text.split_once('\n') {
        Some((t, s)) => (t, Some(s.to_string())),
        None => (text, None),
    };
    Some((time.parse().ok()?, status))
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_STATUS_BYTES {
        let mut cut = MAX_STATUS_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

impl LastModule {
    pub fn new() -> Self {
        LastModule { statuses: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FullJid, String>> {
        self.statuses.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn others_available(server: &Server, jid: &FullJid) -> bool {
        server.sessions.sessions(&jid.to_bare()).iter().any(|s| &s.jid != jid && s.available)
    }

    async fn record(&self, server: &Server, account: &BareJid, status: Option<&str>) {
        let value = encode_record(unix_now(), status);
        if let Err(e) = server.store.kv_put(account.as_str(), STORE, KEY, &value).await {
            warn!(error = %e, account = %account, "could not record last activity");
        }
    }

    async fn may_see(server: &Server, account: &BareJid, requester: &BareJid) -> Result<bool, StanzaError> {
        if requester == account {
            return Ok(true);
        }
        let item = server.store.roster_item(account.as_str(), requester.as_str()).await.map_err(backend_error)?;
        Ok(item.is_some_and(|i| i.subscription.has_from()))
    }
}

fn query(seconds: u64) -> Element {
    elem("query", NS_LAST).with_attr("seconds", seconds.to_string())
}

#[async_trait]
impl Module for LastModule {
    fn name(&self) -> &'static str {
        "last"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        use kabar_core::Hooks as H;
        H::ON_OUTBOUND_PRESENCE | H::ON_SESSION_CLOSED | H::ON_ACCOUNT_DELETED
    }

    fn server_features(&self) -> Vec<&'static str> {
        vec![NS_LAST]
    }

    fn account_features(&self) -> Vec<&'static str> {
        vec![NS_LAST]
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        vec![("query", NS_LAST)]
    }

    async fn handle_iq(&self, server: &Server, iq: &IqRequest) -> IqResult {
        if iq.is_set {
            return Err(StanzaError::bad_request());
        }
        let Some(account) = &iq.to_account else {
            return Ok(Some(query(server.started_at.elapsed().as_secs())));
        };
        if !Self::may_see(server, account, &iq.from.to_bare()).await? {
            return Err(StanzaError::forbidden());
        }
        if server.sessions.sessions(account).iter().any(|s| s.available) {
            return Ok(Some(query(0)));
        }
        let stored = server.store.kv_get(account.as_str(), STORE, KEY).await.map_err(backend_error)?;
        let Some((when, status)) = stored.as_deref().and_then(decode_record) else {
            return Err(StanzaError::item_not_found());
        };
        let mut reply = query(unix_now().saturating_sub(when));
        if let Some(status) = status {
            reply.append_text(status);
        }
        Ok(Some(reply))
    }

    async fn on_event(&self, server: &Server, event: &Event<'_>) -> Flow {
        match event {
            Event::OutboundPresence { from, stanza } if stanza.attr("to").is_none() => {
                if stanza.attr("type") == Some("unavailable") {
                    let status = stanza.get_child("status", ns::CLIENT).map(|s| truncate(s.text()));
                    match &status {
                        Some(s) => self.lock().insert((*from).clone(), s.clone()),
                        None => self.lock().remove(*from),
                    };
                    if !Self::others_available(server, from) {
                        self.record(server, &from.to_bare(), status.as_deref()).await;
                    }
                } else if stanza.attr("type").is_none() {
                    self.lock().remove(*from);
                }
                Flow::Continue
            }
            Event::SessionClosed { jid, .. } => {
                let status = self.lock().remove(*jid);
                // A session closed because its account was deleted must not leave a record behind.
                if !Self::others_available(server, jid) && server.account_exists(&jid.to_bare()).await {
                    self.record(server, &jid.to_bare(), status.as_deref()).await;
                }
                Flow::Continue
            }
            Event::AccountDeleted { jid, .. } => {
                self.lock().retain(|full, _| &full.to_bare() != *jid);
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_and_without_status() {
        assert_eq!(decode_record(&encode_record(42, None)), Some((42, None)));
        assert_eq!(decode_record(&encode_record(42, Some(""))), Some((42, None)));
        assert_eq!(decode_record(&encode_record(7, Some("gone\nfishing"))), Some((7, Some("gone\nfishing".into()))));
        assert_eq!(decode_record(b"nonsense"), None);
    }
}
