//! The run configuration: one TOML schema for every command.
//!
//! Every struct denies unknown fields (a misspelt key is an error, not a
//! silent default) and has a `Default` equal to the embedded
//! `configs/default.toml`. [`Config::validate`] checks the values and names
//! the offending key in its error. Reading files and environment variables
//! is the binary's job; this module only defines and checks the values.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The whole run configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Seed of every random stream (weights, neighbours, masks, batches).
    pub seed: u64,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub data: DataConfig,
    pub eval: EvalConfig,
    pub checkpoint: CheckpointConfig,
    pub metrics: MetricsConfig,
    pub cluster: ClusterConfig,
    pub sleep: SleepConfig,
}

/// Whether each location owns its nets (paper section 12.1) or all share one set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightMode {
    PerLocation,
    Shared,
}

/// How per-location nets are initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitMode {
    /// Every location starts from the same weights (one "genome"), then drifts.
    Common,
    /// Every location draws its own weights.
    Independent,
}

/// Non-linearity of an MLP's hidden layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Gelu,
    /// Sinusoidal units, as in a neural field (paper section 2.3).
    Sin,
}

/// How the nets learn (DESIGN.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Learning {
    /// Every student regresses its one-step prediction toward the detached
    /// consensus (paper sections 7 and 12.3); nothing crosses time or locations.
    Local,
    /// End-to-end backpropagation through all settling iterations.
    Bptt,
}

/// Shape of the variance term of the awake objective (see
/// [`TrainConfig::variance_weight`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceForm {
    /// `-mean_k log(Var_k + eps)`: a barrier that never stops pushing the
    /// spread up (Halvagal & Zenke 2023, "latent predictive learning").
    Log,
    /// `mean_k relu(target - sqrt(Var_k + eps))`: no pressure once the
    /// standard deviation reaches `train.variance_target` (VICReg, Bardes
    /// et al. 2022; paper section 7: keep apart, not push apart).
    Hinge,
}

/// What a prediction is pulled toward in the contrastive term (see
/// [`TrainConfig::contrastive_weight`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContrastivePositive {
    /// The consensus (the new state) of the same image and location.
    Consensus,
    /// The lateral attention output of the same image and location: the
    /// mean of the neighbours the location chose to agree with.
    Lateral,
}

/// Which consensus a student's prediction is distilled toward in a video
/// (see [`TrainConfig::distill_target`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistillTarget {
    /// The consensus of the same iteration, so of the frame being read.
    SameFrame,
    /// The consensus at the end of the next frame: the students of frame
    /// `f` predict what comes next (paper section 11); those of the last
    /// frame, with nothing after it, keep their own iteration's consensus.
    NextFrame,
}

/// Where images come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// Built-in synthetic part-whole scenes with ground-truth maps.
    Scenes,
    /// Fashion-MNIST from IDX files on disk.
    FashionMnist,
    /// Tetrominoes in the style of DeepMind's multi-object datasets: three
    /// pieces on a black 7x7-block canvas, one block per patch.
    Tetrominoes,
    /// Multi-dSprites style: 2-5 occluding sprites on a grey background.
    Sprites,
    /// Videos of the synthetic scenes: `data.frames` frames in which every
    /// object moves rigidly with its own velocity and spin (paper section 11).
    MovingScenes,
    /// Videos of the sprites: `data.frames` frames in which every sprite
    /// moves with its own velocity and spin over the still grey background.
    MovingSprites,
}

impl DataSource {
    /// The side of a sprites image when `data.image_size` is not set.
    pub const SPRITES_DEFAULT_SIZE: usize = 64;
    /// Blocks per side of the Tetrominoes canvas.
    pub const TETROMINO_BLOCKS: usize = 7;

    /// Whether an item of this source is a sequence of frames.
    pub fn is_video(self) -> bool {
        matches!(self, DataSource::MovingScenes | DataSource::MovingSprites)
    }

    /// Whether its images are the sprites (still or moving).
    pub fn is_sprites(self) -> bool {
        matches!(self, DataSource::Sprites | DataSource::MovingSprites)
    }

    /// Whether its images are the synthetic part-whole scenes (still or moving).
    pub fn is_scenes(self) -> bool {
        matches!(self, DataSource::Scenes | DataSource::MovingScenes)
    }
}

/// Which locations lateral attention reads (see [`ModelConfig::attention`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attention {
    /// `model.neighbours` drawn from the gaussian of each level (paper
    /// section 6): the halo stays within the cutoff radius.
    Sampled,
    /// Every other location of the grid, at every level, as in the public
    /// PyTorch port (lucidrains/glom-pytorch): the halo is the whole grid.
    All,
}

/// Weight of one contribution at the first and at the last settling
/// iteration; in between it is interpolated linearly (paper section 9.1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ramp(pub f64, pub f64);

impl Ramp {
    /// The value at iteration `t` of `iterations`.
    pub fn at(&self, t: usize, iterations: usize) -> f64 {
        if iterations <= 1 {
            return self.0;
        }
        let f = t as f64 / (iterations - 1) as f64;
        self.0 + (self.1 - self.0) * f
    }
}

/// Weights of the four contributions over the settling iterations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    pub bottom_up: Ramp,
    pub top_down: Ramp,
    pub previous: Ramp,
    pub lateral: Ramp,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            bottom_up: Ramp(1.0, 0.4),
            top_down: Ramp(0.1, 0.5),
            previous: Ramp(0.5, 0.5),
            lateral: Ramp(0.3, 1.0),
        }
    }
}

/// The GLOM architecture (DESIGN.md section 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Number of levels K (sub-part ... scene).
    pub levels: usize,
    /// Embedding dimension d of every level.
    pub dim: usize,
    /// Hidden width of every MLP.
    pub hidden: usize,
    /// Side of the square patch each location sees, in pixels.
    pub patch: usize,
    /// Settling iterations T per image; of a video, the iterations on its
    /// first frame (see [`Config::settle_iterations`]).
    pub iterations: usize,
    /// Of a video: settling iterations on each frame after the first, the
    /// state carried over from frame to frame (paper section 11).
    pub iterations_per_frame: usize,
    pub weights: WeightMode,
    pub init: InitMode,
    pub bottom_up_activation: Activation,
    pub top_down_activation: Activation,
    /// Give the shared top-down net a sinusoidal code of its location
    /// (shared mode only: per-location nets know where they are).
    pub location_code: bool,
    /// Size of that code (a multiple of 4).
    pub location_code_dim: usize,
    /// `"sampled"` neighbours (the three keys below) or `"all"` the other
    /// locations of the grid: the comparison with implementations that
    /// attend everywhere. Not hashed when `"sampled"`.
    pub attention: Attention,
    /// Neighbours each location attends to, at every level (sampled).
    pub neighbours: usize,
    /// Width (grid cells) of the neighbour-sampling gaussian at the bottom
    /// and top level; geometric in between (paper section 6).
    pub neighbour_sigma: [f64; 2],
    /// Neighbours are drawn within this many sigmas (bounds the halo).
    pub neighbour_cutoff: f64,
    /// Inverse temperature of lateral attention at the bottom and top level,
    /// per unit of cosine similarity; geometric in between.
    pub beta: [f64; 2],
    /// Factor by which beta rises from the first to the last iteration.
    pub beta_rise: f64,
    pub schedule: ScheduleConfig,
    /// Bottom-up nets of levels 1.. add their input to their output (a
    /// residual connection, He et al. 2016): `BU(x) = x + MLP(x)`, so a
    /// level starts as a copy of the one below plus a learned change. A
    /// config without the key (one stored before it existed) means off,
    /// whatever the default, so older checkpoints keep their model.
    #[serde(default)]
    pub bottom_up_skip: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            levels: 5,
            dim: 32,
            hidden: 64,
            patch: 4,
            iterations: 6,
            iterations_per_frame: 1,
            weights: WeightMode::PerLocation,
            init: InitMode::Common,
            bottom_up_activation: Activation::Gelu,
            top_down_activation: Activation::Gelu,
            location_code: true,
            location_code_dim: 8,
            attention: Attention::Sampled,
            neighbours: 8,
            neighbour_sigma: [1.0, 1.5],
            neighbour_cutoff: 2.5,
            beta: [4.0, 8.0],
            beta_rise: 2.0,
            schedule: ScheduleConfig::default(),
            bottom_up_skip: true,
        }
    }
}

/// Training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub steps: u64,
    pub batch_size: usize,
    pub learning: Learning,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Fraction of patches hidden from the front end (masked reconstruction).
    pub mask_fraction: f64,
    /// Weight of the reconstruction term on masked patches.
    pub recon_weight: f64,
    /// Relative weight of reconstruction on visible patches.
    pub recon_visible_weight: f64,
    /// Weight of the distillation terms (bottom-up and top-down students
    /// toward the consensus).
    pub distill_weight: f64,
    /// Weight of the awake negative (hinge) term; 0 = positive-only.
    pub negative_weight: f64,
    /// Cosine similarity above which a negative pair is penalised.
    pub negative_margin: f64,
    /// Weight of the variance term on every raw bottom-up and top-down
    /// prediction, with statistics over the images of the batch at each
    /// location separately (so locations of one image may agree); 0 = off.
    pub variance_weight: f64,
    /// `"log"` barrier or `"hinge"` on the standard deviation.
    pub variance_form: VarianceForm,
    /// Hinge form: per-dimension standard deviation below which the term
    /// pushes (predictions are on the scale of layer-normalised vectors).
    pub variance_target: f64,
    /// Weight of the decorrelation term: mean squared off-diagonal
    /// covariance over the batch, per location; 0 = off.
    pub covariance_weight: f64,
    /// Weight of the InfoNCE term: each prediction picks its positive among
    /// the positives of the other images of the batch at the same location
    /// (negatives never come from another location); 0 = off.
    pub contrastive_weight: f64,
    /// Temperature of the InfoNCE term (cosine similarities are divided by it).
    pub contrastive_temperature: f64,
    /// `"consensus"` or `"lateral"`: the positive of the InfoNCE term.
    pub contrastive_positive: ContrastivePositive,
    /// Video only: `[min, max]` frame distances whose states join the
    /// InfoNCE negatives. A prediction about frame `f` must also tell its
    /// positive apart from the consensus, at the same location and in the
    /// same sequence, at the end of every frame `f +- g` with
    /// `min <= g <= max` (nearby but not adjacent frames, paper section
    /// 12.2, with `min >= 2`). `[0, 0]` = off, the negatives are the other
    /// images of the batch alone.
    pub contrastive_frame_gap: [usize; 2],
    /// Video only: `"same_frame"` or `"next_frame"`, the consensus every
    /// bottom-up and top-down student is distilled toward
    /// ([`DistillTarget`]).
    pub distill_target: DistillTarget,
    /// Weight of the local autoencoder term `TD[l](BU[l+1](e[l])) ~ e[l]`
    /// per level below the top; 0 = off.
    pub autoencoder_weight: f64,
    /// Weight of neighbour co-distillation (paper section 12.1): every
    /// bottom-up student also regresses, on the input a sampled neighbour
    /// had, toward the state that neighbour settled to, so that the nets of
    /// different locations stay functionally alike; 0 = off.
    pub neighbour_distill_weight: f64,
    /// Divergence guard: a step whose weighted total loss is more than this
    /// many times the median of the last steps' (in absolute value) stops
    /// the run, naming the step, the term that grew most and the last good
    /// checkpoint; 0 = off (a non-finite loss stops the run regardless).
    pub divergence_factor: f64,
    /// Log a metrics record every this many steps.
    pub log_every: u64,
    /// Embeddings per level sampled for the collapse measures.
    pub rank_sample: usize,
    /// Where the model's tensors live: `"cpu"` or `"cuda:N"` (GPU N; the
    /// binary must be built with the `cuda` feature). Not hashed: it
    /// changes where the numbers are computed, not which (a GPU rounds
    /// differently, so bits agree only among workers of one kind).
    pub device: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 500,
            batch_size: 32,
            learning: Learning::Local,
            learning_rate: 2e-3,
            weight_decay: 0.0,
            mask_fraction: 0.3,
            recon_weight: 1.0,
            recon_visible_weight: 0.25,
            distill_weight: 1.0,
            negative_weight: 0.0,
            negative_margin: 0.2,
            variance_weight: 2.0,
            variance_form: VarianceForm::Log,
            variance_target: 1.0,
            covariance_weight: 10.0,
            contrastive_weight: 0.0,
            contrastive_temperature: 0.1,
            contrastive_positive: ContrastivePositive::Consensus,
            contrastive_frame_gap: [0, 0],
            distill_target: DistillTarget::SameFrame,
            autoencoder_weight: 0.0,
            neighbour_distill_weight: 0.0,
            divergence_factor: 1000.0,
            log_every: 10,
            rank_sample: 256,
            device: "cpu".into(),
        }
    }
}

/// A device named by `train.device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// The CUDA GPU of this index.
    Cuda(usize),
}

impl TrainConfig {
    /// `train.device` read: `"cpu"` or `"cuda:N"`.
    pub fn device_spec(&self) -> Result<DeviceSpec> {
        let d = self.device.as_str();
        if d == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        d.strip_prefix("cuda:")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .map(DeviceSpec::Cuda)
            .ok_or_else(|| {
                Error::config(
                    "train.device",
                    format!("{d:?} must be \"cpu\" or \"cuda:N\" (N the index of a GPU, e.g. \"cuda:0\")"),
                )
            })
    }
}

/// Data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub source: DataSource,
    /// Directory of the Fashion-MNIST IDX files.
    pub path: String,
    /// Side of a synthetic scene or sprites image in pixels (sprites: 64
    /// unless set, see the binary's configuration loader; Tetrominoes and
    /// Fashion-MNIST have fixed sizes and ignore it).
    pub image_size: usize,
    /// Images in the synthetic training split (scenes, Tetrominoes, sprites;
    /// of moving scenes, sequences).
    pub train_images: usize,
    /// Frames of every sequence of a video source (moving scenes only).
    pub frames: usize,
    /// Objects per scene (scenes and moving scenes only: Tetrominoes have
    /// 3, sprites 2-5).
    pub min_objects: usize,
    pub max_objects: usize,
    /// Seeds of the training and held-out splits (fixed apart from the run
    /// seed, so runs with different seeds see the same data).
    pub train_seed: u64,
    pub eval_seed: u64,
    /// Keep only the first n training images of a file-based dataset (0 = all).
    pub train_limit: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: DataSource::Scenes,
            path: "/usr/share/datasets/fashion-mnist".into(),
            image_size: 32,
            train_images: 20_000,
            frames: 8,
            min_objects: 1,
            max_objects: 3,
            train_seed: 1,
            eval_seed: 2,
            train_limit: 0,
        }
    }
}

/// Evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Held-out images for reconstruction and islands.
    pub images: usize,
    /// Cosine distance under which vectors join the same island.
    pub island_threshold: f64,
    /// Images for the linear probe: this many from the training split to fit
    /// it and this many held-out to test it.
    pub probe_images: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            images: 128,
            island_threshold: 0.3,
            probe_images: 1000,
        }
    }
}

/// Checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Write a checkpoint every this many steps (0 = only the final one).
    pub every_steps: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { every_steps: 100 }
    }
}

/// The Prometheus endpoint of `glom train` (docs/metrics.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve the metrics at all; off, nothing listens and nothing is measured
    /// beyond what `metrics.jsonl` records.
    pub enabled: bool,
    /// Socket address of the text endpoint (`GET /metrics`); port 0 picks a
    /// free port, written to `metrics_addr.txt` in the run directory.
    pub listen: String,
    /// Compute the collapse measures every this many steps: they cost a
    /// fraction of a step, so a dashboard does not need them every step.
    pub every_steps: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9464".into(),
            every_steps: 10,
        }
    }
}

/// Precision of the embeddings in halo frames (DESIGN.md section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaloPrecision {
    /// Full precision: runs on any number of workers compute the same bits.
    F32,
    /// Half the bytes, about 3 significant digits; results then depend on
    /// the tiling (a halo value is rounded, an own value is not).
    Bf16,
}

/// How the run is spread over workers (DESIGN.md section 4). Only
/// `halo_precision` changes what is computed: the tiling does not (sharding
/// invariance), so `workers` and the transport knobs stay out of
/// [`Config::hash`] and a checkpoint resumes on any number of workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Workers, one tile of the grid each: the in-process workers of
    /// `glom train`, the workers `glom coordinator` waits for.
    pub workers: usize,
    /// Values of the halo frames.
    pub halo_precision: HaloPrecision,
    /// Steps the coordinator issues ahead of the slowest worker (1 = lockstep).
    pub max_ahead: u64,
    /// QUIC address of `glom coordinator` (UDP); port 0 picks a free one.
    pub listen: String,
    /// Seconds between heartbeats (and QUIC keep-alives); a peer silent
    /// for `heartbeat_timeout` seconds (also the QUIC idle timeout) is
    /// lost. Heartbeats come from each process's network loop, not from
    /// its compute thread, so a long step does not look like a death.
    pub heartbeat_seconds: f64,
    pub heartbeat_timeout: f64,
    /// Automatic recovery (DESIGN.md section 7): restarts from the last
    /// complete checkpoint before a lost worker ends the run (0 = none).
    pub max_restarts: u32,
    /// After a loss, how long to wait for a replacement worker before
    /// re-planning the tiles over the workers that rejoined.
    pub rejoin_seconds: f64,
    /// Fewest workers to go on with after a loss; fewer ends the run.
    pub min_workers: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            halo_precision: HaloPrecision::F32,
            max_ahead: 2,
            listen: "127.0.0.1:7400".into(),
            heartbeat_seconds: 1.0,
            heartbeat_timeout: 5.0,
            max_restarts: 3,
            rejoin_seconds: 60.0,
            min_workers: 1,
        }
    }
}

/// The sleep phase: scheduled offline negative learning (paper section
/// 12.2, DESIGN.md section 3). A job dreams from a bounded replay buffer
/// of recent settled states, pushes the bottom-up nets' predictions from
/// dreamed levels away from the consensus of unrelated contexts (negative
/// phase, first), and alternates short positive phases on the dreams.
///
/// When sleep is scheduled (`every_steps > 0` or a `timetable`), awake
/// training must be positive-only: [`Config::validate`] refuses
/// `train.negative_weight > 0` with it. The lengths, margin and rates
/// below also drive the standalone `glom sleep` job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SleepConfig {
    /// Run a sleep job after every this many awake steps (0 = never by
    /// step count). A job falls after step N when N is a multiple of it
    /// and N < `train.steps`.
    pub every_steps: u64,
    /// Wall-clock schedule: UTC times of day `"HH:MM"` at which a job is
    /// due; a due job starts at the next step boundary. Empty = none.
    /// Kept out of [`Config::hash`]: when a job runs then depends on the
    /// clock, not on the configuration.
    pub timetable: Vec<String>,
    /// Optimisation steps of one job (negative and positive together).
    pub steps: u64,
    /// Length of each negative phase, in steps (the job starts with one).
    pub negative_steps: u64,
    /// Length of each positive phase, in steps (0 = negative-only sleep).
    pub positive_steps: u64,
    /// Cosine similarity above which a dreamed prediction and an unrelated
    /// consensus vector are pushed apart (paper section 7: separation, not
    /// distance).
    pub margin: f64,
    /// Adam learning rate of both phases.
    pub learning_rate: f64,
    /// Std of the gaussian perturbation of the stored top-level states
    /// before dreaming (0 = dream the stored states).
    pub noise: f64,
    /// Dreamed samples per location per sleep step.
    pub batch: usize,
    /// Weight of the variance term (form and target of `train.variance_form`
    /// and `train.variance_target`) on the negative phase's bottom-up
    /// predictions, with statistics over the dreamed samples at each
    /// location: the awake anti-collapse term taken offline; 0 = off.
    pub variance_weight: f64,
    /// Weight of the decorrelation term on the same predictions; 0 = off.
    pub covariance_weight: f64,
    /// Settled images a worker keeps in its replay buffer (oldest evicted
    /// first; of a video, every frame's state is an item); `glom sleep`
    /// settles this many training images to fill it.
    pub replay_capacity: usize,
    /// Video only: `[min, max]` frame distances of the negative phase's
    /// negatives. A dream from the state of frame `f` of a stored sequence
    /// is held apart from that sequence's states at frames `f +- g`,
    /// `min <= g <= max`, where the buffer holds any (paper section 12.2:
    /// "the negative examples should be taken from nearby but not adjacent
    /// frames"); other stored items otherwise. `[0, 0]` = off: other
    /// stored items only.
    pub frame_gap: [usize; 2],
    /// Training images in the fixed sample whose bottom-up embeddings are
    /// measured before and after every job (collapse measures; 0 = none).
    pub observe_images: usize,
}

impl Default for SleepConfig {
    fn default() -> Self {
        Self {
            every_steps: 0,
            timetable: Vec::new(),
            steps: 100,
            negative_steps: 10,
            positive_steps: 5,
            margin: 0.2,
            learning_rate: 1e-3,
            noise: 0.1,
            batch: 16,
            variance_weight: 0.0,
            covariance_weight: 0.0,
            replay_capacity: 256,
            frame_gap: [0, 0],
            observe_images: 8,
        }
    }
}

impl SleepConfig {
    /// Whether jobs are scheduled during training (by steps or by clock).
    pub fn scheduled(&self) -> bool {
        self.every_steps > 0 || !self.timetable.is_empty()
    }

    /// The timetable as seconds after UTC midnight, sorted and without
    /// repeats; the error names the first entry that is not `"HH:MM"`.
    pub fn timetable_seconds(&self) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(self.timetable.len());
        for entry in &self.timetable {
            out.push(parse_time_of_day(entry).ok_or_else(|| {
                Error::config(
                    "sleep.timetable",
                    format!("{entry:?} is not a UTC time of day \"HH:MM\" (00:00 to 23:59)"),
                )
            })?);
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

/// `"HH:MM"` as seconds after midnight.
fn parse_time_of_day(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 3600 + m * 60)
}

/// Most frames of a sequence (`data.frames`).
pub const MAX_FRAMES: usize = 256;
/// Most settling iterations per frame (`model.iterations_per_frame`).
pub const MAX_ITERATIONS_PER_FRAME: usize = 256;

fn check(ok: bool, key: &str, message: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::config(key, message()))
    }
}

fn finite_nonneg(x: f64, key: &str) -> Result<()> {
    check(x.is_finite() && x >= 0.0, key, || {
        format!("{x} must be a finite number >= 0")
    })
}

/// `a` at level 0 and `b` at the top level, geometric in between (linear
/// when an end is not positive).
pub fn across_levels(a: f64, b: f64, level: usize, levels: usize) -> f64 {
    if levels <= 1 {
        return a;
    }
    let f = level as f64 / (levels - 1) as f64;
    if a <= 0.0 || b <= 0.0 {
        return a + (b - a) * f;
    }
    a * (b / a).powf(f)
}

impl ModelConfig {
    /// Width (grid cells) of the neighbour-sampling gaussian at `level`
    /// (paper section 6: wider at higher levels).
    pub fn neighbour_sigma_at(&self, level: usize) -> f64 {
        across_levels(
            self.neighbour_sigma[0],
            self.neighbour_sigma[1],
            level,
            self.levels,
        )
    }

    /// Neighbours of a location at `level` lie within this euclidean
    /// distance (cells). Workers draw from it; the coordinator sizes halos
    /// from it, so both read this one definition.
    pub fn neighbour_radius(&self, level: usize) -> f64 {
        (self.neighbour_sigma_at(level) * self.neighbour_cutoff).max(1.0)
    }

    /// Largest row or column offset of a neighbour at `level`: the halo width.
    pub fn neighbour_reach(&self, level: usize) -> usize {
        self.neighbour_radius(level).floor() as usize
    }
}

impl Config {
    /// Check every value; the error names the first offending key.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        check(m.levels >= 1, "model.levels", || {
            format!("{} must be at least 1", m.levels)
        })?;
        check(m.levels <= 16, "model.levels", || {
            format!("{} is more than 16", m.levels)
        })?;
        check(m.dim >= 2, "model.dim", || {
            format!("{} must be at least 2", m.dim)
        })?;
        check(m.hidden >= 1, "model.hidden", || {
            format!("{} must be positive", m.hidden)
        })?;
        check(m.patch >= 1, "model.patch", || {
            format!("{} must be positive", m.patch)
        })?;
        check(m.iterations >= 1, "model.iterations", || {
            format!("{} must be at least 1", m.iterations)
        })?;
        check(
            m.iterations_per_frame >= 1,
            "model.iterations_per_frame",
            || format!("{} must be at least 1", m.iterations_per_frame),
        )?;
        check(
            m.iterations_per_frame <= MAX_ITERATIONS_PER_FRAME,
            "model.iterations_per_frame",
            || {
                format!(
                    "{} is more than {MAX_ITERATIONS_PER_FRAME}",
                    m.iterations_per_frame
                )
            },
        )?;
        check(
            m.location_code_dim.is_multiple_of(4),
            "model.location_code_dim",
            || format!("{} must be a multiple of 4", m.location_code_dim),
        )?;
        check(m.neighbours >= 1, "model.neighbours", || {
            format!("{} must be positive", m.neighbours)
        })?;
        for (i, s) in m.neighbour_sigma.iter().enumerate() {
            check(s.is_finite() && *s > 0.0, "model.neighbour_sigma", || {
                format!("entry {i} = {s} must be > 0")
            })?;
        }
        check(
            m.neighbour_cutoff.is_finite() && m.neighbour_cutoff >= 1.0,
            "model.neighbour_cutoff",
            || format!("{} must be >= 1", m.neighbour_cutoff),
        )?;
        for (i, b) in m.beta.iter().enumerate() {
            check(b.is_finite() && *b >= 0.0, "model.beta", || {
                format!("entry {i} = {b} must be >= 0")
            })?;
        }
        check(
            m.beta_rise.is_finite() && m.beta_rise > 0.0,
            "model.beta_rise",
            || format!("{} must be > 0", m.beta_rise),
        )?;
        let s = &m.schedule;
        for (key, r) in [
            ("model.schedule.bottom_up", s.bottom_up),
            ("model.schedule.top_down", s.top_down),
            ("model.schedule.previous", s.previous),
            ("model.schedule.lateral", s.lateral),
        ] {
            finite_nonneg(r.0, key)?;
            finite_nonneg(r.1, key)?;
        }
        for t in 0..m.iterations {
            let total = s.bottom_up.at(t, m.iterations)
                + s.previous.at(t, m.iterations)
                + s.lateral.at(t, m.iterations);
            check(total > 0.0, "model.schedule", || {
                format!("the weights of bottom_up, previous and lateral sum to 0 at iteration {t}")
            })?;
        }

        let t = &self.train;
        check(t.batch_size >= 1, "train.batch_size", || {
            format!("{} must be positive", t.batch_size)
        })?;
        check(
            t.learning_rate.is_finite() && t.learning_rate > 0.0,
            "train.learning_rate",
            || format!("{} must be > 0", t.learning_rate),
        )?;
        finite_nonneg(t.weight_decay, "train.weight_decay")?;
        check(
            (0.0..1.0).contains(&t.mask_fraction),
            "train.mask_fraction",
            || format!("{} must be in [0, 1)", t.mask_fraction),
        )?;
        finite_nonneg(t.recon_weight, "train.recon_weight")?;
        finite_nonneg(t.recon_visible_weight, "train.recon_visible_weight")?;
        finite_nonneg(t.distill_weight, "train.distill_weight")?;
        finite_nonneg(t.negative_weight, "train.negative_weight")?;
        check(
            (-1.0..=1.0).contains(&t.negative_margin),
            "train.negative_margin",
            || format!("{} must be in [-1, 1]", t.negative_margin),
        )?;
        finite_nonneg(t.variance_weight, "train.variance_weight")?;
        check(
            t.variance_target.is_finite() && t.variance_target > 0.0,
            "train.variance_target",
            || format!("{} must be a finite number > 0", t.variance_target),
        )?;
        finite_nonneg(t.covariance_weight, "train.covariance_weight")?;
        finite_nonneg(t.contrastive_weight, "train.contrastive_weight")?;
        check(
            t.contrastive_temperature.is_finite() && t.contrastive_temperature > 0.0,
            "train.contrastive_temperature",
            || format!("{} must be a finite number > 0", t.contrastive_temperature),
        )?;
        finite_nonneg(t.autoencoder_weight, "train.autoencoder_weight")?;
        finite_nonneg(t.neighbour_distill_weight, "train.neighbour_distill_weight")?;
        check(
            t.divergence_factor == 0.0
                || (t.divergence_factor.is_finite() && t.divergence_factor > 1.0),
            "train.divergence_factor",
            || {
                format!(
                    "{} must be 0 (off) or a finite number > 1",
                    t.divergence_factor
                )
            },
        )?;
        let batch_terms =
            t.variance_weight > 0.0 || t.covariance_weight > 0.0 || t.contrastive_weight > 0.0;
        check(
            !batch_terms || t.batch_size >= 2,
            "train.batch_size",
            || {
                format!(
                    "{} is too small for the variance, covariance and contrastive terms, \
                 whose statistics are over the images of the batch: use at least 2",
                    t.batch_size
                )
            },
        )?;
        check(t.log_every >= 1, "train.log_every", || {
            format!("{} must be positive", t.log_every)
        })?;
        check(t.rank_sample >= 2, "train.rank_sample", || {
            format!("{} must be at least 2", t.rank_sample)
        })?;
        t.device_spec()?;

        let d = &self.data;
        match d.source {
            DataSource::Scenes
            | DataSource::MovingScenes
            | DataSource::Sprites
            | DataSource::MovingSprites => {
                let least = if d.source.is_sprites() { 16 } else { m.patch };
                check(d.image_size >= least, "data.image_size", || {
                    format!(
                        "{} is smaller than {least} pixels (model.patch = {})",
                        d.image_size, m.patch
                    )
                })?;
                check(
                    d.image_size.is_multiple_of(m.patch),
                    "data.image_size",
                    || {
                        format!(
                            "{} is not a multiple of model.patch = {}",
                            d.image_size, m.patch
                        )
                    },
                )?;
            }
            DataSource::Tetrominoes | DataSource::FashionMnist => {}
        }
        if d.source != DataSource::FashionMnist {
            check(d.train_images >= 1, "data.train_images", || {
                "must be positive".into()
            })?;
        }
        match d.source {
            DataSource::Scenes | DataSource::MovingScenes => {
                check(
                    d.min_objects >= 1 && d.min_objects <= d.max_objects,
                    "data.min_objects",
                    || {
                        format!(
                            "{} must be in 1..=data.max_objects ({})",
                            d.min_objects, d.max_objects
                        )
                    },
                )?;
                check(d.max_objects <= 8, "data.max_objects", || {
                    format!("{} is more than 8", d.max_objects)
                })?;
            }
            DataSource::FashionMnist => {
                check(28 % m.patch == 0, "model.patch", || {
                    format!(
                        "{} does not divide the 28-pixel Fashion-MNIST images",
                        m.patch
                    )
                })?;
                check(!d.path.is_empty(), "data.path", || {
                    "must not be empty".into()
                })?;
            }
            DataSource::Tetrominoes | DataSource::Sprites | DataSource::MovingSprites => {}
        }
        if d.source.is_video() {
            check((1..=MAX_FRAMES).contains(&d.frames), "data.frames", || {
                format!("{} must be between 1 and {MAX_FRAMES}", d.frames)
            })?;
        }
        let frames = self.frames();
        check(
            t.distill_target == DistillTarget::SameFrame || frames > 1,
            "train.distill_target",
            || {
                "\"next_frame\" needs frames to predict: a video source \
                 (data.source = \"moving_scenes\" or \"moving_sprites\") with data.frames >= 2"
                    .into()
            },
        )?;
        let [gap_min, gap_max] = t.contrastive_frame_gap;
        if t.contrastive_frame_gap != [0, 0] {
            check(
                gap_min >= 1 && gap_min <= gap_max,
                "train.contrastive_frame_gap",
                || {
                    format!(
                        "[{gap_min}, {gap_max}] must be [min, max] with 1 <= min <= max, \
                         or [0, 0] (off)"
                    )
                },
            )?;
            check(gap_min < frames, "train.contrastive_frame_gap", || {
                format!(
                    "[{gap_min}, {gap_max}] reaches no frame: the data has {frames} frame(s) \
                         per item (a video source with data.frames > {gap_min} is needed)"
                )
            })?;
            check(
                t.contrastive_weight > 0.0,
                "train.contrastive_frame_gap",
                || {
                    format!(
                        "[{gap_min}, {gap_max}] adds negatives to the InfoNCE term, \
                         which is off (train.contrastive_weight = 0)"
                    )
                },
            )?;
        }
        check(self.eval.images >= 1, "eval.images", || {
            "must be positive".into()
        })?;
        check(
            self.eval.island_threshold.is_finite()
                && (0.0..=2.0).contains(&self.eval.island_threshold),
            "eval.island_threshold",
            || {
                format!(
                    "{} must be a cosine distance in [0, 2]",
                    self.eval.island_threshold
                )
            },
        )?;
        let mc = &self.metrics;
        check(
            mc.listen.parse::<std::net::SocketAddr>().is_ok(),
            "metrics.listen",
            || {
                format!(
                    "{:?} is not a socket address like 127.0.0.1:9464",
                    mc.listen
                )
            },
        )?;
        check(mc.every_steps >= 1, "metrics.every_steps", || {
            format!("{} must be positive", mc.every_steps)
        })?;
        let c = &self.cluster;
        check(c.workers >= 1, "cluster.workers", || {
            format!("{} must be at least 1", c.workers)
        })?;
        check(c.max_ahead >= 1, "cluster.max_ahead", || {
            format!("{} must be at least 1 (1 = lockstep)", c.max_ahead)
        })?;
        check(
            c.listen.parse::<std::net::SocketAddr>().is_ok(),
            "cluster.listen",
            || format!("{:?} is not a socket address like 0.0.0.0:7400", c.listen),
        )?;
        check(
            c.heartbeat_seconds.is_finite() && c.heartbeat_seconds > 0.0,
            "cluster.heartbeat_seconds",
            || format!("{} must be > 0", c.heartbeat_seconds),
        )?;
        check(
            c.heartbeat_timeout.is_finite() && c.heartbeat_timeout > c.heartbeat_seconds,
            "cluster.heartbeat_timeout",
            || {
                format!(
                    "{} must be longer than cluster.heartbeat_seconds = {}",
                    c.heartbeat_timeout, c.heartbeat_seconds
                )
            },
        )?;
        check(
            c.rejoin_seconds.is_finite() && c.rejoin_seconds >= 0.0,
            "cluster.rejoin_seconds",
            || format!("{} must be >= 0", c.rejoin_seconds),
        )?;
        check(
            (1..=c.workers).contains(&c.min_workers),
            "cluster.min_workers",
            || {
                format!(
                    "{} must be between 1 and cluster.workers = {}",
                    c.min_workers, c.workers
                )
            },
        )?;
        self.validate_sleep()
    }

    fn validate_sleep(&self) -> Result<()> {
        let s = &self.sleep;
        s.timetable_seconds()?;
        check(s.steps >= 1, "sleep.steps", || {
            format!("{} must be at least 1", s.steps)
        })?;
        check(s.negative_steps >= 1, "sleep.negative_steps", || {
            format!(
                "{} must be at least 1: a job starts with a negative phase",
                s.negative_steps
            )
        })?;
        check((-1.0..=1.0).contains(&s.margin), "sleep.margin", || {
            format!("{} must be a cosine similarity in [-1, 1]", s.margin)
        })?;
        check(
            s.learning_rate.is_finite() && s.learning_rate > 0.0,
            "sleep.learning_rate",
            || format!("{} must be > 0", s.learning_rate),
        )?;
        finite_nonneg(s.noise, "sleep.noise")?;
        check(s.batch >= 1, "sleep.batch", || {
            format!("{} must be positive", s.batch)
        })?;
        finite_nonneg(s.variance_weight, "sleep.variance_weight")?;
        finite_nonneg(s.covariance_weight, "sleep.covariance_weight")?;
        let spread = s.variance_weight > 0.0 || s.covariance_weight > 0.0;
        check(!spread || s.batch >= 2, "sleep.batch", || {
            format!(
                "{} is too small for sleep.variance_weight and sleep.covariance_weight, \
                 whose statistics are over the dreams of a location: use at least 2",
                s.batch
            )
        })?;
        check(s.replay_capacity >= 2, "sleep.replay_capacity", || {
            format!(
                "{} must be at least 2: negatives come from other stored images",
                s.replay_capacity
            )
        })?;
        let [gap_min, gap_max] = s.frame_gap;
        if s.frame_gap != [0, 0] {
            let frames = self.frames();
            check(
                gap_min >= 1 && gap_min <= gap_max && gap_min < frames,
                "sleep.frame_gap",
                || {
                    format!(
                        "[{gap_min}, {gap_max}] must be [min, max] with 1 <= min <= max and \
                         min below the {frames} frame(s) of an item (a video source), or [0, 0] (off)"
                    )
                },
            )?;
        }
        if s.scheduled() {
            let key = if s.every_steps > 0 {
                "sleep.every_steps"
            } else {
                "sleep.timetable"
            };
            check(self.train.negative_weight == 0.0, key, || {
                format!(
                    "sleep is scheduled, so awake training must be positive-only, but \
                     train.negative_weight = {}: set it to 0 (the negatives are learnt \
                     asleep) or turn sleep off",
                    self.train.negative_weight
                )
            })?;
            check(self.model.levels >= 2, key, || {
                format!(
                    "sleep trains the bottom-up nets between levels, and model.levels = {} \
                     has none",
                    self.model.levels
                )
            })?;
        }
        Ok(())
    }

    /// Check that the run can be split over `workers` workers: only
    /// per-location nets learning locally can, because nothing but
    /// embeddings crosses the network (shared weights would need their
    /// gradients summed over workers, BPTT gradients through the halo).
    pub fn validate_workers(&self, workers: usize) -> Result<()> {
        check(workers >= 1, "cluster.workers", || {
            format!("{workers} must be at least 1")
        })?;
        if workers == 1 {
            return Ok(());
        }
        check(
            self.model.weights == WeightMode::PerLocation,
            "cluster.workers",
            || {
                format!(
                    "{workers} workers need model.weights = \"per_location\": shared weights \
                     would need gradients to cross the network; use 1 worker \
                     (`--workers 1`, or cluster.workers = 1 in the config)"
                )
            },
        )?;
        check(
            self.train.learning == Learning::Local,
            "cluster.workers",
            || {
                format!(
                    "{workers} workers need train.learning = \"local\": backpropagation through \
                 time would send gradients through the halo; use 1 worker \
                 (`--workers 1`, or cluster.workers = 1 in the config)"
                )
            },
        )?;
        let side = self.grid_side();
        // Saturating: nothing bounds data.image_size, so the square may not
        // fit a machine word.
        let locations = side.saturating_mul(side);
        check(workers <= locations, "cluster.workers", || {
            format!("{workers} is more than the {side}x{side} = {locations} locations of the grid")
        })
    }

    /// Side of the image in pixels for the configured data source.
    pub fn image_side(&self) -> usize {
        match self.data.source {
            DataSource::Scenes
            | DataSource::MovingScenes
            | DataSource::Sprites
            | DataSource::MovingSprites => self.data.image_size,
            DataSource::FashionMnist => 28,
            // One block of the canvas per patch.
            DataSource::Tetrominoes => DataSource::TETROMINO_BLOCKS * self.model.patch,
        }
    }

    /// Colour channels of the configured data source.
    pub fn channels(&self) -> usize {
        match self.data.source {
            DataSource::Scenes
            | DataSource::MovingScenes
            | DataSource::Tetrominoes
            | DataSource::Sprites
            | DataSource::MovingSprites => 3,
            DataSource::FashionMnist => 1,
        }
    }

    /// Locations per row and per column.
    pub fn grid_side(&self) -> usize {
        self.image_side() / self.model.patch
    }

    /// Neighbours each location attends to at every level: `model.neighbours`,
    /// or with `model.attention = "all"` every other location of the grid
    /// (at least 1: a one-location grid attends to itself).
    pub fn lateral_count(&self) -> usize {
        match self.model.attention {
            Attention::Sampled => self.model.neighbours,
            Attention::All => {
                let side = self.grid_side();
                side.saturating_mul(side).saturating_sub(1).max(1)
            }
        }
    }

    /// Neighbours of a location at `level` lie within this euclidean
    /// distance (cells): [`ModelConfig::neighbour_radius`], or with
    /// `model.attention = "all"` more than the grid's diagonal. Workers
    /// draw from it; the coordinator sizes halos from it. Either way at
    /// most twice the grid's side, which already reaches every cell of the
    /// grid: a larger `model.neighbour_sigma` then draws from the whole
    /// grid, with the same candidates, instead of sizing halos and loops
    /// by the sigma itself.
    pub fn lateral_radius(&self, level: usize) -> f64 {
        let whole = (2 * self.grid_side()).max(1) as f64;
        match self.model.attention {
            Attention::Sampled => self.model.neighbour_radius(level).min(whole),
            Attention::All => whole,
        }
    }

    /// Largest row or column offset of a neighbour at `level`: the halo width.
    pub fn lateral_reach(&self, level: usize) -> usize {
        self.lateral_radius(level).floor() as usize
    }

    /// Frames of every item of the training data: `data.frames` for a
    /// video source, 1 for still images.
    pub fn frames(&self) -> usize {
        if self.data.source.is_video() {
            self.data.frames
        } else {
            1
        }
    }

    /// Settling iterations of one item: `model.iterations` on the first
    /// frame (settling after a change of fixation, paper section 11), then
    /// `model.iterations_per_frame` on each further frame, the state
    /// carried over: `iterations + (frames - 1) * iterations_per_frame`.
    /// A still image (one frame) settles for `model.iterations`.
    pub fn settle_iterations(&self) -> usize {
        let m = &self.model;
        m.iterations + (self.frames() - 1) * m.iterations_per_frame
    }

    /// The frame that settling iteration `t` reads (see
    /// [`Self::settle_iterations`]); iterations past the end read the last.
    pub fn frame_of_iteration(&self, t: usize) -> usize {
        let m = &self.model;
        if t < m.iterations {
            0
        } else {
            (1 + (t - m.iterations) / m.iterations_per_frame).min(self.frames() - 1)
        }
    }

    /// Stable hash of what the configuration computes (hex SHA-256 of the
    /// JSON form of `seed`, `model`, `train` without `steps`, `log_every`,
    /// `rank_sample` and `divergence_factor`, `data` without `path`
    /// (`data.frames` and `model.iterations_per_frame` only where the data
    /// has more than one frame),
    /// `cluster.halo_precision`, and, when sleep is scheduled, `sleep`
    /// without `timetable` and `observe_images`). Two processes agree on a
    /// run only when
    /// their hashes agree; settings that do not change the numbers (where
    /// the data lies on each host, evaluation, checkpoint and metrics
    /// cadence, the number of workers, addresses) may differ. Unscheduled
    /// sleep settings change no training step, so they stay out too (and a
    /// run without sleep keeps the hash it had before `[sleep]` existed);
    /// when a wall-clock job runs is the clock's business, not the
    /// configuration's.
    pub fn hash(&self) -> String {
        let mut data = self.data.clone();
        data.path.clear();
        let mut data = serde_json::json!(data);
        if !self.data.source.is_video() {
            // Only a video has frames: elsewhere the key changes nothing
            // (and configurations from before it keep their hash).
            data.as_object_mut()
                .expect("a struct serialises to an object")
                .remove("frames");
        }
        // How long to train and how often to log change no step's numbers.
        let mut train = self.train.clone();
        (train.steps, train.log_every, train.rank_sample) = (0, 0, 0);
        let mut train = serde_json::json!(train);
        // Nor does the guard that stops a diverged run, nor the device.
        let fields = train
            .as_object_mut()
            .expect("a struct serialises to an object");
        fields.remove("divergence_factor");
        fields.remove("device");
        // A term that is off changes nothing, nor do its settings: they stay
        // out, so a configuration without the anti-collapse terms keeps the
        // hash it had before they existed (and old checkpoints still load).
        let t = &self.train;
        for (off, keys) in [
            (
                t.variance_weight == 0.0,
                &["variance_weight", "variance_form", "variance_target"][..],
            ),
            (t.covariance_weight == 0.0, &["covariance_weight"][..]),
            (
                t.contrastive_weight == 0.0,
                &[
                    "contrastive_weight",
                    "contrastive_temperature",
                    "contrastive_positive",
                    "contrastive_frame_gap",
                ][..],
            ),
            (
                t.contrastive_frame_gap == [0, 0],
                &["contrastive_frame_gap"][..],
            ),
            (
                t.distill_target == DistillTarget::SameFrame,
                &["distill_target"][..],
            ),
            (t.autoencoder_weight == 0.0, &["autoencoder_weight"][..]),
            (
                t.neighbour_distill_weight == 0.0,
                &["neighbour_distill_weight"][..],
            ),
        ] {
            if off {
                let fields = train
                    .as_object_mut()
                    .expect("a struct serialises to an object");
                for key in keys {
                    fields.remove(*key);
                }
            }
        }
        let mut model = serde_json::json!(self.model);
        // At their defaults these change nothing: old checkpoints keep their hash.
        let fields = model
            .as_object_mut()
            .expect("a struct serialises to an object");
        if !self.model.bottom_up_skip {
            fields.remove("bottom_up_skip");
        }
        if self.model.attention == Attention::Sampled {
            fields.remove("attention");
        }
        if self.frames() == 1 {
            // Nor do the iterations per frame of a still image.
            fields.remove("iterations_per_frame");
        }
        let mut identity = serde_json::json!({
            "seed": self.seed,
            "model": model,
            "train": train,
            "data": data,
            "halo_precision": self.cluster.halo_precision,
        });
        if self.sleep.scheduled() {
            // What is measured around a job changes no parameter.
            let mut sleep = self.sleep.clone();
            (sleep.timetable, sleep.observe_images) = (Vec::new(), 0);
            let mut sleep = serde_json::json!(sleep);
            let fields = sleep
                .as_object_mut()
                .expect("a struct serialises to an object");
            for (key, weight) in [
                ("variance_weight", self.sleep.variance_weight),
                ("covariance_weight", self.sleep.covariance_weight),
            ] {
                if weight == 0.0 {
                    fields.remove(key);
                }
            }
            if self.sleep.frame_gap == [0, 0] {
                fields.remove("frame_gap");
            }
            identity["sleep"] = sleep;
        }
        let json = serde_json::to_vec(&identity).expect("a config always serialises");
        let digest = Sha256::digest(&json);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_neighbour_sigma_reaches_the_grid_and_no_further() {
        let mut c = Config::default();
        let side = c.grid_side();
        let normal: Vec<usize> = (0..c.model.levels).map(|l| c.lateral_reach(l)).collect();
        assert!(normal.iter().all(|&r| r < 2 * side), "{normal:?}");
        for sigma in [1e3, 1e30] {
            c.model.neighbour_sigma = [sigma, sigma];
            for l in 0..c.model.levels {
                assert_eq!(c.lateral_reach(l), 2 * side, "sigma {sigma}, level {l}");
            }
        }
    }

    fn err_key(c: &Config) -> String {
        match c.validate() {
            Err(Error::Config { key, .. }) => key,
            #[allow(unreachable_patterns)] // other variants belong to the codec
            Err(e) => panic!("not a config error: {e}"),
            Ok(()) => panic!("config validated"),
        }
    }

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = Config::default();
        c.model.levels = 0;
        assert_eq!(err_key(&c), "model.levels");
        let mut c = Config::default();
        c.model.dim = 0;
        assert_eq!(err_key(&c), "model.dim");
        let mut c = Config::default();
        c.train.mask_fraction = 1.5;
        assert_eq!(err_key(&c), "train.mask_fraction");
        let mut c = Config::default();
        c.data.image_size = 30;
        assert_eq!(err_key(&c), "data.image_size");
        let mut c = Config::default();
        c.model.schedule.bottom_up = Ramp(-1.0, 0.0);
        assert_eq!(err_key(&c), "model.schedule.bottom_up");
        let mut c = Config::default();
        c.metrics.listen = "localhost".into();
        assert_eq!(err_key(&c), "metrics.listen");
        let mut c = Config::default();
        c.metrics.every_steps = 0;
        assert_eq!(err_key(&c), "metrics.every_steps");
    }

    #[test]
    fn the_device_is_cpu_or_a_numbered_gpu() {
        let mut c = Config::default();
        assert_eq!(c.train.device_spec().unwrap(), DeviceSpec::Cpu);
        c.train.device = "cuda:0".into();
        c.validate().unwrap();
        assert_eq!(c.train.device_spec().unwrap(), DeviceSpec::Cuda(0));
        c.train.device = "cuda:12".into();
        assert_eq!(c.train.device_spec().unwrap(), DeviceSpec::Cuda(12));
        for bad in [
            "gpu", "cuda", "cuda:", "cuda:-1", "cuda:x", "CPU", " cpu", "cuda:+1",
        ] {
            c.train.device = bad.into();
            assert_eq!(err_key(&c), "train.device", "{bad:?}");
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains("\"cuda:N\"") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
    }

    #[test]
    fn attention_is_sampled_or_all() {
        let c: Config = serde_json::from_str(r#"{"model": {"attention": "all"}}"#).unwrap();
        assert_eq!(c.model.attention, Attention::All);
        c.validate().unwrap();
        let e = serde_json::from_str::<Config>(r#"{"model": {"attention": "global"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("global") && e.contains("sampled"), "{e}");
    }

    #[test]
    fn tetrominoes_and_sprites_sizes() {
        let mut c = Config::default();
        c.data.source = DataSource::Tetrominoes;
        c.data.image_size = 30; // ignored: the canvas is 7 blocks of one patch
        c.validate().unwrap();
        assert_eq!((c.image_side(), c.grid_side(), c.channels()), (28, 7, 3));
        c.model.patch = 5;
        assert_eq!(c.image_side(), 35);
        let mut c = Config::default();
        c.data.source = DataSource::Sprites;
        c.data.image_size = 64;
        c.validate().unwrap();
        assert_eq!((c.image_side(), c.grid_side()), (64, 16));
        c.data.image_size = 32;
        c.validate().unwrap();
        c.data.image_size = 8;
        assert_eq!(err_key(&c), "data.image_size");
        c.data.image_size = 34;
        assert_eq!(err_key(&c), "data.image_size");
    }

    #[test]
    fn unknown_keys_and_variants_are_refused() {
        let e = serde_json::from_str::<Config>(r#"{"model": {"levelz": 3}}"#).unwrap_err();
        assert!(e.to_string().contains("levelz"), "{e}");
        let e = serde_json::from_str::<Config>(r#"{"model": {"weights": "sharded"}}"#).unwrap_err();
        assert!(e.to_string().contains("sharded"), "{e}");
    }

    /// The default configuration's hash is pinned: a key added later must
    /// leave it as it is while the key holds its default (old checkpoints
    /// and running clusters keep agreeing). Computed for the current default
    /// (residual bottom-up nets, variance weight 2, neighbour_sigma [1, 1.5])
    /// before the video keys (`data.frames`, `model.iterations_per_frame`)
    /// and `model.attention` existed.
    #[test]
    fn the_default_hash_is_pinned() {
        assert_eq!(
            Config::default().hash(),
            "74ccd0f3226a694206da8eb06f69b30446c31f8b028300f4d6d4e025a0fcc0ff"
        );
    }

    #[test]
    fn hash_changes_with_what_is_computed_only() {
        let a = Config::default();
        assert_eq!(a.hash(), Config::default().hash());
        let changed: [fn(&mut Config); 7] = [
            |c| c.sleep.every_steps = 50,
            |c| c.sleep.timetable = vec!["03:00".into()],
            |c| c.train.learning_rate *= 2.0,
            |c| c.seed += 1,
            |c| c.model.dim += 1,
            |c| c.data.max_objects -= 1,
            |c| c.cluster.halo_precision = HaloPrecision::Bf16,
        ];
        for (i, change) in changed.iter().enumerate() {
            let mut b = a.clone();
            change(&mut b);
            assert_ne!(a.hash(), b.hash(), "change {i}");
        }
        let same: [fn(&mut Config); 10] = [
            |c| c.sleep.margin = 0.5, // unscheduled: no job runs
            |c| c.sleep.observe_images = 1,
            |c| c.cluster.workers = 4,
            |c| c.cluster.listen = "0.0.0.0:1".into(),
            |c| c.data.path = "/elsewhere".into(),
            |c| c.train.steps = 1,
            |c| c.metrics.every_steps = 3,
            |c| c.checkpoint.every_steps = 7,
            |c| c.eval.images = 5,
            |c| c.train.device = "cuda:1".into(),
        ];
        for (i, change) in same.iter().enumerate() {
            let mut b = a.clone();
            change(&mut b);
            assert_eq!(a.hash(), b.hash(), "setting {i}");
        }
    }

    #[test]
    fn settings_of_an_anti_collapse_term_that_is_off_are_not_hashed() {
        let mut off = Config::default();
        off.train.variance_weight = 0.0;
        off.train.covariance_weight = 0.0;
        off.train.contrastive_weight = 0.0;
        off.train.autoencoder_weight = 0.0;
        off.model.bottom_up_skip = false;
        let settings: [fn(&mut Config); 4] = [
            |c| c.train.variance_form = VarianceForm::Hinge,
            |c| c.train.variance_target = 0.5,
            |c| c.train.contrastive_temperature = 0.5,
            |c| c.train.contrastive_positive = ContrastivePositive::Lateral,
        ];
        for (i, change) in settings.iter().enumerate() {
            let mut b = off.clone();
            change(&mut b);
            assert_eq!(off.hash(), b.hash(), "setting {i} of a term that is off");
        }
        // Once on, the term and its settings are hashed.
        let weights: [fn(&mut Config); 7] = [
            |c| c.train.variance_weight = 1.0,
            |c| c.train.covariance_weight = 1.0,
            |c| c.train.contrastive_weight = 1.0,
            |c| c.train.autoencoder_weight = 1.0,
            |c| c.train.neighbour_distill_weight = 1.0,
            // Likewise the residual bottom-up nets (off: not hashed) and
            // attention over the whole grid (sampled: not hashed).
            |c| c.model.bottom_up_skip = true,
            |c| c.model.attention = Attention::All,
        ];
        for (i, on) in weights.iter().enumerate() {
            let mut b = off.clone();
            on(&mut b);
            assert_ne!(off.hash(), b.hash(), "term {i} on");
        }
        let mut hinge = off.clone();
        hinge.train.variance_weight = 1.0;
        let log = hinge.hash();
        hinge.train.variance_form = VarianceForm::Hinge;
        assert_ne!(log, hinge.hash());
        // Scheduled sleep: its variance terms likewise.
        let mut sleep = off.clone();
        sleep.sleep.every_steps = 10;
        let without = sleep.hash();
        sleep.sleep.variance_weight = 1.0;
        assert_ne!(without, sleep.hash());
    }

    #[test]
    fn a_stored_config_without_the_skip_key_means_plain_bottom_up_nets() {
        // Checkpoints written before `model.bottom_up_skip` existed lack
        // the key: they must load as the model they were (off), not as
        // a default that has it on.
        let mut on = Config::default();
        on.model.bottom_up_skip = true;
        let mut stored = serde_json::json!(on);
        stored["model"]
            .as_object_mut()
            .expect("model is an object")
            .remove("bottom_up_skip");
        let old: Config = serde_json::from_value(stored).expect("parses");
        assert!(!old.model.bottom_up_skip);
    }

    #[test]
    fn scheduled_sleep_settings_are_hashed_but_not_the_clock() {
        let mut a = Config::default();
        let unscheduled = a.hash();
        a.sleep.every_steps = 20;
        a.sleep.timetable = vec!["03:00".into()];
        let changed: [fn(&mut Config); 3] = [
            |c| c.sleep.margin = 0.5,
            |c| c.sleep.replay_capacity = 10,
            |c| c.sleep.every_steps = 21,
        ];
        for (i, change) in changed.iter().enumerate() {
            let mut b = a.clone();
            change(&mut b);
            assert_ne!(a.hash(), b.hash(), "change {i}");
        }
        let mut b = a.clone();
        b.sleep.timetable = vec!["04:00".into(), "05:00".into()];
        b.sleep.observe_images = 3;
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), unscheduled);
    }

    #[test]
    fn only_per_location_local_runs_split_over_workers() {
        let mut c = Config::default();
        c.validate_workers(4).unwrap();
        c.model.weights = WeightMode::Shared;
        c.validate_workers(1).unwrap();
        let e = c.validate_workers(2).unwrap_err().to_string();
        assert!(
            e.contains("cluster.workers") && e.contains("per_location"),
            "{e}"
        );
        let mut c = Config::default();
        c.train.learning = Learning::Bptt;
        let e = c.validate_workers(2).unwrap_err().to_string();
        assert!(e.contains("local"), "{e}");
        let e = Config::default()
            .validate_workers(65)
            .unwrap_err()
            .to_string();
        assert!(e.contains("8x8"), "{e}");
        // A grid whose number of locations does not fit a machine word.
        let mut c = Config::default();
        (c.data.image_size, c.model.patch) = (1 << 40, 1);
        c.validate_workers(2).unwrap();
    }

    #[test]
    fn sleep_values_name_their_key() {
        let mut c = Config::default();
        c.sleep.steps = 0;
        assert_eq!(err_key(&c), "sleep.steps");
        let mut c = Config::default();
        c.sleep.negative_steps = 0;
        assert_eq!(err_key(&c), "sleep.negative_steps");
        let mut c = Config::default();
        c.sleep.margin = 1.5;
        assert_eq!(err_key(&c), "sleep.margin");
        let mut c = Config::default();
        c.sleep.learning_rate = 0.0;
        assert_eq!(err_key(&c), "sleep.learning_rate");
        let mut c = Config::default();
        c.sleep.noise = -0.1;
        assert_eq!(err_key(&c), "sleep.noise");
        let mut c = Config::default();
        c.sleep.batch = 0;
        assert_eq!(err_key(&c), "sleep.batch");
        let mut c = Config::default();
        c.sleep.replay_capacity = 1;
        assert_eq!(err_key(&c), "sleep.replay_capacity");
        // Frame gaps need a video that long.
        let mut c = Config::default();
        c.sleep.frame_gap = [2, 2];
        assert_eq!(err_key(&c), "sleep.frame_gap");
        (c.data.source, c.data.frames) = (DataSource::MovingScenes, 3);
        c.validate().unwrap();
        for bad in [[3, 3], [2, 1], [0, 2]] {
            c.sleep.frame_gap = bad;
            assert_eq!(err_key(&c), "sleep.frame_gap", "{bad:?}");
        }
        let mut c = Config::default();
        (c.sleep.batch, c.sleep.variance_weight) = (1, 1.0);
        assert_eq!(err_key(&c), "sleep.batch");
        c.sleep.variance_weight = f64::NAN;
        assert_eq!(err_key(&c), "sleep.variance_weight");
        for bad in ["3:00", "24:00", "12:60", "noon", "12:00:00"] {
            let mut c = Config::default();
            c.sleep.timetable = vec!["01:30".into(), bad.into()];
            assert_eq!(err_key(&c), "sleep.timetable", "{bad}");
            assert!(c.validate().unwrap_err().to_string().contains(bad));
        }
    }

    /// A change to a configuration and the key its error must name.
    type BadValue = (fn(&mut Config), &'static str);

    #[test]
    fn anti_collapse_values_name_their_key() {
        let cases: [BadValue; 7] = [
            (|c| c.train.variance_weight = -1.0, "train.variance_weight"),
            (|c| c.train.variance_target = 0.0, "train.variance_target"),
            (
                |c| c.train.covariance_weight = f64::INFINITY,
                "train.covariance_weight",
            ),
            (
                |c| c.train.contrastive_temperature = 0.0,
                "train.contrastive_temperature",
            ),
            (
                |c| c.train.autoencoder_weight = f64::NAN,
                "train.autoencoder_weight",
            ),
            (
                |c| c.train.neighbour_distill_weight = -1.0,
                "train.neighbour_distill_weight",
            ),
            (
                |c| (c.train.batch_size, c.train.contrastive_weight) = (1, 1.0),
                "train.batch_size",
            ),
        ];
        for (change, key) in cases {
            let mut c = Config::default();
            change(&mut c);
            assert_eq!(err_key(&c), key);
        }
        // A batch of one is fine while no term needs batch statistics.
        let mut c = Config::default();
        c.train.batch_size = 1;
        (c.train.variance_weight, c.train.covariance_weight) = (0.0, 0.0);
        c.validate().unwrap();
    }

    #[test]
    fn scheduled_sleep_needs_positive_only_awake_training() {
        let mut c = Config::default();
        c.sleep.every_steps = 50;
        c.validate().unwrap();
        c.train.negative_weight = 0.1;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("sleep.every_steps") && e.contains("train.negative_weight"),
            "{e}"
        );
        c.sleep.every_steps = 0;
        c.validate().unwrap(); // unscheduled: awake negatives are allowed
        c.sleep.timetable = vec!["02:00".into()];
        assert_eq!(err_key(&c), "sleep.timetable");
        let mut c = Config::default();
        c.sleep.every_steps = 5;
        c.model.levels = 1;
        assert_eq!(err_key(&c), "sleep.every_steps");
    }

    #[test]
    fn timetable_reads_utc_times_of_day() {
        let c = SleepConfig {
            timetable: vec![
                "23:59".into(),
                "00:00".into(),
                " 02:30".into(),
                "00:00".into(),
            ],
            ..SleepConfig::default()
        };
        assert_eq!(c.timetable_seconds().unwrap(), vec![0, 9000, 86_340]);
        assert!(c.scheduled());
        assert!(!SleepConfig::default().scheduled());
    }

    #[test]
    fn video_keys_name_their_key_and_count_the_iterations() {
        let mut c = Config::default();
        c.data.source = DataSource::MovingScenes;
        c.validate().unwrap();
        assert_eq!((c.image_side(), c.channels(), c.frames()), (32, 3, 8));
        // 6 iterations on the first frame, 1 on each of the 7 others.
        assert_eq!(c.settle_iterations(), 13);
        let frames: Vec<usize> = (0..14).map(|t| c.frame_of_iteration(t)).collect();
        assert_eq!(frames, [0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 7]);
        c.model.iterations_per_frame = 2;
        c.data.frames = 3;
        assert_eq!(c.settle_iterations(), 10);
        let frames: Vec<usize> = (0..10).map(|t| c.frame_of_iteration(t)).collect();
        assert_eq!(frames, [0, 0, 0, 0, 0, 0, 1, 1, 2, 2]);
        // A still source has one frame whatever data.frames says.
        let mut still = c.clone();
        still.data.source = DataSource::Scenes;
        assert_eq!((still.frames(), still.settle_iterations()), (1, 6));
        assert!((0..6).all(|t| still.frame_of_iteration(t) == 0));

        let cases: [BadValue; 5] = [
            (|c| c.data.frames = 0, "data.frames"),
            (|c| c.data.frames = MAX_FRAMES + 1, "data.frames"),
            (
                |c| c.model.iterations_per_frame = 0,
                "model.iterations_per_frame",
            ),
            (
                |c| c.model.iterations_per_frame = MAX_ITERATIONS_PER_FRAME + 1,
                "model.iterations_per_frame",
            ),
            (|c| c.data.max_objects = 9, "data.max_objects"),
        ];
        for (change, key) in cases {
            let mut bad = c.clone();
            change(&mut bad);
            assert_eq!(err_key(&bad), key);
        }
        let mut bad = c.clone();
        bad.data.image_size = 30;
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("data.image_size") && e.contains("30"), "{e}");
    }

    /// The video keys enter the hash only where they change the numbers:
    /// never for still data (whose hash they leave as it was), always for
    /// video.
    #[test]
    fn video_keys_are_hashed_only_for_video() {
        let still = Config::default();
        for change in [
            (|c: &mut Config| c.data.frames = 3) as fn(&mut Config),
            |c| c.model.iterations_per_frame = 4,
        ] {
            let mut b = still.clone();
            change(&mut b);
            assert_eq!(still.hash(), b.hash());
        }
        let mut video = Config::default();
        video.data.source = DataSource::MovingScenes;
        assert_ne!(video.hash(), still.hash());
        for change in [
            (|c: &mut Config| c.data.frames = 3) as fn(&mut Config),
            |c| c.model.iterations_per_frame = 4,
        ] {
            let mut b = video.clone();
            change(&mut b);
            assert_ne!(video.hash(), b.hash());
        }
        // One frame: the iterations per frame change nothing.
        video.data.frames = 1;
        let mut b = video.clone();
        b.model.iterations_per_frame = 4;
        assert_eq!(video.hash(), b.hash());
    }

    #[test]
    fn ramp_interpolates() {
        let r = Ramp(1.0, 0.0);
        assert_eq!(r.at(0, 5), 1.0);
        assert_eq!(r.at(4, 5), 0.0);
        assert_eq!(r.at(2, 5), 0.5);
        assert_eq!(r.at(0, 1), 1.0);
    }
}
