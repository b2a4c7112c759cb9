//! Wire-codec properties over every message variant: round trips through
//! `encode` and the streaming decoder in any chunking, the frame cap,
//! garbage and truncated input, the handshake rule and halo framing cost.

mod common;

use common::{
    control_variant, peer_variant, random_control, random_peer, Rng, CONTROL_VARIANTS,
    PEER_VARIANTS,
};
use glom_protocol::codec::{
    decode_body, encode, FrameDecoder, Limits, MAX_FRAME_BYTES, PREFIX_BYTES,
};
use glom_protocol::halo::{HaloFrame, HaloPayload};
use glom_protocol::message::{
    check_hello, check_peer_hello, ControlMessage, Hello, PeerHello, PeerMessage, RefuseReason,
    Step, PROTOCOL_VERSION,
};
use glom_protocol::{Config, Error};

/// Feed `stream` to a decoder in random chunks of 1..=max_chunk bytes and
/// collect every message, checking the stream ends on a frame boundary.
fn decode_chunked<T: serde::de::DeserializeOwned>(
    stream: &[u8],
    r: &mut Rng,
    max_chunk: u64,
) -> Vec<T> {
    let mut dec = FrameDecoder::new(Limits::default());
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let n = (1 + r.below(max_chunk) as usize).min(stream.len() - at);
        dec.push(&stream[at..at + n]);
        at += n;
        while let Some(m) = dec.poll::<T>().unwrap() {
            out.push(m);
        }
    }
    dec.finish().unwrap();
    assert_eq!(dec.buffered(), 0);
    out
}

/// Round-trip `count` random messages of every variant one by one, then as
/// one stream in random chunkings (one byte at a time included).
fn round_trip<T>(
    count: usize,
    variants: usize,
    gen: fn(&mut Rng, usize) -> T,
    index: fn(&T) -> usize,
) where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let limits = Limits::default();
    let mut r = Rng(0x5eed);
    let mut seen = vec![0usize; variants];
    let mut messages = Vec::new();
    let mut stream = Vec::new();
    for i in 0..count {
        let msg = gen(&mut r, i % variants);
        seen[index(&msg)] += 1;
        let frame = encode(&msg, &limits).unwrap();
        let len = u32::from_le_bytes(frame[..PREFIX_BYTES].try_into().unwrap()) as usize;
        assert_eq!(
            len,
            frame.len() - PREFIX_BYTES,
            "message {i}: length prefix"
        );
        let back: T = decode_body(&frame[PREFIX_BYTES..], &limits).unwrap();
        assert_eq!(back, msg, "message {i}");
        stream.extend_from_slice(&frame);
        messages.push(msg);
    }
    assert!(
        seen.iter().all(|&n| n > 0),
        "variants not generated: {seen:?}"
    );
    for max_chunk in [1, 3, 17, 256, 4096] {
        let back: Vec<T> = decode_chunked(&stream, &mut r, max_chunk);
        assert_eq!(back, messages, "chunks of up to {max_chunk} bytes");
    }
}

#[test]
fn every_control_message_round_trips_in_any_chunking() {
    round_trip(
        CONTROL_VARIANTS * 40,
        CONTROL_VARIANTS,
        random_control,
        control_variant,
    );
}

#[test]
fn every_peer_message_round_trips_in_any_chunking() {
    round_trip(
        PEER_VARIANTS * 100,
        PEER_VARIANTS,
        random_peer,
        peer_variant,
    );
}

#[test]
fn a_frame_over_the_cap_is_refused_by_encode_and_by_its_length_prefix() {
    let small = Limits::new(1024).unwrap();
    let big = ControlMessage::Error {
        message: "x".repeat(2000),
    };
    let e = encode(&big, &small).unwrap_err();
    assert!(matches!(e, Error::FrameTooLarge { limit: 1024, .. }), "{e}");
    assert!(e.to_string().contains("1024-byte limit"), "{e}");

    // The prefix alone is refused: no body byte has been pushed.
    let mut dec = FrameDecoder::new(Limits::default());
    dec.push(&80_000_000u32.to_le_bytes());
    let e = dec.poll::<ControlMessage>().unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("frame of 80000000 bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    );
    // The decoder stays failed and holds nothing, whatever follows.
    dec.push(&[0u8; 4096]);
    assert_eq!(dec.buffered(), 0);
    assert!(dec.poll::<ControlMessage>().is_err());
    assert!(dec.finish().is_err());

    // A frame legal for the sender but over the receiver's cap.
    let frame = encode(&big, &Limits::default()).unwrap();
    let mut dec = FrameDecoder::new(small);
    dec.push(&frame[..PREFIX_BYTES]);
    assert!(matches!(
        dec.poll::<ControlMessage>(),
        Err(Error::FrameTooLarge { limit: 1024, .. })
    ));
}

#[test]
fn random_garbage_is_an_error_never_a_panic() {
    let limits = Limits::new(256).unwrap();
    let (mut errors, mut frames) = (0, 0);
    for seed in 0..3000u64 {
        let mut r = Rng(seed);
        // Raw garbage: lengths and bodies are random.
        let raw: Vec<u8> = (0..r.below(300)).map(|_| r.next() as u8).collect();
        // Plausible framing around a random body: only the body is garbage.
        let body: Vec<u8> = (0..r.below(200)).map(|_| r.next() as u8).collect();
        let mut framed = (body.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&body);
        for bytes in [&raw, &framed] {
            for peer in [false, true] {
                let mut dec = FrameDecoder::new(limits);
                dec.push(bytes);
                loop {
                    let got = if peer {
                        dec.poll::<PeerMessage>().map(|m| m.map(|_| ()))
                    } else {
                        dec.poll::<ControlMessage>().map(|m| m.map(|_| ()))
                    };
                    match got {
                        Ok(Some(())) => frames += 1,
                        Ok(None) => break,
                        Err(Error::FrameTooLarge { .. }) => {
                            errors += 1;
                            break;
                        }
                        Err(e) => {
                            assert!(!e.to_string().is_empty());
                            errors += 1;
                        }
                    }
                }
                let _ = dec.finish();
            }
        }
    }
    // A length field inside a body that claims far more than the frame.
    let mut body = vec![4u8, 0, 0xfd]; // Step { step: 0, batch: [2^40 items] ...
    body.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let e = decode_body::<ControlMessage>(&body, &limits).unwrap_err();
    assert!(matches!(e, Error::Decode { bytes: 11, .. }), "{e}");
    println!("garbage: {errors} errors, {frames} frames that happened to decode");
    assert!(
        errors > 10 * frames,
        "{errors} errors vs {frames} decoded frames"
    );
}

#[test]
fn a_truncated_frame_is_incomplete_then_an_error_at_end_of_stream() {
    let msg = ControlMessage::Step(Step {
        step: 9,
        batch: (0..16).collect(),
        mask_key: 77,
        observe: false,
    });
    let frame = encode(&msg, &Limits::default()).unwrap();
    let mut dec = FrameDecoder::new(Limits::default());
    dec.push(&frame[..2]);
    assert_eq!(dec.poll::<ControlMessage>().unwrap(), None);
    let e = dec.finish().unwrap_err();
    assert!(matches!(e, Error::Truncated { have: 2, need: 4 }), "{e}");

    dec.push(&frame[2..frame.len() - 1]);
    assert_eq!(dec.poll::<ControlMessage>().unwrap(), None);
    let e = dec.finish().unwrap_err().to_string();
    let (have, need) = (frame.len() - 1, frame.len());
    assert!(e.contains(&format!("{have} of its {need} bytes")), "{e}");

    dec.push(&frame[frame.len() - 1..]);
    assert_eq!(dec.poll::<ControlMessage>().unwrap(), Some(msg));
    dec.finish().unwrap();
}

#[test]
fn trailing_bytes_inside_a_frame_are_refused() {
    let limits = Limits::default();
    let mut frame = encode(&ControlMessage::Heartbeat { now_ms: 1 }, &limits).unwrap();
    frame.extend_from_slice(&[0, 0, 0]);
    let len = (frame.len() - PREFIX_BYTES) as u32;
    frame[..PREFIX_BYTES].copy_from_slice(&len.to_le_bytes());
    let mut dec = FrameDecoder::new(limits);
    dec.push(&frame);
    let e = dec.poll::<ControlMessage>().unwrap_err();
    assert!(matches!(e, Error::TrailingBytes { .. }), "{e}");
    assert!(e.to_string().contains("3 bytes left"), "{e}");
}

#[test]
fn the_handshake_refuses_another_version_or_config_naming_both_values() {
    let ours = Config::default().hash();
    let mut other = Config::default();
    other.model.dim = 16;
    let theirs = other.hash();

    let hello = Hello::new(&ours, "w0", "127.0.0.1:7000");
    assert_eq!(check_hello(&hello, &ours), Ok(()));

    let mut old = hello.clone();
    old.version = PROTOCOL_VERSION + 98;
    old.config_hash = theirs.clone(); // the version is checked first
    let reason = check_hello(&old, &ours).unwrap_err();
    assert_eq!(
        reason,
        RefuseReason::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: PROTOCOL_VERSION + 98
        }
    );
    let text = reason.to_string();
    assert!(
        text.contains(&format!("ours is {PROTOCOL_VERSION}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("theirs is {}", PROTOCOL_VERSION + 98)),
        "{text}"
    );

    let foreign = Hello::new(&theirs, "w1", "127.0.0.1:7001");
    let reason = check_hello(&foreign, &ours).unwrap_err();
    let text = reason.to_string();
    assert!(text.contains(&ours) && text.contains(&theirs), "{text}");

    let peer = PeerHello::new(&theirs, 2, 0);
    assert!(matches!(
        check_peer_hello(&peer, &ours, 0),
        Err(RefuseReason::ConfigMismatch { .. })
    ));
    assert_eq!(
        check_peer_hello(&PeerHello::new(&ours, 2, 1), &ours, 1),
        Ok(())
    );
    // A halo connection of the attempt before a restart is refused.
    assert_eq!(
        check_peer_hello(&PeerHello::new(&ours, 2, 0), &ours, 1),
        Err(RefuseReason::OtherAttempt { ours: 1, theirs: 0 })
    );
}

#[test]
fn halo_framing_overhead_is_under_five_percent() {
    let (levels, locations, batch, dim) = (5u32, 8usize, 16u32, 32u32);
    let n = levels as usize * locations * batch as usize * dim as usize;
    let values: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
    let limits = Limits::default();
    for payload in [
        HaloPayload::F32(values.clone()),
        HaloPayload::bf16_from_f32(&values),
    ] {
        let frame = HaloFrame {
            step: 12_345,
            iteration: 5,
            from_worker: 3,
            levels,
            locations: (0..locations as u32).map(|i| 1_000 + 37 * i).collect(),
            batch,
            dim,
            payload,
        };
        frame.validate().unwrap();
        let raw = frame.payload.raw_bytes();
        let kind = match frame.payload {
            HaloPayload::F32(_) => "f32",
            HaloPayload::Bf16(_) => "bf16",
        };
        let msg = PeerMessage::Halo(frame);
        let encoded = encode(&msg, &limits).unwrap();
        let overhead = (encoded.len() - raw) as f64 / raw as f64;
        println!(
            "halo {kind}: {levels}x{locations}x{batch}x{dim} = {n} values, payload {raw} B, \
             frame {} B, overhead {} B = {:.3}%",
            encoded.len(),
            encoded.len() - raw,
            overhead * 100.0
        );
        assert!(overhead < 0.05, "{kind} overhead {overhead}");
        let back: PeerMessage = decode_body(&encoded[PREFIX_BYTES..], &limits).unwrap();
        assert_eq!(back, msg);
    }
}
