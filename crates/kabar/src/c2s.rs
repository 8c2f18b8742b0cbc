//! Client connections (RFC 6120): STARTTLS or direct TLS (XEP-0368), SASL, resource binding, then
//! the session loop that feeds stanzas to the core and writes what the core routes to us.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use jid::{BareJid, FullJid};
use kabar_core::config::ResourceConflict;
use kabar_core::ns;
use kabar_core::sessions::Outbound;
use kabar_core::stanza::{self, Kind, StanzaError};
use kabar_core::Server;
use kabar_sasl::{parse_plain, verify_plain, ChannelBindings, Mechanism, SaslError, ScramHash, ScramServer};
use kabar_xml::{elem, Element, ElementExt, HeaderAttrs, Limits, StreamEvent, StreamFramer, StreamHeader, StreamWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tracing::{debug, info, warn, Instrument};

use crate::session::{ResumeRequest, ResumeRegistry, Session, NS_CSI, NS_SM};
use crate::stream::{random_id, Io, ReadError, Reader, Writer};
use crate::tls::Tls;

/// Failed SASL attempts one connection may make before it is closed.
const MAX_AUTH_ATTEMPTS: u32 = 5;

pub struct C2s {
    pub server: Arc<Server>,
    pub tls: Arc<Tls>,
    pub resumable: Arc<ResumeRegistry>,
}

/// Negotiation state of one connection before the session starts.
struct Conn {
    reader: Reader,
    writer: Writer,
    stream_id: String,
    secure: bool,
    cb: ChannelBindings,
    authed: Option<BareJid>,
    failures: u32,
    lang: String,
    peer: SocketAddr,
    deadline: Instant,
}

enum Round {
    Restart,
    StartTls,
    Bound(Bound),
    /// XEP-0198 §5: take over session `previd`, the client having received `h` stanzas.
    Resume { previd: String, h: u32 },
    End,
}

struct Bound {
    jid: FullJid,
    tx: mpsc::Sender<Outbound>,
    rx: mpsc::Receiver<Outbound>,
}

impl C2s {
    pub async fn handle(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
        let span = tracing::info_span!("c2s", %peer, jid = tracing::field::Empty);
        self.run(tcp, peer, direct_tls).instrument(span).await;
    }

    async fn run(&self, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
        let _ = tcp.set_nodelay(true);
        let config = &self.server.config;
        let limits = Limits { max_stanza_bytes: config.limits.max_stanza_bytes, max_depth: config.limits.max_xml_depth };
        let deadline = Instant::now() + Duration::from_secs(config.limits.unauthenticated_timeout_secs);
        let mut conn = Conn {
            reader: Reader::new(StreamFramer::new(limits)),
            writer: Writer::new(StreamWriter::new()),
            stream_id: random_id(16),
            secure: false,
            cb: ChannelBindings::default(),
            authed: None,
            failures: 0,
            lang: "en".into(),
            peer,
            deadline,
        };
        // Clients that try direct TLS on the STARTTLS port (several do, before falling back) get
        // TLS: a TLS record starts with 0x16, an XML stream never does.
        let mut first = [0u8; 1];
        let direct_tls = direct_tls
            || matches!(timeout_at(deadline, tcp.peek(&mut first)).await, Ok(Ok(1)) if first[0] == 0x16);
        let mut io = if direct_tls {
            match timeout_at(deadline, self.tls.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    conn.secure = true;
                    conn.cb = self.tls.channel_bindings(tls.get_ref().1);
                    Io::Tls(Box::new(tls))
                }
                Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
                Err(_) => return debug!("TLS handshake timed out"),
            }
        } else {
            Io::Plain(tcp)
        };
        let bound = loop {
            match self.round(&mut conn, &mut io).await {
                Round::Restart => continue,
                Round::StartTls => {
                    let Io::Plain(tcp) = io else { return };
                    match timeout_at(deadline, self.tls.acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            conn.secure = true;
                            conn.cb = self.tls.channel_bindings(tls.get_ref().1);
                            io = Io::Tls(Box::new(tls));
                            conn.reader.reset();
                            conn.writer = Writer::new(StreamWriter::new());
                            conn.stream_id = random_id(16);
                        }
                        Ok(Err(e)) => return debug!(error = %e, "TLS handshake after STARTTLS failed"),
                        Err(_) => return debug!("TLS handshake timed out"),
                    }
                }
                Round::Bound(b) => break b,
                Round::Resume { previd, h } => {
                    let target = conn.authed.as_ref().and_then(|account| self.resumable.find(&previd, account));
                    if let Some(target) = target {
                        let req = ResumeRequest { h, io, reader: conn.reader, writer: conn.writer };
                        match target.send(req).await {
                            // The session's own task carries on with this connection.
                            Ok(()) => return,
                            Err(mpsc::error::SendError(back)) => {
                                io = back.io;
                                conn.reader = back.reader;
                                conn.writer = back.writer;
                            }
                        }
                    }
                    let failed = elem("failed", NS_SM).with_child(elem("item-not-found", ns::STANZAS));
                    if conn.writer.send(&mut io, &failed).await.is_err() {
                        return;
                    }
                    // The client may bind a new session on the same stream.
                    match self.round_elements(&mut conn, &mut io).await {
                        Round::Bound(b) => break b,
                        _ => return,
                    }
                }
                Round::End => return,
            }
        };
        tracing::Span::current().record("jid", tracing::field::display(&bound.jid));
        info!(secure = conn.secure, "session started");
        self.server.notify(kabar_core::Event::SessionStarted { jid: &bound.jid }).await;
        let Conn { reader, writer, .. } = conn;
        let Bound { jid, tx, rx } = bound;
        Session::new(self.server.clone(), self.resumable.clone(), jid, tx, rx).run(io, reader, writer).await;
    }

    async fn fail_stream<S: AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S, condition: &str, text: Option<&str>) -> Round {
        info!(condition, text, "closing stream with error");
        let header = HeaderAttrs {
            content_ns: ns::CLIENT,
            from: Some(self.server.domain.as_str()),
            to: None,
            id: &conn.stream_id,
            version: Some("1.0"),
            lang: Some("en"),
        };
        let _ = conn.writer.stream_error(io, &header, condition, text).await;
        Round::End
    }

    /// Reads the next element within the negotiation deadline, turning transport trouble into the
    /// right stream error.
    async fn next_element<S: AsyncRead + AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S) -> Result<Element, Round> {
        match timeout_at(conn.deadline, conn.reader.next(io)).await {
            Err(_) => Err(self.fail_stream(conn, io, "connection-timeout", Some("authentication took too long")).await),
            Ok(Ok(StreamEvent::Element(el))) => Ok(el),
            Ok(Ok(StreamEvent::Close)) => {
                let _ = conn.writer.close(io).await;
                Err(Round::End)
            }
            Ok(Ok(StreamEvent::Open(_))) => Err(self.fail_stream(conn, io, "not-well-formed", None).await),
            Ok(Err(ReadError::Framing(e))) => {
                warn!(error = %e, "bad XML from client");
                Err(self.fail_stream(conn, io, e.condition(), Some(&e.to_string())).await)
            }
            Ok(Err(e)) => {
                debug!(error = %e, "connection ended during negotiation");
                Err(Round::End)
            }
        }
    }

    /// One stream (header, features, elements) until it restarts, the session is bound, or it ends.
    async fn round<S: AsyncRead + AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S) -> Round {
        let header = match timeout_at(conn.deadline, conn.reader.next(io)).await {
            Err(_) => return self.fail_stream(conn, io, "connection-timeout", None).await,
            Ok(Ok(StreamEvent::Open(h))) => h,
            Ok(Ok(_)) => return self.fail_stream(conn, io, "not-well-formed", None).await,
            Ok(Err(ReadError::Framing(e))) => {
                return self.fail_stream(conn, io, e.condition(), Some(&e.to_string())).await;
            }
            Ok(Err(_)) => return Round::End,
        };
        if let Err(round) = self.accept_header(conn, io, &header).await {
            return round;
        }
        let features = self.features(conn);
        if conn.writer.send(io, &features).await.is_err() {
            return Round::End;
        }
        self.round_elements(conn, io).await
    }

    /// The elements of one stream after its features were sent.
    async fn round_elements<S: AsyncRead + AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S) -> Round {
        loop {
            let el = match self.next_element(conn, io).await {
                Ok(el) => el,
                Err(round) => return round,
            };
            if el.is("starttls", ns::TLS) && !conn.secure {
                if conn.writer.send(io, &elem("proceed", ns::TLS)).await.is_err() {
                    return Round::End;
                }
                return Round::StartTls;
            }
            if el.is("auth", ns::SASL) && conn.authed.is_none() {
                match self.sasl(conn, io, &el).await {
                    Ok(Some(jid)) => {
                        info!(user = %jid, "authenticated");
                        conn.authed = Some(jid);
                        conn.reader.reset();
                        conn.writer = Writer::new(StreamWriter::new());
                        conn.stream_id = random_id(16);
                        return Round::Restart;
                    }
                    Ok(None) => continue,
                    Err(round) => return round,
                }
            }
            if el.ns() == NS_SM && conn.authed.is_some() {
                if el.name() == "resume" {
                    let previd = el.attr("previd").unwrap_or_default().to_string();
                    let h = el.attr("h").and_then(|h| h.parse::<u32>().ok());
                    if let Some(h) = h {
                        return Round::Resume { previd, h };
                    }
                }
                // XEP-0198 §3: <enable/> before binding (or a malformed <resume/>) is refused.
                let failed = elem("failed", NS_SM).with_child(elem("unexpected-request", ns::STANZAS));
                if conn.writer.send(io, &failed).await.is_err() {
                    return Round::End;
                }
                continue;
            }
            if Kind::of(&el) == Some(Kind::Iq) {
                if let Some(account) = conn.authed.clone() {
                    if el.get_child("bind", ns::BIND).is_some() {
                        match self.bind(conn, io, &account, &el).await {
                            Ok(Some(bound)) => return Round::Bound(bound),
                            Ok(None) => continue,
                            Err(round) => return round,
                        }
                    }
                } else if el.get_child("query", "jabber:iq:register").is_some()
                    && (conn.secure || !self.server.config.c2s.require_encryption)
                {
                    let reply = kabar_modules::register::handle_pre_auth(&self.server, conn.peer.ip(), &el).await;
                    if conn.writer.send(io, &reply).await.is_err() {
                        return Round::End;
                    }
                    continue;
                }
            }
            // RFC 6120 §4.9.3.12 / §6.4: nothing but negotiation before a resource is bound.
            return self.fail_stream(conn, io, "not-authorized", Some("authenticate and bind a resource first")).await;
        }
    }

    async fn accept_header<S: AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S, h: &StreamHeader) -> Result<(), Round> {
        if let Some(lang) = &h.lang {
            if !lang.is_empty() && lang.len() <= 35 && lang.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                conn.lang = lang.clone();
            }
        }
        if let Some(to) = &h.to {
            if !to.eq_ignore_ascii_case(&self.server.domain) {
                return Err(self.fail_stream(conn, io, "host-unknown", Some("this server does not serve that domain")).await);
            }
        }
        let major = h.version.as_deref().and_then(|v| v.split('.').next()).and_then(|m| m.parse::<u32>().ok());
        if major != Some(1) {
            return Err(self.fail_stream(conn, io, "unsupported-version", Some("XMPP 1.0 streams only")).await);
        }
        let header = HeaderAttrs {
            content_ns: ns::CLIENT,
            from: Some(self.server.domain.as_str()),
            to: None,
            id: &conn.stream_id,
            version: Some("1.0"),
            lang: Some(&conn.lang),
        };
        conn.writer.header(io, &header).await.map_err(|_| Round::End)
    }

    fn offered_mechanisms(&self, conn: &Conn) -> Vec<Mechanism> {
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

    fn features(&self, conn: &Conn) -> Element {
        let mut features = elem("features", ns::STREAMS);
        let require_tls = self.server.config.c2s.require_encryption;
        if !conn.secure {
            let mut starttls = elem("starttls", ns::TLS);
            if require_tls {
                starttls.append_child(elem("required", ns::TLS));
            }
            features.append_child(starttls);
            if require_tls {
                return features;
            }
        }
        if conn.authed.is_none() {
            let mut mechs = elem("mechanisms", ns::SASL);
            for m in self.offered_mechanisms(conn) {
                mechs.append_child(elem("mechanism", ns::SASL).with_text(m.name()));
            }
            features.append_child(mechs);
            let types = conn.cb.available();
            if !types.is_empty() {
                // XEP-0440: tell clients which channel-binding types we support.
                let mut cb = elem("sasl-channel-binding", ns::SASL_CB);
                for t in types {
                    cb.append_child(elem("channel-binding", ns::SASL_CB).with_attr("type", t.name()));
                }
                features.append_child(cb);
            }
            if let Some(register) = kabar_modules::register::pre_auth_feature(&self.server) {
                features.append_child(register);
            }
        } else {
            features.append_child(elem("bind", ns::BIND));
            features.append_child(kabar_modules::disco::caps_feature(&self.server));
            features.append_child(elem("sm", NS_SM));
            features.append_child(elem("csi", NS_CSI));
            for f in self.server.stream_features() {
                features.append_child(f);
            }
        }
        features
    }

    async fn sasl_failure<S: AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S, condition: &str, text: Option<&str>) -> Result<Option<BareJid>, Round> {
        let mut failure = elem("failure", ns::SASL).with_child(elem(condition, ns::SASL));
        if let Some(text) = text {
            failure.append_child(elem("text", ns::SASL).with_text(text));
        }
        conn.writer.send(io, &failure).await.map_err(|_| Round::End)?;
        conn.failures += 1;
        if conn.failures >= MAX_AUTH_ATTEMPTS {
            return Err(self.fail_stream(conn, io, "policy-violation", Some("too many failed authentication attempts")).await);
        }
        Ok(None)
    }

    /// Reads the client's next SASL step: `Ok(Some(bytes))` for a response, `Ok(None)` for abort.
    async fn sasl_response<S: AsyncRead + AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S) -> Result<Result<Option<Vec<u8>>, SaslError>, Round> {
        let el = self.next_element(conn, io).await?;
        if el.is("abort", ns::SASL) {
            return Ok(Ok(None));
        }
        if !el.is("response", ns::SASL) {
            return Err(self.fail_stream(conn, io, "not-authorized", Some("expected a SASL response")).await);
        }
        Ok(decode_sasl(&el.text()).map(Some))
    }

    async fn challenge<S: AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S, data: &[u8]) -> Result<(), Round> {
        let el = elem("challenge", ns::SASL).with_text(B64.encode(data));
        conn.writer.send(io, &el).await.map_err(|_| Round::End)
    }

    /// RFC 6120 §6.4. `Ok(Some(jid))` on success, `Ok(None)` after a failure the client may retry.
    async fn sasl<S: AsyncRead + AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S, auth: &Element) -> Result<Option<BareJid>, Round> {
        if !conn.secure && self.server.config.c2s.require_encryption {
            return self.sasl_failure(conn, io, "encryption-required", None).await;
        }
        let mech = auth.attr("mechanism").and_then(Mechanism::from_name);
        let Some(mech) = mech.filter(|m| self.offered_mechanisms(conn).contains(m)) else {
            return self.sasl_failure(conn, io, "invalid-mechanism", None).await;
        };
        let ip_key = format!("ip:{}", conn.peer.ip());
        if !self.server.auth_failures_by_ip.would_allow(&ip_key) {
            return self.sasl_failure(conn, io, "temporary-auth-failure", Some("too many failed logins; try again later")).await;
        }
        let text = auth.text();
        // RFC 6120 §6.4.2: no content means no initial response; "=" means an empty one.
        let initial = match text.trim() {
            "" => None,
            _ => match decode_sasl(&text) {
                Ok(data) => Some(data),
                Err(e) => return self.sasl_failure(conn, io, e.condition(), None).await,
            },
        };
        let first = match initial {
            Some(data) => data,
            None => {
                self.challenge(conn, io, b"").await?;
                match self.sasl_response(conn, io).await? {
                    Ok(Some(data)) => data,
                    Ok(None) => return self.sasl_failure(conn, io, "aborted", None).await,
                    Err(e) => return self.sasl_failure(conn, io, e.condition(), None).await,
                }
            }
        };
        let outcome = match mech.hash() {
            None => self.sasl_plain(conn, &first).await,
            Some(hash) => self.sasl_scram(conn, io, mech, hash, &first).await?,
        };
        match outcome {
            Ok((jid, additional)) => {
                let mut success = elem("success", ns::SASL);
                if let Some(data) = additional {
                    success.append_text(B64.encode(data));
                }
                conn.writer.send(io, &success).await.map_err(|_| Round::End)?;
                Ok(Some(jid))
            }
            Err((e, account)) => {
                if matches!(e, SaslError::NotAuthorized) {
                    self.server.auth_failures_by_ip.allow(&ip_key);
                    if let Some(account) = account {
                        self.server.auth_failures_by_account.allow(&format!("user:{account}"));
                    }
                    info!(mechanism = mech.name(), "authentication failed");
                }
                self.sasl_failure(conn, io, e.condition(), None).await
            }
        }
    }

    fn account_throttled(&self, account: &str) -> bool {
        !self.server.auth_failures_by_account.would_allow(&format!("user:{account}"))
    }

    async fn credentials(&self, jid: Option<&BareJid>, hash: ScramHash) -> Option<kabar_sasl::ScramCredentials> {
        let jid = jid?;
        match self.server.store.credentials(jid.as_str()).await {
            Ok(Some(c)) => Some(match hash {
                ScramHash::Sha1 => c.scram_sha1,
                ScramHash::Sha256 => c.scram_sha256,
            }),
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "credential lookup failed");
                None
            }
        }
    }

    fn check_authzid(&self, authzid: Option<&str>, jid: &BareJid) -> Result<(), SaslError> {
        match authzid {
            None => Ok(()),
            Some(z) if BareJid::new(z).is_ok_and(|z| &z == jid) => Ok(()),
            Some(_) => Err(SaslError::InvalidAuthzid),
        }
    }

    async fn sasl_plain(&self, _conn: &mut Conn, data: &[u8]) -> Result<(BareJid, Option<Vec<u8>>), (SaslError, Option<String>)> {
        let msg = parse_plain(data).map_err(|e| (e, None))?;
        let jid = kabar_core::accounts::parse_account(&msg.authcid, &self.server.domain).ok();
        let key = jid.as_ref().map(|j| j.to_string()).unwrap_or_else(|| msg.authcid.clone());
        if self.account_throttled(&key) {
            return Err((SaslError::TemporaryAuthFailure, None));
        }
        let creds = self.credentials(jid.as_ref(), ScramHash::Sha256).await;
        let password = msg.password.clone();
        let ok = tokio::task::spawn_blocking(move || verify_plain(&password, creds.as_ref(), ScramHash::Sha256))
            .await
            .unwrap_or(false);
        match jid {
            Some(jid) if ok => {
                self.check_authzid(msg.authzid.as_deref(), &jid).map_err(|e| (e, None))?;
                Ok((jid, None))
            }
            _ => Err((SaslError::NotAuthorized, Some(key))),
        }
    }

    async fn sasl_scram<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn,
        io: &mut S,
        mech: Mechanism,
        hash: ScramHash,
        first: &[u8],
    ) -> Result<Result<(BareJid, Option<Vec<u8>>), (SaslError, Option<String>)>, Round> {
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
        let creds = self.credentials(jid.as_ref(), hash).await;
        let server_first = match scram.server_first(creds.as_ref()) {
            Ok(sf) => sf,
            Err(e) => return Ok(Err((e, None))),
        };
        self.challenge(conn, io, &server_first).await?;
        let response = match self.sasl_response(conn, io).await? {
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
        Ok(Ok((jid, Some(server_final))))
    }

    /// RFC 6120 §7: binds a resource. `Ok(None)` when the client may try again.
    async fn bind<S: AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S, account: &BareJid, iq: &Element) -> Result<Option<Bound>, Round> {
        let reply_err = |err: StanzaError| {
            let mut reply = stanza::error_reply(iq, &err);
            if let Some(r) = reply.as_mut() {
                r.remove_attr_str("from");
                r.remove_attr_str("to");
            }
            reply
        };
        if stanza::stanza_type(iq) != Some("set") {
            if let Some(r) = reply_err(StanzaError::bad_request()) {
                conn.writer.send(io, &r).await.map_err(|_| Round::End)?;
            }
            return Ok(None);
        }
        let requested = iq
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("resource", ns::BIND))
            .map(|r| r.text().trim().to_string())
            .filter(|r| !r.is_empty());
        let config = &self.server.config;
        let existing = self.server.sessions.sessions(account);
        let mut resource = requested.clone().unwrap_or_else(|| format!("kabar-{}", random_id(10)));
        let policy = config.c2s.resource_conflict;
        if policy == ResourceConflict::Random && existing.iter().any(|s| s.jid.resource().as_str() == resource) {
            resource = format!("{resource}-{}", random_id(6));
        }
        let full = match account.with_resource_str(&resource) {
            Ok(full) => full,
            Err(_) => {
                if let Some(r) = reply_err(StanzaError::bad_request().with_text("invalid resource")) {
                    conn.writer.send(io, &r).await.map_err(|_| Round::End)?;
                }
                return Ok(None);
            }
        };
        let replacing = existing.iter().any(|s| s.jid == full);
        if !replacing && existing.len() >= config.limits.max_sessions_per_account {
            if let Some(r) = reply_err(StanzaError::resource_constraint().with_text("too many sessions for this account")) {
                conn.writer.send(io, &r).await.map_err(|_| Round::End)?;
            }
            return Ok(None);
        }
        let (tx, rx) = mpsc::channel(config.limits.session_queue.max(16));
        if !self.server.sessions.register(full.clone(), tx.clone(), policy == ResourceConflict::Replace) {
            if let Some(r) = reply_err(StanzaError::conflict()) {
                conn.writer.send(io, &r).await.map_err(|_| Round::End)?;
            }
            return Ok(None);
        }
        let mut result = stanza::iq_result(iq, Some(elem("bind", ns::BIND).with_child(elem("jid", ns::BIND).with_text(full.as_str()))));
        result.remove_attr_str("from");
        result.remove_attr_str("to");
        if conn.writer.send(io, &result).await.is_err() {
            self.server.sessions.unregister(&full, &tx);
            return Err(Round::End);
        }
        Ok(Some(Bound { jid: full, tx, rx }))
    }
}

fn decode_sasl(text: &str) -> Result<Vec<u8>, SaslError> {
    let text = text.trim();
    if text == "=" {
        return Ok(Vec::new());
    }
    B64.decode(text).map_err(|_| SaslError::IncorrectEncoding)
}
