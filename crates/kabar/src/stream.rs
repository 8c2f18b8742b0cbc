//! Transport glue shared by c2s and component connections: a socket that may be upgraded to TLS,
//! reading bytes into the sans-IO framer, and writing elements, headers and stream errors.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use kabar_core::ns;
use kabar_xml::{elem, Element, ElementExt, FramerError, HeaderAttrs, StreamEvent, StreamFramer, StreamWriter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A TCP connection, plain or TLS.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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

/// The reading half: bytes → framer → queued events.
pub struct Reader {
    framer: StreamFramer,
    events: VecDeque<StreamEvent>,
    buf: Box<[u8]>,
    /// Any byte arrived since the last call to `take_activity` (feeds the idle-ping timer).
    activity: bool,
}

impl Reader {
    pub fn new(framer: StreamFramer) -> Self {
        Reader { framer, events: VecDeque::new(), buf: vec![0u8; 16 * 1024].into_boxed_slice(), activity: false }
    }

    /// The next stream event. Cancel-safe: the only await is the socket read, and bytes that were
    /// read are framed before returning.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> Result<StreamEvent, ReadError> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Ok(ev);
            }
            let n = io.read(&mut self.buf).await?;
            if n == 0 {
                return Err(ReadError::Eof);
            }
            self.activity = true;
            let mut out = Vec::new();
            let result = self.framer.feed(&self.buf[..n], &mut out);
            self.events.extend(out);
            if let Err(e) = result {
                // Hand out what was complete before the bad bytes, then the error.
                if let Some(ev) = self.events.pop_front() {
                    return Ok(ev);
                }
                return Err(e.into());
            }
        }
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

/// The writing half: elements → bytes on the socket.
pub struct Writer {
    sw: StreamWriter,
    pub header_sent: bool,
    closed: bool,
}

impl Writer {
    pub fn new(sw: StreamWriter) -> Self {
        Writer { sw, header_sent: false, closed: false }
    }

    pub async fn header<W: AsyncWrite + Unpin>(&mut self, io: &mut W, attrs: &HeaderAttrs<'_>) -> io::Result<()> {
        self.sw.open(attrs).map_err(io::Error::other)?;
        self.header_sent = true;
        self.flush(io).await
    }

    /// Queues an element without writing (batching several stanzas into one write).
    pub fn queue(&mut self, el: &Element) -> io::Result<()> {
        self.sw.element(el).map_err(io::Error::other)
    }

    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        if self.sw.has_pending() {
            let bytes = self.sw.take();
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
        if self.closed {
            return Ok(());
        }
        if !self.header_sent {
            self.sw.open(header).map_err(io::Error::other)?;
            self.header_sent = true;
        }
        let mut error = elem("error", ns::STREAMS).with_child(elem(condition, ns::STREAM_ERRORS));
        if let Some(text) = text {
            error.append_child(elem("text", ns::STREAM_ERRORS).with_text(text));
        }
        self.sw.element(&error).map_err(io::Error::other)?;
        self.close(io).await
    }

    /// Sends `</stream:stream>` once.
    pub async fn close<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if self.header_sent {
            self.sw.close().map_err(io::Error::other)?;
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
