//! One XML stream over some byte transport: read events, write elements, fail with a stream error.

use parley_proto::reader::{Limits, StreamEvent, StreamReader};
use parley_proto::{Element, StreamError, writer};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of one socket read. Kept small: it sits in every idle session's future while it waits,
/// and TLS buffers each decrypted record anyway, so a larger stanza just takes more reads.
const READ_CHUNK: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The peer broke the protocol; it has been sent this stream error.
    #[error("{0}")]
    Stream(#[from] StreamError),
    #[error("the connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

pub struct Conn<S> {
    pub io: S,
    reader: StreamReader,
    out: Vec<u8>,
    /// Bytes read since the last call to `take_activity`.
    activity: bool,
    /// Our stream header went out for the current stream (a stream error needs one first).
    pub header_sent: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(io: S, limits: Limits) -> Self {
        Self {
            io,
            reader: StreamReader::new(limits),
            out: Vec::new(),
            activity: false,
            header_sent: false,
        }
    }

    /// Splits off the transport for a STARTTLS upgrade; unread plaintext is dropped with the
    /// old reader, so nothing sent before the handshake is read as if it came over TLS.
    pub fn into_io(self) -> S {
        self.io
    }

    /// After SASL success the client starts a new stream.
    pub fn restart(&mut self) {
        self.reader.restart();
        self.header_sent = false;
    }

    pub fn take_activity(&mut self) -> bool {
        std::mem::take(&mut self.activity)
    }

    /// The next stream event. Cancel-safe: the only await is a socket read, and nothing read
    /// is lost if it is cancelled.
    pub async fn next_event(&mut self) -> Result<StreamEvent, ConnError> {
        loop {
            if let Some(event) = self.reader.next_event()? {
                return Ok(event);
            }
            let mut chunk = [0u8; READ_CHUNK];
            let read = self.io.read(&mut chunk).await?;
            if read == 0 {
                return Err(ConnError::Closed);
            }
            self.activity = true;
            self.reader.feed(&chunk[..read])?;
        }
    }

    pub async fn send_raw(&mut self, text: &str) -> io::Result<()> {
        self.io.write_all(text.as_bytes()).await?;
        self.io.flush().await
    }

    /// Serialises `element` into the write buffer without sending it.
    pub fn queue(&mut self, element: &Element) {
        writer::write_element(element, &mut self.out);
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
            // Don't keep a grown buffer in a session that may now sit idle for hours.
            if self.out.capacity() > 1024 {
                self.out = Vec::new();
            }
        }
        self.io.flush().await
    }

    pub async fn send(&mut self, element: &Element) -> io::Result<()> {
        self.queue(element);
        self.flush().await
    }

    /// Sends `<stream:error>` (after a stream header from `domain` if none went out yet, RFC 6120
    /// §4.9.1.2) and closes our side of the stream.
    pub async fn send_error_and_close(&mut self, error: &StreamError, domain: &str) {
        if !self.header_sent {
            let header =
                writer::stream_header(domain, None, &format!("{:016x}", rand::random::<u64>()), "en");
            self.out.extend_from_slice(header.as_bytes());
        }
        self.queue(&error.to_element());
        self.out.extend_from_slice(writer::STREAM_CLOSE.as_bytes());
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }

    /// Closes our side of the stream gracefully.
    pub async fn close(&mut self) {
        let _ = self.send_raw(writer::STREAM_CLOSE).await;
        let _ = self.io.shutdown().await;
    }
}
