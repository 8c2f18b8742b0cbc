//! RFC 7395 XMPP over WebSocket. The bridge turns each text message into stream bytes for the c2s
//! framer (`<open/>` becomes a stream header, `<close/>` its end) and each framed element the c2s
//! writer produces into one text message.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use kabar_xml::{Element, HeaderAttrs, StreamWriter, NS_CLIENT};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tracing::debug;

use super::{ConnInfo, HttpState};
use crate::stream::{FRAME_END, NS_FRAMING};

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<HttpState>,
    Extension(info): Extension<ConnInfo>,
) -> Response {
    if let Err(refusal) = state.c2s.server.admit_new_connection(kabar_core::admission::Work::Login) {
        return super::busy_response(&refusal);
    }
    let limit = state.c2s.server.config.limits.max_stanza_bytes.max(4096);
    let ws = ws.protocols(["xmpp"]);
    // RFC 7395 §3.2: the client must offer the "xmpp" subprotocol.
    if ws.selected_protocol().is_none() {
        return (StatusCode::BAD_REQUEST, "the WebSocket subprotocol 'xmpp' is required (RFC 7395)\n").into_response();
    }
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| bridge(socket, state, info))
}

/// Translates one client message into bytes for the framer.
fn inbound(text: &str, header: &mut StreamWriter) -> Result<Vec<u8>, &'static str> {
    let trimmed = text.trim();
    if trimmed.starts_with("<open") || trimmed.starts_with("<close") {
        let el: Element = trimmed.parse().map_err(|_| "malformed framing element")?;
        if el.is("open", NS_FRAMING) {
            let attrs = HeaderAttrs {
                content_ns: NS_CLIENT,
                from: el.attr("from"),
                to: el.attr("to"),
                id: "",
                version: el.attr("version"),
                lang: el.attr_ns(rxml::Namespace::xml(), "lang"),
            };
            header.open(&attrs).map_err(|_| "bad <open/> attributes")?;
            return Ok(header.take().to_vec());
        }
        if el.is("close", NS_FRAMING) {
            header.close().map_err(|_| "<close/> without <open/>")?;
            return Ok(header.take().to_vec());
        }
    }
    Ok(trimmed.as_bytes().to_vec())
}

async fn bridge(mut socket: WebSocket, state: HttpState, info: ConnInfo) {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    state.spawn_session(state.c2s.clone().handle_framed(theirs, info.peer, std::sync::Arc::unwrap_or_clone(info.cb), "websocket"));
    let (mut rd, mut wr) = tokio::io::split::<DuplexStream>(ours);
    let mut header = StreamWriter::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => match inbound(text.as_str(), &mut header) {
                    Ok(bytes) => {
                        if wr.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    Err(reason) => {
                        debug!(reason, "bad WebSocket framing");
                        let _ = wr.write_all(b"<").await; // makes the framer fail: not-well-formed
                        let _ = wr.write_all(b"!").await;
                    }
                },
                Some(Ok(Message::Binary(_))) => {
                    // RFC 7395 §3.4: XMPP frames are text.
                    let _ = socket.send(Message::Close(Some(CloseFrame { code: 1003, reason: "text frames only".into() }))).await;
                    break;
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = socket.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
                    break;
                }
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.iter().position(|b| *b == FRAME_END) {
                        let frame: Vec<u8> = pending.drain(..=end).collect();
                        let text = String::from_utf8_lossy(&frame[..frame.len() - 1]).into_owned();
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                }
            },
        }
    }
    let _ = wr.shutdown().await;
}
