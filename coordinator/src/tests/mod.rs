//! A recording fake cluster: simulated workers that answer the
//! coordinator's messages, a simulated clock, and invariant checks made
//! from what the workers saw (not from the coordinator's own counters).
//!
//! Each [`Sim::tick`] lets every worker answer at most one pending message
//! (a step, a checkpoint save or a sleep job);
//! a worker with `lag = k` answers only every `k + 1` ticks, so faster
//! workers run ahead and steps pile up to the `max_ahead` bound.

mod membership;
mod recovery;
mod run;
mod sleep;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use glom_protocol::manifest::shard_file_name;
use glom_protocol::message::{
    Assign, ControlMessage, Hello, LevelObservation, Observation, ShardAck, SleepDone, StepMetrics,
};
use glom_protocol::Config;

use crate::{Action, ConnId, Coordinator, Phase, Settings};

/// Time that passes per tick.
const TICK: Duration = Duration::from_millis(10);

/// A run of `steps` steps with a checkpoint every `every` steps.
pub(crate) fn config(steps: u64, every: u64) -> Config {
    let mut cfg = Config::default();
    cfg.train.steps = steps;
    cfg.checkpoint.every_steps = every;
    cfg
}

/// Default settings with automatic recovery off: a loss aborts the run.
pub(crate) fn no_recovery() -> Settings {
    Settings {
        max_restarts: 0,
        ..Settings::default()
    }
}

/// Metrics of a step on `locations`, each with the first loss terms
/// `loss` (the others 0): 1000 halo bytes each way.
pub(crate) fn metrics(locations: Vec<u32>, loss: [f64; 4]) -> StepMetrics {
    let mut shares = [0.0; glom_protocol::message::LOSS_TERMS];
    shares[..loss.len()].copy_from_slice(&loss);
    StepMetrics {
        losses: vec![shares; locations.len()],
        locations,
        halo_bytes_sent: 1000,
        halo_bytes_received: 1000,
        halo_wait_seconds: 0.0,
        step_seconds: 0.1,
        observe_seconds: 0.0,
        observation: None,
    }
}

#[derive(Debug)]
pub(crate) struct SimWorker {
    pub(crate) conn: ConnId,
    pub(crate) hello: Hello,
    pub(crate) assign: Option<Assign>,
    /// Everything the coordinator sent this worker, in order.
    pub(crate) received: Vec<ControlMessage>,
    /// Messages still to answer.
    todo: VecDeque<ControlMessage>,
    pub(crate) closed: bool,
    /// Stops answering and sending anything.
    pub(crate) silent: bool,
    pub(crate) lag: u64,
    /// StepDone messages delivered to the coordinator.
    pub(crate) done: u64,
}

impl SimWorker {
    pub(crate) fn steps(&self) -> Vec<u64> {
        let steps = self.received.iter().filter_map(|m| match m {
            ControlMessage::Step(s) => Some(s.step),
            _ => None,
        });
        steps.collect()
    }

    /// `after_step` of every SleepStart received.
    pub(crate) fn sleeps(&self) -> Vec<u64> {
        let sleeps = self.received.iter().filter_map(|m| match m {
            ControlMessage::SleepStart(s) => Some(s.after_step),
            _ => None,
        });
        sleeps.collect()
    }

    pub(crate) fn saves(&self) -> Vec<u64> {
        let saves = self.received.iter().filter_map(|m| match m {
            ControlMessage::CheckpointSave { step, .. } => Some(*step),
            _ => None,
        });
        saves.collect()
    }

    /// The messages received other than heartbeats.
    pub(crate) fn significant(&self) -> Vec<&ControlMessage> {
        let msgs = self.received.iter();
        msgs.filter(|m| !matches!(m, ControlMessage::Heartbeat { .. }))
            .collect()
    }

    /// Global ids of the locations of the assigned tile, row-major.
    pub(crate) fn locations(&self, side: u32) -> Vec<u32> {
        let t = self.assign.as_ref().expect("assigned").tile;
        let rows = t.rows.0..t.rows.1;
        rows.flat_map(|r| (t.cols.0..t.cols.1).map(move |c| r * side + c))
            .collect()
    }
}

pub(crate) struct Sim {
    pub(crate) coord: Coordinator,
    pub(crate) cfg: Config,
    pub(crate) max_ahead: u64,
    pub(crate) now: Instant,
    pub(crate) workers: Vec<SimWorker>,
    pub(crate) actions: Vec<Action>,
    /// Most steps seen issued beyond those every worker reported done.
    pub(crate) max_outstanding: u64,
    /// Broken invariants, with what broke them.
    pub(crate) violations: Vec<String>,
    /// Checkpoint whose acks are not all delivered yet.
    saving: Option<(u64, usize)>,
    /// Sleep job (id) whose reports are not all delivered yet.
    pub(crate) sleeping: Option<(u64, usize)>,
    /// Whether the simulated workers send before/after measurements.
    pub(crate) observe_sleep: bool,
    ticks: u64,
    /// Step the run starts at (a resumed run's checkpoint).
    start: u64,
}

impl Sim {
    /// A coordinator for `cfg` expecting `n` workers, and `n` well-behaved
    /// simulated workers (not yet connected).
    pub(crate) fn new(cfg: Config, n: usize, settings: Settings) -> Self {
        let now = Instant::now();
        let max_ahead = settings.max_ahead;
        let start = settings.resume.as_ref().map_or(0, |r| r.step);
        let coord = Coordinator::with_settings(cfg.clone(), n, settings, now).unwrap();
        let mut sim = Self {
            coord,
            cfg,
            max_ahead,
            now,
            workers: Vec::new(),
            actions: Vec::new(),
            max_outstanding: 0,
            violations: Vec::new(),
            saving: None,
            sleeping: None,
            observe_sleep: false,
            ticks: 0,
            start,
        };
        for _ in 0..n {
            sim.add_worker(Hello::new(&sim.cfg.hash(), "", ""));
        }
        sim
    }

    /// Add a simulated worker sending `hello` (name and address filled in
    /// when empty); returns its index.
    pub(crate) fn add_worker(&mut self, mut hello: Hello) -> usize {
        let i = self.workers.len();
        if hello.worker_name.is_empty() {
            hello.worker_name = format!("w{i}");
            hello.peer_addr = format!("10.0.0.{i}:7000");
        }
        self.workers.push(SimWorker {
            conn: ConnId(100 + i as u64),
            hello,
            assign: None,
            received: Vec::new(),
            todo: VecDeque::new(),
            closed: false,
            silent: false,
            lag: 0,
            done: self.start,
        });
        i
    }

    /// Worker `i` connects and says hello.
    pub(crate) fn join(&mut self, i: usize) {
        let (conn, hello) = (self.workers[i].conn, self.workers[i].hello.clone());
        self.coord.handle_connect(conn, self.now);
        self.deliver(i, ControlMessage::Hello(hello));
    }

    /// Join every worker in order.
    pub(crate) fn join_all(&mut self) {
        (0..self.workers.len()).for_each(|i| self.join(i));
    }

    /// Hand `msg` from worker `i` to the coordinator, then collect outputs.
    pub(crate) fn deliver(&mut self, i: usize, msg: ControlMessage) {
        match &msg {
            ControlMessage::StepDone { .. } => self.workers[i].done += 1,
            ControlMessage::CheckpointAck { step, .. } => match &mut self.saving {
                Some((s, acks)) if s == step => {
                    *acks += 1;
                    if *acks == self.workers_in_run() {
                        self.saving = None;
                    }
                }
                _ => self
                    .violations
                    .push(format!("ack for {step} outside a checkpoint")),
            },
            ControlMessage::SleepDone(done) => match &mut self.sleeping {
                Some((job, reports)) if *job == done.job => {
                    *reports += 1;
                    if *reports == self.workers_in_run() {
                        self.sleeping = None;
                    }
                }
                _ => self
                    .violations
                    .push(format!("report of sleep job {} outside it", done.job)),
            },
            _ => {}
        }
        self.coord
            .handle_message(self.workers[i].conn, msg, self.now);
        self.pump();
    }

    fn workers_in_run(&self) -> usize {
        self.workers.iter().filter(|w| w.assign.is_some()).count()
    }

    /// Steps every worker of the run reported done, as far as delivered.
    fn completed(&self) -> u64 {
        let done = self
            .workers
            .iter()
            .filter(|w| w.assign.is_some())
            .map(|w| w.done);
        done.min().unwrap_or(0)
    }

    /// Route the coordinator's outputs and check the invariants.
    pub(crate) fn pump(&mut self) {
        while let Some((conn, msg)) = self.coord.poll_transmit() {
            let Some(i) = self.workers.iter().position(|w| w.conn == conn) else {
                self.violations
                    .push(format!("message to unknown {conn}: {msg:?}"));
                continue;
            };
            self.check(&msg);
            let w = &mut self.workers[i];
            w.received.push(msg.clone());
            match msg {
                ControlMessage::Assign(a) => w.assign = Some(a),
                ControlMessage::Step(_)
                | ControlMessage::CheckpointSave { .. }
                | ControlMessage::SleepStart(_) => w.todo.push_back(msg),
                ControlMessage::Refused { .. } => w.closed = true,
                _ => {}
            }
        }
        while let Some(conn) = self.coord.poll_close() {
            if let Some(w) = self.workers.iter_mut().find(|w| w.conn == conn) {
                w.closed = true;
            }
        }
        while let Some(action) = self.coord.poll_action() {
            if let Action::RollingBack { to_step, .. } = &action {
                // Every assignment of the abandoned attempt is void.
                self.start = *to_step;
                self.saving = None;
                self.sleeping = None;
                for w in &mut self.workers {
                    w.assign = None;
                    w.todo.clear();
                }
            }
            self.actions.push(action);
        }
    }

    /// Worker `i`, told to rejoin, connects again and says hello on a new
    /// connection (a new simulated worker, whose index is returned).
    pub(crate) fn rejoin(&mut self, i: usize) -> usize {
        let hello = self.workers[i].hello.clone();
        let j = self.add_worker(hello);
        self.join(j);
        j
    }

    fn check(&mut self, msg: &ControlMessage) {
        match msg {
            ControlMessage::Step(s) => {
                let outstanding = s.step + 1 - self.completed();
                self.max_outstanding = self.max_outstanding.max(outstanding);
                if outstanding > self.max_ahead {
                    self.violations.push(format!(
                        "step {} issued with {outstanding} outstanding",
                        s.step
                    ));
                }
                if let Some((k, _)) = self.saving {
                    self.violations.push(format!(
                        "step {} issued while checkpoint {k} is saved",
                        s.step
                    ));
                }
                if let Some((job, _)) = self.sleeping {
                    self.violations
                        .push(format!("step {} issued during sleep job {job}", s.step));
                }
            }
            ControlMessage::SleepStart(s) => {
                let issued = self.issued();
                if self.completed() != s.after_step || issued != s.after_step {
                    self.violations.push(format!(
                        "sleep job {} after step {} started with {} steps done and {issued} issued",
                        s.job,
                        s.after_step,
                        self.completed()
                    ));
                }
                if let Some((k, _)) = self.saving {
                    self.violations
                        .push(format!("sleep job {} during checkpoint {k}", s.job));
                }
                match self.sleeping {
                    Some((job, _)) if job == s.job => {}
                    Some((job, _)) => self
                        .violations
                        .push(format!("sleep job {} during job {job}", s.job)),
                    None => self.sleeping = Some((s.job, 0)),
                }
            }
            ControlMessage::CheckpointSave { step, .. } => {
                let issued = self.issued();
                if let Some((job, _)) = self.sleeping {
                    self.violations
                        .push(format!("checkpoint {step} during sleep job {job}"));
                }
                if self.completed() != *step || issued != *step {
                    self.violations.push(format!(
                        "checkpoint {step} started with {} steps done and {issued} issued",
                        self.completed()
                    ));
                }
                match self.saving {
                    Some((k, _)) if k == *step => {}
                    Some((k, _)) => self
                        .violations
                        .push(format!("checkpoint {step} during {k}")),
                    None => self.saving = Some((*step, 0)),
                }
            }
            _ => {}
        }
    }

    /// Steps issued so far (to the worker that got the most).
    fn issued(&self) -> u64 {
        let in_run = self.workers.iter().filter(|w| w.assign.is_some());
        let steps = in_run.map(|w| w.steps().len() as u64);
        self.start + steps.max().unwrap_or(0)
    }

    /// The answer of a well-behaved worker `i` to `msg`.
    fn answer(&self, i: usize, msg: &ControlMessage) -> Option<ControlMessage> {
        let side = self.cfg.grid_side() as u32;
        let w = &self.workers[i];
        let locations = w.locations(side);
        match msg {
            ControlMessage::Step(s) => Some(ControlMessage::StepDone {
                step: s.step,
                metrics: StepMetrics {
                    halo_wait_seconds: 0.01 * i as f64,
                    // Shares of a grid mean: each location adds 1/64 of it.
                    ..metrics(locations, [(s.step + 1) as f64 / 64.0, i as f64, 0.0, 0.0])
                },
            }),
            ControlMessage::CheckpointSave { step, .. } => Some(ControlMessage::CheckpointAck {
                step: *step,
                shard: ShardAck {
                    file: shard_file_name(w.assign.as_ref()?.worker_id as usize),
                    sha256: "ab".repeat(32),
                    bytes: 4 * locations.len() as u64,
                    locations,
                },
            }),
            // Shares of grid sums: every location adds 1/64 of (1, 0.5,
            // 0.25); measurements of one image in dimension 2 whose values
            // name the location (before) or its double (after).
            ControlMessage::SleepStart(s) => {
                let observation = |scale: f32| Observation {
                    images: 1,
                    dim: 2,
                    levels: vec![LevelObservation {
                        embeddings: locations
                            .iter()
                            .flat_map(|&g| [scale * g as f32, 1.0])
                            .collect(),
                        probe: locations.iter().flat_map(|&g| [0.0, g as f32]).collect(),
                        agreement_bu: Vec::new(),
                        agreement_td: Vec::new(),
                    }],
                };
                let (before, after) = if self.observe_sleep {
                    (Some(observation(1.0)), Some(observation(2.0)))
                } else {
                    (None, None)
                };
                Some(ControlMessage::SleepDone(SleepDone {
                    job: s.job,
                    losses: vec![[1.0 / 64.0, 0.5 / 64.0, 0.25 / 64.0]; locations.len()],
                    locations,
                    steps: s.steps,
                    seconds: 0.5 + i as f64,
                    before,
                    after,
                }))
            }
            _ => None,
        }
    }

    /// One tick of the simulated clock: every live worker answers at most
    /// one message (subject to its lag), due timeouts fire.
    pub(crate) fn tick(&mut self) {
        self.ticks += 1;
        for i in 0..self.workers.len() {
            let w = &self.workers[i];
            if w.closed || w.silent || !self.ticks.is_multiple_of(w.lag + 1) {
                continue;
            }
            let Some(msg) = self.workers[i].todo.pop_front() else {
                continue;
            };
            if let Some(reply) = self.answer(i, &msg) {
                self.deliver(i, reply);
            }
        }
        self.advance(TICK);
    }

    /// Let `d` pass and fire the coordinator's timer if it is due.
    pub(crate) fn advance(&mut self, d: Duration) {
        self.now += d;
        if self.coord.next_timeout().is_some_and(|t| t <= self.now) {
            self.coord.handle_timeout(self.now);
            self.pump();
        }
    }

    /// Tick until the run is over (or `max_ticks` pass); then every worker
    /// told to shut down closes its connection.
    pub(crate) fn run(&mut self, max_ticks: usize) {
        for _ in 0..max_ticks {
            if matches!(self.coord.phase(), Phase::Finished | Phase::Aborted) {
                break;
            }
            self.tick();
        }
        for i in 0..self.workers.len() {
            let w = &mut self.workers[i];
            let told = w
                .received
                .iter()
                .any(|m| matches!(m, ControlMessage::Shutdown { .. }));
            if told && !w.closed {
                w.closed = true;
                let conn = w.conn;
                self.coord.handle_disconnect(conn, self.now);
                self.pump();
            }
        }
    }

    /// Actions matching `f`.
    pub(crate) fn actions_where(&self, f: impl Fn(&Action) -> bool) -> Vec<&Action> {
        self.actions.iter().filter(|a| f(a)).collect()
    }
}
