//! Authentication for client streams: RFC 6120 SASL, XEP-0388 SASL2 (no stream restart) with
//! XEP-0386 Bind2 (bind and enable features in the same round trip) and XEP-0484 FAST tokens (one
//! round trip, no PBKDF2, for reconnect storms). Mechanism logic lives in the sans-IO kabar-sasl.
//!
//! FAST tokens are kept in the key-value store "fast-tokens" (key: the client's user-agent id),
//! valid for [`FAST_TOKEN_LIFETIME_SECS`], replaced whenever the client asks for a new one.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use jid::BareJid;
use kabar_core::config::ResourceConflict;
use kabar_core::ns;
use kabar_core::stanza::StanzaError;
use kabar_core::time;
use kabar_sasl::{
    ht_server_final, new_token, parse_ht, parse_plain, verify_ht, verify_plain, HtMechanism, Mechanism, SaslError,
    ScramHash, ScramServer,
};
use kabar_xml::{elem, Element, ElementExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::c2s::{Bound, C2s, Conn, Round};
use crate::session::NS_SM;
use crate::stream::random_id;

pub const NS_SASL2: &str = "urn:xmpp:sasl:2";
pub const NS_BIND2: &str = "urn:xmpp:bind:0";
pub const NS_FAST: &str = "urn:xmpp:fast:0";
/// Failed SASL attempts one connection may make before it is closed.
const MAX_AUTH_ATTEMPTS: u32 = 5;
/// How long a FAST token stays valid.
pub const FAST_TOKEN_LIFETIME_SECS: u64 = 30 * 24 * 3600;
const FAST_STORE: &str = "fast-tokens";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Legacy,
    Sasl2,
}

impl Flavor {
    fn ns(self) -> &'static str {
        match self {
            Flavor::Legacy => ns::SASL,
            Flavor::Sasl2 => NS_SASL2,
        }
    }
}

/// A successful exchange: who, and the mechanism's final data for the client.
struct Authenticated {
    jid: BareJid,
    additional: Option<Vec<u8>>,
    /// The FAST token used, if the client authenticated with one.
    fast_key: Option<String>,
}

/// A failed exchange and, for counting, the account name it was for.
type Failure = (SaslError, Option<String>);

/// What the SASL2 exchange led to.
pub(crate) enum Sasl2Outcome {
    Retry,
    Authenticated(BareJid),
    Bound(Bound),
}

impl C2s {
    pub(crate) fn offered_mechanisms(&self, conn: &Conn) -> Vec<Mechanism> {
        let plus = !conn.cb.available().is_empty();
        let mut mechs = Vec::new();
        if plus {
            mechs.extend([Mechanism::ScramSha256Plus, Mechanism::ScramSha1Plus]);
        }
        mechs.extend([Mechanism::ScramSha256, Mechanism::ScramSha1]);
        if conn.secure {
            mechs.push(Mechanism::Plain);
        }
        mechs
    }

    fn offered_fast(&self, conn: &Conn) -> Vec<HtMechanism> {
        if !conn.secure {
            return Vec::new();
        }
        HtMechanism::ALL.into_iter().filter(|m| m.binding_data(&conn.cb).is_some()).collect()
    }

    /// `<mechanisms/>` (RFC 6120) and `<authentication/>` (XEP-0388) with Bind2 and FAST inline.
    pub(crate) fn auth_features(&self, conn: &Conn) -> Vec<Element> {
        let mechs = self.offered_mechanisms(conn);
        let mut legacy = elem("mechanisms", ns::SASL);
        let mut sasl2 = elem("authentication", NS_SASL2);
        for m in &mechs {
            legacy.append_child(elem("mechanism", ns::SASL).with_text(m.name()));
            sasl2.append_child(elem("mechanism", NS_SASL2).with_text(m.name()));
        }
        let mut inline = elem("inline", NS_SASL2);
        let mut bind_inline = elem("inline", NS_BIND2).with_child(elem("feature", NS_BIND2).with_attr("var", NS_SM));
        for var in self.server.bind2_features() {
            bind_inline.append_child(elem("feature", NS_BIND2).with_attr("var", var));
        }
        inline.append_child(elem("bind", NS_BIND2).with_child(bind_inline));
        let fast = self.offered_fast(conn);
        if !fast.is_empty() {
            let mut f = elem("fast", NS_FAST);
            for m in fast {
                f.append_child(elem("mechanism", NS_FAST).with_text(m.name()));
            }
            inline.append_child(f);
        }
        sasl2.append_child(inline);
        vec![legacy, sasl2]
    }

    async fn send_failure<S: AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn,
        io: &mut S,
        flavor: Flavor,
        condition: &str,
        text: Option<&str>,
    ) -> Result<(), Round> {
        let mut failure = elem("failure", flavor.ns()).with_child(elem(condition, ns::SASL));
        if let Some(text) = text {
            failure.append_child(elem("text", flavor.ns()).with_text(text));
        }
        conn.writer.send(io, &failure).await.map_err(|_| Round::End)?;
        conn.failures += 1;
        if conn.failures >= MAX_AUTH_ATTEMPTS {
            return Err(self.fail_stream(conn, io, "policy-violation", Some("too many failed authentication attempts")).await);
        }
        Ok(())
    }

    async fn challenge<S: AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S, flavor: Flavor, data: &[u8]) -> Result<(), Round> {
        let el = elem("challenge", flavor.ns()).with_text(B64.encode(data));
        conn.writer.send(io, &el).await.map_err(|_| Round::End)
    }

    /// The client's next step: `Ok(Some(bytes))` for a response, `Ok(None)` for abort.
    async fn response<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn,
        io: &mut S,
        flavor: Flavor,
    ) -> Result<Result<Option<Vec<u8>>, SaslError>, Round> {
        let el = self.next_element(conn, io).await?;
        if el.is("abort", flavor.ns()) {
            return Ok(Ok(None));
        }
        if !el.is("response", flavor.ns()) {
            return Err(self.fail_stream(conn, io, "not-authorized", Some("expected a SASL response")).await);
        }
        Ok(decode_sasl(&el.text()).map(Some))
    }

    /// RFC 6120 §6.4: `<auth/>`. `Ok(Some(jid))` on success (the stream then restarts).
    pub(crate) async fn sasl_legacy<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn,
        io: &mut S,
        auth: &Element,
    ) -> Result<Option<BareJid>, Round> {
        let initial = auth.text();
        let mechanism = auth.attr("mechanism").unwrap_or_default().to_string();
        match self.exchange(conn, io, Flavor::Legacy, &mechanism, Some(initial), None).await? {
            Ok(ok) => {
                let mut success = elem("success", ns::SASL);
                if let Some(data) = ok.additional {
                    success.append_text(B64.encode(data));
                }
                conn.writer.send(io, &success).await.map_err(|_| Round::End)?;
                Ok(Some(ok.jid))
            }
            Err((e, _)) => {
                self.send_failure(conn, io, Flavor::Legacy, e.condition(), failure_text(e)).await?;
                Ok(None)
            }
        }
    }

    /// XEP-0388 `<authenticate/>`, with optional Bind2 `<bind/>` and FAST `<request-token/>`.
    pub(crate) async fn sasl2<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn,
        io: &mut S,
        auth: &Element,
    ) -> Result<Sasl2Outcome, Round> {
        let mechanism = auth.attr("mechanism").unwrap_or_default().to_string();
        let initial = auth.get_child("initial-response", NS_SASL2).map(|e| e.text());
        let user_agent = auth.get_child("user-agent", NS_SASL2);
        let ua_id = user_agent.and_then(|u| u.attr("id")).map(str::to_string);
        let fast_key = ua_id.clone().unwrap_or_default();
        let ok = match self.exchange(conn, io, Flavor::Sasl2, &mechanism, initial, Some(&fast_key)).await? {
            Ok(ok) => ok,
            Err((e, _)) => {
                self.send_failure(conn, io, Flavor::Sasl2, e.condition(), failure_text(e)).await?;
                return Ok(Sasl2Outcome::Retry);
            }
        };
        let mut success = elem("success", NS_SASL2);
        if let Some(data) = &ok.additional {
            success.append_child(elem("additional-data", NS_SASL2).with_text(B64.encode(data)));
        }
        let mut extras = Vec::new();
        // XEP-0484 §4: a token is issued (or rotated) on request; `invalidate` revokes the one used.
        if let Some(fast) = auth.get_child("fast", NS_FAST) {
            if matches!(fast.attr("invalidate"), Some("true") | Some("1")) {
                let key = ok.fast_key.clone().unwrap_or_else(|| fast_key.clone());
                let _ = self.server.store.kv_delete(ok.jid.as_str(), FAST_STORE, &key).await;
            }
        }
        if let Some(req) = auth.get_child("request-token", NS_FAST) {
            let mech = req.attr("mechanism").and_then(HtMechanism::from_name);
            if let Some(mech) = mech.filter(|m| self.offered_fast(conn).contains(m)) {
                let token = new_token();
                let expiry = time::unix_now() + FAST_TOKEN_LIFETIME_SECS;
                let record = format!("{}\n{expiry}\n{token}", mech.name());
                match self.server.store.kv_put(ok.jid.as_str(), FAST_STORE, &fast_key, record.as_bytes()).await {
                    Ok(()) => extras.push(
                        elem("token", NS_FAST).with_attr("token", token).with_attr("expiry", time::xep0082(expiry)),
                    ),
                    Err(e) => warn!(error = %e, "could not store a FAST token"),
                }
            }
        }
        let bind_request = auth.get_child("bind", NS_BIND2).cloned();
        let Some(bind_request) = bind_request else {
            success.append_child(elem("authorization-identifier", NS_SASL2).with_text(ok.jid.as_str()));
            for e in extras {
                success.append_child(e);
            }
            conn.writer.send(io, &success).await.map_err(|_| Round::End)?;
            return Ok(Sasl2Outcome::Authenticated(ok.jid));
        };
        // XEP-0386 §3: the resource is the client's tag plus a part derived from its user-agent id,
        // so the same installation gets the same resource each time.
        let tag: String = bind_request
            .get_child("tag", NS_BIND2)
            .map(|t| t.text().trim().chars().filter(|c| !c.is_whitespace() && *c != '/').take(32).collect())
            .unwrap_or_default();
        let suffix = match &ua_id {
            Some(id) => short_hash(id),
            None => random_id(8),
        };
        let resource = if tag.is_empty() { suffix } else { format!("{tag}.{suffix}") };
        let mut bound = match self.bind_resource(&ok.jid, Some(resource)) {
            Ok(b) => b,
            Err(err) => {
                let failure = elem("failure", NS_SASL2)
                    .with_child(elem("aborted", ns::SASL))
                    .with_child(elem("text", NS_SASL2).with_text(err.text.unwrap_or_else(|| err.condition.to_string())));
                conn.writer.send(io, &failure).await.map_err(|_| Round::End)?;
                return Ok(Sasl2Outcome::Retry);
            }
        };
        let mut bound_el = elem("bound", NS_BIND2);
        for req in bind_request.children() {
            if req.is("enable", NS_SM) {
                let resume = matches!(req.attr("resume"), Some("true") | Some("1"))
                    && self.server.config.stream_management.resume_timeout_secs > 0;
                let mut enabled = elem("enabled", NS_SM);
                let id = resume.then(|| random_id(24));
                if let Some(id) = &id {
                    enabled.set_attr_str("id", id.clone());
                    enabled.set_attr_str("resume", "true");
                    enabled.set_attr_str("max", self.server.config.stream_management.resume_timeout_secs.to_string());
                }
                bound.sm = Some(id);
                bound_el.append_child(enabled);
            } else if let Some(result) = self.server.bind2_enable(&bound.jid, req).await {
                bound_el.append_child(result);
            }
        }
        success.append_child(elem("authorization-identifier", NS_SASL2).with_text(bound.jid.as_str()));
        success.append_child(bound_el);
        for e in extras {
            success.append_child(e);
        }
        if conn.writer.send(io, &success).await.is_err() {
            self.server.sessions.unregister(&bound.jid, &bound.tx);
            return Err(Round::End);
        }
        Ok(Sasl2Outcome::Bound(bound))
    }

    /// Runs one mechanism to its end. Failures are counted against the IP and account limits here.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn,
        io: &mut S,
        flavor: Flavor,
        mechanism: &str,
        initial: Option<String>,
        fast_key: Option<&str>,
    ) -> Result<Result<Authenticated, Failure>, Round> {
        if !conn.secure && self.server.config.c2s.require_encryption {
            return Ok(Err((SaslError::EncryptionRequired, None)));
        }
        let scram_or_plain = Mechanism::from_name(mechanism).filter(|m| self.offered_mechanisms(conn).contains(m));
        let ht = match flavor {
            Flavor::Sasl2 => HtMechanism::from_name(mechanism).filter(|m| self.offered_fast(conn).contains(m)),
            Flavor::Legacy => None,
        };
        if scram_or_plain.is_none() && ht.is_none() {
            return Ok(Err((SaslError::InvalidMechanism, None)));
        }
        let ip_key = format!("ip:{}", conn.peer.ip());
        if !self.server.auth_failures_by_ip.would_allow(&ip_key) {
            return Ok(Err((SaslError::TemporaryAuthFailure, None)));
        }
        // RFC 6120 §6.4.2: no content means no initial response; "=" means an empty one.
        let first = match initial.as_deref().map(str::trim) {
            Some(text) if !text.is_empty() => match decode_sasl(text) {
                Ok(data) => data,
                Err(e) => return Ok(Err((e, None))),
            },
            _ => {
                self.challenge(conn, io, flavor, b"").await?;
                match self.response(conn, io, flavor).await? {
                    Ok(Some(data)) => data,
                    Ok(None) => return Ok(Err((SaslError::Aborted, None))),
                    Err(e) => return Ok(Err((e, None))),
                }
            }
        };
        let outcome = match (scram_or_plain, ht) {
            (_, Some(ht)) => self.ht(conn, ht, &first, fast_key.unwrap_or_default()).await,
            (Some(m), None) => match m.hash() {
                None => self.plain(&first).await,
                Some(hash) => self.scram(conn, io, flavor, m, hash, &first).await?,
            },
            (None, None) => Err((SaslError::InvalidMechanism, None)),
        };
        match &outcome {
            Ok(_) => self.server.metrics.auth_success.inc(),
            Err(_) => self.server.metrics.auth_failure.inc(),
        }
        if let Err((SaslError::NotAuthorized, account)) = &outcome {
            self.server.auth_failures_by_ip.allow(&ip_key);
            if let Some(account) = account {
                self.server.auth_failures_by_account.allow(&format!("user:{account}"));
            }
            info!(mechanism, "authentication failed");
        }
        if let Ok(ok) = &outcome {
            info!(user = %ok.jid, mechanism, "authenticated");
        }
        Ok(outcome)
    }

    fn account_throttled(&self, account: &str) -> bool {
        !self.server.auth_failures_by_account.would_allow(&format!("user:{account}"))
    }

    /// `Err` when the store could not answer (e.g. PostgreSQL's pool exhausted in a login storm): that
    /// is RFC 6120 §6.5.11 `<temporary-auth-failure/>`, never `<not-authorized/>` (the client would
    /// conclude its password is wrong) and never counted as a failed login.
    async fn credentials(
        &self,
        jid: Option<&BareJid>,
        hash: ScramHash,
    ) -> Result<Option<kabar_sasl::ScramCredentials>, SaslError> {
        let Some(jid) = jid else { return Ok(None) };
        let timer = self.server.metrics.store(kabar_core::metrics::StoreOp::Credentials).start_timer();
        let found = self.server.store.credentials(jid.as_str()).await;
        drop(timer);
        match found {
            Ok(Some(c)) => Ok(Some(match hash {
                ScramHash::Sha1 => c.scram_sha1,
                ScramHash::Sha256 => c.scram_sha256,
            })),
            Ok(None) => Ok(None),
            Err(e) => {
                warn!(error = %e, "credential lookup failed: answering temporary-auth-failure");
                Err(SaslError::TemporaryAuthFailure)
            }
        }
    }

    fn check_authzid(&self, authzid: Option<&str>, jid: &BareJid) -> Result<(), SaslError> {
        match authzid {
            None => Ok(()),
            Some(z) if kabar_core::stanza::parse_bare(z).is_ok_and(|z| &z == jid) => Ok(()),
            Some(_) => Err(SaslError::InvalidAuthzid),
        }
    }

    async fn plain(&self, data: &[u8]) -> Result<Authenticated, Failure> {
        let msg = parse_plain(data).map_err(|e| (e, None))?;
        let jid = kabar_core::accounts::parse_account(&msg.authcid, &self.server.domain).ok();
        let key = jid.as_ref().map(|j| j.to_string()).unwrap_or_else(|| msg.authcid.clone());
        if self.account_throttled(&key) {
            return Err((SaslError::TemporaryAuthFailure, None));
        }
        let creds = self.credentials(jid.as_ref(), ScramHash::Sha256).await.map_err(|e| (e, None))?;
        let password = msg.password.clone();
        // PBKDF2 is deliberately slow: keep it off the async worker threads.
        let ok = tokio::task::spawn_blocking(move || verify_plain(&password, creds.as_ref(), ScramHash::Sha256))
            .await
            .unwrap_or(false);
        match jid {
            Some(jid) if ok => {
                self.check_authzid(msg.authzid.as_deref(), &jid).map_err(|e| (e, None))?;
                Ok(Authenticated { jid, additional: None, fast_key: None })
            }
            _ => Err((SaslError::NotAuthorized, Some(key))),
        }
    }

    async fn scram<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn,
        io: &mut S,
        flavor: Flavor,
        mech: Mechanism,
        hash: ScramHash,
        first: &[u8],
    ) -> Result<Result<Authenticated, Failure>, Round> {
        let plus_advertised = !conn.cb.available().is_empty();
        let mut scram = match ScramServer::new(mech, &conn.cb, plus_advertised) {
            Ok(s) => s,
            Err(e) => return Ok(Err((e, None))),
        };
        let client_first = match scram.client_first(first) {
            Ok(cf) => cf,
            Err(e) => return Ok(Err((e, None))),
        };
        let jid = kabar_core::accounts::parse_account(&client_first.username, &self.server.domain).ok();
        let key = jid.as_ref().map(|j| j.to_string()).unwrap_or_else(|| client_first.username.clone());
        if self.account_throttled(&key) {
            return Ok(Err((SaslError::TemporaryAuthFailure, None)));
        }
        let creds = match self.credentials(jid.as_ref(), hash).await {
            Ok(c) => c,
            Err(e) => return Ok(Err((e, None))),
        };
        let server_first = match scram.server_first(creds.as_ref()) {
            Ok(sf) => sf,
            Err(e) => return Ok(Err((e, None))),
        };
        self.challenge(conn, io, flavor, &server_first).await?;
        let response = match self.response(conn, io, flavor).await? {
            Ok(Some(data)) => data,
            Ok(None) => return Ok(Err((SaslError::Aborted, None))),
            Err(e) => return Ok(Err((e, None))),
        };
        let server_final = match scram.client_final(&response) {
            Ok(v) => v,
            Err(e) => return Ok(Err((e, Some(key)))),
        };
        let Some(jid) = jid else {
            return Ok(Err((SaslError::NotAuthorized, Some(key))));
        };
        if let Err(e) = self.check_authzid(client_first.authzid.as_deref(), &jid) {
            return Ok(Err((e, None)));
        }
        Ok(Ok(Authenticated { jid, additional: Some(server_final), fast_key: None }))
    }

    /// XEP-0484: verifies a FAST token proof for the token stored under the client's user-agent id.
    async fn ht(&self, conn: &Conn, mech: HtMechanism, first: &[u8], fast_key: &str) -> Result<Authenticated, Failure> {
        let (user, proof) = parse_ht(first).map_err(|e| (e, None))?;
        let jid = kabar_core::accounts::parse_account(&user, &self.server.domain).ok();
        let key = jid.as_ref().map(|j| j.to_string()).unwrap_or_else(|| user.clone());
        if self.account_throttled(&key) {
            return Err((SaslError::TemporaryAuthFailure, None));
        }
        let cb = mech.binding_data(&conn.cb).unwrap_or_default();
        let record = match &jid {
            Some(jid) => self.server.store.kv_get(jid.as_str(), FAST_STORE, fast_key).await.ok().flatten(),
            None => None,
        };
        let token = record.and_then(|r| parse_token_record(&r)).filter(|(name, expiry, _)| {
            name == mech.name() && *expiry > time::unix_now()
        });
        match (jid, token) {
            (Some(jid), Some((_, _, token))) if verify_ht(token.as_bytes(), cb, &proof) => Ok(Authenticated {
                additional: Some(ht_server_final(token.as_bytes(), cb)),
                jid,
                fast_key: Some(fast_key.to_string()),
            }),
            _ => Err((SaslError::NotAuthorized, Some(key))),
        }
    }

    /// RFC 6120 §7 resource binding shared by `<bind/>` IQs and Bind2: applies the conflict policy
    /// and the per-account session limit, and registers the session.
    pub(crate) fn bind_resource(&self, account: &BareJid, requested: Option<String>) -> Result<Bound, StanzaError> {
        let config = &self.server.config;
        let existing = self.server.sessions.sessions(account);
        let mut resource = requested.unwrap_or_else(|| format!("kabar-{}", random_id(10)));
        let policy = config.c2s.resource_conflict;
        if policy == ResourceConflict::Random && existing.iter().any(|s| s.jid.resource().as_str() == resource) {
            resource = format!("{resource}-{}", random_id(6));
        }
        let full = account.with_resource_str(&resource).map_err(|_| StanzaError::bad_request().with_text("invalid resource"))?;
        let replacing = existing.iter().any(|s| s.jid == full);
        if !replacing && existing.len() >= config.limits.max_sessions_per_account {
            return Err(StanzaError::resource_constraint().with_text("too many sessions for this account"));
        }
        let (tx, rx) = mpsc::channel(config.limits.session_queue.max(16));
        if !self.server.sessions.register(full.clone(), tx.clone(), policy == ResourceConflict::Replace) {
            return Err(StanzaError::conflict());
        }
        Ok(Bound { jid: full, tx, rx, sm: None })
    }
}

fn failure_text(e: SaslError) -> Option<&'static str> {
    match e {
        SaslError::TemporaryAuthFailure => Some("authentication is temporarily unavailable (too many failed logins, or the account store is busy); try again later"),
        _ => None,
    }
}

/// "mechanism\nexpiry\ntoken"
fn parse_token_record(bytes: &[u8]) -> Option<(String, u64, String)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(3, '\n');
    let name = parts.next()?.to_string();
    let expiry = parts.next()?.parse().ok()?;
    let token = parts.next()?.to_string();
    Some((name, expiry, token))
}

/// A short, stable resource part from a user-agent id.
fn short_hash(id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn decode_sasl(text: &str) -> Result<Vec<u8>, SaslError> {
    let text = text.trim();
    if text == "=" {
        return Ok(Vec::new());
    }
    B64.decode(text).map_err(|_| SaslError::IncorrectEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xep0484_token_records_round_trip_and_reject_garbage() {
        let rec = parse_token_record(b"HT-SHA-256-NONE\n123\nabc\ndef").expect("parses");
        assert_eq!(rec, ("HT-SHA-256-NONE".to_string(), 123, "abc\ndef".to_string()));
        assert!(parse_token_record(b"x\nnot-a-number\ny").is_none());
        assert!(parse_token_record(&[0xff]).is_none());
    }

    #[test]
    fn xep0386_resource_suffix_is_stable_per_user_agent() {
        assert_eq!(short_hash("d4565fa7"), short_hash("d4565fa7"));
        assert_ne!(short_hash("a"), short_hash("b"));
        assert_eq!(short_hash("a").len(), 8);
    }
}
