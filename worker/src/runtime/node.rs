//! One networked worker: joins the coordinator, builds its tile's nets,
//! connects to its peers and trains until told to stop (DESIGN.md section 4).
//!
//! Two halves. An async control loop owns the coordinator connection: it
//! forwards steps and checkpoint requests to the compute thread, sends the
//! results back, and keeps heartbeats going while a step runs. The compute
//! thread owns the [`Trainer`] (candle's CPU work blocks, so it stays off
//! the async runtime) and a [`QuicHalo`] whose frames travel through the
//! peer tasks of [`super::peers`]. Nothing but embeddings leaves the worker
//! for its peers, and nothing but metrics and shard receipts for the
//! coordinator.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use glom_net::FramedRecv;
use glom_protocol::codec::Limits;
use glom_protocol::message::{
    ControlMessage, Hello, PeerHello, ShardAck, SleepStart, Step, StepMetrics,
};
use glom_protocol::Config;
use quinn::{Endpoint, SendStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use super::halo::{tile_of, HaloPlan, PeerLink, QuicHalo};
use super::peers::{accept_peers, connect_patiently, send_to_peer, Routes};
use crate::checkpoint;
use crate::data::{Dataset, Image};
use crate::error::{Error, Result};
use crate::learn::Trainer;
use crate::model::grid::Grid;
use crate::model::Glom;
use crate::monitor;
use crate::sleep::{self, ReplayBuffer};

/// How to run one worker.
pub struct WorkerOptions {
    /// The run configuration; its hash must match the coordinator's.
    pub cfg: Config,
    /// Name for logs and metric labels (host, pod, rank).
    pub name: String,
    /// The coordinator's `HOST:PORT`.
    pub coordinator: String,
    /// This worker's QUIC endpoint, bound, with a server configuration (it
    /// accepts its peers' connections) and a default client configuration.
    pub endpoint: Endpoint,
    /// `HOST:PORT` at which peers reach `endpoint`; by default its bound
    /// address, with an unspecified IP replaced by the one this host uses
    /// to reach the coordinator.
    pub advertise: Option<String>,
    /// How long to keep trying to reach the coordinator and the peers.
    pub patience: Duration,
    pub device: Device,
}

/// How a worker's run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerExit {
    pub worker_id: u32,
    /// Steps this worker trained.
    pub steps: u64,
    /// The coordinator's reason for the shutdown.
    pub reason: String,
}

/// Work for the compute thread.
enum Job {
    Step(Step),
    Checkpoint { step: u64, dir: String },
    Sleep(SleepStart),
}

/// What the compute thread holds besides the trainer: the replay buffer
/// of recent consensus states and the images measured around a sleep job
/// (both only when sleep is scheduled, DESIGN.md section 3).
struct SleepState {
    replay: Option<ReplayBuffer>,
    observe: Vec<Image>,
}

/// Run one worker to the end of the run. `data` is the training split
/// (shared by the in-process workers of `glom train`).
pub async fn run_worker(opts: WorkerOptions, data: Arc<dyn Dataset>) -> Result<WorkerExit> {
    let cfg = opts.cfg.clone();
    let config_hash = cfg.hash();
    let limits = Limits::default();
    let conn = connect_patiently(&opts.endpoint, &opts.coordinator, opts.patience).await?;
    let advertise = match &opts.advertise {
        Some(a) => a.clone(),
        None => {
            let bound = opts
                .endpoint
                .local_addr()
                .map_err(|e| Error::Runtime(format!("cannot read the endpoint's address: {e}")))?;
            let ip = if bound.ip().is_unspecified() {
                conn.local_ip().unwrap_or(bound.ip())
            } else {
                bound.ip()
            };
            std::net::SocketAddr::new(ip, bound.port()).to_string()
        }
    };
    let (mut tx, rx) = conn.open_bi().await.map_err(glom_net::Error::from)?;
    let mut rx = FramedRecv::new(rx, limits);
    let hello = Hello::new(&config_hash, &opts.name, &advertise);
    glom_net::send(&mut tx, &ControlMessage::Hello(hello), &limits).await?;

    let worker_id = match next(&mut rx).await? {
        ControlMessage::Welcome { worker_id } => worker_id,
        ControlMessage::Refused { reason } => {
            return Err(Error::Runtime(format!(
                "the coordinator at {} refused this worker: {reason}",
                opts.coordinator
            )))
        }
        other => return Err(unexpected(&other, "a welcome")),
    };
    let assign = match next(&mut rx).await? {
        ControlMessage::Assign(a) => a,
        other => return Err(unexpected(&other, "an assignment")),
    };
    if assign.config_hash != config_hash {
        return Err(Error::Runtime(format!(
            "assigned a tile of run {} but configured for {config_hash}",
            assign.config_hash
        )));
    }
    let side = cfg.grid_side();
    let grid = Grid::square(side);
    let reach = assign.reach as usize;
    let tile = tile_of(grid, &assign.tile, reach);
    let peers: Vec<(u32, _)> = assign.peers.iter().map(|p| (p.worker_id, p.tile)).collect();
    let plan = HaloPlan::new(&tile, &peers, reach)?;
    tracing::info!(
        worker = worker_id,
        name = %opts.name,
        rows = ?assign.tile.rows,
        cols = ?assign.tile.cols,
        locations = tile.locs.len(),
        halo = tile.halo.len(),
        peers = assign.peers.len(),
        "assigned"
    );

    // Peer links: frames out through a sender task per peer, frames in
    // through the accept loop's routes.
    let routes: Routes = Arc::new(Mutex::new(HashMap::new()));
    let mut links = Vec::with_capacity(plan.peers.len());
    for (peer_plan, info) in plan.peers.iter().zip(&assign.peers) {
        let (out_tx, out_rx) = unbounded_channel();
        let (in_tx, in_rx) = mpsc::channel();
        routes
            .lock()
            .expect("routes lock")
            .insert(info.worker_id, in_tx);
        tokio::spawn(send_to_peer(
            opts.endpoint.clone(),
            info.clone(),
            PeerHello::new(&config_hash, worker_id),
            out_rx,
            opts.patience,
        ));
        links.push(PeerLink {
            plan: peer_plan.clone(),
            outbound: out_tx,
            inbound: in_rx,
        });
    }
    let accept = tokio::spawn(accept_peers(
        opts.endpoint.clone(),
        routes,
        config_hash.clone(),
    ));

    let model = Glom::new(&cfg, tile, &opts.device, DType::F32)?;
    let halo = QuicHalo::new(
        worker_id,
        &plan,
        links,
        cfg.cluster.halo_precision,
        Duration::from_secs_f64(cfg.cluster.heartbeat_timeout),
        &opts.device,
        DType::F32,
    );
    let sleep = SleepState {
        replay: sleep::replay_for(&cfg),
        observe: if cfg.sleep.scheduled() {
            sleep::observation_images(&cfg, &*data)
        } else {
            Vec::new()
        },
    };
    let mut trainer = Trainer::new(model, data)?;
    if let Some(resume) = &assign.resume {
        let dir = PathBuf::from(&resume.dir);
        let manifest = checkpoint::load_into(&dir, &trainer.model, Some(&mut trainer.opt))?;
        if manifest.step != resume.step {
            return Err(Error::Runtime(format!(
                "asked to resume at step {} from {}, which holds step {}",
                resume.step,
                dir.display(),
                manifest.step
            )));
        }
        trainer.step = resume.step;
        tracing::info!(worker = worker_id, step = resume.step, dir = %dir.display(), "resumed");
    }
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let (done_tx, mut done_rx) = unbounded_channel::<Result<ControlMessage>>();
    let compute = std::thread::Builder::new()
        .name(format!("glom-worker-{worker_id}"))
        .spawn(move || compute_loop(worker_id, trainer, halo, sleep, job_rx, done_tx))
        .map_err(|e| Error::Runtime(format!("cannot start the compute thread: {e}")))?;

    let beat = Duration::from_secs_f64(cfg.cluster.heartbeat_seconds);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    let mut steps = 0u64;
    let outcome: Result<String> = loop {
        tokio::select! {
            msg = rx.recv::<ControlMessage>() => match msg {
                Ok(Some(ControlMessage::Step(step))) => {
                    if job_tx.send(Job::Step(step)).is_err() {
                        break Err(Error::Runtime("the compute thread stopped".into()));
                    }
                }
                Ok(Some(ControlMessage::CheckpointSave { step, dir })) => {
                    if job_tx.send(Job::Checkpoint { step, dir }).is_err() {
                        break Err(Error::Runtime("the compute thread stopped".into()));
                    }
                }
                Ok(Some(ControlMessage::SleepStart(start))) => {
                    if job_tx.send(Job::Sleep(start)).is_err() {
                        break Err(Error::Runtime("the compute thread stopped".into()));
                    }
                }
                Ok(Some(ControlMessage::Heartbeat { .. })) => {}
                Ok(Some(ControlMessage::Shutdown { reason })) => break Ok(reason),
                Ok(Some(ControlMessage::Error { message })) => {
                    break Err(Error::Runtime(format!("the coordinator failed: {message}")))
                }
                Ok(Some(other)) => {
                    break Err(unexpected(&other, "a step, checkpoint, sleep job or shutdown"))
                }
                Ok(None) => break Err(Error::Runtime("the coordinator closed the connection".into())),
                Err(e) => break Err(Error::Runtime(format!("control stream: {e}"))),
            },
            done = done_rx.recv() => match done {
                Some(Ok(msg)) => {
                    if matches!(msg, ControlMessage::StepDone { .. }) {
                        steps += 1;
                    }
                    if let Err(e) = glom_net::send(&mut tx, &msg, &limits).await {
                        break Err(Error::Runtime(format!("cannot report to the coordinator: {e}")));
                    }
                }
                Some(Err(e)) => {
                    let message = format!("worker {worker_id} ({}): {e}", opts.name);
                    let _ = glom_net::send(&mut tx, &ControlMessage::Error { message }, &limits).await;
                    break Err(e);
                }
                None => break Err(Error::Runtime("the compute thread stopped".into())),
            },
            _ = heartbeat.tick() => {
                if let Err(e) = send_heartbeat(&mut tx, &limits).await {
                    break Err(e);
                }
            }
        }
    };
    drop(job_tx);
    let _ = tx.finish();
    // The compute thread ends with its job channel; joining it on a
    // blocking thread keeps the runtime free meanwhile.
    let _ = tokio::task::spawn_blocking(move || compute.join()).await;
    accept.abort();
    conn.close(0u32.into(), b"done");
    let reason = outcome?;
    tracing::info!(worker = worker_id, steps, %reason, "worker finished");
    Ok(WorkerExit {
        worker_id,
        steps,
        reason,
    })
}

async fn send_heartbeat(tx: &mut SendStream, limits: &Limits) -> Result<()> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    glom_net::send(tx, &ControlMessage::Heartbeat { now_ms }, limits)
        .await
        .map(|_| ())
        .map_err(|e| Error::Runtime(format!("cannot reach the coordinator: {e}")))
}

/// The next control message, or an error saying why there is none.
async fn next(rx: &mut FramedRecv) -> Result<ControlMessage> {
    match rx.recv::<ControlMessage>().await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(Error::Runtime(
            "the coordinator closed the connection".into(),
        )),
        Err(e) => Err(Error::Runtime(format!("control stream: {e}"))),
    }
}

fn unexpected(msg: &ControlMessage, wanted: &str) -> Error {
    Error::Runtime(format!(
        "the coordinator sent {} where {wanted} was expected",
        msg.kind()
    ))
}

/// The compute thread: runs jobs in order until the channel closes or a
/// job fails (the error is reported and ends the thread).
fn compute_loop(
    worker_id: u32,
    mut trainer: Trainer,
    mut halo: QuicHalo,
    mut sleep: SleepState,
    jobs: mpsc::Receiver<Job>,
    done: UnboundedSender<Result<ControlMessage>>,
) {
    while let Ok(job) = jobs.recv() {
        let result = match job {
            Job::Step(step) => run_step(&mut trainer, &mut halo, &mut sleep, &step),
            Job::Checkpoint { step, dir } => save_shard(worker_id, &trainer, step, &dir),
            Job::Sleep(start) => sleep_job(&trainer, &sleep, &start),
        };
        let failed = result.is_err();
        if done.send(result).is_err() || failed {
            return;
        }
    }
}

/// Run a scheduled sleep job on the tile: no halo, no peer (heartbeats go
/// on from the control loop meanwhile).
fn sleep_job(trainer: &Trainer, sleep: &SleepState, start: &SleepStart) -> Result<ControlMessage> {
    let Some(replay) = &sleep.replay else {
        return Err(Error::Runtime(format!(
            "asked for sleep job {} but sleep is not scheduled in this worker's configuration",
            start.job
        )));
    };
    if start.after_step != trainer.step {
        return Err(Error::Runtime(format!(
            "asked for sleep job {} after step {} but this worker has trained {} steps",
            start.job, start.after_step, trainer.step
        )));
    }
    let outcome = sleep::run_job(
        &trainer.model,
        replay,
        start,
        &sleep.observe,
        &mut |_, _| {},
    )?;
    Ok(ControlMessage::SleepDone(
        outcome.into_done(start.job, &trainer.model),
    ))
}

fn run_step(
    trainer: &mut Trainer,
    halo: &mut QuicHalo,
    sleep: &mut SleepState,
    step: &Step,
) -> Result<ControlMessage> {
    if step.step != trainer.step {
        return Err(Error::Runtime(format!(
            "asked for step {} but the next step of this worker is {}",
            step.step, trainer.step
        )));
    }
    let started = Instant::now();
    halo.begin_step(step.step);
    let out = trainer.step_with(halo)?;
    if let Some(replay) = &mut sleep.replay {
        replay.push(&out.levels)?;
    }
    let (observation, observe_seconds) = if step.observe {
        let t = Instant::now();
        let o = monitor::observe(&trainer.model, &out.levels)?;
        (Some(o), t.elapsed().as_secs_f64())
    } else {
        (None, 0.0)
    };
    let stats = halo.stats();
    Ok(ControlMessage::StepDone {
        step: step.step,
        metrics: StepMetrics {
            locations: trainer.model.tile.locs.iter().map(|&g| g as u32).collect(),
            losses: out.loss_shares,
            halo_bytes_sent: stats.bytes_sent,
            halo_bytes_received: stats.bytes_received,
            halo_wait_seconds: stats.wait.as_secs_f64(),
            step_seconds: started.elapsed().as_secs_f64(),
            observe_seconds,
            observation,
        },
    })
}

fn save_shard(worker_id: u32, trainer: &Trainer, step: u64, dir: &str) -> Result<ControlMessage> {
    if step != trainer.step {
        return Err(Error::Runtime(format!(
            "asked for checkpoint {step} after {} steps",
            trainer.step
        )));
    }
    let entry = checkpoint::write_shard(
        &PathBuf::from(dir),
        worker_id as usize,
        &trainer.model,
        &trainer.opt,
    )?;
    Ok(ControlMessage::CheckpointAck {
        step,
        shard: ShardAck {
            file: entry.file,
            sha256: entry.sha256,
            bytes: entry.bytes,
            locations: entry.locations.iter().map(|&l| l as u32).collect(),
        },
    })
}
