//! Framing: how messages become bytes on a stream and back, without doing
//! any I/O, so the same code serves QUIC streams, in-memory test pairs and
//! fuzzing alike (the quinn-proto style).
//!
//! A frame is `[u32 little-endian body length][bincode 2 body]`. Both sides
//! enforce a hard cap on the body length: [`encode`] refuses to produce a
//! larger frame and [`FrameDecoder`] refuses one from its length prefix
//! alone, before buffering any of the body, so a peer cannot make us
//! allocate more than the cap. bincode's own decode limit is set to the same
//! cap, so a length field inside a body cannot claim more either.
//!
//! The decoder is fed whatever bytes arrived ([`FrameDecoder::push`]) and
//! asked for whole messages ([`FrameDecoder::poll`]); an incomplete frame is
//! simply "not yet", and [`FrameDecoder::finish`] tells a clean end of
//! stream from one that cut a frame short.

use std::ops::Range;

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// Largest frame body any [`Limits`] allows (64 MiB): a halo frame of a
/// large tile fits many times over, and it bounds what one frame can make a
/// receiver allocate. bincode's decode limit is this compile-time constant.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// Size of a frame's length prefix.
pub const PREFIX_BYTES: usize = 4;

type WireConfig = Configuration<LittleEndian, Varint, Limit<MAX_FRAME_BYTES>>;

fn wire_config() -> WireConfig {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// Size limits of a connection; part of the API so that a deployment (or a
/// test) can lower the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame body, in bytes, that is sent or accepted. Values above
    /// [`MAX_FRAME_BYTES`] act as [`MAX_FRAME_BYTES`]; [`Limits::new`]
    /// refuses them outright.
    pub max_frame_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: MAX_FRAME_BYTES,
        }
    }
}

impl Limits {
    /// Limits with a frame cap of `max_frame_bytes`, which must be in
    /// `1..=MAX_FRAME_BYTES`.
    pub fn new(max_frame_bytes: usize) -> Result<Self> {
        if max_frame_bytes == 0 || max_frame_bytes > MAX_FRAME_BYTES {
            return Err(Error::InvalidLimit {
                requested: max_frame_bytes,
                max: MAX_FRAME_BYTES,
            });
        }
        Ok(Self { max_frame_bytes })
    }

    /// The cap actually enforced.
    pub fn frame_cap(&self) -> usize {
        self.max_frame_bytes.min(MAX_FRAME_BYTES)
    }
}

/// Encode `msg` as one frame (length prefix and body). Refuses a message
/// whose body exceeds the cap, since the receiver would refuse it anyway.
pub fn encode<T: Serialize>(msg: &T, limits: &Limits) -> Result<Vec<u8>> {
    let mut out = vec![0u8; PREFIX_BYTES];
    bincode::serde::encode_into_std_write(msg, &mut out, wire_config()).map_err(Error::Encode)?;
    let body = out.len() - PREFIX_BYTES;
    let cap = limits.frame_cap();
    if body > cap {
        return Err(Error::FrameTooLarge {
            bytes: body as u64,
            limit: cap,
        });
    }
    // body <= MAX_FRAME_BYTES < 2^32, so the cast is lossless.
    out[..PREFIX_BYTES].copy_from_slice(&(body as u32).to_le_bytes());
    Ok(out)
}

/// Decode one frame body (without its prefix) as a whole message; bytes the
/// message does not use are an error, not something to ignore.
pub fn decode_body<T: DeserializeOwned>(body: &[u8], limits: &Limits) -> Result<T> {
    let cap = limits.frame_cap();
    if body.len() > cap {
        return Err(Error::FrameTooLarge {
            bytes: body.len() as u64,
            limit: cap,
        });
    }
    let (msg, consumed) =
        bincode::serde::decode_from_slice(body, wire_config()).map_err(|source| Error::Decode {
            bytes: body.len(),
            source,
        })?;
    if consumed != body.len() {
        return Err(Error::TrailingBytes {
            bytes: body.len(),
            consumed,
        });
    }
    Ok(msg)
}

/// The protocol version of a frame body that starts like a hello (variant 0
/// of either message enum, version first), even if the rest of it does not
/// decode under this build's protocol. Lets a handshake that fails to decode
/// be answered "version mismatch" instead of "garbage".
pub fn hello_version(body: &[u8]) -> Option<u32> {
    let config = bincode::config::standard().with_limit::<16>();
    match bincode::serde::decode_from_slice::<(u32, u32), _>(body, config) {
        Ok(((0, version), _)) => Some(version),
        _ => None,
    }
}

/// Splits a byte stream into frames and decodes them; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct FrameDecoder {
    limits: Limits,
    /// Bytes received and not yet consumed start at `start`.
    buf: Vec<u8>,
    start: usize,
    /// Announced length of a frame refused as too large. The stream cannot
    /// be resynchronised after one, so the decoder stays failed and drops
    /// further input.
    refused: Option<u64>,
}

impl FrameDecoder {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Append bytes as they arrived, in any chunking.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.refused.is_some() {
            return;
        }
        // Drop consumed bytes once they are at least half the buffer, so
        // the copy is amortised over the frames consumed.
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole message, `Ok(None)` if its frame is not complete yet.
    /// A frame whose body does not decode is consumed and reported, so the
    /// caller may go on or close; a length over the cap fails the decoder
    /// for good.
    pub fn poll<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        match self.next_frame()? {
            None => Ok(None),
            Some(range) => decode_body(&self.buf[range], &self.limits).map(Some),
        }
    }

    /// The next whole frame body, undecoded (see [`hello_version`]).
    pub fn poll_frame(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(self.next_frame()?.map(|range| self.buf[range].to_vec()))
    }

    /// At the end of the stream: an error if it stopped inside a frame.
    pub fn finish(&self) -> Result<()> {
        if let Some(bytes) = self.refused {
            return Err(self.too_large(bytes));
        }
        let have = self.buffered();
        if have == 0 {
            return Ok(());
        }
        let need = match self.announced() {
            Some(len) => PREFIX_BYTES + len as usize,
            None => PREFIX_BYTES,
        };
        Err(Error::Truncated { have, need })
    }

    /// The length prefix of the next frame, if all of it has arrived.
    fn announced(&self) -> Option<u32> {
        let prefix = self.buf.get(self.start..self.start + PREFIX_BYTES)?;
        Some(u32::from_le_bytes(prefix.try_into().ok()?))
    }

    fn too_large(&self, bytes: u64) -> Error {
        Error::FrameTooLarge {
            bytes,
            limit: self.limits.frame_cap(),
        }
    }

    /// Where in `buf` the next complete body lies; consumes its frame.
    fn next_frame(&mut self) -> Result<Option<Range<usize>>> {
        if let Some(bytes) = self.refused {
            return Err(self.too_large(bytes));
        }
        let Some(len) = self.announced() else {
            return Ok(None);
        };
        if len as usize > self.limits.frame_cap() {
            self.refused = Some(len as u64);
            self.buf = Vec::new();
            self.start = 0;
            return Err(self.too_large(len as u64));
        }
        let body = self.start + PREFIX_BYTES;
        let end = body + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        self.start = end;
        Ok(Some(body..end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ControlMessage, Hello, PeerHello, PeerMessage, PROTOCOL_VERSION};

    #[test]
    fn limits_outside_the_supported_range_are_refused() {
        assert!(Limits::new(0).is_err());
        let e = Limits::new(MAX_FRAME_BYTES + 1).unwrap_err().to_string();
        assert!(e.contains(&(MAX_FRAME_BYTES + 1).to_string()), "{e}");
        assert_eq!(Limits::new(1024).unwrap().frame_cap(), 1024);
        let loose = Limits {
            max_frame_bytes: usize::MAX,
        };
        assert_eq!(loose.frame_cap(), MAX_FRAME_BYTES);
    }

    #[test]
    fn hello_version_is_read_from_either_plane() {
        let limits = Limits::default();
        let mut hello = Hello::new("abc", "w0", "127.0.0.1:1");
        hello.version = 7;
        let frame = encode(&ControlMessage::Hello(hello), &limits).unwrap();
        assert_eq!(hello_version(&frame[PREFIX_BYTES..]), Some(7));
        let frame = encode(&PeerMessage::Hello(PeerHello::new("abc", 3, 0)), &limits).unwrap();
        assert_eq!(
            hello_version(&frame[PREFIX_BYTES..]),
            Some(PROTOCOL_VERSION)
        );
        let frame = encode(&ControlMessage::Welcome { worker_id: 0 }, &limits).unwrap();
        assert_eq!(hello_version(&frame[PREFIX_BYTES..]), None);
    }

    #[test]
    fn a_bad_body_is_consumed_and_the_stream_goes_on() {
        let limits = Limits::default();
        let mut dec = FrameDecoder::new(limits);
        // A frame of one byte 0xff: no variant index of that value.
        dec.push(&[1, 0, 0, 0, 0xff]);
        dec.push(&encode(&ControlMessage::Heartbeat { now_ms: 5 }, &limits).unwrap());
        assert!(matches!(
            dec.poll::<ControlMessage>(),
            Err(Error::Decode { bytes: 1, .. })
        ));
        assert_eq!(
            dec.poll::<ControlMessage>().unwrap(),
            Some(ControlMessage::Heartbeat { now_ms: 5 })
        );
        dec.finish().unwrap();
    }
}
