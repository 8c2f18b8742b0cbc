//! Active probes for the outage monitor (docs/MONITOR.md "Probes"): TCP connect, TLS handshake
//! with certificate expiry, HTTP status/keyword, DNS, and two XMPP probes — a c2s login round trip
//! (STARTTLS, SASL PLAIN, bind, ping) and a message round trip between two probe accounts.
//!
//! Each probe run makes up to `1 + retries` attempts, each bounded by `timeout_secs`; the run's
//! latency is the successful attempt's (or the last failed one's).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use kabar_core::monitor_config::{ProbeEntry, ProbeKind};
use kabar_core::ns;
use kabar_core::stanza::parse_bare;
use kabar_xml::{elem, Element, ElementExt, HeaderAttrs, Limits, StreamEvent, StreamFramer, StreamWriter};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::stream::Reader;

/// The system trust bundle (Debian's ca-certificates).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Largest HTTP response read by the HTTP probe and webhooks.
const MAX_HTTP_BYTES: usize = 1 << 20;
const NS_PING: &str = "urn:xmpp:ping";

pub struct ProbeOutcome {
    pub ok: bool,
    pub latency_ms: u64,
    pub detail: String,
    pub cert_days: Option<i64>,
}

/// Roots for TLS probes: the system bundle, kabar's own CA (so the default self-probes verify) and
/// any extra PEM files.
pub fn root_store(extra: &[&Path]) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let system = Path::new(SYSTEM_ROOTS);
    for path in std::iter::once(system).chain(extra.iter().copied()) {
        if let Ok(iter) = CertificateDer::pem_file_iter(path) {
            for cert in iter.flatten() {
                let _ = roots.add(cert);
            }
        }
    }
    Arc::new(roots)
}

pub fn connector(roots: Arc<RootCertStore>) -> Result<TlsConnector, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Runs one probe: attempts with retries, each with the probe's timeout.
pub async fn run_once(entry: &ProbeEntry, tls: &TlsConnector) -> ProbeOutcome {
    let per_attempt = Duration::from_secs(entry.timeout_secs.max(1));
    let mut last = ProbeOutcome { ok: false, latency_ms: 0, detail: String::new(), cert_days: None };
    for attempt in 0..=entry.retries {
        let started = Instant::now();
        let result = match timeout(per_attempt, attempt_once(entry, tls, per_attempt)).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {} s", per_attempt.as_secs())),
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok((detail, cert_days)) => return ProbeOutcome { ok: true, latency_ms, detail, cert_days },
            Err(e) => {
                last = ProbeOutcome {
                    ok: false,
                    latency_ms,
                    detail: if attempt > 0 { format!("{e} (attempt {})", attempt + 1) } else { e },
                    cert_days: None,
                };
            }
        }
    }
    last
}

async fn attempt_once(
    entry: &ProbeEntry,
    tls: &TlsConnector,
    op_timeout: Duration,
) -> Result<(String, Option<i64>), String> {
    match entry.kind {
        ProbeKind::Tcp => {
            TcpStream::connect(entry.target.as_str()).await.map_err(|e| format!("connect: {e}"))?;
            Ok(("connected".to_owned(), None))
        }
        ProbeKind::Tls => {
            let name = entry.server_name.clone().unwrap_or_else(|| host_of(&entry.target));
            let tcp = TcpStream::connect(entry.target.as_str()).await.map_err(|e| format!("connect: {e}"))?;
            let server_name = ServerName::try_from(name).map_err(|_| "bad server name".to_owned())?;
            let stream = tls.connect(server_name, tcp).await.map_err(|e| format!("TLS handshake: {e}"))?;
            let days = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| not_after_unix(c.as_ref()))
                .map(days_left);
            if let Some(d) = days {
                if entry.min_cert_days > 0 && d < entry.min_cert_days as i64 {
                    return Err(format!("certificate expires in {d} days"));
                }
            }
            Ok(("handshake ok".to_owned(), days))
        }
        ProbeKind::Http => {
            let (status, body) = http_request(tls, "GET", &entry.target, None, MAX_HTTP_BYTES).await?;
            let accepted = if entry.expect_status.is_empty() {
                (200..400).contains(&status)
            } else {
                entry.expect_status.contains(&status)
            };
            if !accepted {
                return Err(format!("HTTP {status}"));
            }
            if let Some(k) = &entry.keyword {
                if !String::from_utf8_lossy(&body).contains(k.as_str()) {
                    return Err(format!("HTTP {status}, keyword not found"));
                }
            }
            Ok((format!("HTTP {status}"), None))
        }
        ProbeKind::Dns => {
            let n =
                tokio::net::lookup_host((entry.target.as_str(), 0)).await.map_err(|e| format!("resolve: {e}"))?.count();
            if n == 0 {
                return Err("no addresses".to_owned());
            }
            Ok((format!("{n} addresses"), None))
        }
        ProbeKind::XmppLogin => {
            let (jid, password) = creds(entry.jid.as_deref(), entry.password.as_deref())?;
            let mut c =
                XmppClient::login(&entry.target, entry.server_name.as_deref(), &jid, &password, tls, false).await?;
            c.ping().await?;
            c.close().await;
            Ok(("login, bind and ping ok".to_owned(), None))
        }
        ProbeKind::XmppMessage => {
            let (jid, password) = creds(entry.jid.as_deref(), entry.password.as_deref())?;
            let (peer, peer_password) = creds(entry.peer_jid.as_deref(), entry.peer_password.as_deref())?;
            let mut a =
                XmppClient::login(&entry.target, entry.server_name.as_deref(), &jid, &password, tls, false).await?;
            let mut b =
                XmppClient::login(&entry.target, entry.server_name.as_deref(), &peer, &peer_password, tls, true)
                    .await?;
            let token = format!("kabar-probe-{:016x}", rand::random::<u64>());
            let started = Instant::now();
            let msg = elem("message", ns::CLIENT)
                .with_attr("type", "chat")
                .with_attr("to", b.full_jid.clone())
                .with_attr("id", token.clone())
                .with_child(elem("body", ns::CLIENT).with_text(token.clone()));
            a.send(&msg).await?;
            let deadline = Instant::now() + op_timeout;
            loop {
                let el = b.next_element(deadline).await?;
                if el.name() == "message" && el.get_child("body", ns::CLIENT).is_some_and(|body| body.text() == token) {
                    break;
                }
            }
            let rtt = started.elapsed().as_millis();
            a.close().await;
            b.close().await;
            Ok((format!("message delivered in {rtt} ms"), None))
        }
    }
}

fn creds(jid: Option<&str>, password: Option<&str>) -> Result<(String, String), String> {
    match (jid, password) {
        (Some(j), Some(p)) => Ok((j.to_owned(), p.to_owned())),
        _ => Err("probe needs jid and password (and peer_jid, peer_password for messages)".to_owned()),
    }
}

fn host_of(target: &str) -> String {
    match target.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => {
            host.trim_start_matches('[').trim_end_matches(']').to_owned()
        }
        _ => target.to_owned(),
    }
}

// --- connections -------------------------------------------------------------------------------------

enum ClientIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientIo::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientIo::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientIo::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientIo::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// A minimal HTTP/1.1 request (`Connection: close`, body read to EOF, at most `max` bytes) over
/// TCP or TLS; used by the HTTP probe and webhooks. Returns (status, body).
pub async fn http_request(
    tls: &TlsConnector,
    method: &str,
    url: &str,
    json_body: Option<&[u8]>,
    max: usize,
) -> Result<(u16, Vec<u8>), String> {
    http_request_with_headers(tls, method, url, json_body, &[], max).await
}

/// [`http_request`] with extra request headers (webhook signature and delivery id). Names and
/// values must not contain CR or LF.
pub async fn http_request_with_headers(
    tls: &TlsConnector,
    method: &str,
    url: &str,
    json_body: Option<&[u8]>,
    headers: &[(&str, String)],
    max: usize,
) -> Result<(u16, Vec<u8>), String> {
    if headers.iter().any(|(n, v)| n.contains(['\r', '\n', ':']) || v.contains(['\r', '\n'])) {
        return Err("malformed header".to_owned());
    }
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("URL must start with http:// or https://".to_owned());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || path.chars().any(|c| c.is_control() || c == ' ') {
        return Err("malformed URL".to_owned());
    }
    let has_port =
        authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !authority.ends_with(']');
    let addr = if has_port { authority.to_owned() } else { format!("{authority}:{}", if https { 443 } else { 80 }) };
    let tcp = TcpStream::connect(addr.as_str()).await.map_err(|e| format!("connect: {e}"))?;
    let mut io = if https {
        let name = ServerName::try_from(host_of(&addr)).map_err(|_| "bad host name".to_owned())?;
        ClientIo::Tls(Box::new(tls.connect(name, tcp).await.map_err(|e| format!("TLS handshake: {e}"))?))
    } else {
        ClientIo::Plain(tcp)
    };
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: kabar-monitor\r\nAccept: */*\r\nConnection: close\r\n");
    if let Some(body) = json_body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(body) = json_body {
        bytes.extend_from_slice(body);
    }
    io.write_all(&bytes).await.map_err(|e| format!("write: {e}"))?;
    io.flush().await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match io.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() >= max {
                    break;
                }
            }
            // A TLS peer closing without close_notify still delivered a complete response.
            Err(e) if !buf.is_empty() && e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no HTTP response")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("malformed HTTP status line")?;
    Ok((status, buf[head_end + 4..].to_vec()))
}

// --- XMPP ---------------------------------------------------------------------------------------------

struct XmppClient {
    io: ClientIo,
    reader: Reader,
    writer: StreamWriter,
    domain: String,
    full_jid: String,
    features: Option<Element>,
    next_id: u64,
    op_timeout: Duration,
}

fn framer() -> StreamFramer {
    StreamFramer::new(Limits { max_stanza_bytes: 1 << 20, max_depth: 64 })
}

impl XmppClient {
    /// Connects to `target`, STARTTLS, SASL PLAIN, bind; with `available` also sends presence.
    async fn login(
        target: &str,
        server_name: Option<&str>,
        jid: &str,
        password: &str,
        tls: &TlsConnector,
        available: bool,
    ) -> Result<XmppClient, String> {
        let bare = parse_bare(jid).map_err(|_| format!("bad probe JID {jid}"))?;
        let user = bare.node().map(|n| n.as_str().to_owned()).ok_or("probe JID needs a user")?;
        let domain = bare.domain().as_str().to_owned();
        let tcp = TcpStream::connect(target).await.map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut c = XmppClient {
            io: ClientIo::Plain(tcp),
            reader: Reader::new(framer()),
            writer: StreamWriter::new(),
            domain,
            full_jid: String::new(),
            features: None,
            next_id: 0,
            op_timeout: Duration::from_secs(30),
        };
        c.open().await?;
        if c.feature("starttls", ns::TLS).is_none() {
            return Err("STARTTLS not offered".to_owned());
        }
        c.send(&elem("starttls", ns::TLS)).await?;
        let r = c.wait(|e| e.ns() == ns::TLS).await?;
        if r.name() != "proceed" {
            return Err("STARTTLS refused".to_owned());
        }
        let ClientIo::Plain(tcp) = std::mem::replace(&mut c.io, ClientIo::Gone) else {
            return Err("not plain".to_owned());
        };
        let name = server_name.map(str::to_owned).unwrap_or_else(|| c.domain.clone());
        let sn = ServerName::try_from(name).map_err(|_| "bad server name".to_owned())?;
        c.io = ClientIo::Tls(Box::new(tls.connect(sn, tcp).await.map_err(|e| format!("TLS handshake: {e}"))?));
        c.reader = Reader::new(framer());
        c.open().await?;
        let plain_offered = c
            .feature("mechanisms", ns::SASL)
            .is_some_and(|m| m.children().any(|x| x.is("mechanism", ns::SASL) && x.text() == "PLAIN"));
        if !plain_offered {
            return Err("SASL PLAIN not offered".to_owned());
        }
        use base64::Engine;
        let mut creds = Vec::with_capacity(user.len() + password.len() + 2);
        creds.push(0);
        creds.extend_from_slice(user.as_bytes());
        creds.push(0);
        creds.extend_from_slice(password.as_bytes());
        let auth = elem("auth", ns::SASL)
            .with_attr("mechanism", "PLAIN")
            .with_text(base64::engine::general_purpose::STANDARD.encode(creds));
        c.send(&auth).await?;
        let r = c.wait(|e| e.ns() == ns::SASL).await?;
        if r.name() != "success" {
            let cond = r.children().next().map(|x| x.name().to_owned()).unwrap_or_default();
            return Err(format!("authentication failed ({cond})"));
        }
        c.reader = Reader::new(framer());
        c.open().await?;
        let bind = elem("bind", ns::BIND)
            .with_child(elem("resource", ns::BIND).with_text(format!("probe-{:08x}", rand::random::<u32>())));
        let r = c.iq("set", None, bind).await?;
        c.full_jid = r
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("jid", ns::BIND))
            .map(|j| j.text())
            .ok_or("bind result without jid")?;
        if available {
            c.send(&elem("presence", ns::CLIENT).with_child(elem("priority", ns::CLIENT).with_text("-1"))).await?;
        }
        Ok(c)
    }

    fn feature(&self, name: &str, ns: &str) -> Option<&Element> {
        self.features.as_ref().and_then(|f| f.get_child(name, ns))
    }

    async fn write(&mut self) -> Result<(), String> {
        let bytes = self.writer.take();
        self.io.write_all(&bytes).await.map_err(|e| format!("write: {e}"))?;
        self.io.flush().await.map_err(|e| format!("write: {e}"))
    }

    async fn open(&mut self) -> Result<(), String> {
        let header = HeaderAttrs {
            content_ns: ns::CLIENT,
            from: None,
            to: Some(&self.domain),
            id: "",
            version: Some("1.0"),
            lang: Some("en"),
        };
        self.writer.open(&header).map_err(|e| e.to_string())?;
        self.write().await?;
        let el = self.wait(|e| e.is("features", ns::STREAMS)).await?;
        self.features = Some(el);
        Ok(())
    }

    async fn send(&mut self, el: &Element) -> Result<(), String> {
        self.writer.element(el).map_err(|e| e.to_string())?;
        self.write().await
    }

    async fn next_element(&mut self, deadline: Instant) -> Result<Element, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = timeout(left, self.reader.next(&mut self.io))
                .await
                .map_err(|_| "timed out waiting for the server".to_owned())?
                .map_err(|e| e.to_string())?;
            match ev {
                StreamEvent::Open(_) => continue,
                StreamEvent::Close => return Err("stream closed by server".to_owned()),
                StreamEvent::Element(el) => {
                    if el.is("error", ns::STREAMS) {
                        let cond = el.children().next().map(|c| c.name().to_owned()).unwrap_or_default();
                        return Err(format!("stream error: {cond}"));
                    }
                    return Ok(el);
                }
            }
        }
    }

    async fn wait(&mut self, pred: impl Fn(&Element) -> bool) -> Result<Element, String> {
        let deadline = Instant::now() + self.op_timeout;
        loop {
            let el = self.next_element(deadline).await?;
            if pred(&el) {
                return Ok(el);
            }
        }
    }

    async fn iq(&mut self, typ: &str, to: Option<&str>, payload: Element) -> Result<Element, String> {
        self.next_id += 1;
        let id = format!("probe{}", self.next_id);
        let mut iq = elem("iq", ns::CLIENT).with_attr("type", typ).with_attr("id", id.clone()).with_child(payload);
        if let Some(to) = to {
            iq.set_attr_str("to", to);
        }
        self.send(&iq).await?;
        let r = self.wait(|e| e.name() == "iq" && e.attr("id") == Some(id.as_str())).await?;
        if r.attr("type") != Some("result") {
            let cond = r
                .get_child("error", ns::CLIENT)
                .and_then(|e| e.children().next())
                .map(|c| c.name().to_owned())
                .unwrap_or_default();
            return Err(format!("IQ error ({cond})"));
        }
        Ok(r)
    }

    async fn ping(&mut self) -> Result<(), String> {
        let domain = self.domain.clone();
        self.iq("get", Some(&domain), elem("ping", NS_PING)).await.map(|_| ())
    }

    async fn close(&mut self) {
        if self.writer.close().is_ok() {
            let _ = self.write().await;
        }
        let _ = self.io.shutdown().await;
    }
}

// --- certificate expiry --------------------------------------------------------------------------------

/// One DER TLV: (tag, content, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&len0, mut rest) = rest.split_first()?;
    let len = if len0 < 0x80 {
        usize::from(len0)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut l = 0usize;
        for &b in &rest[..n] {
            l = (l << 8) | usize::from(b);
        }
        rest = &rest[n..];
        l
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// `notAfter` of an X.509 certificate, as unix seconds.
pub fn not_after_unix(cert: &[u8]) -> Option<i64> {
    let (_, certificate, _) = der(cert)?; // Certificate SEQUENCE
    let (_, tbs, _) = der(certificate)?; // TBSCertificate SEQUENCE
    let mut rest = tbs;
    let (tag, _, r) = der(rest)?;
    if tag == 0xa0 {
        rest = r; // [0] version
    }
    for _ in 0..3 {
        rest = der(rest)?.2; // serialNumber, signature, issuer
    }
    let (_, validity, _) = der(rest)?;
    let (_, _, after_before) = der(validity)?; // notBefore
    let (tag, time, _) = der(after_before)?;
    let s = std::str::from_utf8(time).ok()?;
    let digits = |a: usize, b: usize| s.get(a..b).and_then(|x| x.parse::<i64>().ok());
    let (year, off) = match tag {
        0x17 => {
            let yy = digits(0, 2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        0x18 => (digits(0, 4)?, 4),
        _ => return None,
    };
    let month = digits(off, off + 2)?;
    let day = digits(off + 2, off + 4)?;
    let hour = digits(off + 4, off + 6)?;
    let min = digits(off + 6, off + 8)?;
    let sec = digits(off + 8, off + 10).unwrap_or(0);
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// Howard Hinnant's days_from_civil.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_left(not_after: i64) -> i64 {
    (not_after - kabar_core::time::unix_now() as i64).div_euclid(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_from_civil_matches_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 2, 29) * 86_400, 951_782_400);
    }

    #[test]
    fn not_after_is_read_from_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["example.test".to_owned()]).expect("params");
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("certificate");
        assert_eq!(not_after_unix(cert.der()), Some(days_from_civil(2031, 5, 17) * 86_400));
    }

    #[test]
    fn truncated_der_is_refused_without_panicking() {
        assert_eq!(not_after_unix(&[0x30, 0x82, 0x01]), None);
        assert_eq!(not_after_unix(&[]), None);
    }
}
