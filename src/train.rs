//! `glom train`: the embedded cluster. One process starts the coordinator
//! and `cluster.workers` workers (`--workers N`) over loopback QUIC with an
//! ephemeral CA (the same code path as a multi-host cluster), trains, then
//! evaluates the final checkpoint against the same model at random
//! initialisation.
//!
//! The run directory holds `config.toml` (the resolved configuration),
//! `plan.json` (the tile of each worker), `metrics.jsonl` (one JSON object
//! per logged step), `checkpoints/step-<N>/` and `checkpoints/final/`, and
//! `summary.json` (the evaluation plus `steps`, `wall_seconds`, throughput).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use candle_core::Device;
use glom_coordinator::sleep::{SleepSummary, SleepTrigger};
use glom_coordinator::{Coordinator, GridObservation, Restart, Settings, StepSummary};
use glom_net::certs::{worker_name, ClusterCa, COORDINATOR_NAME};
use glom_net::tls::{client_config, server_config, server_endpoint, TransportTuning};
use glom_protocol::message::{Assign, ResumePoint};
use glom_protocol::Config;
use glom_worker::analysis::CollapseStats;
use glom_worker::checkpoint;
use glom_worker::learn::LossValues;
use glom_worker::model::grid::Grid;
use glom_worker::runtime::halo::tile_of;
use glom_worker::runtime::{run_worker, HaloPlan, WorkerOptions};
use indicatif::ProgressBar;
use serde::Serialize;

use crate::cluster::driver::{drive, RunObserver};
use crate::divergence::DivergenceGuard;
use crate::metrics::server::Endpoint;
use crate::metrics::{NoTelemetry, Phase, PromTelemetry, RunInfo, StepReport, Telemetry};
use crate::observe::{measure, Cost};
use crate::run::{create_run_dir, datasets, default_run_dir, device, progress, whole_model};

/// One line of `metrics.jsonl`.
#[derive(Serialize)]
struct MetricsRecord<'a> {
    step: u64,
    phase: &'a str,
    images_per_s: f64,
    wall_seconds: f64,
    #[serde(flatten)]
    losses: LossValues,
    /// Slowest worker's step time, and the part of it spent waiting for halos.
    step_seconds: f64,
    halo_wait_fraction: f64,
    /// Framed halo bytes all workers sent this step.
    halo_bytes: u64,
    #[serde(flatten)]
    collapse: CollapseByLevel,
}

/// The collapse measures of every level, as `metrics.jsonl` holds them.
#[derive(Serialize)]
struct CollapseByLevel {
    effective_rank_by_level: Vec<f64>,
    dim_std_by_level: Vec<f64>,
    mean_cosine_by_level: Vec<f64>,
}

impl CollapseByLevel {
    fn of(collapse: &[CollapseStats]) -> Self {
        Self {
            effective_rank_by_level: collapse.iter().map(|c| c.effective_rank).collect(),
            dim_std_by_level: collapse.iter().map(|c| c.mean_dim_std).collect(),
            mean_cosine_by_level: collapse.iter().map(|c| c.mean_cosine).collect(),
        }
    }

    /// The effective ranks, one decimal each, for the log.
    fn ranks_text(&self) -> String {
        let ranks: Vec<String> = self
            .effective_rank_by_level
            .iter()
            .map(|r| format!("{r:.1}"))
            .collect();
        ranks.join(" ")
    }
}

/// Set by Ctrl-C: finish the current step, checkpoint, and stop.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        else {
            return;
        };
        if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
            eprintln!("\ninterrupted: finishing this step and writing a checkpoint (Ctrl-C again to abort)");
            f.store(true, Ordering::SeqCst);
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                std::process::exit(130);
            }
        }
    });
    flag
}

/// The telemetry of a run and, when metrics are enabled, its endpoint
/// (bound now, so an address in use fails before any training).
fn telemetry(cfg: &Config) -> Result<(Box<dyn Telemetry>, Option<Endpoint>)> {
    if !cfg.metrics.enabled {
        return Ok((Box::new(NoTelemetry), None));
    }
    // The config's own spelling of the modes (`per_location`, `local`).
    let label = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let (weights, learning) = (
        label(serde_json::to_value(cfg.model.weights)?),
        label(serde_json::to_value(cfg.train.learning)?),
    );
    let info = RunInfo {
        weights: &weights,
        learning: &learning,
        dim: cfg.model.dim,
        workers: cfg.cluster.workers,
        levels: cfg.model.levels,
    };
    let prom = PromTelemetry::new(&info)?;
    let endpoint = Endpoint::start(&cfg.metrics.listen, prom.registry.clone())?;
    Ok((Box::new(prom), Some(endpoint)))
}

/// Records a run as the coordinator drives it: `metrics.jsonl`, the
/// telemetry, the progress bar and the log.
pub(crate) struct Recorder {
    cfg: Config,
    dir: PathBuf,
    telemetry: Box<dyn Telemetry>,
    metrics: File,
    bar: ProgressBar,
    cost: Cost,
    stop: Arc<AtomicBool>,
    started: Instant,
    /// Start of the current throughput window and the steps in it.
    window: (Instant, u64),
    /// Halo traffic and waiting over the whole run.
    pub(crate) halo: HaloTotals,
    pub(crate) last_checkpoint: Option<(PathBuf, u64)>,
    /// The checkpoint this run resumed from, if any.
    pub(crate) resumed_from: Option<(PathBuf, u64)>,
    guard: DivergenceGuard,
}

/// Sums over the steps of a run, for `summary.json`.
#[derive(Debug, Default, Serialize)]
pub(crate) struct HaloTotals {
    pub(crate) steps: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) step_seconds: f64,
    pub(crate) wait_seconds: f64,
    /// The plan's minimum: halo payload bytes per step over all workers
    /// (levels x d x halo locations sent x T x batch x bytes per value).
    pub(crate) payload_bytes_per_step: u64,
}

impl Recorder {
    pub(crate) fn new(cfg: &Config, dir: &Path, telemetry: Box<dyn Telemetry>) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        let metrics =
            File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        telemetry.phase(Phase::Awake);
        Ok(Self {
            cfg: cfg.clone(),
            dir: dir.to_path_buf(),
            telemetry,
            metrics,
            bar: progress(cfg.train.steps, "train"),
            cost: Cost::default(),
            stop: interrupt_flag(),
            started: Instant::now(),
            window: (Instant::now(), 0),
            halo: HaloTotals::default(),
            last_checkpoint: None,
            resumed_from: None,
            guard: DivergenceGuard::new(cfg),
        })
    }

    /// Append one record to `metrics.jsonl` (flushed: a crash loses none).
    fn write_record(&mut self, record: &impl Serialize) -> Result<()> {
        serde_json::to_writer(&mut self.metrics, record)?;
        self.metrics.write_all(b"\n")?;
        self.metrics.flush()?;
        Ok(())
    }

    /// The cost of the collapse measures, for `summary.json`.
    pub(crate) fn monitor(&self) -> serde_json::Value {
        self.cost.summary()
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl RunObserver for Recorder {
    fn started(&mut self, assignments: &[(String, Assign)]) -> Result<()> {
        let plan: Vec<serde_json::Value> = assignments
            .iter()
            .map(|(name, a)| {
                let peers: Vec<u32> = a.peers.iter().map(|p| p.worker_id).collect();
                self.bar.suspend(|| {
                    tracing::info!(worker = a.worker_id, %name, rows = ?a.tile.rows,
                        cols = ?a.tile.cols, locations = a.tile.num_locations(), ?peers, "tile")
                });
                serde_json::json!({
                    "worker_id": a.worker_id,
                    "name": name,
                    "rows": [a.tile.rows.0, a.tile.rows.1],
                    "cols": [a.tile.cols.0, a.tile.cols.1],
                    "locations": a.tile.num_locations(),
                    "reach": a.reach,
                    "peers": peers,
                })
            })
            .collect();
        let m = &self.cfg.model;
        let grid = Grid::square(self.cfg.grid_side());
        let mut payload = 0;
        for (_, a) in assignments {
            let tile = tile_of(grid, &a.tile, a.reach as usize);
            let peers: Vec<_> = a.peers.iter().map(|p| (p.worker_id, p.tile)).collect();
            payload += HaloPlan::new(&tile, &peers, a.reach as usize)?.payload_bytes_per_step(
                m.levels,
                m.dim,
                self.cfg.settle_iterations(),
                self.cfg.train.batch_size,
                self.cfg.cluster.halo_precision,
            );
        }
        self.halo.payload_bytes_per_step = payload;
        let plan = serde_json::json!({
            "workers": assignments.len(),
            "halo_payload_bytes_per_step": payload,
            "tiles": plan,
        });
        write_json(&self.dir.join("plan.json"), &plan)
    }

    fn step(&mut self, step: u64, s: &StepSummary) -> Result<()> {
        let cfg = &self.cfg;
        let done = step + 1;
        let losses = LossValues::from_shares(cfg, &[s.losses]);
        if let Some(d) = self.guard.check(&losses) {
            let good = self.last_checkpoint.as_ref().or(self.resumed_from.as_ref());
            return Err(anyhow!(
                d.message(done, good.map(|(p, s)| (p.as_path(), *s)))
            ));
        }
        self.cost.add_step(s.max_step_seconds);
        self.halo.steps += 1;
        self.halo.bytes_sent += s.halo_bytes_sent;
        self.halo.step_seconds += s.max_step_seconds;
        self.halo.wait_seconds += s.max_halo_wait_seconds;
        self.window.1 += 1;
        let batch = cfg.train.batch_size as f64;
        let images_per_s =
            self.window.1 as f64 * batch / self.window.0.elapsed().as_secs_f64().max(1e-9);
        self.telemetry.step(&StepReport {
            seconds: s.max_step_seconds,
            images_per_second: images_per_s,
            losses,
        });
        self.telemetry.cluster(s);
        self.bar.set_position(done);
        self.bar.set_message(format!(
            "loss {:.4} | {images_per_s:.1} img/s",
            losses.loss_total
        ));
        let measured = s.observation.as_ref().map(|o| measure(cfg, o));
        if let Some(m) = &measured {
            let on_workers = s
                .workers
                .iter()
                .map(|w| w.observe_seconds)
                .fold(0.0, f64::max);
            self.cost.add_pass(m.seconds + on_workers);
            self.telemetry.levels(&m.levels, m.seconds + on_workers);
        }
        if glom_coordinator::schedule::logged(cfg, step) {
            let Some(m) = measured else {
                return Err(anyhow!("step {done} was logged but not observed"));
            };
            let rec = MetricsRecord {
                step: done,
                phase: "awake",
                images_per_s,
                wall_seconds: self.started.elapsed().as_secs_f64(),
                losses,
                step_seconds: s.max_step_seconds,
                halo_wait_fraction: s.max_halo_wait_seconds / s.max_step_seconds.max(1e-12),
                halo_bytes: s.halo_bytes_sent,
                collapse: CollapseByLevel::of(&m.collapse),
            };
            self.write_record(&rec)?;
            self.bar.suspend(|| {
                tracing::info!(
                    step = done,
                    loss = format!("{:.4}", losses.loss_total),
                    recon = format!("{:.4}", losses.loss_recon),
                    images_per_s = format!("{images_per_s:.1}"),
                    halo_wait = format!("{:.0}%", 100.0 * rec.halo_wait_fraction),
                    effective_rank = rec.collapse.ranks_text(),
                    "step"
                )
            });
            self.window = (Instant::now(), 0);
        }
        Ok(())
    }

    fn checkpoint(&mut self, dir: &Path, step: u64) -> Result<()> {
        self.bar
            .suspend(|| tracing::info!(step, dir = %dir.display(), "checkpoint written"));
        self.last_checkpoint = Some((dir.to_path_buf(), step));
        Ok(())
    }

    fn sleep_started(&mut self, job: u64, after_step: u64, trigger: SleepTrigger) -> Result<()> {
        self.telemetry.phase(Phase::Sleep);
        self.bar.set_message(format!("sleep job {job}"));
        self.bar
            .suspend(|| tracing::info!(job, after_step, ?trigger, "sleep: awake training paused"));
        Ok(())
    }

    fn sleep_completed(&mut self, job: u64, after_step: u64, s: &SleepSummary) -> Result<()> {
        let cfg = &self.cfg;
        let measured = |o: &Option<GridObservation>| {
            o.as_ref()
                .map(|o| CollapseByLevel::of(&measure(cfg, o).collapse))
        };
        let (before, after) = (measured(&s.before), measured(&s.after));
        let rec = serde_json::json!({
            "step": after_step,
            "phase": "sleep",
            "job": job,
            "sleep_steps": s.steps,
            "seconds": s.max_seconds,
            "wall_seconds": self.started.elapsed().as_secs_f64(),
            "loss_negative_first": s.loss_negative_first,
            "loss_negative_last": s.loss_negative_last,
            "loss_positive_last": s.loss_positive_last,
            "bottom_up_before": before,
            "bottom_up_after": after,
        });
        self.write_record(&rec)?;
        let ranks = |c: &Option<CollapseByLevel>| -> (Vec<f64>, String) {
            c.as_ref().map_or_else(Default::default, |c| {
                (c.effective_rank_by_level.clone(), c.ranks_text())
            })
        };
        let ((rank_before, text_before), (rank_after, text_after)) =
            (ranks(&before), ranks(&after));
        self.telemetry.sleep_job(s, &rank_before, &rank_after);
        self.telemetry.phase(Phase::Awake);
        self.bar.suspend(|| {
            tracing::info!(
                job,
                after_step,
                seconds = format!("{:.1}", s.max_seconds),
                negative = format!(
                    "{:.4} -> {:.4}",
                    s.loss_negative_first, s.loss_negative_last
                ),
                bottom_up_rank = format!("{text_before} -> {text_after}"),
                "sleep job done; awake training resumes"
            )
        });
        // The pause is not training throughput.
        self.window = (Instant::now(), 0);
        Ok(())
    }

    fn restarted(&mut self, r: &Restart) -> Result<()> {
        let rec = serde_json::json!({
            "step": r.to_step,
            "phase": "restart",
            "attempt": r.attempt,
            "reason": r.reason,
            "cause": r.cause,
            "workers_before": r.workers_before,
            "workers_after": r.workers_after,
            "wall_seconds": self.started.elapsed().as_secs_f64(),
        });
        self.write_record(&rec)?;
        self.telemetry.restart(r.cause);
        self.bar.set_position(r.to_step);
        self.bar.suspend(|| {
            tracing::warn!(
                attempt = r.attempt,
                max = self.cfg.cluster.max_restarts,
                step = r.to_step,
                workers = format!("{} -> {}", r.workers_before, r.workers_after),
                "restarted from the last checkpoint: {}",
                r.reason
            )
        });
        // The pause is not training throughput.
        self.window = (Instant::now(), 0);
        Ok(())
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The coordinator's settings for `cfg`, checkpoints under `root`.
pub(crate) fn coordinator_settings(
    cfg: &Config,
    root: &Path,
    resume: Option<ResumePoint>,
) -> Settings {
    let c = &cfg.cluster;
    Settings {
        max_ahead: c.max_ahead,
        heartbeat_timeout: Duration::from_secs_f64(c.heartbeat_timeout),
        heartbeat_interval: Duration::from_secs_f64(c.heartbeat_seconds),
        checkpoint_root: root.to_string_lossy().into_owned(),
        utc_at_start: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok(),
        resume,
        max_restarts: c.max_restarts,
        rejoin_timeout: Duration::from_secs_f64(c.rejoin_seconds),
        min_workers: c.min_workers,
    }
}

/// The checkpoint `dir` as a resume point for `cfg`: it must be complete
/// (its manifest is there and valid), made by the same configuration
/// (same hash), and hold fewer steps than `train.steps`.
fn resume_point(cfg: &Config, dir: &Path) -> Result<ResumePoint> {
    let manifest = checkpoint::read_manifest(dir)?;
    let (theirs, ours) = (manifest.config.hash(), cfg.hash());
    if theirs != ours {
        anyhow::bail!(
            "checkpoint {} was made with another configuration (hash {theirs}, this run's is \
             {ours}): resume with the configuration of that run (its config.toml)",
            dir.display()
        );
    }
    if manifest.step >= cfg.train.steps {
        anyhow::bail!(
            "checkpoint {} already holds {} steps and train.steps is {}: raise train.steps \
             (e.g. --set train.steps={}) to train further",
            dir.display(),
            manifest.step,
            cfg.train.steps,
            manifest.step * 2
        );
    }
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    Ok(ResumePoint {
        dir: dir.to_string_lossy().into_owned(),
        step: manifest.step,
    })
}

/// QUIC tuning for `cfg`: the idle timeout is the heartbeat timeout.
pub(crate) fn tuning(cfg: &Config) -> TransportTuning {
    TransportTuning {
        idle_timeout: Duration::from_secs_f64(cfg.cluster.heartbeat_timeout),
        keep_alive: Some(Duration::from_secs_f64(cfg.cluster.heartbeat_seconds)),
    }
}

/// A multi-threaded runtime for the network tasks (the compute threads
/// are separate, so two threads are plenty).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    glom_net::tls::install_default_provider();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Where the workers come from.
pub(crate) enum Launch {
    /// `glom train`: in this process, over loopback, with an ephemeral CA.
    Embedded,
    /// `glom coordinator`: they join over the network, with the cluster
    /// CA's certificates in `certs`.
    Remote { listen: SocketAddr, certs: PathBuf },
}

/// Train `cfg` on `workers` workers (overrides `cluster.workers`) into
/// `out` (default `runs/<timestamp>`), then evaluate if `eval`.
pub(crate) fn run(
    mut cfg: Config,
    workers: Option<usize>,
    out: Option<PathBuf>,
    eval: bool,
    launch: Launch,
    resume: Option<PathBuf>,
) -> Result<()> {
    let started = Instant::now();
    if let Some(n) = workers {
        cfg.cluster.workers = n;
    }
    cfg.validate()?;
    let n = cfg.cluster.workers;
    cfg.validate_workers(n)?;
    if matches!(launch, Launch::Embedded) {
        glom_worker::runtime::fault::validate()?;
    }
    let resume = resume.map(|r| resume_point(&cfg, &r)).transpose()?;
    let dir = out.unwrap_or_else(default_run_dir);
    // Open the data, bind the endpoints first: a bad data path, a missing
    // certificate or an address in use leaves no run directory behind. A
    // standalone coordinator reads the data only to evaluate.
    let embedded_run = matches!(launch, Launch::Embedded);
    if embedded_run {
        share_cores(n);
    }
    let data = if embedded_run || eval {
        Some(datasets(&cfg)?)
    } else {
        None
    };
    // An unusable `train.device` fails here too, before any worker starts.
    let device = if embedded_run || eval {
        device(&cfg)?
    } else {
        Device::Cpu
    };
    let (telemetry, endpoint) = telemetry(&cfg)?;
    let rt = runtime()?;
    let remote = match &launch {
        Launch::Embedded => None,
        Launch::Remote { listen, certs } => {
            let _guard = rt.enter();
            let ca = glom_net::certs::load_ca(certs)?;
            let id = glom_net::certs::load_identity(certs, COORDINATOR_NAME)?;
            let ep = server_endpoint(*listen, server_config(&id, &ca, &tuning(&cfg))?, None)?;
            Some(ep)
        }
    };
    create_run_dir(&dir)?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    if let Some(addr) = endpoint.as_ref().map(Endpoint::addr) {
        let path = dir.join("metrics_addr.txt");
        std::fs::write(&path, format!("{addr}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    if let Some(ep) = &remote {
        let addr = ep.local_addr()?;
        let path = dir.join("coordinator_addr.txt");
        std::fs::write(&path, format!("{addr}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
        tracing::info!(%addr, workers = n, "waiting for workers (QUIC, mutual TLS)");
    }
    std::fs::write(dir.join("config.toml"), toml::to_string(&cfg)?)
        .with_context(|| format!("writing {}", dir.join("config.toml").display()))?;
    tracing::info!(dir = %dir.display(), steps = cfg.train.steps, workers = n, weights = ?cfg.model.weights,
        learning = ?cfg.train.learning, data = ?cfg.data.source, "training");
    let first_step = resume.as_ref().map_or(0, |r| r.step);
    if let Some(r) = &resume {
        tracing::info!(step = r.step, checkpoint = %r.dir, "resuming");
    }

    let mut recorder = Recorder::new(&cfg, &dir, telemetry)?;
    recorder.bar.set_position(first_step);
    recorder.resumed_from = resume.as_ref().map(|r| (PathBuf::from(&r.dir), r.step));
    let ck_root = dir.join("checkpoints");
    let train_started = Instant::now();
    let coordinator = Coordinator::with_settings(
        cfg.clone(),
        n,
        coordinator_settings(&cfg, &ck_root, resume),
        Instant::now(),
    )?;
    let end = match remote {
        None => {
            let train = data
                .as_ref()
                .expect("loaded for an embedded run")
                .train
                .clone();
            rt.block_on(embedded(&cfg, coordinator, train, device, &mut recorder))
        }
        Some(ep) => rt.block_on(async { Ok(drive(coordinator, ep, &mut recorder).await?.steps) }),
    };
    recorder.finish();
    drop(endpoint);
    let steps = end?;
    let train_seconds = train_started.elapsed().as_secs_f64();
    let monitor = recorder.monitor();
    if cfg.metrics.enabled {
        tracing::info!(
            passes = %monitor["passes"],
            seconds_per_pass = format!("{:.4}", monitor["seconds_per_pass"].as_f64().unwrap_or(0.0)),
            fraction_of_step = format!("{:.3}", monitor["pass_fraction_of_step"].as_f64().unwrap_or(0.0)),
            "cost of the per-level measures"
        );
    }
    let (last_dir, _) = recorder
        .last_checkpoint
        .clone()
        .ok_or_else(|| anyhow!("the run ended without a checkpoint"))?;
    let final_dir = ck_root.join("final");
    copy_checkpoint(&last_dir, &final_dir)?;
    tracing::info!(steps, seconds = format!("{train_seconds:.1}"), checkpoint = %final_dir.display(), "trained");

    let batch = cfg.train.batch_size as f64;
    let h = &recorder.halo;
    let mut summary = serde_json::json!({
        "steps": steps,
        "workers": n,
        "train_seconds": train_seconds,
        "images_per_s": steps.saturating_sub(first_step) as f64 * batch / train_seconds.max(1e-9),
        "resumed_from_step": first_step,
        "config_hash": cfg.hash(),
        "interrupted": steps < cfg.train.steps,
        "monitor": monitor,
        "halo": {
            "bytes_per_step": h.bytes_sent as f64 / h.steps.max(1) as f64,
            "payload_bytes_per_step": h.payload_bytes_per_step,
            "framing_overhead": if h.payload_bytes_per_step > 0 {
                h.bytes_sent as f64 / (h.steps.max(1) * h.payload_bytes_per_step) as f64 - 1.0
            } else {
                0.0
            },
            "seconds_per_step": h.step_seconds / h.steps.max(1) as f64,
            "wait_fraction": h.wait_seconds / h.step_seconds.max(1e-12),
        },
    });
    if let (true, Some(data)) = (eval, &data) {
        let model = whole_model(&cfg)?;
        checkpoint::load_into(&final_dir, &model, None)?;
        let report = crate::evaluate::evaluate_model(&model, data)?;
        crate::evaluate::print_table(&report);
        if let (serde_json::Value::Object(s), serde_json::Value::Object(r)) =
            (&mut summary, serde_json::to_value(&report)?)
        {
            s.extend(r);
        }
    }
    summary["wall_seconds"] = started.elapsed().as_secs_f64().into();
    write_json(&dir.join("summary.json"), &summary)?;
    println!("run directory: {}", dir.display());
    Ok(())
}

/// Give each of `n` in-process workers its share of the cores: candle's
/// CPU ops (and the per-location matmul) split work over
/// `RAYON_NUM_THREADS` threads, and two workers each splitting every op
/// over all cores fight over them (measured on 2 cores: 39 images/s with 2
/// workers, against 71 with one thread each). An explicit
/// `RAYON_NUM_THREADS` is left alone.
fn share_cores(n: usize) {
    if n <= 1 || std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let each = (cores / n).max(1);
    tracing::debug!(
        workers = n,
        cores,
        threads_per_worker = each,
        "sharing the cores"
    );
    // Set before any thread reads the environment or starts a pool.
    std::env::set_var("RAYON_NUM_THREADS", each.to_string());
}

/// `coordinator` and one worker per tile of its plan over loopback QUIC,
/// with an ephemeral CA; returns the steps trained. A worker task that
/// fails or panics is a lost worker (the coordinator rolls the cluster
/// back): a replacement is started in its place, up to
/// `cluster.max_restarts` times.
async fn embedded(
    cfg: &Config,
    coordinator: Coordinator,
    train: Arc<dyn glom_worker::data::Dataset>,
    device: Device,
    recorder: &mut Recorder,
) -> Result<u64> {
    let n = coordinator.tiles().len();
    let ca = ClusterCa::new()?;
    let tuning = tuning(cfg);
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    let id = ca.issue(COORDINATOR_NAME)?;
    let coord_ep = server_endpoint(loopback, server_config(&id, ca.cert(), &tuning)?, None)?;
    let coord_addr = coord_ep.local_addr()?;
    let options = |name: String| -> Result<WorkerOptions> {
        let id = ca.issue(&name)?;
        let endpoint = server_endpoint(
            loopback,
            server_config(&id, ca.cert(), &tuning)?,
            Some(client_config(&id, ca.cert(), &tuning)?),
        )?;
        Ok(WorkerOptions {
            cfg: cfg.clone(),
            name,
            coordinator: coord_addr.to_string(),
            endpoint,
            advertise: None,
            patience: Duration::from_secs(10),
            device: device.clone(),
        })
    };
    let mut workers = tokio::task::JoinSet::new();
    let mut names = HashMap::new();
    for i in 0..n {
        let name = worker_name(i);
        let task = workers.spawn(run_worker(options(name.clone())?, train.clone()));
        names.insert(task.id(), name);
    }
    let mut replacements = 0;
    let mut first_worker_error = None;
    let run = drive(coordinator, coord_ep, recorder);
    tokio::pin!(run);
    let end = loop {
        tokio::select! {
            end = &mut run => break end,
            Some(joined) = workers.join_next_with_id() => {
                let (name, failure) = match joined {
                    Ok((task, Ok(_))) => {
                        names.remove(&task);
                        continue;
                    }
                    Ok((task, Err(e))) => (names.remove(&task), anyhow!(e)),
                    Err(e) => (names.remove(&e.id()), anyhow!("the worker task failed: {e}")),
                };
                let name = name.unwrap_or_default();
                if replacements >= cfg.cluster.max_restarts {
                    tracing::error!("{name} failed: {failure:#}");
                    first_worker_error.get_or_insert(failure.context(format!("{name} failed")));
                    continue;
                }
                replacements += 1;
                let spare = format!("{name}-r{replacements}");
                tracing::warn!("{name} failed: {failure:#}; starting {spare} in its place");
                let task = workers.spawn(run_worker(options(spare.clone())?, train.clone()));
                names.insert(task.id(), spare);
            }
        }
    };
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!("worker failed: {e}");
                first_worker_error.get_or_insert(anyhow!(e));
            }
            Err(e) => {
                first_worker_error.get_or_insert(anyhow!("a worker task failed: {e}"));
            }
        }
    }
    let end = end?;
    match first_worker_error {
        Some(e) => Err(e.context("the run finished but a worker failed")),
        None => Ok(end.steps),
    }
}

/// Copy checkpoint `from` to `to` (replaced), manifest last.
pub(crate) fn copy_checkpoint(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("removing {}", to.display()))?;
    }
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut names: Vec<_> = std::fs::read_dir(from)
        .with_context(|| format!("reading {}", from.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    // The manifest vouches for the shards: it goes last.
    names.sort_by_key(|n| n == "manifest.json");
    for name in names {
        std::fs::copy(from.join(&name), to.join(&name)).with_context(|| {
            format!("copying {} to {}", from.join(&name).display(), to.display())
        })?;
    }
    Ok(())
}

/// Write pretty JSON to `path`.
pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
