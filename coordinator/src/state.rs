//! The coordinator as a sans-IO state machine, in the style of quinn's
//! `Connection`: the driver feeds it events through `handle_*` calls, each
//! with the current time, and carries out what it asks through the `poll_*`
//! calls. It never touches a socket, a clock or a file, so the whole
//! control plane is tested with a fake cluster (`crate::tests`).
//!
//! # Driving it
//! After every `handle_*` call the driver drains, in this order,
//! [`Coordinator::poll_transmit`] (send each message on its connection),
//! [`Coordinator::poll_close`] (close the connection once what was queued
//! for it is sent) and [`Coordinator::poll_action`] (log, write the
//! manifest, stop), and arms a timer for [`Coordinator::next_timeout`] that
//! calls [`Coordinator::handle_timeout`].
//!
//! # Life of a run
//! `Joining` (hellos are checked and held) -> all expected workers joined:
//! `Welcome` + `Assign` to each -> `Running` (steps issued, at most
//! `max_ahead` outstanding) <-> `Checkpointing` (no step issued; every
//! worker writes its shard, then the manifest) and <-> `Sleeping` (no step
//! issued; every worker runs the sleep job on its own tile, see
//! [`crate::sleep`]) -> `Finished` after the final checkpoint. A lost
//! worker sends the cluster back to `Joining` from its last complete
//! checkpoint: the survivors are told to rejoin, a replacement may join,
//! and after [`Settings::rejoin_timeout`] the tiles are re-planned over
//! whoever joined ([`crate::recovery`]). Once [`Settings::max_restarts`]
//! restarts are spent a loss turns the run `Aborted` and the driver
//! reports the checkpoint to resume from (see [`crate::liveness`]).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use glom_protocol::manifest::Manifest;
use glom_protocol::message::{
    Assign, ControlMessage, RefuseReason, ResumePoint, ShardAck, TileAssignment,
};
use glom_protocol::Config;
use serde::{Deserialize, Serialize};

use crate::conns::Conns;
use crate::error::{Error, Result};
use crate::halo::halo_reach;
use crate::metrics::{StepAccumulator, StepSummary};
use crate::plan::{plan, TileSpec};
use crate::sleep::{SleepSchedule, SleepSummary, SleepTrigger};

/// The driver's name for one connection (any unique number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

/// Knobs of the coordinator that are not part of the run configuration
/// (they do not change what is computed, so they stay out of its hash).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Most steps issued and not yet reported done by every worker. 1 is
    /// lockstep; more lets a worker that finished early start the next
    /// step while a slower one is still on the last.
    pub max_ahead: u64,
    /// A connection silent for longer than this is lost. Workers send
    /// heartbeats during long steps and checkpoints.
    pub heartbeat_timeout: Duration,
    /// How often the coordinator sends its own heartbeat to every worker.
    pub heartbeat_interval: Duration,
    /// Directory under which checkpoint `N` goes to `<root>/step-<N>`, as
    /// seen by the workers (shared storage), like `glom train`'s layout.
    pub checkpoint_root: String,
    /// The wall clock (time since the Unix epoch, UTC) at the `now` given
    /// to [`Coordinator::with_settings`]; needed by `sleep.timetable`, which
    /// names UTC times of day. The state machine reads no clock itself.
    pub utc_at_start: Option<Duration>,
    /// Resume from this checkpoint: steps before `step` count as done, the
    /// workers load their tiles from `dir`, training goes on at `step`.
    pub resume: Option<ResumePoint>,
    /// Restarts from the last complete checkpoint after a lost worker
    /// before the run aborts (0: a loss aborts at once).
    pub max_restarts: u32,
    /// After a restart, how long to wait for the full number of workers
    /// before re-planning the tiles over those that joined.
    pub rejoin_timeout: Duration,
    /// Fewest workers a restarted cluster goes on with.
    pub min_workers: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_ahead: 2,
            heartbeat_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            checkpoint_root: "checkpoints".into(),
            utc_at_start: None,
            resume: None,
            max_restarts: 3,
            rejoin_timeout: Duration::from_secs(60),
            min_workers: 1,
        }
    }
}

/// What the driver must do besides sending messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Every expected worker joined; these are the assignments sent, by
    /// worker id, with each worker's name (the tile plan to log and write).
    Started { assignments: Vec<(String, Assign)> },
    /// A hello was refused (already answered with `Refused` and closed).
    Refused { conn: ConnId, reason: RefuseReason },
    /// Every worker reported step `step` (0-based); its metrics over the grid.
    StepCompleted { step: u64, summary: StepSummary },
    /// Every worker wrote its shard of checkpoint `manifest.step` into
    /// `dir`: write the manifest there, last and atomically.
    WriteManifest {
        dir: String,
        /// Boxed: a manifest holds the whole configuration.
        manifest: Box<Manifest>,
    },
    /// Every worker was sent `SleepStart` for job `job`: awake training is
    /// paused after `after_step` steps (none is in flight).
    SleepStarted {
        job: u64,
        after_step: u64,
        trigger: SleepTrigger,
    },
    /// Every worker finished job `job`: its losses and before/after
    /// measurements over the grid. Awake training resumes at step
    /// `after_step` (after the checkpoint at that step, if one falls there).
    SleepCompleted {
        job: u64,
        after_step: u64,
        /// Boxed: it holds two grid observations.
        summary: Box<SleepSummary>,
    },
    /// A worker is gone; followed by [`Action::RollingBack`] or, once the
    /// restarts are spent, by [`Action::Abort`].
    WorkerLost { worker_id: u32, reason: LostReason },
    /// The cluster rolls back to `to_step` (its last complete checkpoint,
    /// or 0): the survivors were told to rejoin; the coordinator waits up
    /// to `rejoin_timeout` for `workers` workers.
    RollingBack {
        attempt: u32,
        to_step: u64,
        reason: String,
        workers: usize,
        rejoin_timeout: Duration,
    },
    /// The cluster started again after a loss; followed by
    /// [`Action::Started`].
    Restarted(crate::recovery::Restart),
    /// The run cannot go on; the other workers were told to shut down.
    /// `last_checkpoint` is where a rerun would resume from.
    Abort {
        reason: String,
        last_checkpoint: Option<u64>,
    },
    /// The last step and the final checkpoint are done and every worker
    /// was sent `Shutdown`. Emitted once.
    Finished { steps: u64 },
}

/// Why a worker was declared lost.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LostReason {
    #[error("its connection closed")]
    Disconnected,
    #[error("silent for {silent:?} (heartbeat timeout)")]
    Silent { silent: Duration },
    #[error("it reported an error: {message}")]
    ReportedError { message: String },
    #[error("it shut down: {reason}")]
    ShutDown { reason: String },
    #[error("protocol violation: {message}")]
    ProtocolViolation { message: String },
}

impl LostReason {
    /// Every [`LostReason::label`].
    pub const LABELS: [&'static str; 5] = [
        "disconnected",
        "silent",
        "reported_error",
        "shut_down",
        "protocol_violation",
    ];

    /// A short name of the kind of loss, for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            LostReason::Disconnected => "disconnected",
            LostReason::Silent { .. } => "silent",
            LostReason::ReportedError { .. } => "reported_error",
            LostReason::ShutDown { .. } => "shut_down",
            LostReason::ProtocolViolation { .. } => "protocol_violation",
        }
    }
}

/// Where the run stands, as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Joining,
    Running,
    Checkpointing {
        step: u64,
    },
    /// A sleep job runs after `after_step` steps.
    Sleeping {
        job: u64,
        after_step: u64,
    },
    Finished,
    Aborted,
}

/// A member of the running cluster; index = worker id = tile index.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) conn: ConnId,
    pub(crate) name: String,
    pub(crate) tile: TileAssignment,
    /// Steps this worker reported done (its next `StepDone` is for this step).
    pub(crate) done: u64,
    pub(crate) connected: bool,
}

#[derive(Debug)]
pub(crate) enum Stage {
    Joining,
    Running,
    Checkpointing {
        step: u64,
        acks: Vec<Option<ShardAck>>,
        /// Acks still to come (the `None`s of `acks`, counted, so that an
        /// ack costs the same whatever the number of workers).
        missing: usize,
    },
    Finished,
    Aborted,
}

/// The control plane of one run. See the module docs.
#[derive(Debug)]
pub struct Coordinator {
    pub(crate) cfg: Config,
    pub(crate) config_hash: String,
    pub(crate) settings: Settings,
    pub(crate) tiles: Vec<TileSpec>,
    pub(crate) reach: usize,
    pub(crate) started_at: Instant,
    pub(crate) conns: Conns,
    /// Admitted connections in join order, before the start.
    pub(crate) waiting: Vec<ConnId>,
    pub(crate) workers: Vec<Worker>,
    pub(crate) stage: Stage,
    /// Next step to issue; steps `completed..next_step` are outstanding.
    pub(crate) next_step: u64,
    /// Steps every worker reported done.
    pub(crate) completed: u64,
    pub(crate) last_checkpoint: Option<u64>,
    /// Reports of the outstanding steps.
    pub(crate) pending: BTreeMap<u64, StepAccumulator>,
    pub(crate) next_heartbeat: Instant,
    /// Sleep jobs: the schedule and the job in progress (during a job the
    /// stage stays `Running` and no step is issued).
    pub(crate) sleep: SleepSchedule,
    /// Workers of the full plan (the number the run was started with).
    pub(crate) expected: usize,
    /// Restarts so far; every [`Assign`] carries it.
    pub(crate) attempt: u32,
    /// A restart waiting for its workers to join.
    pub(crate) rejoin: Option<crate::recovery::Rejoin>,
    transmits: VecDeque<(ConnId, ControlMessage)>,
    actions: VecDeque<Action>,
    closes: VecDeque<ConnId>,
}

impl Coordinator {
    /// A coordinator for `cfg` waiting for `workers_expected` workers, with
    /// default [`Settings`].
    pub fn new(cfg: Config, workers_expected: usize, now: Instant) -> Result<Self> {
        Self::with_settings(cfg, workers_expected, Settings::default(), now)
    }

    /// A coordinator with explicit settings.
    pub fn with_settings(
        cfg: Config,
        workers_expected: usize,
        settings: Settings,
        now: Instant,
    ) -> Result<Self> {
        cfg.validate().map_err(Error::Config)?;
        let bad = |key, message: &str| Error::Settings {
            key,
            message: message.into(),
        };
        if settings.max_ahead == 0 {
            return Err(bad(
                "max_ahead",
                "0 would never issue a step; use 1 for lockstep",
            ));
        }
        if settings.heartbeat_timeout.is_zero() || settings.heartbeat_interval.is_zero() {
            return Err(bad(
                "heartbeat_timeout",
                "heartbeat timeout and interval must be positive",
            ));
        }
        let timetable = cfg.sleep.timetable_seconds().map_err(Error::Config)?;
        if !timetable.is_empty() && settings.utc_at_start.is_none() {
            return Err(bad(
                "utc_at_start",
                "sleep.timetable names UTC times of day: give the wall clock at the start",
            ));
        }
        let start = settings.resume.as_ref().map_or(0, |r| r.step);
        if start > 0 && start >= cfg.train.steps {
            return Err(bad(
                "resume",
                &format!(
                    "the checkpoint already holds {start} steps and train.steps is {}: \
                     raise train.steps to train further",
                    cfg.train.steps
                ),
            ));
        }
        if settings.min_workers == 0 || settings.min_workers > workers_expected {
            return Err(bad(
                "min_workers",
                &format!(
                    "{} must be between 1 and the {workers_expected} workers of the run",
                    settings.min_workers
                ),
            ));
        }
        let side = cfg.grid_side();
        let tiles = plan(side, side, workers_expected).map_err(|reason| Error::Plan {
            workers: workers_expected,
            side,
            reason,
        })?;
        let mut sleep = SleepSchedule::new(timetable, settings.utc_at_start, now);
        if start > 0 {
            // The checkpoint holds the model after any job at its boundary.
            sleep.last = Some(start);
        }
        Ok(Self {
            config_hash: cfg.hash(),
            reach: halo_reach(&cfg),
            cfg,
            next_heartbeat: now + settings.heartbeat_interval,
            sleep,
            expected: workers_expected,
            attempt: 0,
            rejoin: None,
            settings,
            tiles,
            started_at: now,
            conns: Conns::default(),
            waiting: Vec::new(),
            workers: Vec::new(),
            stage: Stage::Joining,
            next_step: start,
            completed: start,
            last_checkpoint: (start > 0).then_some(start),
            pending: BTreeMap::new(),
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
            closes: VecDeque::new(),
        })
    }

    /// The tiles of the plan; worker `i` gets tile `i`.
    pub fn tiles(&self) -> &[TileSpec] {
        &self.tiles
    }

    /// Halo width in grid cells (see [`crate::halo`]).
    pub fn reach(&self) -> usize {
        self.reach
    }

    /// Where the run stands.
    pub fn phase(&self) -> Phase {
        match &self.stage {
            Stage::Joining => Phase::Joining,
            Stage::Running => match &self.sleep.current {
                Some(j) => Phase::Sleeping {
                    job: j.job,
                    after_step: j.after_step,
                },
                None => Phase::Running,
            },
            Stage::Checkpointing { step, .. } => Phase::Checkpointing { step: *step },
            Stage::Finished => Phase::Finished,
            Stage::Aborted => Phase::Aborted,
        }
    }

    /// Steps issued and not yet reported done by every worker.
    pub fn outstanding(&self) -> u64 {
        self.next_step - self.completed
    }

    /// Next message to send.
    pub fn poll_transmit(&mut self) -> Option<(ConnId, ControlMessage)> {
        self.transmits.pop_front()
    }

    /// Next thing for the driver to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Next connection to close (after flushing what was queued for it).
    pub fn poll_close(&mut self) -> Option<ConnId> {
        self.closes.pop_front()
    }

    pub(crate) fn is_over(&self) -> bool {
        matches!(self.stage, Stage::Finished | Stage::Aborted)
    }

    pub(crate) fn send(&mut self, conn: ConnId, msg: ControlMessage) {
        self.transmits.push_back((conn, msg));
    }

    pub(crate) fn emit(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    /// Forget `conn` and ask the driver to close it.
    pub(crate) fn close(&mut self, conn: ConnId) {
        self.conns.remove(conn);
        self.waiting.retain(|&c| c != conn);
        self.closes.push_back(conn);
    }

    /// Send `msg` to every connected worker.
    pub(crate) fn broadcast(&mut self, msg: ControlMessage) {
        let conns: Vec<ConnId> = self
            .workers
            .iter()
            .filter(|w| w.connected)
            .map(|w| w.conn)
            .collect();
        for conn in conns {
            self.send(conn, msg.clone());
        }
    }
}
