//! Random messages of every variant for the codec tests, from a small
//! deterministic generator (splitmix64), so every failure reproduces from
//! its seed without a property-testing dependency.

use glom_protocol::halo::{HaloFrame, HaloPayload};
use glom_protocol::message::{
    Assign, ControlMessage, Hello, LevelObservation, Observation, PeerHello, PeerInfo, PeerMessage,
    RefuseReason, ResumePoint, ShardAck, SleepDone, SleepStart, Step, StepMetrics, TileAssignment,
};

/// splitmix64: tiny, fast, and good enough to drive a property test.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Mostly small values, sometimes any value: exercises every varint width.
    pub(crate) fn u64(&mut self) -> u64 {
        match self.below(4) {
            0 => self.below(251),
            1 => self.below(1 << 16),
            2 => self.below(1 << 32),
            _ => self.next(),
        }
    }

    pub(crate) fn u32(&mut self) -> u32 {
        self.u64() as u32
    }

    pub(crate) fn f64(&mut self) -> f64 {
        let x = f64::from_bits(self.next());
        if x.is_finite() {
            x
        } else {
            self.below(1000) as f64 / 7.0
        }
    }

    pub(crate) fn f32(&mut self) -> f32 {
        let x = f32::from_bits(self.next() as u32);
        if x.is_finite() {
            x
        } else {
            -1.5
        }
    }

    pub(crate) fn string(&mut self) -> String {
        let alphabet = ["a", "Z", "0", "/", ":", " ", "é", "→", "\u{0}"];
        (0..self.below(24))
            .map(|_| alphabet[self.below(alphabet.len() as u64) as usize])
            .collect()
    }

    pub(crate) fn vec<T>(&mut self, max: u64, mut f: impl FnMut(&mut Self) -> T) -> Vec<T> {
        (0..self.below(max + 1)).map(|_| f(self)).collect()
    }

    pub(crate) fn tile(&mut self) -> TileAssignment {
        let (r, c) = (self.u32(), self.u32());
        TileAssignment {
            rows: (r, r.saturating_add(self.below(64) as u32)),
            cols: (c, c.saturating_add(self.below(64) as u32)),
        }
    }

    pub(crate) fn refuse(&mut self) -> RefuseReason {
        match self.below(6) {
            0 => RefuseReason::VersionMismatch {
                ours: self.u32(),
                theirs: self.u32(),
            },
            1 => RefuseReason::ConfigMismatch {
                ours: self.string(),
                theirs: self.string(),
            },
            2 => RefuseReason::Full,
            3 => RefuseReason::AlreadyStarted,
            4 => RefuseReason::OtherAttempt {
                ours: self.u32(),
                theirs: self.u32(),
            },
            _ => RefuseReason::UnknownPeer {
                worker_id: self.u32(),
            },
        }
    }

    pub(crate) fn metrics(&mut self) -> StepMetrics {
        StepMetrics {
            locations: self.vec(8, Rng::u32),
            losses: self.vec(8, |r| std::array::from_fn(|_| r.f64())),
            halo_bytes_sent: self.u64(),
            halo_bytes_received: self.u64(),
            halo_wait_seconds: self.f64(),
            step_seconds: self.f64(),
            observe_seconds: self.f64(),
            observation: self.observation(),
        }
    }

    pub(crate) fn observation(&mut self) -> Option<Observation> {
        if self.below(2) == 0 {
            return None;
        }
        Some(Observation {
            images: self.u32(),
            dim: self.u32(),
            levels: self.vec(3, |r| LevelObservation {
                embeddings: r.vec(40, Rng::f32),
                probe: r.vec(8, Rng::f32),
                agreement_bu: r.vec(4, Rng::f64),
                agreement_td: r.vec(4, Rng::f64),
            }),
        })
    }

    pub(crate) fn halo(&mut self) -> HaloFrame {
        let (levels, batch, dim) = (
            self.below(4) as u32,
            self.below(4) as u32,
            self.below(9) as u32,
        );
        let locations = self.vec(6, Rng::u32);
        let n = levels as usize * locations.len() * batch as usize * dim as usize;
        let payload = if self.below(2) == 0 {
            HaloPayload::F32((0..n).map(|_| self.f32()).collect())
        } else {
            HaloPayload::Bf16((0..n).map(|_| self.next() as u16).collect())
        };
        HaloFrame {
            step: self.u64(),
            iteration: self.u32(),
            from_worker: self.u32(),
            levels,
            locations,
            batch,
            dim,
            payload,
        }
    }
}

pub(crate) const CONTROL_VARIANTS: usize = 14;
pub(crate) const PEER_VARIANTS: usize = 3;

/// Index of a variant; exhaustive, so a new variant cannot be forgotten here.
pub(crate) fn control_variant(m: &ControlMessage) -> usize {
    match m {
        ControlMessage::Hello(_) => 0,
        ControlMessage::Welcome { .. } => 1,
        ControlMessage::Refused { .. } => 2,
        ControlMessage::Assign(_) => 3,
        ControlMessage::Step(_) => 4,
        ControlMessage::StepDone { .. } => 5,
        ControlMessage::CheckpointSave { .. } => 6,
        ControlMessage::CheckpointAck { .. } => 7,
        ControlMessage::Heartbeat { .. } => 8,
        ControlMessage::SleepStart(_) => 9,
        ControlMessage::SleepDone(_) => 10,
        ControlMessage::Shutdown { .. } => 11,
        ControlMessage::Error { .. } => 12,
        ControlMessage::Rejoin { .. } => 13,
    }
}

pub(crate) fn peer_variant(m: &PeerMessage) -> usize {
    match m {
        PeerMessage::Hello(_) => 0,
        PeerMessage::Refused { .. } => 1,
        PeerMessage::Halo(_) => 2,
    }
}

pub(crate) fn random_control(r: &mut Rng, variant: usize) -> ControlMessage {
    match variant {
        0 => ControlMessage::Hello(Hello {
            version: r.u32(),
            config_hash: r.string(),
            worker_name: r.string(),
            peer_addr: r.string(),
        }),
        1 => ControlMessage::Welcome { worker_id: r.u32() },
        2 => ControlMessage::Refused { reason: r.refuse() },
        3 => ControlMessage::Assign(Assign {
            worker_id: r.u32(),
            tile: r.tile(),
            reach: r.u32(),
            peers: r.vec(8, |r| PeerInfo {
                worker_id: r.u32(),
                addr: r.string(),
                tile: r.tile(),
            }),
            config_hash: r.string(),
            resume: if r.below(2) == 0 {
                None
            } else {
                Some(ResumePoint {
                    dir: r.string(),
                    step: r.u64(),
                })
            },
            attempt: r.u32(),
        }),
        4 => ControlMessage::Step(Step {
            step: r.u64(),
            batch: r.vec(32, Rng::u64),
            mask_key: r.next(),
            observe: r.below(2) == 0,
        }),
        5 => ControlMessage::StepDone {
            step: r.u64(),
            metrics: r.metrics(),
        },
        6 => ControlMessage::CheckpointSave {
            step: r.u64(),
            dir: r.string(),
        },
        7 => ControlMessage::CheckpointAck {
            step: r.u64(),
            shard: ShardAck {
                file: r.string(),
                sha256: r.string(),
                bytes: r.u64(),
                locations: r.vec(20, Rng::u32),
            },
        },
        8 => ControlMessage::Heartbeat { now_ms: r.u64() },
        9 => ControlMessage::SleepStart(SleepStart {
            job: r.u64(),
            after_step: r.u64(),
            steps: r.u64(),
            seed: r.next(),
        }),
        10 => ControlMessage::SleepDone(SleepDone {
            job: r.u64(),
            locations: r.vec(8, Rng::u32),
            losses: r.vec(8, |r| [r.f64(), r.f64(), r.f64()]),
            steps: r.u64(),
            seconds: r.f64(),
            before: r.observation(),
            after: r.observation(),
        }),
        11 => ControlMessage::Shutdown { reason: r.string() },
        12 => ControlMessage::Error {
            message: r.string(),
        },
        _ => ControlMessage::Rejoin { reason: r.string() },
    }
}

pub(crate) fn random_peer(r: &mut Rng, variant: usize) -> PeerMessage {
    match variant {
        0 => PeerMessage::Hello(PeerHello {
            version: r.u32(),
            config_hash: r.string(),
            worker_id: r.u32(),
            attempt: r.u32(),
        }),
        1 => PeerMessage::Refused { reason: r.refuse() },
        _ => PeerMessage::Halo(r.halo()),
    }
}
