//! The frame decoder and message decoding of both planes, fed a hostile
//! byte stream in arbitrary chunks.
//!
//! Input: one byte choosing the plane and a chunk size, then the stream.
//! Checked: no panic; no allocation beyond the frame cap (run with
//! `-malloc_limit_mb=64`, the cap of `glom_protocol::codec::MAX_FRAME_BYTES`);
//! a frame over the cap fails the decoder for good; whatever decodes
//! re-encodes, and its encoding decodes to the same encoding again; a hello
//! that decodes (either plane) has the version `hello_version` reads from its
//! body, and the handshake rule refuses it for exactly the right reason
//! (version, then config hash, then, on the peer plane, the cluster attempt
//! of protocol version 4).

#![no_main]

use glom_protocol::codec::{decode_body, encode, hello_version, FrameDecoder, Limits};
use glom_protocol::message::{
    check_hello, check_peer_hello, ControlMessage, PeerMessage, RefuseReason, PROTOCOL_VERSION,
};
use glom_protocol::Error;
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

/// The receiver's side of the handshake: the config hash of the seeds and
/// an attempt after one restart.
const OUR_HASH: &str = "abc";
const OUR_ATTEMPT: u32 = 1;

/// A message of one plane: what is checked of it beyond the round trip.
trait Plane: DeserializeOwned + Serialize {
    /// The version of a hello (variant 0), `None` for any other message.
    fn hello(&self) -> Option<u32>;
    /// The handshake rule on a hello; nothing for other messages.
    fn check(&self);
}

impl Plane for ControlMessage {
    fn hello(&self) -> Option<u32> {
        match self {
            ControlMessage::Hello(h) => Some(h.version),
            _ => None,
        }
    }

    fn check(&self) {
        assert!(!self.kind().is_empty());
        let ControlMessage::Hello(h) = self else {
            return;
        };
        match check_hello(h, OUR_HASH) {
            Ok(()) => assert!(h.version == PROTOCOL_VERSION && h.config_hash == OUR_HASH),
            Err(RefuseReason::VersionMismatch { ours, theirs }) => {
                assert_eq!((ours, theirs), (PROTOCOL_VERSION, h.version));
                assert_ne!(h.version, PROTOCOL_VERSION);
            }
            Err(RefuseReason::ConfigMismatch { theirs, .. }) => {
                assert_eq!(h.version, PROTOCOL_VERSION);
                assert_eq!(theirs, h.config_hash);
                assert_ne!(theirs, OUR_HASH);
            }
            Err(other) => panic!("a hello refused for {other}"),
        }
    }
}

impl Plane for PeerMessage {
    fn hello(&self) -> Option<u32> {
        match self {
            PeerMessage::Hello(h) => Some(h.version),
            _ => None,
        }
    }

    fn check(&self) {
        let PeerMessage::Hello(h) = self else {
            return;
        };
        let compatible = h.version == PROTOCOL_VERSION && h.config_hash == OUR_HASH;
        match check_peer_hello(h, OUR_HASH, OUR_ATTEMPT) {
            Ok(()) => assert!(compatible && h.attempt == OUR_ATTEMPT),
            Err(RefuseReason::OtherAttempt { ours, theirs }) => {
                assert!(compatible);
                assert_eq!((ours, theirs), (OUR_ATTEMPT, h.attempt));
                assert_ne!(h.attempt, OUR_ATTEMPT);
            }
            Err(RefuseReason::VersionMismatch { theirs, .. }) => {
                assert_eq!(theirs, h.version);
                assert_ne!(h.version, PROTOCOL_VERSION);
            }
            Err(RefuseReason::ConfigMismatch { theirs, .. }) => {
                assert_eq!(h.version, PROTOCOL_VERSION);
                assert_ne!(theirs, OUR_HASH);
            }
            Err(other) => panic!("a peer hello refused for {other}"),
        }
    }
}

/// Feed `stream` in chunks of `chunk` bytes, polling after each, and check
/// every message that comes out.
fn run<T: Plane>(stream: &[u8], chunk: usize, limits: Limits, raw: bool) {
    let mut dec = FrameDecoder::new(limits);
    let mut failed = false;
    for piece in stream.chunks(chunk) {
        dec.push(piece);
        loop {
            if raw {
                match dec.poll_frame() {
                    Ok(Some(body)) => {
                        assert!(body.len() <= limits.frame_cap());
                        let version = hello_version(&body);
                        if let Ok(msg) = decode_body::<T>(&body, &limits) {
                            if let Some(v) = msg.hello() {
                                assert_eq!(version, Some(v), "a hello's version");
                            }
                            msg.check();
                            round_trip(&msg, &limits);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        check_error(&e, &mut failed);
                        break;
                    }
                }
            } else {
                match dec.poll::<T>() {
                    Ok(Some(msg)) => {
                        assert!(!failed, "a message after a refused frame");
                        msg.check();
                        round_trip(&msg, &limits);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let too_large = matches!(e, Error::FrameTooLarge { .. });
                        check_error(&e, &mut failed);
                        if too_large {
                            break;
                        }
                    }
                }
            }
        }
    }
    let _ = dec.finish();
    if failed {
        assert!(dec.finish().is_err(), "a refused stream finished cleanly");
        assert_eq!(dec.buffered(), 0, "a refused stream kept its bytes");
    }
}

/// A frame over the cap is an error forever after.
fn check_error(e: &Error, failed: &mut bool) {
    let _ = e.to_string();
    if let Error::FrameTooLarge { .. } = e {
        *failed = true;
    } else {
        assert!(!*failed, "a refused decoder reported {e}");
    }
}

/// Whatever decodes re-encodes (it came in under the cap), and decoding
/// that encoding gives the same bytes again (NaN-safe, unlike `==`).
fn round_trip<T: Plane>(msg: &T, limits: &Limits) {
    let once = encode(msg, limits).expect("a decoded message re-encodes");
    let back: T = decode_body(&once[4..], limits).expect("an encoded message decodes");
    let twice = encode(&back, limits).expect("it re-encodes again");
    assert_eq!(once, twice);
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, stream)) = data.split_first() else {
        return;
    };
    // A small cap now and then, so the refusal path is reached with short
    // inputs as well as with the real one.
    let limits = if head & 0x80 != 0 {
        Limits::new(64).unwrap()
    } else {
        Limits::default()
    };
    let chunk = usize::from(head & 0x0f) + 1;
    let chunk = if chunk == 16 {
        stream.len().max(1)
    } else {
        chunk
    };
    let raw = head & 0x20 != 0;
    if head & 0x10 == 0 {
        run::<ControlMessage>(stream, chunk, limits, raw);
    } else {
        run::<PeerMessage>(stream, chunk, limits, raw);
        // A halo frame that decodes is validated before use.
        if let Ok(PeerMessage::Halo(frame)) = decode_body::<PeerMessage>(stream, &limits) {
            if frame.validate().is_ok() {
                assert_eq!(frame.payload.to_f32().len(), frame.payload.len());
            }
        }
    }
});
