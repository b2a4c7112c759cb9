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
    ControlMessage, Hello, PeerHello, RefuseReason, ShardAck, SleepStart, Step, StepMetrics,
};
use glom_protocol::Config;
use quinn::{Endpoint, SendStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use super::fault;
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
    /// Its id in the last attempt of the cluster.
    pub worker_id: u32,
    /// Steps this worker trained (steps trained again after a rollback
    /// count again).
    pub steps: u64,
    /// The coordinator's reason for the shutdown.
    pub reason: String,
    /// Times the cluster rolled back and this worker joined again.
    pub rejoins: u32,
}

/// How one attempt of the cluster ended for this worker.
enum Attempt {
    /// The coordinator ended the run (`steps` trained in this attempt).
    Finished {
        worker_id: u32,
        steps: u64,
        reason: String,
    },
    /// The cluster rolls back: join again (`steps` trained in this attempt).
    Rejoin { steps: u64, reason: String },
    /// Refused because every tile has a worker: a replacement that came
    /// before the coordinator noticed the loss of the worker it replaces.
    Busy { reason: RefuseReason },
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
/// (shared by the in-process workers of `glom train`). When the cluster
/// rolls back after a lost worker (DESIGN.md section 7), or the
/// coordinator itself is lost, the worker drops its work and joins again
/// (waiting up to `patience` for a coordinator to answer).
pub async fn run_worker(opts: WorkerOptions, data: Arc<dyn Dataset>) -> Result<WorkerExit> {
    fault::validate()?; // a malformed value is an error now, not at a step
    let (mut rejoins, mut steps) = (0, 0);
    let mut busy_since = None;
    loop {
        match run_attempt(&opts, data.clone()).await? {
            Attempt::Finished {
                worker_id,
                steps: s,
                reason,
            } => {
                return Ok(WorkerExit {
                    worker_id,
                    steps: steps + s,
                    reason,
                    rejoins,
                })
            }
            Attempt::Rejoin { steps: s, reason } => {
                rejoins += 1;
                steps += s;
                busy_since = None;
                tracing::warn!(name = %opts.name, "the cluster rolls back ({reason}); joining again");
            }
            Attempt::Busy { reason } => {
                // The coordinator may not have noticed the loss yet: try
                // again for as long as `patience` allows.
                let since = *busy_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= opts.patience {
                    return Err(Error::Runtime(format!(
                        "the coordinator at {} refused this worker for {:?}: {reason}",
                        opts.coordinator, opts.patience
                    )));
                }
                tracing::info!(name = %opts.name, "refused ({reason}); trying again in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One attempt: join, train the assigned tile until the coordinator ends
/// the run or asks this worker to rejoin.
async fn run_attempt(opts: &WorkerOptions, data: Arc<dyn Dataset>) -> Result<Attempt> {
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
                conn.local_ip()
                    .or_else(|| route_ip(conn.remote_address()))
                    .unwrap_or(bound.ip())
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

    // The coordinator may wait a while for the other workers (after a
    // restart, up to `cluster.rejoin_seconds`): beat meanwhile, so this
    // connection is not taken for a dead one.
    let beat = Duration::from_secs_f64(cfg.cluster.heartbeat_seconds);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    let welcome = loop {
        tokio::select! {
            msg = next(&mut rx) => match msg? {
                ControlMessage::Heartbeat { .. } => {}
                msg => break msg,
            },
            _ = heartbeat.tick() => send_heartbeat(&mut tx, &limits).await?,
        }
    };
    let worker_id = match welcome {
        ControlMessage::Welcome { worker_id } => worker_id,
        ControlMessage::Refused {
            reason: reason @ (RefuseReason::Full | RefuseReason::AlreadyStarted),
        } => return Ok(Attempt::Busy { reason }),
        ControlMessage::Refused { reason } => {
            return Err(Error::Runtime(format!(
                "the coordinator at {} refused this worker: {reason}",
                opts.coordinator
            )))
        }
        ControlMessage::Shutdown { reason } => {
            return Ok(Attempt::Finished {
                worker_id: 0,
                steps: 0,
                reason,
            })
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
            PeerHello::new(&config_hash, worker_id, assign.attempt),
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
        assign.attempt,
    ));

    let halo = QuicHalo::new(
        worker_id,
        &plan,
        links,
        cfg.cluster.halo_precision,
        halo_wait_limit(&cfg),
        &opts.device,
        DType::F32,
    );
    let cancel = halo.cancel_flag();
    let setup = Setup {
        cfg: cfg.clone(),
        tile,
        device: opts.device.clone(),
        data,
        resume: assign.resume.clone(),
        worker_id,
        name: opts.name.clone(),
    };
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let (done_tx, mut done_rx) = unbounded_channel::<Result<ControlMessage>>();
    // The nets are built (and a checkpoint loaded) on the compute thread,
    // so heartbeats go on meanwhile.
    let compute = std::thread::Builder::new()
        .name(format!("glom-worker-{worker_id}"))
        .spawn(move || match setup.build() {
            Ok((trainer, sleep)) => compute_loop(
                setup.worker_id,
                &setup.name,
                trainer,
                halo,
                sleep,
                job_rx,
                done_tx,
            ),
            Err(e) => {
                let _ = done_tx.send(Err(e));
            }
        })
        .map_err(|e| Error::Runtime(format!("cannot start the compute thread: {e}")))?;

    let mut steps = 0u64;
    let outcome: Result<End> = loop {
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
                Ok(Some(ControlMessage::Shutdown { reason })) => break Ok(End::Shutdown(reason)),
                Ok(Some(ControlMessage::Rejoin { reason })) => break Ok(End::Rejoin(reason)),
                // The coordinator dropped this worker (e.g. it was silent
                // for too long, a stalled process): join again.
                Ok(Some(ControlMessage::Error { message })) => {
                    break Ok(End::Rejoin(format!("the coordinator dropped this worker: {message}")))
                }
                Ok(Some(other)) => {
                    break Err(unexpected(&other, "a step, checkpoint, sleep job or shutdown"))
                }
                // The coordinator is gone: a restarted one (`glom
                // coordinator --resume`) takes this worker back.
                Ok(None) => break Ok(End::Rejoin("the coordinator closed the connection".into())),
                Err(e) => break Ok(End::Rejoin(format!("the coordinator was lost: {e}"))),
            },
            done = done_rx.recv() => match done {
                Some(Ok(msg)) => {
                    if matches!(msg, ControlMessage::StepDone { .. }) {
                        steps += 1;
                    }
                    if let Err(e) = glom_net::send(&mut tx, &msg, &limits).await {
                        break Ok(End::Rejoin(format!("cannot report to the coordinator: {e}")));
                    }
                }
                Some(Err(e)) => {
                    // Report it; the coordinator rolls the cluster back and
                    // this worker joins again.
                    let message = format!("worker {worker_id} ({}): {e}", opts.name);
                    tracing::error!("{message}");
                    let _ = glom_net::send(&mut tx, &ControlMessage::Error { message }, &limits).await;
                    break Ok(answer_to_failure(&mut rx, &cfg).await);
                }
                None => break Err(Error::Runtime("the compute thread stopped".into())),
            },
            _ = heartbeat.tick() => {
                if let Err(e) = send_heartbeat(&mut tx, &limits).await {
                    break Ok(End::Rejoin(e.to_string()));
                }
            }
        }
    };
    drop(job_tx);
    let _ = tx.finish();
    accept.abort();
    match outcome {
        Ok(End::Shutdown(reason)) => {
            // The compute thread ends with its job channel; joining it on
            // a blocking thread keeps the runtime free meanwhile.
            let _ = tokio::task::spawn_blocking(move || compute.join()).await;
            conn.close(0u32.into(), b"done");
            tracing::info!(worker = worker_id, steps, %reason, "worker finished");
            Ok(Attempt::Finished {
                worker_id,
                steps,
                reason,
            })
        }
        Ok(End::Rejoin(reason)) => {
            // Abandon the work: any wait for a halo ends now, and the
            // thread ends after its current job, unjoined.
            cancel.store(true, std::sync::atomic::Ordering::SeqCst);
            conn.close(0u32.into(), b"rejoining");
            Ok(Attempt::Rejoin { steps, reason })
        }
        Err(e) => {
            cancel.store(true, std::sync::atomic::Ordering::SeqCst);
            conn.close(0u32.into(), b"failed");
            Err(e)
        }
    }
}

/// How the control loop of an attempt ended.
enum End {
    /// The coordinator ended the run.
    Shutdown(String),
    /// The cluster rolls back: join again.
    Rejoin(String),
}

/// After reporting a failed job: the coordinator's answer (its error
/// reply, a rejoin, or the connection closing) means it has rolled the
/// cluster back, so joining again is safe; a shutdown means the run is
/// over (the restarts are spent).
async fn answer_to_failure(rx: &mut FramedRecv, cfg: &Config) -> End {
    let wait = Duration::from_secs_f64(2.0 * cfg.cluster.heartbeat_timeout);
    let answer = async {
        loop {
            match rx.recv::<ControlMessage>().await {
                Ok(Some(ControlMessage::Shutdown { reason })) => return End::Shutdown(reason),
                Ok(Some(
                    ControlMessage::Rejoin { reason } | ControlMessage::Error { message: reason },
                )) => return End::Rejoin(reason),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => {
                    return End::Rejoin("the coordinator closed the connection".into())
                }
            }
        }
    };
    tokio::time::timeout(wait, answer)
        .await
        .unwrap_or_else(|_| End::Rejoin("the coordinator did not answer the error report".into()))
}

/// Longest wait for one peer's halo frame. A dead peer is noticed sooner,
/// when its connection times out (`cluster.heartbeat_timeout`); this only
/// bounds a peer that is connected but sends nothing (a slow iteration,
/// or one still loading a checkpoint, must not fail the step).
fn halo_wait_limit(cfg: &Config) -> Duration {
    Duration::from_secs_f64((12.0 * cfg.cluster.heartbeat_timeout).max(60.0))
}

/// What the compute thread needs to build its trainer.
struct Setup {
    cfg: Config,
    tile: crate::model::grid::Tile,
    device: Device,
    data: Arc<dyn Dataset>,
    resume: Option<glom_protocol::message::ResumePoint>,
    worker_id: u32,
    name: String,
}

impl Setup {
    /// The tile's nets (loaded from the resume point, if any) and the
    /// sleep state.
    fn build(&self) -> Result<(Trainer, SleepState)> {
        let cfg = &self.cfg;
        let model = Glom::new(cfg, self.tile.clone(), &self.device, DType::F32)?;
        let sleep = SleepState {
            replay: sleep::replay_for(cfg),
            observe: if cfg.sleep.scheduled() {
                sleep::observation_images(cfg, &*self.data)
            } else {
                Vec::new()
            },
        };
        let mut trainer = Trainer::new(model, self.data.clone())?;
        if let Some(resume) = &self.resume {
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
            tracing::info!(worker = self.worker_id, step = resume.step, dir = %dir.display(), "resumed");
        }
        Ok((trainer, sleep))
    }
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

/// The local IP this host sends from to reach `to` (the route the kernel
/// picks for a UDP socket connected to it; nothing is sent).
fn route_ip(to: std::net::SocketAddr) -> Option<std::net::IpAddr> {
    let any: std::net::SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(to).ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified())
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
    name: &str,
    mut trainer: Trainer,
    mut halo: QuicHalo,
    mut sleep: SleepState,
    jobs: mpsc::Receiver<Job>,
    done: UnboundedSender<Result<ControlMessage>>,
) {
    while let Ok(job) = jobs.recv() {
        let result = match job {
            Job::Step(step) => fault::check(name, step.step)
                .and_then(|()| run_step(&mut trainer, &mut halo, &mut sleep, &step)),
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
        // Of a video, every frame's state (the sleep job's nearby-frame
        // negatives need them); of a still image, the one state.
        replay.push_frames(&out.frames)?;
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
