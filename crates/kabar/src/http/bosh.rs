//! XEP-0124 BOSH with XEP-0206 XMPP semantics. Each BOSH session owns a pipe into the c2s state
//! machine (like WebSocket): request payloads are written into it, and the elements the c2s writer
//! frames are queued and handed out in responses, holding a request up to `wait` seconds when
//! there is nothing to send.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use kabar_xml::{elem, element_to_bytes, element_to_bytes_with_prefixes, Element, ElementExt, HeaderAttrs, StreamWriter, NS_CLIENT};
use rxml::{NcName, Namespace};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::sync::{Mutex as AsyncMutex, Notify};
use tokio::time::Instant;
use tracing::debug;

use super::{ConnInfo, HttpState};
use crate::c2s::C2s;
use crate::stream::{random_id, FRAME_END, NS_FRAMING};

const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
const NS_XBOSH: &str = "urn:xmpp:xbosh";
/// Requests the client may have outstanding (XEP-0124 `requests`).
const REQUESTS: u32 = 2;
const MAX_BODY_BYTES: usize = 1024 * 1024;

struct Session {
    pipe: AsyncMutex<Option<WriteHalf<DuplexStream>>>,
    state: Mutex<SessionState>,
    notify: Notify,
    wait: Duration,
    to: String,
}

struct SessionState {
    last_rid: u64,
    outbound: VecDeque<Element>,
    /// Bumped by every request: a held request returns when a newer one arrives.
    generation: u64,
    last_activity: Instant,
    /// The c2s side ended the stream.
    ended: bool,
}

pub struct BoshSessions {
    c2s: Arc<C2s>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl BoshSessions {
    pub fn new(c2s: Arc<C2s>) -> Self {
        BoshSessions { c2s, sessions: Mutex::new(HashMap::new()) }
    }

    fn get(&self, sid: &str) -> Option<Arc<Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(sid).cloned()
    }

    fn remove(&self, sid: &str) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(sid);
    }

    /// Ends sessions nobody has polled for `inactivity`.
    pub async fn reap(self: Arc<Self>, inactivity: Duration) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let stale: Vec<(String, Arc<Session>)> = {
                let map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
                map.iter()
                    .filter(|(_, s)| {
                        let st = s.state.lock().unwrap_or_else(|p| p.into_inner());
                        st.ended || st.last_activity.elapsed() > inactivity + s.wait
                    })
                    .map(|(k, s)| (k.clone(), s.clone()))
                    .collect()
            };
            for (sid, s) in stale {
                debug!(sid, "BOSH session inactive; ending it");
                s.pipe.lock().await.take();
                self.remove(&sid);
            }
        }
    }
}

fn xml_response(status: StatusCode, body: &Element) -> Response {
    match element_to_bytes_with_prefixes(body, &[("xmpp", NS_XBOSH), ("stream", kabar_xml::NS_STREAMS)]) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, "text/xml; charset=utf-8"), (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
            bytes,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn terminate(condition: &str) -> Response {
    let body = elem("body", NS_HTTPBIND).with_attr("type", "terminate").with_attr("condition", condition);
    xml_response(StatusCode::OK, &body)
}

/// CORS preflight for browser clients on other origins.
pub async fn preflight() -> impl IntoResponse {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "POST, OPTIONS"),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "Content-Type"),
            (header::ACCESS_CONTROL_MAX_AGE, "86400"),
        ],
    )
}

fn stream_header_bytes(to: &str, lang: Option<&str>) -> Vec<u8> {
    let mut w = StreamWriter::new();
    let attrs = HeaderAttrs { content_ns: NS_CLIENT, from: None, to: Some(to), id: "", version: Some("1.0"), lang };
    match w.open(&attrs) {
        Ok(()) => w.take().to_vec(),
        Err(_) => Vec::new(),
    }
}

pub async fn request(
    State(state): State<HttpState>,
    Extension(info): Extension<ConnInfo>,
    body: Bytes,
) -> Response {
    if body.len() > MAX_BODY_BYTES {
        return terminate("policy-violation");
    }
    let Ok(text) = std::str::from_utf8(&body) else { return terminate("bad-request") };
    let Ok(req) = text.parse::<Element>() else { return terminate("bad-request") };
    if !req.is("body", NS_HTTPBIND) {
        return terminate("bad-request");
    }
    let Some(rid) = req.attr("rid").and_then(|r| r.parse::<u64>().ok()) else { return terminate("bad-request") };
    let bosh = state.bosh.clone();
    match req.attr("sid") {
        None => create(&bosh, &state, info, &req, rid).await,
        Some(sid) => match bosh.get(sid) {
            Some(session) => continue_session(&bosh, sid, session, &req, rid).await,
            None => terminate("item-not-found"),
        },
    }
}

async fn create(bosh: &Arc<BoshSessions>, state: &HttpState, info: ConnInfo, req: &Element, rid: u64) -> Response {
    let config = &bosh.c2s.server.config;
    let to = req.attr("to").unwrap_or(&config.domain).to_string();
    if !to.eq_ignore_ascii_case(&config.domain) {
        return terminate("host-unknown");
    }
    if let Err(refusal) = bosh.c2s.server.admit_new_connection(kabar_core::admission::Work::Login) {
        return super::busy_response(&refusal);
    }
    let max_wait = config.http.bosh_max_wait_secs.max(1);
    let wait = req.attr("wait").and_then(|w| w.parse::<u64>().ok()).unwrap_or(max_wait).clamp(1, max_wait);
    let sid = random_id(24);
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut rd, mut wr) = tokio::io::split(ours);
    let lang = req.attr_ns(Namespace::xml(), "lang").map(str::to_string);
    if wr.write_all(&stream_header_bytes(&to, lang.as_deref())).await.is_err() {
        return terminate("internal-server-error");
    }
    let session = Arc::new(Session {
        pipe: AsyncMutex::new(Some(wr)),
        state: Mutex::new(SessionState {
            last_rid: rid,
            outbound: VecDeque::new(),
            generation: 0,
            last_activity: Instant::now(),
            ended: false,
        }),
        notify: Notify::new(),
        wait: Duration::from_secs(wait),
        to,
    });
    bosh.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(sid.clone(), session.clone());
    state.spawn_session(state.c2s.clone().handle_framed(theirs, info.peer, Arc::unwrap_or_clone(info.cb), "bosh"));
    // Pump: frames from the c2s writer into the session's queue.
    let pump_session = session.clone();
    tokio::spawn(async move {
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
            while let Some(end) = pending.iter().position(|b| *b == FRAME_END) {
                let frame: Vec<u8> = pending.drain(..=end).collect();
                let parsed = std::str::from_utf8(&frame[..frame.len() - 1]).ok().and_then(|t| t.parse::<Element>().ok());
                let mut st = pump_session.state.lock().unwrap_or_else(|p| p.into_inner());
                match parsed {
                    // The session creation response carries what <open/> says.
                    Some(el) if el.is("open", NS_FRAMING) => {}
                    Some(el) if el.is("close", NS_FRAMING) => st.ended = true,
                    Some(el) => st.outbound.push_back(el),
                    None => {}
                }
            }
            pump_session.notify.notify_waiters();
        }
        pump_session.state.lock().unwrap_or_else(|p| p.into_inner()).ended = true;
        pump_session.notify.notify_waiters();
    });
    let mut response = elem("body", NS_HTTPBIND)
        .with_attr("sid", sid.as_str())
        .with_attr("wait", wait.to_string())
        .with_attr("requests", REQUESTS.to_string())
        .with_attr("hold", "1")
        .with_attr("inactivity", config.http.bosh_inactivity_secs.to_string())
        .with_attr("polling", "2")
        .with_attr("ver", "1.11")
        .with_attr("from", session.to.as_str())
        .with_attr("secure", "true");
    if let Ok(name) = NcName::try_from("version") {
        response.attrs_mut().insert(Namespace::from(NS_XBOSH.to_string()), name, "1.0".to_string());
    }
    // XEP-0206 §5: the stream features come with the creation response (or the next one).
    respond_with_queue(&session, response, 0).await
}

async fn continue_session(bosh: &Arc<BoshSessions>, sid: &str, session: Arc<Session>, req: &Element, rid: u64) -> Response {
    let generation = {
        let mut st = session.state.lock().unwrap_or_else(|p| p.into_inner());
        // XEP-0124 §14.2: rids grow by one; a request within the window is accepted in order of
        // arrival, anything else ends the session.
        if rid <= st.last_rid.saturating_sub(u64::from(REQUESTS)) || rid > st.last_rid + u64::from(REQUESTS) {
            drop(st);
            bosh.remove(sid);
            return terminate("item-not-found");
        }
        st.last_rid = st.last_rid.max(rid);
        st.last_activity = Instant::now();
        st.generation += 1;
        st.generation
    };
    session.notify.notify_waiters();
    let restart = req.attr_ns(&Namespace::from(NS_XBOSH.to_string()), "restart") == Some("true");
    let terminating = req.attr("type") == Some("terminate");
    {
        let mut pipe = session.pipe.lock().await;
        if let Some(wr) = pipe.as_mut() {
            let mut bytes = Vec::new();
            if restart {
                bytes.extend_from_slice(&stream_header_bytes(&session.to, None));
            }
            for child in req.children() {
                match element_to_bytes(child) {
                    Ok(b) => bytes.extend_from_slice(&b),
                    Err(_) => return terminate("bad-request"),
                }
            }
            if terminating {
                bytes.extend_from_slice(b"</stream:stream>");
            }
            if !bytes.is_empty() && wr.write_all(&bytes).await.is_err() {
                pipe.take();
            }
        }
    }
    if terminating {
        tokio::time::sleep(Duration::from_millis(50)).await;
        session.pipe.lock().await.take();
        bosh.remove(sid);
        let mut body = elem("body", NS_HTTPBIND).with_attr("type", "terminate");
        let queued: Vec<Element> = session.state.lock().unwrap_or_else(|p| p.into_inner()).outbound.drain(..).collect();
        for el in queued {
            body.append_child(el);
        }
        return xml_response(StatusCode::OK, &body);
    }
    let response = elem("body", NS_HTTPBIND);
    respond_with_queue(&session, response, generation).await
}

/// Waits (up to the session's `wait`) until something is queued, the stream ended, or a newer
/// request took over; then answers with whatever is queued.
async fn respond_with_queue(session: &Arc<Session>, mut response: Element, generation: u64) -> Response {
    let deadline = Instant::now() + session.wait;
    loop {
        let notified = session.notify.notified();
        {
            let mut st = session.state.lock().unwrap_or_else(|p| p.into_inner());
            let superseded = generation != 0 && st.generation != generation;
            if !st.outbound.is_empty() || st.ended || superseded || Instant::now() >= deadline {
                for el in st.outbound.drain(..) {
                    response.append_child(el);
                }
                if st.ended {
                    response.set_attr_str("type", "terminate");
                }
                st.last_activity = Instant::now();
                return xml_response(StatusCode::OK, &response);
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}
