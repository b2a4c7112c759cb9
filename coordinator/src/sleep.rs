//! Scheduling sleep jobs (paper section 12.2, DESIGN.md section 3).
//!
//! A job falls at a step boundary N (N awake steps completed, 0 < N <
//! `train.steps`):
//! - every `sleep.every_steps` steps: N a multiple of it;
//! - by the wall-clock `sleep.timetable` (UTC times of day): once a listed
//!   time has passed, the job falls at the next boundary, i.e. after the
//!   steps already issued (and at least one step after the last job).
//!
//! Like a checkpoint, a job due at N stops the issuing of steps past N, so
//! the outstanding steps drain on their own; then every worker is sent
//! the same [`SleepStart`] and the coordinator waits for every
//! [`SleepDone`] before awake training resumes at step N. No step is in
//! flight during a job.
//!
//! **Order at one boundary**: the sleep job runs first, then the
//! checkpoint that falls at the same N, so `step-N` holds the model after
//! that job and a run resumed from it does not sleep at N again. A job cut
//! short (a worker lost, a shutdown) writes nothing: the last complete
//! checkpoint stays the resume point ([`crate::Action::Abort`]'s
//! `last_checkpoint`). A stop requested during a job lets the job finish,
//! then the final checkpoint is taken at N.
//!
//! The job's seed is N (`SleepStart::seed`), so a rerun from a checkpoint
//! sleeps with the same draws at the same step; the workers' replay
//! buffers, which are not checkpointed, hold only the steps since the
//! process started.

use std::time::{Duration, Instant};

use glom_protocol::message::{ControlMessage, Observation, SleepDone, SleepStart};
use serde::{Deserialize, Serialize};

use crate::metrics::{grid_observation, GridObservation};
use crate::state::{Action, Coordinator, LostReason};

/// Seconds in a day.
const DAY: u64 = 86_400;

/// What made a job fall where it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SleepTrigger {
    /// `sleep.every_steps`.
    Steps,
    /// `sleep.timetable`.
    Timetable,
}

/// One job over the grid, for the driver to log and export.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SleepSummary {
    /// Grid sums of the per-location shares: the negative (hinge) loss of
    /// the first and of the last negative step, the positive loss of the
    /// last positive step.
    pub loss_negative_first: f64,
    pub loss_negative_last: f64,
    pub loss_positive_last: f64,
    /// Updates of the job (the same on every worker).
    pub steps: u64,
    /// Locations that reported (the grid's size).
    pub locations: u64,
    /// Longest wall time of any worker: the pause of awake training.
    pub max_seconds: f64,
    /// Each worker's wall time, by worker id.
    pub worker_seconds: Vec<f64>,
    /// The workers' bottom-up measurements before and after the job, in
    /// global location order (`None` when the workers sent none);
    /// agreements are `None`.
    pub before: Option<GridObservation>,
    pub after: Option<GridObservation>,
}

/// The job in progress.
#[derive(Debug)]
pub(crate) struct SleepJob {
    pub(crate) job: u64,
    pub(crate) after_step: u64,
    /// Per worker id: its report, once in.
    reports: Vec<Option<SleepDone>>,
    /// Reports still to come (the `None`s of `reports`).
    missing: usize,
}

/// The schedule's state.
#[derive(Debug)]
pub(crate) struct SleepSchedule {
    /// Timetable in seconds after UTC midnight, sorted.
    timetable: Vec<u64>,
    /// Time since the Unix epoch at the coordinator's `started_at`.
    utc_at_start: Option<Duration>,
    /// When the next timetable entry passes.
    next_due: Option<Instant>,
    /// A timetable entry passed and no job has run since.
    due: bool,
    /// Boundary of the last job started (or of the checkpoint the run
    /// resumed or rolled back to: no job runs there again).
    pub(crate) last: Option<u64>,
    /// Id of the next job.
    next_job: u64,
    /// Boundary of every job started, in order (job id = index).
    boundaries: Vec<u64>,
    pub(crate) current: Option<SleepJob>,
}

impl SleepSchedule {
    /// The schedule of `timetable` (seconds after UTC midnight), with the
    /// wall clock read at `started_at` (required when the timetable is not
    /// empty).
    pub(crate) fn new(
        timetable: Vec<u32>,
        utc_at_start: Option<Duration>,
        started_at: Instant,
    ) -> Self {
        let mut s = Self {
            timetable: timetable.into_iter().map(u64::from).collect(),
            utc_at_start,
            next_due: None,
            due: false,
            last: None,
            next_job: 0,
            boundaries: Vec::new(),
            current: None,
        };
        s.next_due = s.next_entry_after(started_at, started_at);
        s
    }

    /// The cluster rolled back to the checkpoint at `to_step`: the job in
    /// progress is dropped, and the jobs after `to_step` are forgotten so
    /// that they run again, with the same ids, as in a run that never
    /// failed. None runs at `to_step` itself (the checkpoint holds the
    /// model after any job there).
    pub(crate) fn roll_back(&mut self, to_step: u64) {
        self.current = None;
        let kept = self.boundaries.iter().filter(|&&n| n <= to_step).count();
        self.next_job -= (self.boundaries.len() - kept) as u64;
        self.boundaries.truncate(kept);
        self.last = (to_step > 0).then_some(to_step);
    }

    /// The instant the first timetable entry strictly after `t` passes.
    fn next_entry_after(&self, t: Instant, started_at: Instant) -> Option<Instant> {
        let utc = self.utc_at_start?;
        let first = *self.timetable.first()?;
        let wall = utc + t.saturating_duration_since(started_at);
        let day = Duration::from_secs(DAY);
        let of_day = Duration::from_nanos((wall.as_nanos() % day.as_nanos()) as u64);
        let wait = match self
            .timetable
            .iter()
            .map(|&e| Duration::from_secs(e))
            .find(|&e| e > of_day)
        {
            Some(e) => e - of_day,
            None => day + Duration::from_secs(first) - of_day,
        };
        Some(t + wait)
    }
}

impl Coordinator {
    /// When the next timetable entry passes (for [`Self::next_timeout`]).
    pub(crate) fn sleep_deadline(&self) -> Option<Instant> {
        self.sleep.next_due
    }

    /// Mark a job due if a timetable entry has passed by `now`.
    pub(crate) fn poll_timetable(&mut self, now: Instant) {
        if let Some(due) = self.sleep.next_due {
            if now >= due {
                self.sleep.due = true;
                self.sleep.next_due = self.sleep.next_entry_after(now, self.started_at);
            }
        }
    }

    /// Whether a job is in progress.
    pub fn sleeping(&self) -> bool {
        self.sleep.current.is_some()
    }

    /// Sleep jobs started so far.
    pub fn sleep_jobs(&self) -> u64 {
        self.sleep.next_job
    }

    /// The boundary of the next job and what put it there, if one falls
    /// before the end of training.
    pub(crate) fn next_sleep(&self) -> Option<(u64, SleepTrigger)> {
        let steps = self.cfg.train.steps;
        let every = self.cfg.sleep.every_steps;
        let earliest = self.sleep.last.map_or(1, |l| l + 1);
        let by_steps = (every > 0).then(|| earliest.div_ceil(every) * every);
        let by_clock = self.sleep.due.then(|| self.next_step.max(earliest));
        let next = match (by_steps, by_clock) {
            (Some(s), Some(c)) if c < s => Some((c, SleepTrigger::Timetable)),
            (Some(s), _) => Some((s, SleepTrigger::Steps)),
            (None, Some(c)) => Some((c, SleepTrigger::Timetable)),
            (None, None) => None,
        };
        next.filter(|&(n, _)| n < steps)
    }

    /// Start the job at boundary `after_step` on every worker.
    pub(crate) fn begin_sleep(&mut self, after_step: u64, trigger: SleepTrigger) {
        let job = self.sleep.next_job;
        self.sleep.next_job += 1;
        self.sleep.boundaries.push(after_step);
        self.sleep.last = Some(after_step);
        // Any job meets a due timetable entry.
        self.sleep.due = false;
        self.sleep.current = Some(SleepJob {
            job,
            after_step,
            reports: vec![None; self.workers.len()],
            missing: self.workers.len(),
        });
        self.broadcast(ControlMessage::SleepStart(SleepStart {
            job,
            after_step,
            steps: self.cfg.sleep.steps,
            seed: after_step,
        }));
        self.emit(Action::SleepStarted {
            job,
            after_step,
            trigger,
        });
    }

    pub(crate) fn on_sleep_done(&mut self, id: u32, done: SleepDone, now: Instant) {
        let grid = self.cfg.grid_side() * self.cfg.grid_side();
        let Some(current) = &mut self.sleep.current else {
            let message = format!("SleepDone for job {} while no job is running", done.job);
            return self.lose(id, LostReason::ProtocolViolation { message }, now);
        };
        let slot = &mut current.reports[id as usize];
        if done.job != current.job || slot.is_some() {
            let message = format!(
                "SleepDone for job {} (running job {}, already reported: {})",
                done.job,
                current.job,
                slot.is_some()
            );
            return self.lose(id, LostReason::ProtocolViolation { message }, now);
        }
        if let Err(e) = check_report(&done, grid) {
            let message = format!("malformed SleepDone of job {}: {e}", done.job);
            return self.lose(id, LostReason::ProtocolViolation { message }, now);
        }
        *slot = Some(done);
        current.missing -= 1;
        if current.missing > 0 {
            return;
        }
        let Some(current) = self.sleep.current.take() else {
            return;
        };
        let reports: Vec<SleepDone> = current.reports.into_iter().flatten().collect();
        match summarise(grid, &reports) {
            Ok(summary) => {
                self.emit(Action::SleepCompleted {
                    job: current.job,
                    after_step: current.after_step,
                    summary: Box::new(summary),
                });
                self.drive(now);
            }
            Err(e) => self.abort(format!(
                "the reports of sleep job {} do not cover the grid: {e}",
                current.job
            )),
        }
    }
}

/// Check one worker's report on its own: one loss entry per location,
/// locations inside the grid, observations of the right size.
fn check_report(done: &SleepDone, grid: usize) -> Result<(), String> {
    if done.losses.len() != done.locations.len() {
        return Err(format!(
            "{} loss entries for {} locations",
            done.losses.len(),
            done.locations.len()
        ));
    }
    if let Some(g) = done.locations.iter().find(|&&g| g as usize >= grid) {
        return Err(format!(
            "location {g} is outside the grid of {grid} locations"
        ));
    }
    for (what, o) in [("before", &done.before), ("after", &done.after)] {
        let Some(o) = o else { continue };
        let (p, n, d) = (done.locations.len(), o.images as usize, o.dim as usize);
        for (l, lv) in o.levels.iter().enumerate() {
            if lv.embeddings.len() != p * n * d || lv.probe.len() != p * d {
                return Err(format!(
                    "{what} level {l}: {} embedding and {} probe values for {p} locations, \
                     {n} images of dimension {d}",
                    lv.embeddings.len(),
                    lv.probe.len()
                ));
            }
        }
    }
    Ok(())
}

/// The grid's view of a job from every worker's (checked) report: loss
/// shares added in global location order, so the sums do not depend on
/// the tiling; measurements put back in global order.
fn summarise(grid: usize, reports: &[SleepDone]) -> Result<SleepSummary, String> {
    let mut shares: Vec<Option<[f64; 3]>> = vec![None; grid];
    for r in reports {
        for (&g, l) in r.locations.iter().zip(&r.losses) {
            let slot = &mut shares[g as usize];
            if slot.is_some() {
                return Err(format!("location {g} was reported twice"));
            }
            *slot = Some(*l);
        }
    }
    let mut sums = [0f64; 3];
    let mut locations = 0;
    for s in shares.iter().flatten() {
        locations += 1;
        for (sum, v) in sums.iter_mut().zip(s) {
            *sum += v;
        }
    }
    let seconds: Vec<f64> = reports.iter().map(|r| r.seconds).collect();
    let pick = |f: fn(&SleepDone) -> &Option<Observation>| {
        let parts: Option<Vec<(&[u32], &Observation)>> = reports
            .iter()
            .map(|r| f(r).as_ref().map(|o| (r.locations.as_slice(), o)))
            .collect();
        parts.and_then(|p| grid_observation(grid, &p))
    };
    Ok(SleepSummary {
        loss_negative_first: sums[0],
        loss_negative_last: sums[1],
        loss_positive_last: sums[2],
        steps: reports.iter().map(|r| r.steps).max().unwrap_or(0),
        locations,
        max_seconds: seconds.iter().copied().fold(0.0, f64::max),
        worker_seconds: seconds,
        before: pick(|r| &r.before),
        after: pick(|r| &r.after),
    })
}
