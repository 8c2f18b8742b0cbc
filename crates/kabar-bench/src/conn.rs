//! One client stream: TCP (optionally upgraded with STARTTLS), kabar-xml's framer on the reading
//! side, a byte buffer on the writing side, and the login steps (SASL, bind, presence) on top.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use kabar_xml::{
    elem, element_to_bytes, Element, ElementExt, Limits, StreamEvent, StreamFramer, NS_CLIENT,
    NS_STREAMS,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::scan::{Piece, Splitter};
use crate::scram::{self, ScramCache, ScramClient};

pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const NS_REGISTER: &str = "jabber:iq:register";
pub const NS_REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
pub const NS_PING: &str = "urn:xmpp:ping";
pub const NS_SASL2: &str = "urn:xmpp:sasl:2";
pub const NS_BIND2: &str = "urn:xmpp:bind:0";
pub const NS_FAST: &str = "urn:xmpp:fast:0";
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const FAST_MECH: &str = "HT-SHA-256-NONE";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mech {
    #[value(name = "SCRAM-SHA-1")]
    ScramSha1,
    #[value(name = "PLAIN")]
    Plain,
}

impl Mech {
    pub fn name(self) -> &'static str {
        match self {
            Mech::ScramSha1 => "SCRAM-SHA-1",
            Mech::Plain => "PLAIN",
        }
    }
}

/// Everything a connection needs to know about the target, shared by all tasks.
pub struct Ctx {
    pub addr: SocketAddr,
    pub domain: String,
    pub prefix: String,
    pub password: String,
    pub mech: Mech,
    pub tls: Option<TlsConnector>,
    pub op_timeout: Duration,
    pub cache: ScramCache,
    pub resource: String,
    /// `--ports`: account i connects to `spread[i % len]` (users spread over cluster nodes).
    pub spread: Vec<SocketAddr>,
}

impl Ctx {
    pub fn user(&self, idx: u64) -> String {
        format!("{}{idx}", self.prefix)
    }

    /// Where account `user` (PREFIX<i>) connects: `addr`, or its node under `--ports`.
    pub fn addr_of(&self, user: &str) -> SocketAddr {
        let idx = user.strip_prefix(self.prefix.as_str()).and_then(|i| i.parse::<u64>().ok());
        match (idx, self.spread.len()) {
            (Some(i), n) if n > 0 => self.spread[(i % n as u64) as usize],
            _ => self.addr,
        }
    }
}

pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
}

pub struct Conn {
    io: Io,
    framer: StreamFramer,
    pub events: VecDeque<StreamEvent>,
    rbuf: Box<[u8]>,
    pub wbuf: Vec<u8>,
    next_id: u64,
    pub features: Option<Element>,
    /// Full JID after binding.
    pub jid: String,
    /// A FAST token the server issued on this login (XEP-0484).
    pub fast_token: Option<String>,
    /// Set by [`Conn::enable_split`]: received bytes are cut into whole stanzas before the framer
    /// sees them, so the connection can switch to raw stanza bytes at any moment.
    split: Option<Splitter>,
    /// Raw mode: stanzas are left in `split` for [`Conn::raw_pieces`]; the framer is bypassed.
    raw: bool,
}

fn limits() -> Limits {
    Limits {
        max_stanza_bytes: 1 << 20,
        max_depth: 64,
    }
}

impl Conn {
    pub async fn connect(ctx: &Ctx, read_buf: usize) -> Result<Conn> {
        Conn::connect_to(ctx, ctx.addr, read_buf).await
    }

    pub async fn connect_to(ctx: &Ctx, addr: SocketAddr, read_buf: usize) -> Result<Conn> {
        let tcp = timeout(ctx.op_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect timeout"))?
            .map_err(|e| anyhow!("connect: {}", e.kind()))?;
        let _ = tcp.set_nodelay(true);
        Ok(Conn {
            io: Io::Plain(tcp),
            framer: StreamFramer::new(limits()),
            events: VecDeque::new(),
            rbuf: vec![0u8; read_buf].into_boxed_slice(),
            wbuf: Vec::with_capacity(512),
            next_id: 0,
            features: None,
            jid: String::new(),
            fast_token: None,
            split: None,
            raw: false,
        })
    }

    pub fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("k{}", self.next_id)
    }

    pub fn queue_el(&mut self, el: &Element) -> Result<()> {
        let bytes = element_to_bytes(el).map_err(|e| anyhow!("{e}"))?;
        self.wbuf.extend_from_slice(&bytes);
        Ok(())
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        if matches!(self.io, Io::Tls(_)) {
            self.io.flush().await?;
        }
        Ok(())
    }

    pub async fn send_el(&mut self, el: &Element) -> Result<()> {
        self.queue_el(el)?;
        self.flush()
            .await
            .map_err(|e| anyhow!("write: {}", e.kind()))
    }

    /// Cuts the stream into whole stanzas ahead of the framer from the next stream header on.
    /// Call before the first [`Conn::open_stream`] (or right after one).
    pub fn enable_split(&mut self) {
        self.split = Some(Splitter::new(limits().max_stanza_bytes));
    }

    /// Raw mode (needs [`Conn::enable_split`]): reads leave stanza bytes for
    /// [`Conn::raw_pieces`] instead of building elements. Elements framed before the switch stay
    /// in `events`; no partial stanza is lost, since the framer only ever saw whole ones.
    pub fn set_raw(&mut self, raw: bool) -> Result<()> {
        if raw && self.split.is_none() {
            bail!("raw mode needs enable_split");
        }
        self.raw = raw;
        Ok(())
    }

    /// Hands the complete pieces received so far to `f` (raw mode) until `f` returns false; the
    /// pieces after that one stay for the next call.
    pub fn raw_pieces(&mut self, mut f: impl FnMut(Piece, &[u8]) -> bool) -> Result<()> {
        let Some(sp) = self.split.as_mut() else {
            bail!("raw mode needs enable_split");
        };
        while let Some((kind, r)) = sp.next_piece()? {
            if !f(kind, sp.bytes(r)) {
                break;
            }
        }
        Ok(())
    }

    /// One read from the socket, framed into `events` (or, in raw mode, kept for
    /// [`Conn::raw_pieces`]). Cancel-safe (the only await is the read).
    pub async fn read_some(&mut self) -> Result<()> {
        let n = self
            .io
            .read(&mut self.rbuf)
            .await
            .map_err(|e| anyhow!("read: {}", e.kind()))?;
        if n == 0 {
            bail!("connection closed by server");
        }
        let mut out = Vec::new();
        let r = match self.split.as_mut() {
            None => self.framer.feed(&self.rbuf[..n], &mut out),
            Some(sp) => {
                sp.compact();
                sp.push(&self.rbuf[..n]);
                if self.raw {
                    return Ok(());
                }
                let mut r = Ok(());
                while let Some((_, piece)) = sp.next_piece()? {
                    r = self.framer.feed(sp.bytes(piece), &mut out);
                    if r.is_err() {
                        break;
                    }
                }
                r
            }
        };
        self.events.extend(out);
        r.map_err(|e| anyhow!("bad XML from server: {e}"))
    }

    /// The next element, skipping stream headers; a stream end or stream error is an error.
    pub async fn next_element(&mut self, deadline: Instant) -> Result<Element> {
        loop {
            while let Some(ev) = self.events.pop_front() {
                match ev {
                    StreamEvent::Open(_) => continue,
                    StreamEvent::Close => bail!("stream closed by server"),
                    StreamEvent::Element(el) => {
                        check_stream_error(&el)?;
                        return Ok(el);
                    }
                }
            }
            timeout_at(deadline, self.read_some())
                .await
                .map_err(|_| anyhow!("timeout"))??;
        }
    }

    /// Sends a stream header (framer reset first) and returns the features.
    pub async fn open_stream(&mut self, ctx: &Ctx) -> Result<()> {
        self.framer.reset();
        self.events.clear();
        if let Some(sp) = self.split.as_mut() {
            sp.reset();
        }
        self.wbuf.extend_from_slice(
            format!(
                "<?xml version='1.0'?><stream:stream to='{}' xmlns='jabber:client' \
                 xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
                xml_escape(&ctx.domain)
            )
            .as_bytes(),
        );
        self.flush()
            .await
            .map_err(|e| anyhow!("write: {}", e.kind()))?;
        let deadline = Instant::now() + ctx.op_timeout;
        loop {
            let el = self.next_element(deadline).await?;
            if el.is("features", NS_STREAMS) {
                self.features = Some(el);
                return Ok(());
            }
        }
    }

    fn feature(&self, name: &str, ns: &str) -> Option<&Element> {
        self.features.as_ref().and_then(|f| f.get_child(name, ns))
    }

    /// Waits for the element `pred` accepts (others are dropped).
    pub async fn wait_for(
        &mut self,
        ctx: &Ctx,
        pred: impl Fn(&Element) -> bool,
    ) -> Result<Element> {
        let deadline = Instant::now() + ctx.op_timeout;
        loop {
            let el = self.next_element(deadline).await?;
            if pred(&el) {
                return Ok(el);
            }
        }
    }

    /// Sends an IQ and waits for its answer; a type='error' answer is an error.
    pub async fn iq(
        &mut self,
        ctx: &Ctx,
        typ: &str,
        to: Option<&str>,
        payload: Element,
    ) -> Result<Element> {
        let id = self.new_id();
        let mut iq = elem("iq", NS_CLIENT)
            .with_attr("type", typ)
            .with_attr("id", id.clone())
            .with_child(payload);
        if let Some(to) = to {
            iq.set_attr_str("to", to);
        }
        self.send_el(&iq).await?;
        let r = self
            .wait_for(ctx, |e| {
                e.name() == "iq" && e.attr("id") == Some(id.as_str())
            })
            .await?;
        if r.attr("type") != Some("result") {
            bail!("iq error: {}", error_condition(&r));
        }
        Ok(r)
    }

    pub async fn starttls(&mut self, ctx: &Ctx) -> Result<()> {
        let Some(connector) = &ctx.tls else {
            return Ok(());
        };
        if self.feature("starttls", NS_TLS).is_none() {
            bail!("STARTTLS not offered");
        }
        self.send_el(&elem("starttls", NS_TLS)).await?;
        let r = self.wait_for(ctx, |e| e.ns() == NS_TLS).await?;
        if r.name() != "proceed" {
            bail!("STARTTLS refused");
        }
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) else {
            bail!("already TLS")
        };
        let name = rustls::pki_types::ServerName::try_from(ctx.domain.clone())
            .map_err(|_| anyhow!("bad domain"))?;
        let tls = timeout(ctx.op_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| anyhow!("TLS handshake timeout"))?
            .map_err(|e| anyhow!("TLS handshake: {e}"))?;
        self.io = Io::Tls(Box::new(tls));
        self.open_stream(ctx).await
    }

    /// RFC 6120 SASL with `ctx.mech`; PLAIN when SCRAM-SHA-1 is not offered but PLAIN is.
    pub async fn sasl(&mut self, ctx: &Ctx, user: &str) -> Result<()> {
        let offered: Vec<String> = self
            .feature("mechanisms", NS_SASL)
            .map(|m| {
                m.children()
                    .filter(|c| c.is("mechanism", NS_SASL))
                    .map(|c| c.text())
                    .collect()
            })
            .unwrap_or_default();
        let has = |m: &str| offered.iter().any(|o| o == m);
        let mech = if has(ctx.mech.name()) {
            ctx.mech
        } else if has("PLAIN") {
            Mech::Plain
        } else {
            bail!(
                "mechanism {} not offered (offered: {offered:?})",
                ctx.mech.name()
            );
        };
        let is_sasl = |e: &Element| e.ns() == NS_SASL;
        match mech {
            Mech::Plain => {
                let auth = elem("auth", NS_SASL)
                    .with_attr("mechanism", "PLAIN")
                    .with_text(B64.encode(scram::plain(user, &ctx.password)));
                self.send_el(&auth).await?;
                let r = self.wait_for(ctx, is_sasl).await?;
                if r.name() != "success" {
                    bail!("auth failed: {}", sasl_condition(&r));
                }
            }
            Mech::ScramSha1 => {
                let (mut sc, first) = ScramClient::start(user);
                let auth = elem("auth", NS_SASL)
                    .with_attr("mechanism", "SCRAM-SHA-1")
                    .with_text(B64.encode(first));
                self.send_el(&auth).await?;
                let r = self.wait_for(ctx, is_sasl).await?;
                if r.name() != "challenge" {
                    bail!("auth failed: {}", sasl_condition(&r));
                }
                let server_first = B64
                    .decode(r.text().trim())
                    .map_err(|_| anyhow!("scram: bad base64"))?;
                let fin = sc.respond(&server_first, &ctx.password, &ctx.cache)?;
                self.send_el(&elem("response", NS_SASL).with_text(B64.encode(fin)))
                    .await?;
                let r = self.wait_for(ctx, is_sasl).await?;
                if r.name() != "success" {
                    bail!("auth failed: {}", sasl_condition(&r));
                }
                let data = B64
                    .decode(r.text().trim())
                    .map_err(|_| anyhow!("scram: bad base64"))?;
                sc.verify(&data)?;
            }
        }
        Ok(())
    }

    /// RFC 6120 §7 bind, then the legacy session IQ if the server says it is not optional.
    pub async fn bind(&mut self, ctx: &Ctx, resource: &str) -> Result<()> {
        let bind = elem("bind", NS_BIND).with_child(elem("resource", NS_BIND).with_text(resource));
        let r = self.iq(ctx, "set", None, bind).await?;
        self.jid = r
            .get_child("bind", NS_BIND)
            .and_then(|b| b.get_child("jid", NS_BIND))
            .map(|j| j.text())
            .ok_or_else(|| anyhow!("bind result without jid"))?;
        let session_needed = self
            .feature("session", NS_SESSION)
            .is_some_and(|s| !s.has_child("optional", NS_SESSION));
        if session_needed {
            self.iq(ctx, "set", None, elem("session", NS_SESSION))
                .await?;
        }
        Ok(())
    }

    /// Initial presence, then a ping round trip to the server: when it returns, the server has
    /// processed everything the login sent.
    pub async fn presence_and_ping(&mut self, ctx: &Ctx, presence: bool) -> Result<()> {
        if presence {
            self.queue_el(&elem("presence", NS_CLIENT))?;
        }
        let domain = ctx.domain.clone();
        self.iq(ctx, "get", Some(&domain), elem("ping", NS_PING))
            .await?;
        Ok(())
    }

    /// XEP-0388 SASL2 with XEP-0386 Bind2 inline, authenticating with a XEP-0484 FAST token when
    /// given (one round trip, no PBKDF2 on either side), else SCRAM-SHA-1 and asking for a token.
    pub async fn sasl2(
        &mut self,
        ctx: &Ctx,
        user: &str,
        ua_id: &str,
        token: Option<&str>,
    ) -> Result<()> {
        let auth_feat = self
            .feature("authentication", NS_SASL2)
            .ok_or_else(|| anyhow!("SASL2 not offered"))?;
        let fast_mechs: Vec<String> = auth_feat
            .get_child("inline", NS_SASL2)
            .and_then(|i| i.get_child("fast", NS_FAST))
            .map(|f| f.children().map(|c| c.text()).collect())
            .unwrap_or_default();
        if !fast_mechs.iter().any(|m| m == FAST_MECH) {
            bail!("FAST {FAST_MECH} not offered");
        }
        let ua = elem("user-agent", NS_SASL2)
            .with_attr("id", ua_id)
            .with_child(elem("software", NS_SASL2).with_text("kabar-load"));
        let bind = elem("bind", NS_BIND2)
            .with_child(elem("tag", NS_BIND2).with_text(ctx.resource.clone()));
        let is_sasl2 = |e: &Element| e.ns() == NS_SASL2;
        let success = match token {
            Some(token) => {
                let auth = elem("authenticate", NS_SASL2)
                    .with_attr("mechanism", FAST_MECH)
                    .with_child(
                        elem("initial-response", NS_SASL2)
                            .with_text(B64.encode(scram::ht_sha256_none(user, token))),
                    )
                    .with_child(ua)
                    .with_child(elem("fast", NS_FAST))
                    .with_child(bind);
                self.send_el(&auth).await?;
                let r = self.wait_for(ctx, is_sasl2).await?;
                if r.name() != "success" {
                    bail!("FAST auth failed: {}", sasl_condition(&r));
                }
                r
            }
            None => {
                let (mut sc, first) = ScramClient::start(user);
                let auth = elem("authenticate", NS_SASL2)
                    .with_attr("mechanism", "SCRAM-SHA-1")
                    .with_child(elem("initial-response", NS_SASL2).with_text(B64.encode(first)))
                    .with_child(ua)
                    .with_child(elem("request-token", NS_FAST).with_attr("mechanism", FAST_MECH))
                    .with_child(bind);
                self.send_el(&auth).await?;
                let r = self.wait_for(ctx, is_sasl2).await?;
                if r.name() != "challenge" {
                    bail!("auth failed: {}", sasl_condition(&r));
                }
                let server_first = B64
                    .decode(r.text().trim())
                    .map_err(|_| anyhow!("scram: bad base64"))?;
                let fin = sc.respond(&server_first, &ctx.password, &ctx.cache)?;
                self.send_el(&elem("response", NS_SASL2).with_text(B64.encode(fin)))
                    .await?;
                let r = self.wait_for(ctx, is_sasl2).await?;
                if r.name() != "success" {
                    bail!("auth failed: {}", sasl_condition(&r));
                }
                let data = r
                    .get_child("additional-data", NS_SASL2)
                    .map(|d| d.text())
                    .unwrap_or_default();
                sc.verify(
                    &B64.decode(data.trim())
                        .map_err(|_| anyhow!("scram: bad base64"))?,
                )?;
                r
            }
        };
        if let Some(t) = success
            .get_child("token", NS_FAST)
            .and_then(|t| t.attr("token"))
        {
            self.fast_token = Some(t.to_string());
        }
        self.jid = success
            .get_child("authorization-identifier", NS_SASL2)
            .map(|j| j.text())
            .ok_or_else(|| anyhow!("SASL2 success without authorization-identifier"))?;
        if !self.jid.contains('/') {
            bail!("Bind2 did not bind a resource");
        }
        Ok(())
    }

    /// Sends `</stream:stream>` (best effort) and drops the connection.
    pub async fn close(mut self) {
        self.wbuf.extend_from_slice(b"</stream:stream>");
        let _ = timeout(Duration::from_millis(200), self.flush()).await;
    }

    /// Drops the connection abruptly (no stream end; RST with `rst`).
    pub fn abort(self, rst: bool) {
        if rst {
            let tcp = match &self.io {
                Io::Plain(tcp) => Some(tcp),
                Io::Tls(tls) => Some(tls.get_ref().0),
                Io::Gone => None,
            };
            if let Some(tcp) = tcp {
                #[allow(deprecated)]
                let _ = tcp.set_linger(Some(Duration::ZERO));
            }
        }
    }
}

pub fn check_stream_error(el: &Element) -> Result<()> {
    if el.is("error", NS_STREAMS) {
        let cond = el
            .children()
            .next()
            .map(|c| c.name().to_string())
            .unwrap_or_default();
        bail!("stream error: {cond}");
    }
    Ok(())
}

fn sasl_condition(el: &Element) -> String {
    let conds: Vec<&str> = el
        .children()
        .filter(|c| c.name() != "text")
        .map(|c| c.name())
        .collect();
    format!("{}[{}]", el.name(), conds.join(","))
}

pub fn error_condition(iq: &Element) -> String {
    iq.get_child("error", NS_CLIENT)
        .and_then(|e| {
            e.children()
                .find(|c| c.ns() == NS_STANZAS && c.name() != "text")
        })
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| "?".into())
}

pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
        .replace('>', "&gt;")
}

/// connect, (STARTTLS), SASL, bind, (session), presence, ping.
pub async fn login(ctx: &Ctx, user: &str, read_buf: usize) -> Result<Conn> {
    login_opts(ctx, user, read_buf, false).await
}

/// [`login`], with [`Conn::enable_split`] from the start when `split` is set.
pub async fn login_opts(ctx: &Ctx, user: &str, read_buf: usize, split: bool) -> Result<Conn> {
    let mut c = Conn::connect_to(ctx, ctx.addr_of(user), read_buf).await?;
    if split {
        c.enable_split();
    }
    c.open_stream(ctx).await?;
    c.starttls(ctx).await?;
    c.sasl(ctx, user).await?;
    c.open_stream(ctx).await?;
    let resource = ctx.resource.clone();
    c.bind(ctx, &resource).await?;
    c.presence_and_ping(ctx, true).await?;
    Ok(c)
}

/// A stable XEP-0388 user-agent id (UUID form) per account index.
pub fn ua_id(idx: u64) -> String {
    format!("6b616261-0000-4000-8000-{idx:012x}")
}

/// connect, STARTTLS, SASL2 (SCRAM or FAST token) with Bind2, presence, ping.
pub async fn login_fast(ctx: &Ctx, idx: u64, token: Option<&str>, read_buf: usize) -> Result<Conn> {
    if ctx.tls.is_none() {
        bail!("FAST needs --tls");
    }
    let user = ctx.user(idx);
    let mut c = Conn::connect_to(ctx, ctx.addr_of(&user), read_buf).await?;
    c.open_stream(ctx).await?;
    c.starttls(ctx).await?;
    c.sasl2(ctx, &user, &ua_id(idx), token).await?;
    c.presence_and_ping(ctx, true).await?;
    Ok(c)
}

/// XEP-0077 registration of `username` on an unauthenticated stream that advertised it.
/// Ok(true): created; Ok(false): the account already existed (conflict).
pub async fn register_on(c: &mut Conn, ctx: &Ctx, username: &str) -> Result<bool> {
    let q = elem("query", NS_REGISTER)
        .with_child(elem("username", NS_REGISTER).with_text(username))
        .with_child(elem("password", NS_REGISTER).with_text(ctx.password.clone()));
    match c.iq(ctx, "set", None, q).await {
        Ok(_) => Ok(true),
        Err(e) if e.to_string() == "iq error: conflict" => Ok(false),
        Err(e) => Err(e),
    }
}

/// A connection ready for in-band registration (STARTTLS first with `--tls`).
pub async fn register_conn(ctx: &Ctx) -> Result<Conn> {
    let mut c = Conn::connect(ctx, 4096).await?;
    c.open_stream(ctx).await?;
    c.starttls(ctx).await?;
    if c.feature("register", NS_REGISTER_FEATURE).is_none() {
        bail!("IBR not advertised");
    }
    Ok(c)
}

/// TLS client that accepts any certificate: the generator only talks to loopback test servers.
pub fn tls_connector() -> Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
