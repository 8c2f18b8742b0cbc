//! Pending alert (un)subscriptions requested on the status page. Anyone can type anyone's JID
//! into a web form, so a request only sends the account a confirmation message from the status
//! bot; the (un)subscription happens when that account replies `confirm <token>` or someone opens
//! the link with the one-time token and presses the button. Pure state, no I/O: the hub sends the
//! messages and stores the result.
//!
//! Bounded: at most `max` requests wait at once and `per_ip` per client address; each expires
//! after `ttl_secs`. A repeated request for the same JID and action while one waits sends nothing
//! new (so the form cannot be used to flood an account with messages).

use std::collections::HashMap;
use std::net::IpAddr;

/// What a confirmed request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubAction {
    Subscribe,
    Unsubscribe,
}

impl SubAction {
    pub fn parse(s: &str) -> Option<SubAction> {
        match s {
            "subscribe" => Some(SubAction::Subscribe),
            "unsubscribe" => Some(SubAction::Unsubscribe),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SubAction::Subscribe => "subscribe",
            SubAction::Unsubscribe => "unsubscribe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("too many confirmations are pending; try again later")]
    Full,
    #[error("too many confirmations pending from this address; try again later")]
    IpLimited,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfirmError {
    #[error("unknown or already used confirmation")]
    Unknown,
    #[error("the confirmation has expired; ask again on the status page")]
    Expired,
    #[error("this confirmation belongs to another account")]
    WrongAccount,
}

#[derive(Debug, Clone)]
struct Pending {
    jid: String,
    action: SubAction,
    ip: IpAddr,
    expires: u64,
}

/// What [`PendingConfirmations::request`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// Send the confirmation message with this token.
    New(String),
    /// The same JID and action already wait for confirmation: send nothing.
    AlreadyPending,
}

#[derive(Debug)]
pub struct PendingConfirmations {
    by_token: HashMap<String, Pending>,
    max: usize,
    per_ip: usize,
    ttl_secs: u64,
}

fn new_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl PendingConfirmations {
    pub fn new(max: usize, per_ip: usize, ttl_secs: u64) -> PendingConfirmations {
        PendingConfirmations { by_token: HashMap::new(), max: max.max(1), per_ip: per_ip.max(1), ttl_secs: ttl_secs.max(1) }
    }

    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    fn expire(&mut self, now: u64) {
        self.by_token.retain(|_, p| p.expires > now);
    }

    /// A request from the page for `jid` (already validated) from client address `ip`.
    pub fn request(&mut self, jid: &str, action: SubAction, ip: IpAddr, now: u64) -> Result<Requested, RequestError> {
        self.expire(now);
        if self.by_token.values().any(|p| p.jid == jid && p.action == action) {
            return Ok(Requested::AlreadyPending);
        }
        if self.by_token.values().filter(|p| p.ip == ip).count() >= self.per_ip {
            return Err(RequestError::IpLimited);
        }
        if self.by_token.len() >= self.max {
            return Err(RequestError::Full);
        }
        let token = new_token();
        self.by_token.insert(token.clone(), Pending { jid: jid.to_owned(), action, ip, expires: now + self.ttl_secs });
        Ok(Requested::New(token))
    }

    /// What `token` would do, without using it (the confirmation page shows it before the button).
    pub fn peek(&self, token: &str, now: u64) -> Result<(String, SubAction), ConfirmError> {
        let p = self.by_token.get(token).ok_or(ConfirmError::Unknown)?;
        if p.expires <= now {
            return Err(ConfirmError::Expired);
        }
        Ok((p.jid.clone(), p.action))
    }

    /// Use `token` once. `from` is the replying account when confirmed in chat (it must be the
    /// JID the request was for); `None` for the link, whose token alone proves receipt.
    pub fn confirm(&mut self, token: &str, from: Option<&str>, now: u64) -> Result<(String, SubAction), ConfirmError> {
        let p = self.by_token.get(token).ok_or(ConfirmError::Unknown)?;
        if p.expires <= now {
            self.by_token.remove(token);
            return Err(ConfirmError::Expired);
        }
        if from.is_some_and(|f| f != p.jid) {
            return Err(ConfirmError::WrongAccount);
        }
        let p = self.by_token.remove(token).ok_or(ConfirmError::Unknown)?;
        Ok((p.jid, p.action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const IP2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn token(r: Result<Requested, RequestError>) -> String {
        match r {
            Ok(Requested::New(t)) => t,
            other => panic!("expected a new token, got {other:?}"),
        }
    }

    #[test]
    fn token_confirms_once_and_only_for_its_account() {
        let mut p = PendingConfirmations::new(10, 5, 3600);
        let t = token(p.request("alice@example.com", SubAction::Subscribe, IP, 100));
        assert_eq!(t.len(), 32);
        assert_eq!(p.confirm(&t, Some("mallory@example.com"), 101), Err(ConfirmError::WrongAccount));
        assert_eq!(p.confirm(&t, Some("alice@example.com"), 102), Ok(("alice@example.com".to_owned(), SubAction::Subscribe)));
        assert_eq!(p.confirm(&t, None, 103), Err(ConfirmError::Unknown), "one-time token");
    }

    #[test]
    fn expired_token_is_refused_and_forgotten() {
        let mut p = PendingConfirmations::new(10, 5, 60);
        let t = token(p.request("alice@example.com", SubAction::Unsubscribe, IP, 100));
        assert_eq!(p.peek(&t, 159), Ok(("alice@example.com".to_owned(), SubAction::Unsubscribe)));
        assert_eq!(p.confirm(&t, None, 160), Err(ConfirmError::Expired));
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn repeated_request_sends_nothing_new_and_limits_bound_memory() {
        let mut p = PendingConfirmations::new(3, 2, 3600);
        token(p.request("a@example.com", SubAction::Subscribe, IP, 0));
        assert_eq!(p.request("a@example.com", SubAction::Subscribe, IP2, 1), Ok(Requested::AlreadyPending));
        token(p.request("b@example.com", SubAction::Subscribe, IP, 2));
        assert_eq!(p.request("c@example.com", SubAction::Subscribe, IP, 3), Err(RequestError::IpLimited));
        token(p.request("c@example.com", SubAction::Subscribe, IP2, 4));
        assert_eq!(p.request("d@example.com", SubAction::Subscribe, IP2, 5), Err(RequestError::Full));
        assert_eq!(p.len(), 3);
        // Once they expire there is room again.
        token(p.request("d@example.com", SubAction::Subscribe, IP2, 4000));
        assert_eq!(p.len(), 1);
    }
}
