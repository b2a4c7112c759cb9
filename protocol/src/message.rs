//! The messages of the control plane and of the data plane, and the
//! handshake rule that decides whether two processes may talk at all.
//!
//! Two enums, because the two planes run over different connections and
//! carry different traffic: [`ControlMessage`] travels between a worker and
//! the coordinator (membership, steps, metrics, checkpoints, sleep jobs),
//! [`PeerMessage`] between two neighbouring workers (halo embeddings). A
//! connection decodes one enum only, so a control message arriving on a
//! halo stream is a decode error rather than something to dispatch.
//!
//! Both enums open with their handshake (`Hello`, variant 0) and every hello
//! opens with the protocol version; [`crate::codec::hello_version`] relies on
//! that to read the version of a peer even when the rest of its hello no
//! longer decodes. Later protocol versions must keep that prefix.
//!
//! Everything else, including the halo frame, lives in [`crate::halo`] or
//! here as plain data: no message carries weights or gradients.

use serde::{Deserialize, Serialize};

use crate::halo::HaloFrame;
use crate::manifest::ShardEntry;

/// Version of the messages and framing of this build. A peer with another
/// version is refused at the handshake: a field added or reordered would
/// otherwise decode as garbage or, worse, as wrong values.
/// Version 2: a step's loss shares carry [`LOSS_TERMS`] terms (the
/// anti-collapse terms were added). Version 3: and neighbour
/// co-distillation. Version 4: automatic recovery ([`ControlMessage::Rejoin`],
/// the `attempt` of [`Assign`] and [`PeerHello`]).
pub const PROTOCOL_VERSION: u32 = 4;

/// Number of loss terms a worker reports per location.
pub const LOSS_TERMS: usize = 9;

/// Names of the loss terms, in the order of [`LossShares`] (also the
/// `loss_<name>` keys of metrics records).
pub const LOSS_TERM_NAMES: [&str; LOSS_TERMS] = [
    "recon",
    "distill_bu",
    "distill_td",
    "negative",
    "variance",
    "covariance",
    "contrastive",
    "autoencoder",
    "neighbour_distill",
];

/// One location's share of every grid-mean loss term, in the order of
/// [`LOSS_TERM_NAMES`].
pub type LossShares = [f64; LOSS_TERMS];

/// Traffic between a worker and the coordinator. The direction of each
/// variant is given in its doc (`w -> c` or `c -> w`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlMessage {
    /// w -> c, first message of a connection: asks to join the run.
    Hello(Hello),
    /// c -> w: the worker is admitted under this id; its tile follows in an
    /// [`ControlMessage::Assign`].
    Welcome { worker_id: u32 },
    /// Either way, in answer to a hello: the connection is refused and is
    /// about to be closed.
    Refused { reason: RefuseReason },
    /// c -> w: the worker's share of the grid and who its neighbours are.
    Assign(Assign),
    /// c -> w: run one training step on these images.
    Step(Step),
    /// w -> c: the step is done; its per-worker metrics.
    StepDone { step: u64, metrics: StepMetrics },
    /// c -> w: write the shard of the tile into `dir` after step `step`.
    CheckpointSave {
        step: u64,
        /// Checkpoint directory, as seen by the worker (shared storage).
        dir: String,
    },
    /// w -> c: the shard is written; the coordinator writes the manifest
    /// once every worker has acknowledged.
    CheckpointAck { step: u64, shard: ShardAck },
    /// Either way: proof of life, so a silent peer is noticed before the
    /// transport's idle timeout fires.
    Heartbeat {
        /// Sender's clock in milliseconds (for logging round trips only;
        /// clocks are not assumed to agree).
        now_ms: u64,
    },
    /// c -> w: start a sleep-phase job.
    SleepStart(SleepStart),
    /// w -> c: the sleep-phase job is finished.
    SleepDone(SleepDone),
    /// Either way: stop after the current step and close.
    Shutdown { reason: String },
    /// Either way: the sender hit an error it cannot recover from; the
    /// message says what and is logged by the receiver.
    Error { message: String },
    /// c -> w: a worker was lost and the cluster rolls back to its last
    /// complete checkpoint (DESIGN.md section 7): drop the current work,
    /// close this connection and join again with a new hello; the new
    /// [`Assign`] says where to resume.
    Rejoin { reason: String },
}

impl ControlMessage {
    /// Name of the variant, for error messages (without its contents,
    /// which may be large).
    pub fn kind(&self) -> &'static str {
        match self {
            ControlMessage::Hello(_) => "Hello",
            ControlMessage::Welcome { .. } => "Welcome",
            ControlMessage::Refused { .. } => "Refused",
            ControlMessage::Assign(_) => "Assign",
            ControlMessage::Step(_) => "Step",
            ControlMessage::StepDone { .. } => "StepDone",
            ControlMessage::CheckpointSave { .. } => "CheckpointSave",
            ControlMessage::CheckpointAck { .. } => "CheckpointAck",
            ControlMessage::Heartbeat { .. } => "Heartbeat",
            ControlMessage::SleepStart(_) => "SleepStart",
            ControlMessage::SleepDone(_) => "SleepDone",
            ControlMessage::Shutdown { .. } => "Shutdown",
            ControlMessage::Error { .. } => "Error",
            ControlMessage::Rejoin { .. } => "Rejoin",
        }
    }
}

/// A worker's request to join. The version and config hash decide whether
/// it is admitted ([`check_hello`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender. Must stay the first field.
    pub version: u32,
    /// [`crate::Config::hash`] of the sender's configuration: workers of one
    /// run must agree on every value, or their tiles would not fit together.
    pub config_hash: String,
    /// Human-readable name (host, pod, rank) for logs and metrics labels.
    pub worker_name: String,
    /// Address where this worker accepts halo connections from its
    /// neighbours; the coordinator passes it on in [`PeerInfo`].
    pub peer_addr: String,
}

impl Hello {
    /// A hello of this build's protocol version.
    pub fn new(config_hash: &str, worker_name: &str, peer_addr: &str) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            config_hash: config_hash.to_string(),
            worker_name: worker_name.to_string(),
            peer_addr: peer_addr.to_string(),
        }
    }
}

/// Why a hello was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RefuseReason {
    /// The two builds speak different protocol versions.
    #[error("protocol version mismatch: ours is {ours}, theirs is {theirs}")]
    VersionMismatch { ours: u32, theirs: u32 },
    /// The two processes were configured differently.
    #[error("configuration mismatch: our config hash is {ours}, theirs is {theirs}")]
    ConfigMismatch { ours: String, theirs: String },
    /// Every tile of the plan already has a worker.
    #[error("the run is full: every tile already has a worker")]
    Full,
    /// The run is past its start and admits no new worker.
    #[error("the run has already started and admits no new worker")]
    AlreadyStarted,
    /// A worker id claimed on a peer connection is not a neighbour.
    #[error("worker {worker_id} is not a neighbour of this tile")]
    UnknownPeer { worker_id: u32 },
    /// A halo connection from another attempt of the cluster (one before
    /// or after a restart).
    #[error("the peer is on attempt {theirs} of the cluster, this worker on attempt {ours}")]
    OtherAttempt { ours: u32, theirs: u32 },
}

/// Check a joining worker's hello against our configuration: the protocol
/// version first (a different version may not even mean the same thing by
/// "config hash"), then the config hash.
pub fn check_hello(hello: &Hello, our_config_hash: &str) -> Result<(), RefuseReason> {
    check_compatible(hello.version, &hello.config_hash, our_config_hash)
}

/// Check a neighbour's hello on a halo connection: same rule as
/// [`check_hello`], then the cluster attempt (`our_attempt`, from this
/// worker's [`Assign`]).
pub fn check_peer_hello(
    hello: &PeerHello,
    our_config_hash: &str,
    our_attempt: u32,
) -> Result<(), RefuseReason> {
    check_compatible(hello.version, &hello.config_hash, our_config_hash)?;
    if hello.attempt != our_attempt {
        return Err(RefuseReason::OtherAttempt {
            ours: our_attempt,
            theirs: hello.attempt,
        });
    }
    Ok(())
}

fn check_compatible(version: u32, config_hash: &str, ours: &str) -> Result<(), RefuseReason> {
    if version != PROTOCOL_VERSION {
        return Err(RefuseReason::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    if config_hash != ours {
        return Err(RefuseReason::ConfigMismatch {
            ours: ours.to_string(),
            theirs: config_hash.to_string(),
        });
    }
    Ok(())
}

/// A rectangle of the location grid: rows `rows.0..rows.1` and columns
/// `cols.0..cols.1` (half-open, in grid cells).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TileAssignment {
    pub rows: (u32, u32),
    pub cols: (u32, u32),
}

impl TileAssignment {
    /// Number of locations in the tile.
    pub fn num_locations(&self) -> u64 {
        let h = self.rows.1.saturating_sub(self.rows.0) as u64;
        let w = self.cols.1.saturating_sub(self.cols.0) as u64;
        h * w
    }

    /// Whether grid cell (`row`, `col`) is inside the tile.
    pub fn contains(&self, row: u32, col: u32) -> bool {
        (self.rows.0..self.rows.1).contains(&row) && (self.cols.0..self.cols.1).contains(&col)
    }
}

/// The coordinator's assignment of a tile to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assign {
    /// The id of the worker the tile is for (its `Welcome` id).
    pub worker_id: u32,
    /// The locations whose nets the worker owns and trains.
    pub tile: TileAssignment,
    /// Halo width in grid cells: how far outside the tile the worker's
    /// locations sample neighbours, i.e. which cells its peers must send.
    pub reach: u32,
    /// The workers whose tiles overlap this tile's halo, or that need part
    /// of this tile as their halo.
    pub peers: Vec<PeerInfo>,
    /// The run's config hash, so the worker can check once more that the
    /// assignment is for the configuration it holds.
    pub config_hash: String,
    /// Where to start from: a checkpoint to load the tile's nets and
    /// optimiser state from, or `None` for a fresh start at step 0.
    pub resume: Option<ResumePoint>,
    /// How many times the cluster was restarted before this assignment (0
    /// at the start of a run). Halo connections of another attempt are
    /// refused, so a frame of the abandoned attempt never reaches this one.
    pub attempt: u32,
}

/// A checkpoint a run resumes from (any number of workers may have written
/// it: tensors are keyed by location).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// Checkpoint directory, as seen by the workers (shared storage).
    pub dir: String,
    /// Steps it holds: training goes on with this step number.
    pub step: u64,
}

/// A neighbouring worker: where to reach it and what it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Id it will announce in its [`PeerHello`], to match connections to peers.
    pub worker_id: u32,
    /// Its halo address, from its [`Hello::peer_addr`].
    pub addr: String,
    /// Its tile, from which the worker derives which cells to send it.
    pub tile: TileAssignment,
}

/// One training step, identical for every worker so all see the same images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Step number; it also tags the halo frames and metrics of the step.
    pub step: u64,
    /// Indices of the batch's images in the training split.
    pub batch: Vec<u64>,
    /// Seed of the patch mask of this step (same mask on every worker).
    pub mask_key: u64,
    /// Report an [`Observation`] with this step's `StepDone` (the steps on
    /// which the collapse measures are computed).
    pub observe: bool,
}

/// What a worker measured during one step.
///
/// Losses travel per location rather than as a mean over the tile: the
/// coordinator adds them up in global location order, so the grid's loss
/// is the same number, to the last bit, whatever the tiling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Global ids of the worker's own locations: the order of `losses` and
    /// of every per-location vector of the [`Observation`].
    pub locations: Vec<u32>,
    /// Per location: its share of each grid-mean loss term (in the order
    /// of [`LOSS_TERM_NAMES`]), already divided by the grid-wide
    /// normaliser, so the grid's loss is their sum over all locations.
    pub losses: Vec<LossShares>,
    /// Halo bytes this worker put on the wire (framed), to compare with the
    /// plan's minimum.
    pub halo_bytes_sent: u64,
    /// Halo bytes received, so asymmetric tiles show up in the metrics.
    pub halo_bytes_received: u64,
    /// Time spent blocked on a missing halo: the part of the step that
    /// overlapping compute with the exchange did not hide.
    pub halo_wait_seconds: f64,
    /// Wall time of the whole step on this worker, halo wait included.
    pub step_seconds: f64,
    /// Part of `step_seconds` spent making the observation (0 on steps
    /// without one): the cost of the collapse measures on the worker.
    pub observe_seconds: f64,
    /// On observed steps ([`Step::observe`]): what the collapse measures
    /// need from this worker's locations.
    pub observation: Option<Observation>,
}

/// A worker's view of its own locations on an observed step: a bounded
/// sample (the first `images` images of the batch) of the settled
/// embeddings, and per-location values the coordinator averages over the
/// grid. Small beside a step: levels x locations x (images + 1) x dim floats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Images of the batch the embeddings are for (its first ones).
    pub images: u32,
    /// Length of one embedding.
    pub dim: u32,
    /// One entry per level, bottom first.
    pub levels: Vec<LevelObservation>,
}

/// [`Observation`] of one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelObservation {
    /// Settled embeddings, row-major `[locations, images, dim]`.
    pub embeddings: Vec<f32>,
    /// Output of the level's bottom-up net (the front end at level 0) on
    /// the common probe input, row-major `[locations, dim]`: how
    /// differently the locations' nets compute (co-distillation).
    pub probe: Vec<f32>,
    /// Per location: mean over the batch of the cosine between the
    /// bottom-up prediction and the settled level; empty at level 0.
    pub agreement_bu: Vec<f64>,
    /// Same for the top-down prediction; empty at the top level.
    pub agreement_td: Vec<f64>,
}

/// A worker's report of the shard file it wrote; it becomes one
/// [`ShardEntry`] of the checkpoint's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardAck {
    /// File name relative to the checkpoint directory.
    pub file: String,
    /// Hex SHA-256 of the file's bytes, computed by the writer.
    pub sha256: String,
    /// Size of the file, recorded in the manifest for a cheap check on load.
    pub bytes: u64,
    /// Global ids of the locations the file holds.
    pub locations: Vec<u32>,
}

impl From<ShardAck> for ShardEntry {
    fn from(ack: ShardAck) -> Self {
        ShardEntry {
            file: ack.file,
            locations: ack.locations.into_iter().map(|l| l as usize).collect(),
            sha256: ack.sha256,
            bytes: ack.bytes,
        }
    }
}

/// Start of a sleep job (paper section 12.2, DESIGN.md section 3): every
/// worker dreams on its own locations, with no halo exchange, from its
/// replay buffer of recent settled states, then answers [`SleepDone`]. No
/// step is in flight while a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SleepStart {
    /// Id the matching [`SleepDone`] refers to (0, 1, ... within a run).
    pub job: u64,
    /// Awake steps completed before the job; training resumes with this
    /// step number.
    pub after_step: u64,
    /// Updates the job makes (`sleep.steps`).
    pub steps: u64,
    /// Seed of the job's random streams, the same on every worker, so the
    /// draws of every location do not depend on the tiling.
    pub seed: u64,
}

/// End of a sleep job on one worker.
///
/// Like [`StepMetrics`], losses travel per location, so the coordinator's
/// grid sums are the same bits whatever the tiling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SleepDone {
    /// The [`SleepStart::job`] this answers.
    pub job: u64,
    /// Global ids of the worker's own locations: the order of `losses`
    /// and of every per-location vector of `before` and `after`.
    pub locations: Vec<u32>,
    /// Per location: its share of the grid's sleep losses (negative loss
    /// of the first negative step, negative loss of the last negative step,
    /// positive loss of the last positive step), already divided by the
    /// grid's location count, so the grid's loss is their sum.
    pub losses: Vec<[f64; 3]>,
    /// Updates made (negative and positive).
    pub steps: u64,
    /// Wall time of the job, measurements included.
    pub seconds: f64,
    /// Bottom-up embeddings of the fixed observation sample before the
    /// job (`sleep.observe_images` > 0): the initial bottom-up pass needs
    /// no halo. Agreements are empty.
    pub before: Option<Observation>,
    /// The same after the job.
    pub after: Option<Observation>,
}

/// Traffic between two neighbouring workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// First message of a halo connection, from the side that opened it.
    Hello(PeerHello),
    /// In answer to a hello: the connection is refused and is about to close.
    Refused { reason: RefuseReason },
    /// Boundary embeddings for one settling iteration.
    Halo(HaloFrame),
}

/// A neighbour's introduction on a halo connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    /// [`PROTOCOL_VERSION`] of the sender. Must stay the first field.
    pub version: u32,
    /// The sender's config hash (see [`Hello::config_hash`]).
    pub config_hash: String,
    /// The sender's worker id from its [`ControlMessage::Welcome`].
    pub worker_id: u32,
    /// The attempt of the sender's [`Assign`]; must be the receiver's.
    pub attempt: u32,
}

impl PeerHello {
    /// A peer hello of this build's protocol version.
    pub fn new(config_hash: &str, worker_id: u32, attempt: u32) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            config_hash: config_hash.to_string(),
            worker_id,
            attempt,
        }
    }
}
