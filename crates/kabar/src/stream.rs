//! Transport glue shared by c2s and component connections: a socket that may be upgraded to TLS,
//! reading bytes into the sans-IO framer, and writing elements, headers and stream errors.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use kabar_core::ns;
use kabar_core::sessions::SharedStanza;
use bytes::BytesMut;
use kabar_xml::{elem, element_to_bytes, Element, ElementExt, FramerError, HeaderAttrs, StreamEvent, StreamFramer, StreamWriter};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A client connection: TCP (plain or TLS), or one end of a pipe whose other end is a WebSocket
/// or BOSH bridge (see `http::framing`).
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Pipe(DuplexStream),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Pipe(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Pipe(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Pipe(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Pipe(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed by peer")]
    Eof,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Framing(#[from] FramerError),
}

/// Bytes taken from a socket in one read.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// The read buffer of every connection polled on this thread. A read fills it and the bytes
    /// are framed within the same poll, so no connection owns a buffer while it waits: an idle
    /// connection costs no read buffer at all (docs/BENCHMARKS.md, memory per idle connection).
    static READ_BUF: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// The reading half: bytes → framer → queued events.
pub struct Reader {
    /// Boxed: a reader moves between tasks' states (negotiation, session, resumption) and each
    /// move would otherwise carry the parser's state inline.
    framer: Box<StreamFramer>,
    /// Events framed from one read and not handed out yet; its buffer is dropped once they are
    /// all out, so a waiting connection holds none.
    events: VecDeque<StreamEvent>,
    /// Any byte arrived since the last call to `take_activity` (feeds the idle-ping timer).
    activity: bool,
}

impl Reader {
    pub fn new(framer: StreamFramer) -> Self {
        Reader { framer: Box::new(framer), events: VecDeque::new(), activity: false }
    }

    /// The next stream event. Cancel-safe: bytes are framed in the same poll that read them, and
    /// the only suspension point is a read that took nothing.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> Result<StreamEvent, ReadError> {
        loop {
            if let Some(ev) = self.pop() {
                return Ok(ev);
            }
            let mut out = Vec::new();
            let (n, result) = std::future::poll_fn(|cx| {
                READ_BUF.with_borrow_mut(|buf| {
                    let mut rb = ReadBuf::new(buf);
                    match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) => {
                            let read = rb.filled();
                            let result = if read.is_empty() { Ok(()) } else { self.framer.feed(read, &mut out) };
                            Poll::Ready(Ok((read.len(), result)))
                        }
                    }
                })
            })
            .await?;
            if n == 0 {
                return Err(ReadError::Eof);
            }
            self.activity = true;
            // The events are always all handed out before the next read, so the queue is empty
            // here and can take over the read's vector.
            self.events = VecDeque::from(out);
            if let Err(e) = result {
                // Hand out what was complete before the bad bytes, then the error.
                if let Some(ev) = self.pop() {
                    return Ok(ev);
                }
                return Err(e.into());
            }
        }
    }

    fn pop(&mut self) -> Option<StreamEvent> {
        let ev = self.events.pop_front()?;
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        Some(ev)
    }

    /// Whether the framer failed earlier (events drained; the error is next).
    pub fn reset(&mut self) {
        self.framer.reset();
        self.events.clear();
    }

    pub fn take_activity(&mut self) -> bool {
        std::mem::take(&mut self.activity)
    }
}

/// Separates messages on a framed transport's pipe. NUL can never occur in XML 1.0 output, so the
/// bridge on the other end splits on it without parsing.
pub const FRAME_END: u8 = 0;
/// RFC 7395 framing namespace (`<open/>`, `<close/>`).
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

enum Mode {
    /// One XML document per stream (TCP).
    Stream(StreamWriter),
    /// One standalone element per message, each followed by [`FRAME_END`] (RFC 7395 WebSocket,
    /// XEP-0206 BOSH): the header is `<open/>`, the end `<close/>`.
    Framed(BytesMut),
}

/// The writing half: elements → bytes on the socket.
pub struct Writer {
    mode: Mode,
    pub header_sent: bool,
    closed: bool,
}

impl Writer {
    pub fn new(sw: StreamWriter) -> Self {
        Writer { mode: Mode::Stream(sw), header_sent: false, closed: false }
    }

    pub fn framed() -> Self {
        Writer { mode: Mode::Framed(BytesMut::new()), header_sent: false, closed: false }
    }

    /// A fresh writer of the same kind, for a stream restart.
    pub fn reset(&mut self) {
        *self = match self.mode {
            Mode::Stream(_) => Writer::new(StreamWriter::new()),
            Mode::Framed(_) => Writer::framed(),
        };
    }

    fn frame(buf: &mut BytesMut, el: &Element) -> io::Result<()> {
        buf.extend_from_slice(&element_to_bytes(el).map_err(io::Error::other)?);
        buf.extend_from_slice(&[FRAME_END]);
        Ok(())
    }

    fn write_header(&mut self, attrs: &HeaderAttrs<'_>) -> io::Result<()> {
        match &mut self.mode {
            Mode::Stream(sw) => sw.open(attrs).map_err(io::Error::other)?,
            Mode::Framed(buf) => {
                let mut open = elem("open", NS_FRAMING).with_attr("id", attrs.id).with_attr("version", attrs.version.unwrap_or("1.0"));
                if let Some(from) = attrs.from {
                    open.set_attr_str("from", from);
                }
                if let Some(lang) = attrs.lang {
                    open.set_xml_lang(lang);
                }
                Writer::frame(buf, &open)?;
            }
        }
        self.header_sent = true;
        Ok(())
    }

    pub async fn header<W: AsyncWrite + Unpin>(&mut self, io: &mut W, attrs: &HeaderAttrs<'_>) -> io::Result<()> {
        self.write_header(attrs)?;
        self.flush(io).await
    }

    /// Queues an element without writing (batching several stanzas into one write).
    pub fn queue(&mut self, el: &Element) -> io::Result<()> {
        match &mut self.mode {
            Mode::Stream(sw) => sw.element(el).map_err(io::Error::other),
            Mode::Framed(buf) => Writer::frame(buf, el),
        }
    }

    /// Queues one recipient's share of a stanza encoded once for many: the shared bytes with its
    /// `to` spliced in, or its element when the bytes do not fit this stream.
    pub fn queue_shared(&mut self, s: &SharedStanza) -> io::Result<()> {
        if let Some(enc) = &s.body.encoding {
            match &mut self.mode {
                Mode::Stream(sw) => {
                    if sw.shared(enc, s.to.as_str()) {
                        return Ok(());
                    }
                }
                Mode::Framed(buf) => {
                    enc.write_standalone(s.to.as_str(), buf);
                    buf.extend_from_slice(&[FRAME_END]);
                    return Ok(());
                }
            }
        }
        self.queue(&s.to_element())
    }

    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        let bytes = match &mut self.mode {
            Mode::Stream(sw) => sw.has_pending().then(|| sw.take()),
            Mode::Framed(buf) => (!buf.is_empty()).then(|| buf.split()),
        };
        if let Some(bytes) = bytes {
            io.write_all(&bytes).await?;
        }
        io.flush().await
    }

    pub async fn send<W: AsyncWrite + Unpin>(&mut self, io: &mut W, el: &Element) -> io::Result<()> {
        self.queue(el)?;
        self.flush(io).await
    }

    /// Sends `<stream:error>` with `condition` and closes the stream (RFC 6120 §4.9). If our header
    /// was not sent yet, it is sent first (§4.9.1.1) using `header`.
    pub async fn stream_error<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        header: &HeaderAttrs<'_>,
        condition: &str,
        text: Option<&str>,
    ) -> io::Result<()> {
        // RFC 6120 §4.9.3.19: `<see-other-host/>` carries the other host as its character data,
        // so for that condition (a drain's Outbound::Close) the text is the host, not `<text/>`.
        if let ("see-other-host", Some(host)) = (condition, text) {
            let el = elem(condition, ns::STREAM_ERRORS).with_text(host);
            return self.stream_error_with(io, header, el, None).await;
        }
        self.stream_error_with(io, header, elem(condition, ns::STREAM_ERRORS), text).await
    }

    /// [`Writer::stream_error`] with a condition element that has content (RFC 6120 §4.9.3.19
    /// `<see-other-host>host</see-other-host>`).
    pub async fn stream_error_with<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        header: &HeaderAttrs<'_>,
        condition: Element,
        text: Option<&str>,
    ) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        if !self.header_sent {
            self.write_header(header)?;
        }
        let mut error = elem("error", ns::STREAMS).with_child(condition);
        if let Some(text) = text {
            error.append_child(elem("text", ns::STREAM_ERRORS).with_text(text));
        }
        self.queue(&error)?;
        self.close(io).await
    }

    /// Ends the stream once (`</stream:stream>` or `<close/>`).
    pub async fn close<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if self.header_sent {
            match &mut self.mode {
                Mode::Stream(sw) => sw.close().map_err(io::Error::other)?,
                Mode::Framed(buf) => Writer::frame(buf, &elem("close", NS_FRAMING))?,
            }
        }
        self.flush(io).await?;
        let _ = io.shutdown().await;
        Ok(())
    }
}

/// A random token for stream ids and generated resources.
pub fn random_id(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kabar_core::sessions::{SharedBody, SharedStanza};
    use kabar_core::FullJid;

    #[tokio::test]
    async fn rfc7395_shared_stanza_is_written_as_one_standalone_frame_with_its_recipient() {
        let body = SharedBody::new(
            elem("message", ns::CLIENT)
                .with_attr("from", "room@conference.localhost/editor")
                .with_attr("type", "groupchat")
                .with_child(elem("body", ns::CLIENT).with_text("a & b")),
        );
        let to = FullJid::new("bob@localhost/web").expect("valid JID");
        let mut w = Writer::framed();
        w.queue_shared(&SharedStanza { body: body.clone(), to }).expect("queued");
        let mut out = Vec::new();
        w.flush(&mut out).await.expect("flushed");
        assert_eq!(out.last(), Some(&FRAME_END), "one frame, ended for the bridge");
        let parsed = Element::from_reader(&out[..out.len() - 1]).expect("a standalone element");
        assert_eq!(parsed, body.stanza.clone().with_attr("to", "bob@localhost/web"));
    }
}
