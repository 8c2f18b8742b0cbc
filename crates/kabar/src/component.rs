//! XEP-0114 external components: a bot or gateway connects with a shared secret and then owns its
//! domain (e.g. `bot.localhost`). The framer and writer map `jabber:component:accept` to
//! `jabber:client` so the core sees one content namespace.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kabar_core::sessions::Outbound;
use kabar_core::{ns, Server};
use kabar_xml::{elem, HeaderAttrs, Limits, StreamEvent, StreamFramer, StreamWriter};
use sha1::{Digest, Sha1};
use subtle_eq::constant_time_eq;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tracing::{debug, info, warn, Instrument};

use crate::stream::{random_id, ReadError, Reader, Writer};

mod subtle_eq {
    /// Compares two byte strings without an early exit on the first difference.
    pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

pub async fn handle(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("component", %peer, domain = tracing::field::Empty);
    run(server, tcp, peer).instrument(span).await;
}

async fn run(server: Arc<Server>, mut io: TcpStream, _peer: SocketAddr) {
    let config = server.config.clone();
    let limits = Limits { max_stanza_bytes: config.limits.max_stanza_bytes, max_depth: config.limits.max_xml_depth };
    let mut reader = Reader::new(StreamFramer::new(limits).with_namespace_alias(ns::COMPONENT, ns::CLIENT));
    let mut writer = Writer::new(StreamWriter::new().with_namespace_alias(ns::CLIENT, ns::COMPONENT));
    let stream_id = random_id(16);
    let deadline = Instant::now() + Duration::from_secs(config.limits.unauthenticated_timeout_secs);

    let domain = match timeout_at(deadline, reader.next(&mut io)).await {
        Ok(Ok(StreamEvent::Open(h))) => h.to.unwrap_or_default(),
        _ => return debug!("component did not open a stream"),
    };
    tracing::Span::current().record("domain", domain.as_str());
    let secret = config.components.component.iter().find(|c| c.domain == domain).map(|c| c.secret.clone());
    let our_header = HeaderAttrs { content_ns: ns::COMPONENT, from: Some(&domain), to: None, id: &stream_id, version: None, lang: None };
    let Some(secret) = secret else {
        warn!("unknown component domain");
        let _ = writer.stream_error(&mut io, &our_header, "host-unknown", None).await;
        return;
    };
    if writer.header(&mut io, &our_header).await.is_err() {
        return;
    }
    // XEP-0114 §3: the handshake is hex(SHA-1(stream id + secret)).
    let expected: String = Sha1::digest(format!("{stream_id}{secret}").as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let handshake = match timeout_at(deadline, reader.next(&mut io)).await {
        Ok(Ok(StreamEvent::Element(el))) if el.is("handshake", ns::CLIENT) => el.text(),
        Ok(Err(ReadError::Framing(e))) => {
            let _ = writer.stream_error(&mut io, &our_header, e.condition(), None).await;
            return;
        }
        _ => {
            let _ = writer.stream_error(&mut io, &our_header, "not-authorized", None).await;
            return;
        }
    };
    if !constant_time_eq(handshake.trim().to_ascii_lowercase().as_bytes(), expected.as_bytes()) {
        warn!("component handshake failed");
        let _ = writer.stream_error(&mut io, &our_header, "not-authorized", None).await;
        return;
    }
    let (tx, mut rx) = mpsc::channel(config.limits.session_queue.max(16));
    if !server.register_component(&domain, tx.clone()) {
        let _ = writer.stream_error(&mut io, &our_header, "conflict", Some("this component is already connected")).await;
        return;
    }
    if writer.send(&mut io, &elem("handshake", ns::CLIENT)).await.is_err() {
        server.unregister_component(&domain, &tx);
        return;
    }
    info!("component connected");
    let (mut rd, mut wr) = tokio::io::split(io);
    let error_header = HeaderAttrs { content_ns: ns::COMPONENT, from: Some(&domain), to: None, id: &stream_id, version: None, lang: None };
    loop {
        tokio::select! {
            ev = reader.next(&mut rd) => match ev {
                Ok(StreamEvent::Element(el)) => {
                    if let Err(condition) = server.from_component(&domain, el).await {
                        let _ = writer.stream_error(&mut wr, &error_header, condition, None).await;
                        break;
                    }
                }
                Ok(StreamEvent::Close) => { let _ = writer.close(&mut wr).await; break; }
                Ok(StreamEvent::Open(_)) => { let _ = writer.stream_error(&mut wr, &error_header, "not-well-formed", None).await; break; }
                Err(ReadError::Framing(e)) => { let _ = writer.stream_error(&mut wr, &error_header, e.condition(), None).await; break; }
                Err(_) => break,
            },
            item = rx.recv() => match item.map(Outbound::unshare) {
                Some(Outbound::Stanza(el)) => { if writer.send(&mut wr, &el).await.is_err() { break; } }
                Some(Outbound::Close { condition, text }) => { let _ = writer.stream_error(&mut wr, &error_header, condition, text.as_deref()).await; break; }
                Some(Outbound::Shared(_)) | None => break,
            },
        }
    }
    server.unregister_component(&domain, &tx);
    info!("component disconnected");
}
