//! Client connections (RFC 6120): STARTTLS or direct TLS (XEP-0368), SASL, resource binding, then
//! the session loop that feeds stanzas to the core and writes what the core routes to us.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jid::{BareJid, FullJid};
use kabar_core::admission::{Refusal, Work};
use kabar_core::ns;
use kabar_core::sessions::Outbound;
use kabar_core::stanza::{self, Kind, StanzaError};
use kabar_core::Server;
use kabar_sasl::ChannelBindings;
use kabar_xml::{elem, Element, ElementExt, HeaderAttrs, Limits, StreamEvent, StreamFramer, StreamHeader, StreamWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tracing::{debug, info, warn, Instrument};

use crate::auth::{Sasl2Outcome, NS_SASL2};
use crate::session::{Live, ResumeRequest, ResumeRegistry, Session, NS_CSI, NS_SM};
use crate::stream::{random_id, Io, ReadError, Reader, Writer};
use crate::tls::Tls;


pub struct C2s {
    pub server: Arc<Server>,
    pub tls: Arc<Tls>,
    pub resumable: Arc<ResumeRegistry>,
    /// Rolling restart (docs/CLUSTER.md): while draining, new streams are sent elsewhere.
    pub drain: Arc<crate::drain::Drain>,
    /// The XEP-0115 `<c/>` stream feature, built once: its `ver` hashes the server's disco#info,
    /// which is fixed once the server is built, and rebuilding it cost ~2 % of a login's CPU.
    pub caps_feature: std::sync::OnceLock<Element>,
}

/// Negotiation state of one connection before the session starts.
pub(crate) struct Conn {
    pub(crate) reader: Reader,
    pub(crate) writer: Writer,
    pub(crate) stream_id: String,
    pub(crate) secure: bool,
    pub(crate) cb: ChannelBindings,
    pub(crate) authed: Option<BareJid>,
    pub(crate) failures: u32,
    pub(crate) lang: String,
    pub(crate) peer: SocketAddr,
    pub(crate) deadline: Instant,
    /// Admission control let this connection in (asked once, at its first stream header).
    pub(crate) admitted: bool,
    /// XEP-0445: the invite token this stream presented in `<preauth/>` and the server accepted.
    pub(crate) invite: Option<String>,
}

enum Transport {
    Tcp { tcp: TcpStream, direct_tls: bool },
    Framed { pipe: tokio::io::DuplexStream, cb: ChannelBindings },
}

pub(crate) enum Round {
    Restart,
    StartTls,
    Bound(Bound),
    /// XEP-0198 §5: take over session `previd`, the client having received `h` stanzas.
    Resume { previd: String, h: u32 },
    End,
}

pub(crate) struct Bound {
    pub jid: FullJid,
    pub tx: mpsc::Sender<Outbound>,
    pub rx: mpsc::Receiver<Outbound>,
    /// Stream management enabled while binding (XEP-0386 inline): `Some(resume id or None)`.
    pub sm: Option<Option<String>>,
}

impl C2s {
    pub async fn handle(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
        let span = tracing::info_span!("c2s", %peer, jid = tracing::field::Empty);
        let _open = self.server.metrics.connection(kabar_core::metrics::Transport::Tcp);
        self.connection(Transport::Tcp { tcp, direct_tls }, peer).instrument(span).await;
    }

    /// A client on a framed transport (WebSocket, BOSH): `pipe` carries the bridge's bytes; the
    /// HTTPS connection under it is already encrypted, with these channel bindings.
    pub async fn handle_framed(self: Arc<Self>, pipe: tokio::io::DuplexStream, peer: SocketAddr, cb: ChannelBindings, kind: &'static str) {
        let span = tracing::info_span!("c2s", %peer, transport = kind, jid = tracing::field::Empty);
        let _open = self.server.metrics.connection(kabar_core::metrics::Transport::from_label(kind));
        self.connection(Transport::Framed { pipe, cb }, peer).instrument(span).await;
    }

    /// A connection's whole life. A task is as large as the largest state of its future, and an
    /// idle session waits in `Session::run`: everything before it (TLS, SASL, bind, the
    /// session-started hooks) is one boxed future, freed once the session starts, so the task
    /// holds only the session loop (docs/BENCHMARKS.md, memory per idle connection).
    async fn connection(&self, transport: Transport, peer: SocketAddr) {
        let Some((session, live)) = Box::pin(self.start(transport, peer)).await else { return };
        // A drain waits for this task: its end reroutes what the client never acknowledged.
        let _task = self.drain.session_task();
        session.run(live).await;
    }

    /// From the first byte to a bound session (`None`: the connection ended before that).
    async fn start(&self, transport: Transport, peer: SocketAddr) -> Option<(Session, Live)> {
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
            admitted: false,
            invite: None,
        };
        let (tcp, direct_tls) = match transport {
            Transport::Tcp { tcp, direct_tls } => (tcp, direct_tls),
            Transport::Framed { pipe, cb } => {
                conn.secure = true;
                conn.cb = cb;
                conn.writer = Writer::framed();
                return self.negotiate_session(conn, Io::Pipe(pipe)).await;
            }
        };
        let _ = tcp.set_nodelay(true);
        // Clients that try direct TLS on the STARTTLS port (several do, before falling back) get
        // TLS: a TLS record starts with 0x16, an XML stream never does.
        let mut first = [0u8; 1];
        let direct_tls = direct_tls
            || matches!(timeout_at(deadline, tcp.peek(&mut first)).await, Ok(Ok(1)) if first[0] == 0x16);
        let io = if direct_tls {
            Box::pin(self.accept_tls(&mut conn, tcp)).await?
        } else {
            Io::Plain(tcp)
        };
        self.negotiate_session(conn, io).await
    }

    /// TLS on `tcp` within the negotiation deadline: direct TLS, or after `<proceed/>`.
    async fn accept_tls(&self, conn: &mut Conn, tcp: TcpStream) -> Option<Io> {
        match timeout_at(conn.deadline, self.tls.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                conn.secure = true;
                conn.cb = self.tls.channel_bindings(tls.get_ref().1);
                Some(Io::Tls(Box::new(tls)))
            }
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                debug!("TLS handshake timed out");
                None
            }
        }
    }

    async fn negotiate_session(&self, conn: Conn, io: Io) -> Option<(Session, Live)> {
        let (conn, io, bound) = self.negotiate(conn, io).await?;
        tracing::Span::current().record("jid", tracing::field::display(&bound.jid));
        info!(secure = conn.secure, "session started");
        self.server.notify(kabar_core::Event::SessionStarted { jid: &bound.jid }).await;
        let Conn { reader, writer, .. } = conn;
        let Bound { jid, tx, rx, sm } = bound;
        let mut session = Session::new(self.server.clone(), self.resumable.clone(), jid, tx, rx);
        if let Some(resume_id) = sm {
            session.preset_sm(resume_id);
        }
        Some((session, Live::new(io, reader, writer)))
    }

    /// Stream rounds until a resource is bound (`None`: the connection ended, or a resumed
    /// session took it over).
    async fn negotiate(&self, mut conn: Conn, mut io: Io) -> Option<(Conn, Io, Bound)> {
        let bound = loop {
            match self.round(&mut conn, &mut io).await {
                Round::Restart => continue,
                Round::StartTls => {
                    let Io::Plain(tcp) = io else { return None };
                    io = self.accept_tls(&mut conn, tcp).await?;
                    conn.reader.reset();
                    conn.writer.reset();
                    conn.stream_id = random_id(16);
                }
                Round::Bound(b) => break b,
                Round::Resume { previd, h } => {
                    let target = conn.authed.as_ref().and_then(|account| self.resumable.find(&previd, account));
                    if let Some(target) = target {
                        let req = ResumeRequest { h, io, reader: conn.reader, writer: conn.writer };
                        match target.send(req).await {
                            // The session's own task carries on with this connection.
                            Ok(()) => return None,
                            Err(mpsc::error::SendError(back)) => {
                                io = back.io;
                                conn.reader = back.reader;
                                conn.writer = back.writer;
                            }
                        }
                    }
                    let failed = elem("failed", NS_SM).with_child(elem("item-not-found", ns::STANZAS));
                    if conn.writer.send(&mut io, &failed).await.is_err() {
                        return None;
                    }
                    // The client may bind a new session on the same stream.
                    match self.round_elements(&mut conn, &mut io).await {
                        Round::Bound(b) => break b,
                        _ => return None,
                    }
                }
                Round::End => return None,
            }
        };
        Some((conn, io, bound))
    }

    pub(crate) async fn fail_stream<S: AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S, condition: &str, text: Option<&str>) -> Round {
        info!(condition, text, "closing stream with error");
        let header = server_header(&self.server.domain, &conn.stream_id, &conn.lang);
        let _ = conn.writer.stream_error(io, &header, condition, text).await;
        Round::End
    }

    /// Overload (docs/OVERLOAD.md): a new stream is refused with `<see-other-host/>` when another
    /// node is configured, else `<resource-constraint/>`, with the retry hint in the text.
    async fn refuse_busy<S: AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S, refusal: &Refusal) -> Round {
        let condition = match &refusal.other_host {
            Some(host) => elem("see-other-host", ns::STREAM_ERRORS).with_text(host.clone()),
            None => elem("resource-constraint", ns::STREAM_ERRORS),
        };
        let header = server_header(&self.server.domain, &conn.stream_id, &conn.lang);
        let _ = conn.writer.stream_error_with(io, &header, condition, Some(&refusal.text())).await;
        Round::End
    }

    /// Reads the next element within the negotiation deadline, turning transport trouble into the
    /// right stream error.
    pub(crate) async fn next_element<S: AsyncRead + AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S) -> Result<Element, Round> {
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
        if self.drain.is_draining() {
            return self.refuse_draining(conn, io).await;
        }
        if !conn.admitted {
            if let Err(refusal) = self.server.admit(Work::Login) {
                return self.refuse_busy(conn, io, &refusal).await;
            }
            conn.admitted = true;
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
                match self.sasl_legacy(conn, io, &el).await {
                    Ok(Some(jid)) => {
                        conn.authed = Some(jid);
                        conn.reader.reset();
                        conn.writer.reset();
                        conn.stream_id = random_id(16);
                        return Round::Restart;
                    }
                    Ok(None) => continue,
                    Err(round) => return round,
                }
            }
            if el.is("authenticate", NS_SASL2) && conn.authed.is_none() {
                // XEP-0388 §2.5: no stream restart after success.
                match self.sasl2(conn, io, &el).await {
                    Ok(Sasl2Outcome::Retry) => continue,
                    Ok(Sasl2Outcome::Authenticated(jid)) => {
                        conn.authed = Some(jid);
                        continue;
                    }
                    Ok(Sasl2Outcome::Bound(bound)) => {
                        conn.authed = Some(bound.jid.to_bare());
                        return Round::Bound(bound);
                    }
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
                } else if kabar_modules::invite::is_pre_auth_iq(&el)
                    && (conn.secure || !self.server.config.c2s.require_encryption)
                {
                    // XEP-0445 `<preauth/>`, and XEP-0077 registration (with the stream's invite, if any).
                    let reply = kabar_modules::invite::handle_pre_auth(&self.server, conn.peer.ip(), &el, &mut conn.invite).await;
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
        let header = server_header(&self.server.domain, &conn.stream_id, &conn.lang);
        conn.writer.header(io, &header).await.map_err(|_| Round::End)
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
            for f in self.auth_features(conn) {
                features.append_child(f);
            }
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
            for f in kabar_modules::invite::pre_auth_features(&self.server) {
                features.append_child(f);
            }
        } else {
            features.append_child(elem("bind", ns::BIND));
            features.append_child(self.caps_feature.get_or_init(|| kabar_modules::disco::caps_feature(&self.server)).clone());
            features.append_child(elem("sm", NS_SM));
            features.append_child(elem("csi", NS_CSI));
            for f in self.server.stream_features() {
                features.append_child(f);
            }
        }
        features
    }

    /// RFC 6120 §7: answers a `<bind/>` IQ. `Ok(None)` when the client may try again.
    async fn bind<S: AsyncWrite + Unpin>(&self, conn: &mut Conn, io: &mut S, account: &BareJid, iq: &Element) -> Result<Option<Bound>, Round> {
        let result = if stanza::stanza_type(iq) != Some("set") {
            Err(StanzaError::bad_request())
        } else {
            let requested = iq
                .get_child("bind", ns::BIND)
                .and_then(|b| b.get_child("resource", ns::BIND))
                .map(|r| r.text().trim().to_string())
                .filter(|r| !r.is_empty());
            self.bind_resource(account, requested)
        };
        let (reply, bound) = match result {
            Ok(bound) => {
                let payload = elem("bind", ns::BIND).with_child(elem("jid", ns::BIND).with_text(bound.jid.as_str()));
                (Some(stanza::iq_result(iq, Some(payload))), Some(bound))
            }
            Err(err) => (stanza::error_reply(iq, &err), None),
        };
        if let Some(mut reply) = reply {
            reply.remove_attr_str("from");
            reply.remove_attr_str("to");
            if conn.writer.send(io, &reply).await.is_err() {
                if let Some(b) = &bound {
                    self.server.sessions.unregister(&b.jid, &b.tx);
                }
                return Err(Round::End);
            }
        }
        Ok(bound)
    }
}

/// The header the server answers with (RFC 6120 §4.7).
fn server_header<'a>(domain: &'a str, stream_id: &'a str, lang: &'a str) -> HeaderAttrs<'a> {
    HeaderAttrs { content_ns: ns::CLIENT, from: Some(domain), to: None, id: stream_id, version: Some("1.0"), lang: Some(lang) }
}
