//! A bound client session: the loop that feeds the client's stanzas to the core and writes what the
//! core routes to it, with XEP-0198 stream management (acks both ways, resumption within a window)
//! and XEP-0352 client state indication.
//!
//! Delivery guarantee kept here: a stanza routed to this session is either written and acknowledged
//! by the client (`<a h/>`), or, when the session ends without that, every message among the
//! unacknowledged and never-written ones is routed again (another resource, or offline storage).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jid::{BareJid, FullJid};
use kabar_core::ns;
use kabar_core::ratelimit::TokenBucket;
use kabar_core::sessions::{Outbound, SharedStanza};
use kabar_core::stanza::Kind;
use kabar_core::{Event, Server};
use kabar_xml::{elem, Element, ElementExt, HeaderAttrs, StreamEvent};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::stream::{random_id, Io, ReadError, Reader, Writer};

pub const NS_SM: &str = "urn:xmpp:sm:3";
pub const NS_CSI: &str = "urn:xmpp:csi:0";
/// Stanzas written to the socket in one batch.
const WRITE_BATCH: usize = 64;

/// A new connection asking to take over a hibernating (or still attached) session.
pub struct ResumeRequest {
    pub h: u32,
    pub io: Io,
    pub reader: Reader,
    pub writer: Writer,
}

/// Sessions that can be resumed, by their XEP-0198 id.
#[derive(Default)]
pub struct ResumeRegistry {
    map: Mutex<HashMap<String, (BareJid, mpsc::Sender<ResumeRequest>)>>,
}

impl ResumeRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (BareJid, mpsc::Sender<ResumeRequest>)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session `id` if it belongs to `account` (another account's id is treated as unknown).
    pub fn find(&self, id: &str, account: &BareJid) -> Option<mpsc::Sender<ResumeRequest>> {
        self.lock().get(id).filter(|(owner, _)| owner == account).map(|(_, tx)| tx.clone())
    }

    fn insert(&self, id: String, account: BareJid, tx: mpsc::Sender<ResumeRequest>) {
        self.lock().insert(id, (account, tx));
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// A stanza on its way to the client: its own tree, or a share of one a room encoded once for all
/// its occupants (kept shared in the XEP-0198 queue too, so a large room costs each session a
/// reference, not a copy).
enum Queued {
    Own(Box<Element>),
    Shared(SharedStanza),
}

impl Queued {
    fn from_outbound(item: Outbound) -> Option<Queued> {
        match item {
            Outbound::Stanza(el) => Some(Queued::Own(el)),
            Outbound::Shared(s) => Some(Queued::Shared(s)),
            Outbound::Close { .. } => None,
        }
    }

    fn stanza(&self) -> &Element {
        match self {
            Queued::Own(el) => el,
            Queued::Shared(s) => &s.body.stanza,
        }
    }

    fn into_element(self) -> Element {
        match self {
            Queued::Own(el) => *el,
            Queued::Shared(s) => s.to_element(),
        }
    }
}

struct Sm {
    id: Option<String>,
    /// Stanzas handled from the client (`h` we report).
    inbound: u32,
    /// Stanzas written to the client.
    outbound: u32,
    unacked: VecDeque<Queued>,
    ack_requested: bool,
}

/// The connection a session is attached to.
pub(crate) struct Live {
    rd: ReadHalf<Io>,
    wr: WriteHalf<Io>,
    reader: Reader,
    writer: Writer,
}

impl Live {
    pub(crate) fn new(io: Io, reader: Reader, writer: Writer) -> Live {
        let (rd, wr) = tokio::io::split(io);
        Live { rd, wr, reader, writer }
    }
}

enum Step {
    /// The client closed the stream or a stream error was sent: end now.
    End,
    /// The transport broke: hibernate if resumable.
    Lost,
    /// A new connection took over.
    Resumed(Box<ResumeRequest>),
}

pub struct Session {
    server: Arc<Server>,
    registry: Arc<ResumeRegistry>,
    jid: FullJid,
    tx: mpsc::Sender<Outbound>,
    rx: mpsc::Receiver<Outbound>,
    sm: Option<Sm>,
    resume_rx: Option<mpsc::Receiver<ResumeRequest>>,
    /// Routed to us while no connection was attached; written on resume.
    pending: VecDeque<Queued>,
    inactive: bool,
    held_presence: Vec<Element>,
    bucket: TokenBucket,
}

impl Session {
    pub fn new(
        server: Arc<Server>,
        registry: Arc<ResumeRegistry>,
        jid: FullJid,
        tx: mpsc::Sender<Outbound>,
        rx: mpsc::Receiver<Outbound>,
    ) -> Session {
        let limits = &server.config.limits;
        let bucket = TokenBucket::new(limits.stanza_burst, limits.stanzas_per_second as f64);
        Session {
            server,
            registry,
            jid,
            tx,
            rx,
            sm: None,
            resume_rx: None,
            pending: VecDeque::new(),
            inactive: false,
            held_presence: Vec::new(),
            bucket,
        }
    }

    /// Turns stream management on (from `<enable/>`, or inline with Bind2), resumable under `id`.
    pub fn preset_sm(&mut self, id: Option<String>) {
        if let Some(id) = &id {
            let (tx, rx) = mpsc::channel(1);
            self.registry.insert(id.clone(), self.jid.to_bare(), tx);
            self.resume_rx = Some(rx);
        }
        self.sm = Some(Sm { id, inbound: 0, outbound: 0, unacked: VecDeque::new(), ack_requested: false });
    }

    pub(crate) async fn run(mut self, live: Live) {
        // A task is as large as its largest state, and an idle session waits in `connected`:
        // the rarer states (hibernation, resumption, the end) are boxed so they cost memory only
        // while they run, and the connection stays in one place rather than being moved into
        // each state (docs/BENCHMARKS.md, memory per idle connection).
        let mut live = Some(live);
        loop {
            let step = match live.as_mut() {
                Some(l) => Some(self.connected(l).await),
                None => None,
            };
            // The old connection (if any) is closed before waiting or taking the new one.
            drop(live.take());
            live = match step {
                Some(Step::End) => break,
                Some(Step::Lost) if self.resumable() => continue,
                Some(Step::Lost) => break,
                Some(Step::Resumed(req)) => Box::pin(self.resume(*req)).await,
                None => match Box::pin(self.hibernate()).await {
                    Some(req) => Box::pin(self.resume(req)).await,
                    None => break,
                },
            };
        }
        Box::pin(self.end()).await;
    }

    fn resumable(&self) -> bool {
        self.sm.as_ref().is_some_and(|sm| sm.id.is_some())
    }

    fn header(&self) -> HeaderAttrs<'_> {
        HeaderAttrs { content_ns: ns::CLIENT, from: Some(self.server.domain.as_str()), to: None, id: "", version: Some("1.0"), lang: None }
    }

    async fn stream_error(&self, l: &mut Live, condition: &str, text: Option<&str>) {
        let header = self.header();
        let _ = Box::pin(l.writer.stream_error(&mut l.wr, &header, condition, text)).await;
    }

    /// Queues a stanza for the client, applying CSI and counting it for stream management.
    fn queue_stanza(&mut self, l: &mut Live, q: Queued) {
        if self.inactive && is_holdable_presence(q.stanza()) {
            let el = q.into_element();
            let from = el.attr("from").map(str::to_string);
            self.held_presence.retain(|p| p.attr("from").map(str::to_string) != from);
            self.held_presence.push(el);
            return;
        }
        if !self.held_presence.is_empty() {
            for p in std::mem::take(&mut self.held_presence) {
                self.write_counted(l, Queued::Own(Box::new(p)));
            }
        }
        self.write_counted(l, q);
    }

    fn write_counted(&mut self, l: &mut Live, q: Queued) {
        let written = match &q {
            Queued::Own(el) => l.writer.queue(el),
            Queued::Shared(s) => l.writer.queue_shared(s),
        };
        if written.is_err() {
            warn!("could not serialise an outgoing stanza");
            return;
        }
        if let Some(kind) = Kind::of(q.stanza()) {
            self.server.metrics.stanza_out(kind);
        }
        if let Some(sm) = self.sm.as_mut() {
            sm.outbound = sm.outbound.wrapping_add(1);
            sm.unacked.push_back(q);
        }
    }

    /// One `<r/>` outstanding at a time, sent after a batch that left stanzas unacknowledged.
    fn maybe_request_ack(&mut self, l: &mut Live) {
        if let Some(sm) = self.sm.as_mut() {
            if !sm.ack_requested && !sm.unacked.is_empty() {
                if l.writer.queue(&elem("r", NS_SM)).is_ok() {
                    sm.ack_requested = true;
                }
            }
        }
    }

    async fn connected(&mut self, l: &mut Live) -> Step {
        let config = self.server.config.clone();
        let idle = Duration::from_secs(config.ping.idle_secs.max(1));
        let ping_timeout = Duration::from_secs(config.ping.timeout_secs.max(1));
        let mut last_activity = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        // Stanzas that arrived while detached go out first.
        let pending: Vec<Queued> = self.pending.drain(..).collect();
        for q in pending {
            self.queue_stanza(l, q);
        }
        self.maybe_request_ack(l);
        if l.writer.flush(&mut l.wr).await.is_err() {
            return Step::Lost;
        }
        loop {
            let wake = match ping_sent {
                Some(t) => t + ping_timeout,
                None => last_activity + idle,
            };
            tokio::select! {
                ev = l.reader.next(&mut l.rd) => {
                    last_activity = Instant::now();
                    ping_sent = None;
                    match ev {
                        Ok(StreamEvent::Element(el)) => {
                            if let Some(step) = self.from_client(l, el).await {
                                return step;
                            }
                            if l.writer.flush(&mut l.wr).await.is_err() {
                                return Step::Lost;
                            }
                        }
                        Ok(StreamEvent::Close) => {
                            let _ = Box::pin(l.writer.close(&mut l.wr)).await;
                            return Step::End;
                        }
                        Ok(StreamEvent::Open(_)) => {
                            self.stream_error(l, "not-well-formed", None).await;
                            return Step::End;
                        }
                        Err(ReadError::Framing(e)) => {
                            warn!(error = %e, "bad XML from client");
                            self.stream_error(l, e.condition(), Some(&e.to_string())).await;
                            return Step::End;
                        }
                        Err(e) => {
                            debug!(error = %e, "connection lost");
                            return Step::Lost;
                        }
                    }
                }
                item = self.rx.recv() => {
                    let mut close = None;
                    match item {
                        Some(Outbound::Stanza(el)) => self.queue_stanza(l, Queued::Own(el)),
                        Some(Outbound::Shared(s)) => self.queue_stanza(l, Queued::Shared(s)),
                        Some(Outbound::Close { condition, text }) => close = Some((condition, text)),
                        None => return Step::End,
                    }
                    for _ in 0..WRITE_BATCH {
                        if close.is_some() {
                            break;
                        }
                        match self.rx.try_recv() {
                            Ok(Outbound::Stanza(more)) => self.queue_stanza(l, Queued::Own(more)),
                            Ok(Outbound::Shared(more)) => self.queue_stanza(l, Queued::Shared(more)),
                            Ok(Outbound::Close { condition, text }) => close = Some((condition, text)),
                            Err(_) => break,
                        }
                    }
                    self.maybe_request_ack(l);
                    if l.writer.flush(&mut l.wr).await.is_err() {
                        return Step::Lost;
                    }
                    if let Some((condition, text)) = close {
                        self.stream_error(l, condition, text.as_deref()).await;
                        return Step::End;
                    }
                }
                req = recv_resume(&mut self.resume_rx) => {
                    if let Some(req) = req {
                        if self.sm.as_ref().is_some_and(|sm| ack_is_possible(sm, req.h)) {
                            info!("session taken over by a resuming connection");
                            return Step::Resumed(Box::new(req));
                        }
                        // A bogus claim must not cost the live connection its session.
                        Box::pin(refuse_resume(req, self.sm.as_ref().map_or(0, |sm| sm.inbound))).await;
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if l.reader.take_activity() {
                        last_activity = Instant::now();
                        ping_sent = None;
                        continue;
                    }
                    if ping_sent.is_some() {
                        // With stream management the client may come back; otherwise this ends it.
                        debug!("no answer to ping");
                        return Step::Lost;
                    }
                    let ping = elem("iq", ns::CLIENT)
                        .with_attr("type", "get")
                        .with_attr("id", format!("ping-{}", random_id(8)))
                        .with_attr("from", self.server.domain.as_str())
                        .with_attr("to", self.jid.as_str())
                        .with_child(elem("ping", "urn:xmpp:ping"));
                    if Box::pin(l.writer.send(&mut l.wr, &ping)).await.is_err() {
                        return Step::Lost;
                    }
                    ping_sent = Some(Instant::now());
                }
            }
        }
    }

    /// Handles one element from the client; `Some(step)` ends the connection.
    async fn from_client(&mut self, l: &mut Live, el: Element) -> Option<Step> {
        if Kind::of(&el).is_some() {
            if let Err(wait) = self.bucket.take() {
                // Shape instead of punishing: stop reading for a moment (boxed: a timer inline
                // would sit in every idle session's task).
                Box::pin(tokio::time::sleep(wait)).await;
            }
            // Boxed: routing's future is large and only lives while a stanza is handled; inline
            // it would sit in every idle session's task.
            Box::pin(self.server.from_client(&self.jid, el)).await;
            // XEP-0198 §4: counted once handled (routed, stored or answered).
            if let Some(sm) = self.sm.as_mut() {
                sm.inbound = sm.inbound.wrapping_add(1);
            }
            return None;
        }
        if el.ns() == NS_SM {
            return Box::pin(self.sm_nonza(l, &el)).await;
        }
        if el.ns() == NS_CSI {
            match el.name() {
                "inactive" => {
                    self.inactive = true;
                    self.server.sessions.update(&self.jid, &mut |s| s.inactive = true);
                }
                "active" => {
                    self.inactive = false;
                    self.server.sessions.update(&self.jid, &mut |s| s.inactive = false);
                    for p in std::mem::take(&mut self.held_presence) {
                        self.write_counted(l, Queued::Own(Box::new(p)));
                    }
                    self.maybe_request_ack(l);
                }
                _ => {}
            }
            return None;
        }
        let condition = if el.ns().is_empty() { "invalid-namespace" } else { "unsupported-stanza-type" };
        self.stream_error(l, condition, None).await;
        Some(Step::End)
    }

    async fn sm_nonza(&mut self, l: &mut Live, el: &Element) -> Option<Step> {
        match el.name() {
            "enable" => {
                if self.sm.is_some() {
                    let failed = elem("failed", NS_SM).with_child(elem("unexpected-request", ns::STANZAS));
                    let _ = l.writer.queue(&failed);
                    return None;
                }
                let want_resume = matches!(el.attr("resume"), Some("true") | Some("1"));
                let window = self.server.config.stream_management.resume_timeout_secs;
                let mut enabled = elem("enabled", NS_SM);
                let id = (want_resume && window > 0).then(|| random_id(24));
                if let Some(id) = &id {
                    enabled.set_attr_str("id", id.clone());
                    enabled.set_attr_str("resume", "true");
                    enabled.set_attr_str("max", window.to_string());
                }
                self.preset_sm(id);
                let _ = l.writer.queue(&enabled);
                None
            }
            "r" => {
                let h = self.sm.as_ref().map(|sm| sm.inbound).unwrap_or(0);
                if self.sm.is_some() {
                    self.wait_durable().await;
                    let _ = l.writer.queue(&elem("a", NS_SM).with_attr("h", h.to_string()));
                }
                None
            }
            "a" => {
                let Some(h) = el.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
                    self.stream_error(l, "bad-format", Some("<a/> needs a numeric h")).await;
                    return Some(Step::End);
                };
                if let Some(sm) = self.sm.as_mut() {
                    sm.ack_requested = false;
                    if !ack(sm, h) {
                        let header = self.header();
                        let _ = l.writer.stream_error(&mut l.wr, &header, "undefined-condition", Some("acknowledged more stanzas than were sent")).await;
                        return Some(Step::End);
                    }
                }
                None
            }
            _ => {
                self.stream_error(l, "unsupported-stanza-type", None).await;
                Some(Step::End)
            }
        }
    }

    /// Waits, detached, for a resuming connection within the window. Stanzas routed meanwhile are
    /// kept for it.
    async fn hibernate(&mut self) -> Option<ResumeRequest> {
        let window = Duration::from_secs(self.server.config.stream_management.resume_timeout_secs);
        let deadline = Instant::now() + window;
        let cap = self.server.config.limits.session_queue.max(16);
        info!(window_secs = window.as_secs(), "connection lost; session kept for resumption");
        self.server.sessions.update(&self.jid, &mut |s| s.detached = true);
        loop {
            tokio::select! {
                req = recv_resume(&mut self.resume_rx) => {
                    if let Some(req) = req {
                        return Some(req);
                    }
                }
                // A close request (or the directory dropping us) ends the wait like before.
                item = self.rx.recv() => match item.and_then(Queued::from_outbound) {
                    Some(q) => {
                        self.pending.push_back(q);
                        if self.pending.len() > cap {
                            warn!("too much queued for a detached session; ending it");
                            return None;
                        }
                    }
                    None => return None,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    info!("resumption window passed");
                    return None;
                }
            }
        }
    }

    /// Before acknowledging handled stanzas (XEP-0198 `h`): waits until what they queued in the
    /// archive is durable, so an acknowledged message is never lost (docs/DELIVERY.md).
    async fn wait_durable(&self) {
        if let Err(e) = self.server.store.archive_flush().await {
            warn!(jid = %self.jid, error = %e, "waiting for archive writes before an ack failed");
        }
    }

    /// Attaches a new connection (XEP-0198 §5): acks what the client got, answers `<resumed/>`,
    /// and resends the rest.
    async fn resume(&mut self, req: ResumeRequest) -> Option<Live> {
        let ResumeRequest { h, io, reader, writer } = req;
        let mut l = Live::new(io, reader, writer);
        self.wait_durable().await;
        let Some(sm) = self.sm.as_mut() else { return None };
        let inbound = sm.inbound;
        let previd = sm.id.clone().unwrap_or_default();
        if !ack(sm, h) {
            let failed = elem("failed", NS_SM).with_attr("h", inbound.to_string()).with_child(elem("unexpected-request", ns::STANZAS));
            let _ = l.writer.send(&mut l.wr, &failed).await;
            return None;
        }
        sm.ack_requested = false;
        // Resent stanzas are counted again from the client's h.
        let resend: Vec<Queued> = sm.unacked.drain(..).collect();
        sm.outbound = h;
        let resumed = elem("resumed", NS_SM).with_attr("previd", previd).with_attr("h", inbound.to_string());
        if l.writer.queue(&resumed).is_err() {
            return None;
        }
        for q in resend {
            self.write_counted(&mut l, q);
        }
        self.server.sessions.update(&self.jid, &mut |s| s.detached = false);
        info!("session resumed");
        Some(l)
    }

    async fn end(mut self) {
        if let Some(id) = self.sm.as_ref().and_then(|sm| sm.id.clone()) {
            self.registry.remove(&id);
        }
        let info = self.server.sessions.unregister(&self.jid, &self.tx);
        self.rx.close();
        // XEP-0198 §4 / RFC 6121 §8.5.3.2.1: messages this session never confirmed go back through
        // routing — another resource takes them, or they wait in offline storage.
        let mut undelivered: Vec<Element> =
            self.sm.take().map(|sm| sm.unacked.into_iter().map(Queued::into_element).collect()).unwrap_or_default();
        undelivered.extend(self.pending.drain(..).map(Queued::into_element));
        while let Ok(item) = self.rx.try_recv() {
            if let Outbound::Stanza(el) = item.unshare() {
                undelivered.push(*el);
            }
        }
        let mut rerouted = 0usize;
        let own = self.jid.to_bare();
        for el in undelivered {
            if is_reroutable(&el, &own) {
                self.server.route(el).await;
                rerouted += 1;
            }
        }
        if let Some(info) = info {
            self.server
                .notify(Event::SessionClosed { jid: &self.jid, was_available: info.available, directed_to: &info.directed_to })
                .await;
        }
        info!(rerouted, "session ended");
    }
}

/// Whether `h` can acknowledge what was sent (neither more than sent nor less than acked before).
fn ack_is_possible(sm: &Sm, h: u32) -> bool {
    let acked_before = sm.outbound.wrapping_sub(sm.unacked.len() as u32);
    (h.wrapping_sub(acked_before) as usize) <= sm.unacked.len()
}

/// XEP-0198 §5: answers a resumption attempt that cannot be honoured on its own connection.
async fn refuse_resume(req: ResumeRequest, inbound: u32) {
    let ResumeRequest { io, mut writer, .. } = req;
    let mut io = io;
    let failed = elem("failed", NS_SM)
        .with_attr("h", inbound.to_string())
        .with_child(elem("undefined-condition", ns::STANZAS));
    let _ = writer.send(&mut io, &failed).await;
    let _ = writer.close(&mut io).await;
}

/// Drops the stanzas the client acknowledged with `h`; false when `h` is impossible.
fn ack(sm: &mut Sm, h: u32) -> bool {
    let acked_before = sm.outbound.wrapping_sub(sm.unacked.len() as u32);
    let newly = h.wrapping_sub(acked_before) as usize;
    if newly > sm.unacked.len() {
        return false;
    }
    sm.unacked.drain(..newly);
    true
}

/// Only messages someone sent to this user go back through routing. Copies the server made for
/// this session (carbons and archive results, which come from the user's own bare JID or carry no
/// sender) and errors are not messages anyone is waiting for.
fn is_reroutable(el: &Element, own: &BareJid) -> bool {
    if Kind::of(el) != Some(Kind::Message) || el.attr("type") == Some("error") {
        return false;
    }
    match el.attr("from") {
        None => false,
        Some(from) => from != own.as_str(),
    }
}

/// XEP-0352 server policy: availability updates wait while the client is inactive (the latest per
/// contact wins); subscription requests, messages and IQs go out at once and flush what waited.
fn is_holdable_presence(el: &Element) -> bool {
    el.name() == "presence" && matches!(el.attr("type"), None | Some("unavailable"))
}

async fn recv_resume(rx: &mut Option<mpsc::Receiver<ResumeRequest>>) -> Option<ResumeRequest> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm_with(outbound: u32, unacked: usize) -> Sm {
        Sm {
            id: None,
            inbound: 0,
            outbound,
            unacked: (0..unacked).map(|i| Queued::Own(Box::new(elem("message", ns::CLIENT).with_attr("id", i.to_string())))).collect(),
            ack_requested: false,
        }
    }

    #[test]
    fn xep0198_4_ack_drops_exactly_the_acknowledged_prefix() {
        let mut sm = sm_with(10, 4); // 6 acked before, 4 outstanding
        assert!(ack(&mut sm, 8));
        assert_eq!(sm.unacked.len(), 2);
        assert_eq!(sm.unacked[0].stanza().attr("id"), Some("2"));
        assert!(ack(&mut sm, 8), "repeating an ack is harmless");
        assert!(!ack(&mut sm, 11), "more than sent is refused");
    }

    #[test]
    fn xep0198_4_counters_wrap_at_2_pow_32() {
        let mut sm = sm_with(2, 4); // sent u32::MAX-1 .. 2 (wrapped)
        assert!(ack(&mut sm, u32::MAX));
        assert_eq!(sm.unacked.len(), 3);
        assert!(ack(&mut sm, 2));
        assert!(sm.unacked.is_empty());
    }

    #[test]
    fn xep0198_server_made_copies_are_not_rerouted() {
        let own = BareJid::new("alice@localhost").expect("valid");
        let from_bob = elem("message", ns::CLIENT).with_attr("from", "bob@localhost/x").with_attr("to", "alice@localhost/a");
        let carbon = elem("message", ns::CLIENT).with_attr("from", "alice@localhost").with_attr("to", "alice@localhost/a");
        let mam_result = elem("message", ns::CLIENT).with_attr("to", "alice@localhost/a");
        let own_other_resource = elem("message", ns::CLIENT).with_attr("from", "alice@localhost/b");
        assert!(is_reroutable(&from_bob, &own));
        assert!(is_reroutable(&own_other_resource, &own));
        assert!(!is_reroutable(&carbon, &own));
        assert!(!is_reroutable(&mam_result, &own));
        assert!(!is_reroutable(&from_bob.clone().with_attr("type", "error"), &own));
        assert!(!is_reroutable(&elem("presence", ns::CLIENT).with_attr("from", "bob@localhost"), &own));
    }

    #[test]
    fn xep0352_only_availability_presence_is_held() {
        assert!(is_holdable_presence(&elem("presence", ns::CLIENT)));
        assert!(is_holdable_presence(&elem("presence", ns::CLIENT).with_attr("type", "unavailable")));
        assert!(!is_holdable_presence(&elem("presence", ns::CLIENT).with_attr("type", "subscribe")));
        assert!(!is_holdable_presence(&elem("message", ns::CLIENT)));
    }
}
