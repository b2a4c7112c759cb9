//! Protocol messages on QUIC streams: [`send`] writes one codec frame,
//! [`FramedRecv`] feeds whatever arrives into a `FrameDecoder` and yields
//! whole messages. The codec enforces the size cap from the length prefix
//! alone, so a peer cannot make the receiver buffer more than one capped
//! frame.
//!
//! Stream layout: a control connection carries one bidirectional stream for
//! its whole life (opened by the worker). Halos use one long-lived
//! unidirectional stream per neighbour and direction, not a stream per
//! (step, iteration): frames on it arrive in the order sent, each names its
//! step and iteration, and no stream set-up sits on the critical path of a
//! settling iteration.

use glom_protocol::codec::{encode, FrameDecoder, Limits};
use quinn::{RecvStream, SendStream};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::Result;

/// Largest chunk taken from the stream at a time; the decoder copies it, so
/// this bounds the transient allocation, not the frame size.
const READ_CHUNK: usize = 64 << 10;

/// Encode `msg` as one frame and write it to `stream`. Returns the bytes
/// written (prefix included), for traffic accounting. A message over the cap
/// is refused before anything is written.
pub async fn send<T: Serialize>(
    stream: &mut SendStream,
    msg: &T,
    limits: &Limits,
) -> Result<usize> {
    let frame = encode(msg, limits)?;
    stream.write_all(&frame).await?;
    Ok(frame.len())
}

/// The receiving half of a stream, decoded into messages.
#[derive(Debug)]
pub struct FramedRecv {
    stream: RecvStream,
    decoder: FrameDecoder,
    /// Bytes taken from the stream so far, framing included.
    received: u64,
}

impl FramedRecv {
    /// Wrap `stream`, refusing frames over `limits`.
    pub fn new(stream: RecvStream, limits: Limits) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(limits),
            received: 0,
        }
    }

    /// Bytes received so far, framing included.
    pub fn bytes_received(&self) -> u64 {
        self.received
    }

    /// The underlying stream, e.g. to `stop` it after an error.
    pub fn stream_mut(&mut self) -> &mut RecvStream {
        &mut self.stream
    }

    /// The next message; `Ok(None)` at a clean end of stream (the peer
    /// finished between two frames). An error for a frame that does not
    /// decode, exceeds the cap, or is cut short by the end of the stream,
    /// and for a stream reset or a lost connection.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        loop {
            if let Some(msg) = self.decoder.poll()? {
                return Ok(Some(msg));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// The next frame body, undecoded: lets a handshake read the version of
    /// a hello it cannot decode (`glom_protocol::codec::hello_version`).
    pub async fn recv_body(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some(body) = self.decoder.poll_frame()? {
                return Ok(Some(body));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Feed the decoder the next chunk; `false` at a clean end of stream,
    /// an error at an end of stream inside a frame.
    async fn fill(&mut self) -> Result<bool> {
        match self.stream.read_chunk(READ_CHUNK, true).await? {
            Some(chunk) => {
                self.received += chunk.bytes.len() as u64;
                self.decoder.push(&chunk.bytes);
                Ok(true)
            }
            None => {
                self.decoder.finish()?;
                Ok(false)
            }
        }
    }
}
