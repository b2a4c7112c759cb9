//! `glom bench --scale coordinator`: what the control plane costs per step
//! as the cluster grows, with simulated workers and no sockets.
//!
//! [`Sim`] drives the sans-IO [`Coordinator`] as `src/cluster/driver.rs`
//! does (every input followed by draining `poll_transmit`, `poll_close`,
//! `poll_action` and a call of `next_timeout`) through a whole run of
//! `train.steps` steps: every worker connects and says hello, gets its
//! tile and peers, answers each `Step` with a `StepDone` carrying the
//! metrics a real worker sends (loss shares of its locations, traffic and
//! times, the observation of observed steps at the real sizes), each
//! `CheckpointSave` with its `CheckpointAck`, and sends a heartbeat every
//! `cluster.heartbeat_seconds`; the coordinator's timer fires when due.
//! One round of the simulated clock is one step time (100 ms), in which
//! every worker answers one message.
//!
//! Only the coordinator's handling is timed: the simulated workers build
//! their answers outside the timed region. It is timed twice: wall-clock
//! time, and the CPU time of the thread (Linux: `/proc/thread-self/schedstat`),
//! which time slices lost to other processes on a shared machine do not
//! inflate. The grid is the same for every worker count (64x64 unless the
//! configuration's is larger), so the figures vary the number of workers
//! alone.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use glom_coordinator::{Action, ConnId, Coordinator};
use glom_protocol::manifest::shard_file_name;
use glom_protocol::message::{
    Assign, ControlMessage, Hello, LevelObservation, Observation, ShardAck, StepMetrics, LOSS_TERMS,
};
use glom_protocol::Config;
use serde::Serialize;

use crate::train::coordinator_settings;

/// Simulated time of one round: one step of every worker.
const ROUND: Duration = Duration::from_millis(100);

/// Grid side of the simulated runs (at least; a larger configured grid stays).
pub(crate) const SIDE: usize = 64;

/// The configuration of a simulated run of `steps` steps: `cfg` on a grid
/// of at least [`SIDE`] x [`SIDE`] locations.
pub(crate) fn sim_config(cfg: &Config, steps: u64) -> Config {
    let mut cfg = cfg.clone();
    if cfg.grid_side() < SIDE {
        cfg.data.image_size = SIDE * cfg.model.patch;
    }
    cfg.train.steps = steps;
    cfg
}

/// What one simulated run cost the coordinator.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SimResult {
    pub(crate) workers: usize,
    pub(crate) steps: u64,
    /// Checkpoints written (manifests asked for).
    pub(crate) checkpoints: u64,
    /// Seconds the coordinator spent on the hellos, the plan and the
    /// assignments.
    pub(crate) join_seconds: f64,
    /// Seconds it spent on everything after the start, the final
    /// checkpoint and the shutdown included.
    pub(crate) run_seconds: f64,
    /// The same on the CPU (None where the thread's CPU time is unknown).
    pub(crate) run_cpu_seconds: Option<f64>,
    /// Inputs it handled after the start (messages and timer calls).
    pub(crate) inputs: u64,
    /// Messages it sent after the start.
    pub(crate) sent: u64,
}

impl SimResult {
    pub(crate) fn ms_per_step(&self) -> f64 {
        1e3 * self.run_seconds / self.steps.max(1) as f64
    }

    pub(crate) fn cpu_ms_per_step(&self) -> Option<f64> {
        self.run_cpu_seconds
            .map(|s| 1e3 * s / self.steps.max(1) as f64)
    }
}

/// One simulated worker.
struct Worker {
    conn: ConnId,
    assign: Option<Assign>,
    locations: Vec<u32>,
    /// Steps and checkpoints still to answer, in order.
    todo: VecDeque<ControlMessage>,
    /// Steps received, in order (checked at the end).
    steps: Vec<u64>,
    shut_down: bool,
}

/// The coordinator, its simulated workers and the clock.
pub(crate) struct Sim {
    coord: Coordinator,
    cfg: Config,
    now: Instant,
    workers: Vec<Worker>,
    /// The driver's side of the last inputs: messages to route, actions.
    outbox: Vec<(ConnId, ControlMessage)>,
    actions: Vec<Action>,
    spent: Duration,
    /// The same in CPU time, while the thread's clock reads.
    spent_cpu: Option<Duration>,
    cpu: CpuClock,
    inputs: u64,
    sent: u64,
}

impl Sim {
    /// A coordinator for `cfg` with the settings `glom train` gives it, and
    /// `n` simulated workers (not yet connected).
    pub(crate) fn new(cfg: Config, n: usize) -> Result<Self> {
        let now = Instant::now();
        let settings = coordinator_settings(&cfg, std::path::Path::new("checkpoints"), None);
        let coord = Coordinator::with_settings(cfg.clone(), n, settings, now)?;
        let workers = (0..n)
            .map(|i| Worker {
                conn: ConnId(i as u64),
                assign: None,
                locations: Vec::new(),
                todo: VecDeque::new(),
                steps: Vec::new(),
                shut_down: false,
            })
            .collect();
        Ok(Self {
            coord,
            cfg,
            now,
            workers,
            outbox: Vec::new(),
            actions: Vec::new(),
            spent: Duration::ZERO,
            spent_cpu: Some(Duration::ZERO),
            cpu: CpuClock::open(),
            inputs: 0,
            sent: 0,
        })
    }

    /// Run `f` on the coordinator, then do what the driver does after every
    /// input (untimed: see [`Sim::timed`]).
    fn input(&mut self, f: impl FnOnce(&mut Coordinator, Instant)) {
        f(&mut self.coord, self.now);
        while let Some(m) = self.coord.poll_transmit() {
            self.outbox.push(m);
        }
        while self.coord.poll_close().is_some() {}
        while let Some(a) = self.coord.poll_action() {
            self.actions.push(a);
        }
        std::hint::black_box(self.coord.next_timeout());
        self.inputs += 1;
    }

    /// Run `f` (inputs prepared beforehand) and add its time to the total:
    /// one clock reading per batch of inputs, not two per input.
    fn timed(&mut self, f: impl FnOnce(&mut Self)) {
        let cpu = self.cpu.read();
        let t = Instant::now();
        f(self);
        self.spent += t.elapsed();
        self.spent_cpu = match (self.spent_cpu, cpu, self.cpu.read()) {
            (Some(s), Some(a), Some(b)) => Some(s + b.saturating_sub(a)),
            _ => None,
        };
    }

    /// Hand the messages sent to the workers (untimed).
    fn route(&mut self) {
        let side = self.cfg.grid_side() as u32;
        self.sent += self.outbox.len() as u64;
        for (conn, msg) in self.outbox.drain(..) {
            let w = &mut self.workers[conn.0 as usize];
            match msg {
                ControlMessage::Assign(a) => {
                    let t = a.tile;
                    w.locations = (t.rows.0..t.rows.1)
                        .flat_map(|r| (t.cols.0..t.cols.1).map(move |c| r * side + c))
                        .collect();
                    w.assign = Some(a);
                }
                ControlMessage::Step(ref s) => {
                    w.steps.push(s.step);
                    w.todo.push_back(msg);
                }
                ControlMessage::CheckpointSave { .. } => w.todo.push_back(msg),
                ControlMessage::Shutdown { .. } => w.shut_down = true,
                _ => {}
            }
        }
    }

    /// Every worker connects and says hello; returns the seconds the
    /// coordinator spent on it (the plan and assignments included).
    pub(crate) fn join(&mut self) -> f64 {
        let hash = self.cfg.hash();
        let hellos: Vec<_> = (0..self.workers.len())
            .map(|i| {
                let addr = format!("10.0.{}.{}:7000", i / 256, i % 256);
                (
                    self.workers[i].conn,
                    Hello::new(&hash, &format!("w{i}"), &addr),
                )
            })
            .collect();
        self.timed(|sim| {
            for (conn, hello) in hellos {
                sim.input(|c, now| c.handle_connect(conn, now));
                sim.input(|c, now| c.handle_message(conn, ControlMessage::Hello(hello), now));
            }
        });
        self.route();
        let s = self.spent.as_secs_f64();
        (self.spent, self.inputs, self.sent) = (Duration::ZERO, 0, 0);
        self.spent_cpu = self.spent_cpu.map(|_| Duration::ZERO);
        s
    }

    /// The answer of worker `i` to `msg` (a real worker's sizes).
    fn answer(&self, i: usize, msg: &ControlMessage) -> Option<ControlMessage> {
        let w = &self.workers[i];
        match msg {
            ControlMessage::Step(s) => Some(ControlMessage::StepDone {
                step: s.step,
                metrics: StepMetrics {
                    locations: w.locations.clone(),
                    losses: vec![[0.01; LOSS_TERMS]; w.locations.len()],
                    halo_bytes_sent: 1 << 20,
                    halo_bytes_received: 1 << 20,
                    halo_wait_seconds: 0.001,
                    step_seconds: 0.1,
                    observe_seconds: 0.0,
                    observation: s.observe.then(|| self.observation(w.locations.len())),
                },
            }),
            ControlMessage::CheckpointSave { step, .. } => Some(ControlMessage::CheckpointAck {
                step: *step,
                shard: ShardAck {
                    file: shard_file_name(w.assign.as_ref()?.worker_id as usize),
                    sha256: "ab".repeat(32),
                    bytes: 1 << 20,
                    locations: w.locations.clone(),
                },
            }),
            _ => None,
        }
    }

    /// An observation of `p` locations, of the size a worker sends.
    fn observation(&self, p: usize) -> Observation {
        let m = &self.cfg.model;
        let (n, d) = (glom_worker::monitor::observed_images(&self.cfg), m.dim);
        let levels = (0..m.levels)
            .map(|l| LevelObservation {
                embeddings: vec![0.5; p * n * d],
                probe: vec![0.25; p * d],
                agreement_bu: if l > 0 { vec![0.9; p] } else { Vec::new() },
                agreement_td: if l + 1 < m.levels {
                    vec![0.8; p]
                } else {
                    Vec::new()
                },
            })
            .collect();
        Observation {
            images: n as u32,
            dim: d as u32,
            levels,
        }
    }

    /// Run until the coordinator says the run finished (or `max_rounds`
    /// pass); returns what it cost.
    pub(crate) fn run(&mut self, max_rounds: u64) -> Result<()> {
        let every = Duration::from_secs_f64(self.cfg.cluster.heartbeat_seconds);
        let rounds_per_heartbeat = (every.as_nanos() / ROUND.as_nanos()).max(1) as u64;
        for round in 1..=max_rounds {
            if self.finished() {
                return Ok(());
            }
            // Each worker's answer to its oldest message, and its heartbeat.
            let mut inbox = Vec::with_capacity(self.workers.len());
            for i in 0..self.workers.len() {
                if let Some(msg) = self.workers[i].todo.pop_front() {
                    if let Some(reply) = self.answer(i, &msg) {
                        inbox.push((self.workers[i].conn, reply));
                    }
                }
                if round % rounds_per_heartbeat == 0 {
                    let now_ms = round * ROUND.as_millis() as u64;
                    inbox.push((self.workers[i].conn, ControlMessage::Heartbeat { now_ms }));
                }
            }
            self.timed(|sim| {
                for (conn, msg) in inbox {
                    sim.input(|c, now| c.handle_message(conn, msg, now));
                }
            });
            self.route();
            self.now += ROUND;
            if self.coord.next_timeout().is_some_and(|t| t <= self.now) {
                self.timed(|sim| sim.input(|c, now| c.handle_timeout(now)));
                self.route();
            }
        }
        bail!("the simulated run did not finish in {max_rounds} rounds")
    }

    fn finished(&self) -> bool {
        self.actions
            .iter()
            .any(|a| matches!(a, Action::Finished { .. } | Action::Abort { .. }))
    }

    /// Check the run went as a real one must, and return its costs.
    pub(crate) fn result(&self, join_seconds: f64) -> Result<SimResult> {
        let steps = self.cfg.train.steps;
        let n = self.workers.len();
        let mut completed = Vec::new();
        let mut checkpoints = Vec::new();
        for a in &self.actions {
            match a {
                Action::StepCompleted { step, summary } => {
                    ensure!(
                        summary.workers.len() == n,
                        "step {step}: {} workers reported, not {n}",
                        summary.workers.len()
                    );
                    let grid = self.cfg.grid_side().pow(2) as u64;
                    ensure!(
                        summary.locations == grid,
                        "step {step}: locations {}",
                        summary.locations
                    );
                    completed.push(*step);
                }
                Action::WriteManifest { manifest, .. } => {
                    ensure!(
                        manifest.shards.len() == n,
                        "manifest of {} shards",
                        manifest.shards.len()
                    );
                    checkpoints.push(manifest.step);
                }
                Action::Started { .. } | Action::Finished { .. } => {}
                other => bail!("unexpected action in a simulated run: {other:?}"),
            }
        }
        ensure!(
            matches!(self.actions.last(), Some(Action::Finished { steps: s }) if *s == steps),
            "the run did not finish after {steps} steps: {:?}",
            self.actions.last()
        );
        ensure!(
            completed == (0..steps).collect::<Vec<_>>(),
            "steps completed out of order"
        );
        let every = self.cfg.checkpoint.every_steps;
        let mut want: Vec<u64> = (1..steps).filter(|s| every > 0 && s % every == 0).collect();
        want.push(steps);
        ensure!(
            checkpoints == want,
            "checkpoints {checkpoints:?}, expected {want:?}"
        );
        for (i, w) in self.workers.iter().enumerate() {
            ensure!(
                w.steps == (0..steps).collect::<Vec<_>>(),
                "worker {i} got steps out of order"
            );
            ensure!(w.shut_down, "worker {i} was not told to shut down");
        }
        Ok(SimResult {
            workers: n,
            steps,
            checkpoints: checkpoints.len() as u64,
            join_seconds,
            run_seconds: self.spent.as_secs_f64(),
            run_cpu_seconds: self.spent_cpu.map(|d| d.as_secs_f64()),
            inputs: self.inputs,
            sent: self.sent,
        })
    }
}

/// The CPU time of the calling thread, from the first field of
/// `/proc/thread-self/schedstat` (nanoseconds on the CPU), the file kept
/// open and read again from its start.
struct CpuClock(Option<std::fs::File>);

impl CpuClock {
    fn open() -> Self {
        Self(std::fs::File::open("/proc/thread-self/schedstat").ok())
    }

    fn read(&mut self) -> Option<Duration> {
        use std::io::{Read, Seek};
        let f = self.0.as_mut()?;
        let mut buf = [0u8; 96];
        f.seek(std::io::SeekFrom::Start(0)).ok()?;
        let n = f.read(&mut buf).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
        Some(Duration::from_nanos(ns))
    }
}

/// Simulate a run of `steps` steps of `cfg` (see [`sim_config`]) on `n`
/// workers and check it.
pub(crate) fn simulate(cfg: &Config, n: usize, steps: u64) -> Result<SimResult> {
    let cfg = sim_config(cfg, steps);
    let mut sim = Sim::new(cfg, n)?;
    let join = sim.join();
    sim.run(20 * steps + 1000)?;
    sim.result(join)
}

/// The run of median cost among `repeats` simulated runs (see [`simulate`]).
pub(crate) fn median(cfg: &Config, n: usize, steps: u64, repeats: usize) -> Result<SimResult> {
    let mut runs = (0..repeats.max(1))
        .map(|_| simulate(cfg, n, steps))
        .collect::<Result<Vec<_>>>()?;
    let key = |r: &SimResult| r.run_cpu_seconds.unwrap_or(r.run_seconds);
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    Ok(runs.swap_remove(runs.len() / 2))
}

/// The table of `glom bench --scale coordinator`.
pub(crate) fn table(cfg: &Config, rows: &[SimResult], repeats: usize) -> String {
    let side = sim_config(cfg, 1).grid_side();
    let mut out = format!(
        "glom bench --scale coordinator: simulated workers, {side}x{side} grid, {} steps, \
         checkpoint every {}, heartbeats every {} s; the coordinator's handling only, \
         median of {repeats} runs\n\n",
        rows.first().map_or(0, |r| r.steps),
        cfg.checkpoint.every_steps,
        cfg.cluster.heartbeat_seconds,
    );
    out.push_str(&format!(
        "{:>8} {:>9} {:>10} {:>9} {:>10} {:>12} {:>9} {:>9}\n",
        "workers",
        "ms/step",
        "x/doubling",
        "CPU ms",
        "x/doubling",
        "inputs/step",
        "us/input",
        "join ms"
    ));
    let show = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    for (i, r) in rows.iter().enumerate() {
        let prev = i
            .checked_sub(1)
            .map(|j| &rows[j])
            .filter(|p| r.workers == 2 * p.workers);
        let wall_ratio = prev.map(|p| r.ms_per_step() / p.ms_per_step());
        let cpu_ratio = prev.and_then(|p| Some(r.cpu_ms_per_step()? / p.cpu_ms_per_step()?));
        out.push_str(&format!(
            "{:>8} {:>9.4} {:>10} {:>9} {:>10} {:>12.1} {:>9.3} {:>9.2}\n",
            r.workers,
            r.ms_per_step(),
            show(wall_ratio, 2),
            show(r.cpu_ms_per_step(), 4),
            show(cpu_ratio, 2),
            r.inputs as f64 / r.steps.max(1) as f64,
            1e6 * r.run_seconds / r.inputs.max(1) as f64,
            1e3 * r.join_seconds,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 16 workers through a run of 25 steps with checkpoints every 10:
    /// every step issued to and completed by every worker in order, the
    /// checkpoints at 10, 20 and 25, shutdown at the end (checked by
    /// [`Sim::result`]).
    #[test]
    fn sixteen_simulated_workers_finish_a_run() {
        let mut cfg = Config::default();
        cfg.checkpoint.every_steps = 10;
        let r = simulate(&cfg, 16, 25).unwrap();
        assert_eq!((r.workers, r.steps, r.checkpoints), (16, 25, 3));
        // At least a step and a report per worker and step.
        assert!(r.inputs >= 16 * 25, "{r:?}");
        assert!(r.sent >= 16 * 25, "{r:?}");
    }
}
