//! The seed corpus of the `codec` fuzz target (`fuzz/seeds/codec`) is made
//! here from messages of this build's protocol, so that it follows
//! [`PROTOCOL_VERSION`]: a seed of an older version only exercises the
//! decoder's error paths. This test fails when the files on disk differ
//! from what the current messages encode to; rewrite them with
//!
//! ```text
//! GLOM_WRITE_FUZZ_SEEDS=1 cargo test -p glom-protocol --test fuzz_seeds
//! ```
//!
//! A seed is the fuzz target's input: one head byte (bit 7: a 64-byte frame
//! cap; bit 5: frames polled raw; bit 4: the peer plane; bits 0-3: chunk
//! size - 1, 15 meaning the whole stream at once), then the byte stream.

#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{control_variant, peer_variant, CONTROL_VARIANTS, PEER_VARIANTS};
use glom_protocol::codec::{encode, hello_version, FrameDecoder, Limits, PREFIX_BYTES};
use glom_protocol::halo::{HaloFrame, HaloPayload};
use glom_protocol::message::{
    Assign, ControlMessage, Hello, LevelObservation, Observation, PeerHello, PeerInfo, PeerMessage,
    RefuseReason, ResumePoint, ShardAck, SleepDone, SleepStart, Step, StepMetrics, TileAssignment,
    LOSS_TERMS, PROTOCOL_VERSION,
};
use glom_protocol::Error;
use serde::{de::DeserializeOwned, Serialize};

const CONTROL: u8 = 0x00;
const PEER: u8 = 0x10;
const RAW: u8 = 0x20;
const SMALL_CAP: u8 = 0x80;
/// Chunk size bits meaning "the whole stream in one push".
const WHOLE: u8 = 0x0f;

/// The config hash of every seed (the fuzz target's `OUR_HASH`).
const HASH: &str = "abc";

fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    encode(msg, &Limits::default()).unwrap()
}

fn frames<T: Serialize>(msgs: &[T]) -> Vec<u8> {
    msgs.iter().flat_map(frame).collect()
}

fn seed(head: u8, stream: Vec<u8>) -> Vec<u8> {
    let mut out = vec![head];
    out.extend(stream);
    out
}

fn hello() -> ControlMessage {
    ControlMessage::Hello(Hello::new(HASH, "w0", "127.0.0.1:1"))
}

fn peer_hello(attempt: u32) -> PeerMessage {
    PeerMessage::Hello(PeerHello::new(HASH, 2, attempt))
}

fn tile(rows: (u32, u32), cols: (u32, u32)) -> TileAssignment {
    TileAssignment { rows, cols }
}

/// An assignment after a restart: attempt 1, resuming from a checkpoint.
fn assign_after_restart() -> Assign {
    Assign {
        worker_id: 0,
        tile: tile((0, 2), (0, 4)),
        reach: 1,
        peers: vec![PeerInfo {
            worker_id: 1,
            addr: "127.0.0.1:2".into(),
            tile: tile((2, 4), (0, 4)),
        }],
        config_hash: HASH.into(),
        resume: Some(ResumePoint {
            dir: "ckpt/step-10".into(),
            step: 10,
        }),
        attempt: 1,
    }
}

fn observation() -> Observation {
    Observation {
        images: 1,
        dim: 2,
        levels: vec![LevelObservation {
            embeddings: vec![0.5, -1.0],
            probe: vec![0.25, 2.0],
            agreement_bu: vec![],
            agreement_td: vec![0.75],
        }],
    }
}

/// One message of every control variant, in variant order.
fn every_control_message() -> Vec<ControlMessage> {
    let mut first = assign_after_restart();
    (first.attempt, first.resume) = (0, None);
    vec![
        hello(),
        ControlMessage::Welcome { worker_id: 1 },
        ControlMessage::Refused {
            reason: RefuseReason::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: PROTOCOL_VERSION - 1,
            },
        },
        ControlMessage::Assign(first),
        ControlMessage::Step(Step {
            step: 3,
            batch: vec![0, 5, 300],
            mask_key: 77,
            observe: true,
        }),
        ControlMessage::StepDone {
            step: 3,
            metrics: StepMetrics {
                locations: vec![0],
                losses: vec![[0.125; LOSS_TERMS]],
                halo_bytes_sent: 64,
                halo_bytes_received: 64,
                halo_wait_seconds: 0.0,
                step_seconds: 0.5,
                observe_seconds: 0.25,
                observation: Some(observation()),
            },
        },
        ControlMessage::CheckpointSave {
            step: 10,
            dir: "ckpt/step-10".into(),
        },
        ControlMessage::CheckpointAck {
            step: 10,
            shard: ShardAck {
                file: "shard-0.safetensors".into(),
                sha256: "e3b0".into(),
                bytes: 1024,
                locations: vec![0, 1],
            },
        },
        ControlMessage::Heartbeat { now_ms: 1234 },
        ControlMessage::SleepStart(SleepStart {
            job: 0,
            after_step: 10,
            steps: 4,
            seed: 99,
        }),
        ControlMessage::SleepDone(SleepDone {
            job: 0,
            locations: vec![0],
            losses: vec![[1.0, 0.5, 0.25]],
            steps: 4,
            seconds: 0.5,
            before: Some(observation()),
            after: None,
        }),
        ControlMessage::Shutdown {
            reason: "done".into(),
        },
        ControlMessage::Error {
            message: "out of memory".into(),
        },
        ControlMessage::Rejoin {
            reason: "worker 1 lost".into(),
        },
    ]
}

/// A halo frame of f32 values.
fn halo_f32() -> PeerMessage {
    PeerMessage::Halo(HaloFrame {
        step: 1,
        iteration: 0,
        from_worker: 0,
        levels: 1,
        locations: vec![0, 1],
        batch: 1,
        dim: 2,
        payload: HaloPayload::F32(vec![1.0, -2.5, 0.0, 3.0]),
    })
}

/// A halo frame of bf16 values, one of them NaN.
fn halo_bf16() -> PeerMessage {
    PeerMessage::Halo(HaloFrame {
        step: 1,
        iteration: 1,
        from_worker: 0,
        levels: 1,
        locations: vec![5],
        batch: 1,
        dim: 2,
        payload: HaloPayload::Bf16(vec![0x3f80, 0x7fc0]),
    })
}

fn every_peer_message() -> Vec<PeerMessage> {
    vec![
        peer_hello(0),
        PeerMessage::Refused {
            reason: RefuseReason::OtherAttempt { ours: 1, theirs: 0 },
        },
        halo_bf16(),
    ]
}

/// Every seed of the codec target, by file name.
fn codec_seeds() -> BTreeMap<&'static str, Vec<u8>> {
    let heartbeat = frame(&ControlMessage::Heartbeat { now_ms: 5 });
    // A frame of two bytes that decode to no message (0xff is no varint).
    let bad_body = vec![2, 0, 0, 0, 1, 0xff];
    let oversize = (1u32 << 30).to_le_bytes().to_vec();
    BTreeMap::from([
        (
            "control-stream",
            seed(
                CONTROL,
                frames(&[
                    hello(),
                    ControlMessage::Welcome { worker_id: 7 },
                    ControlMessage::Heartbeat { now_ms: 5 },
                    ControlMessage::Shutdown {
                        reason: "done".into(),
                    },
                ]),
            ),
        ),
        ("control-raw", seed(CONTROL | RAW | WHOLE, frame(&hello()))),
        (
            "control-chunked",
            seed(
                CONTROL | 3,
                [&heartbeat[..], &bad_body, &heartbeat].concat(),
            ),
        ),
        (
            "control-oversize",
            seed(
                CONTROL | SMALL_CAP | WHOLE,
                [frame(&hello()), oversize].concat(),
            ),
        ),
        (
            "control-every-variant",
            seed(CONTROL | WHOLE, frames(&every_control_message())),
        ),
        (
            // Recovery (protocol 4): rejoin, hello again, a new assignment.
            "control-recovery",
            seed(
                CONTROL | RAW | 2,
                frames(&[
                    ControlMessage::Rejoin {
                        reason: "worker 1 lost".into(),
                    },
                    hello(),
                    ControlMessage::Welcome { worker_id: 0 },
                    ControlMessage::Assign(assign_after_restart()),
                ]),
            ),
        ),
        (
            "peer-stream",
            seed(
                PEER | WHOLE,
                frames(&[peer_hello(1), halo_f32(), halo_bf16()]),
            ),
        ),
        (
            "peer-raw",
            seed(PEER | RAW | 5, frames(&[halo_f32(), peer_hello(1)])),
        ),
        (
            // A body without its prefix, for the target's direct decode.
            "peer-halo-only",
            seed(PEER | WHOLE, frame(&halo_f32())[PREFIX_BYTES..].to_vec()),
        ),
        (
            "peer-every-variant",
            seed(PEER | 4, frames(&every_peer_message())),
        ),
    ])
}

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/codec")
}

/// Decode every whole frame of `stream` as `T`: what decoded, how many
/// frames did not, and whether a length over the cap stopped the decoder.
fn decode_all<T: DeserializeOwned>(stream: &[u8]) -> (Vec<T>, usize, bool) {
    let mut dec = FrameDecoder::new(Limits::default());
    dec.push(stream);
    let (mut ok, mut bad) = (Vec::new(), 0);
    loop {
        match dec.poll::<T>() {
            Ok(Some(m)) => ok.push(m),
            Ok(None) => return (ok, bad, false),
            Err(Error::FrameTooLarge { .. }) => return (ok, bad, true),
            Err(_) => bad += 1,
        }
    }
}

#[test]
fn the_seeds_cover_every_message_of_the_current_protocol() {
    let mut control = vec![0; CONTROL_VARIANTS];
    let mut peer = vec![0; PEER_VARIANTS];
    for (name, bytes) in codec_seeds() {
        let (head, stream) = (bytes[0], &bytes[1..]);
        if name == "peer-halo-only" {
            continue;
        }
        if head & PEER == 0 {
            let (msgs, bad, refused) = decode_all::<ControlMessage>(stream);
            assert_eq!(bad, usize::from(name == "control-chunked"), "{name}");
            assert_eq!(refused, name == "control-oversize", "{name}");
            for m in &msgs {
                control[control_variant(m)] += 1;
            }
        } else {
            let (msgs, bad, refused) = decode_all::<PeerMessage>(stream);
            assert_eq!((bad, refused), (0, false), "{name}");
            for m in &msgs {
                peer[peer_variant(m)] += 1;
            }
        }
    }
    assert!(control.iter().all(|&n| n > 0), "control: {control:?}");
    assert!(peer.iter().all(|&n| n > 0), "peer: {peer:?}");
    // Every hello is of this build's version.
    let body = &frame(&hello())[PREFIX_BYTES..];
    assert_eq!(hello_version(body), Some(PROTOCOL_VERSION));
}

#[test]
fn the_seed_files_are_the_current_protocol() {
    let dir = seed_dir();
    let seeds = codec_seeds();
    if std::env::var_os("GLOM_WRITE_FUZZ_SEEDS").is_some() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut on_disk = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        on_disk.insert(name, std::fs::read(&path).unwrap());
    }
    let names: Vec<_> = seeds.keys().map(|n| n.to_string()).collect();
    let on_disk_names: Vec<_> = on_disk.keys().cloned().collect();
    let hint =
        "rewrite them: GLOM_WRITE_FUZZ_SEEDS=1 cargo test -p glom-protocol --test fuzz_seeds";
    assert_eq!(on_disk_names, names, "fuzz/seeds/codec; {hint}");
    for (name, bytes) in &seeds {
        assert!(
            on_disk[*name] == *bytes,
            "fuzz/seeds/codec/{name} is not protocol version {PROTOCOL_VERSION}; {hint}"
        );
    }
}
