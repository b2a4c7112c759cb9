//! The coordinator's driver: the thin async shell around the sans-IO
//! [`Coordinator`] (DESIGN.md section 4). It accepts QUIC connections
//! (mutual TLS: a client without a certificate of the cluster CA never gets
//! past the handshake), reads framed control messages from each, feeds them
//! to the state machine, and carries out what the state machine asks:
//! messages to send, connections to close, manifests to write, steps to
//! record.
//!
//! A connection that sends something unreadable (garbage, a frame over the
//! size cap, a truncated frame, a hello of another protocol version) is
//! answered with the reason and closed; the run goes on. A worker of the
//! running cluster that breaks, leaves or falls silent rolls the cluster
//! back to its last checkpoint (`glom_coordinator::recovery`); once
//! `cluster.max_restarts` restarts are spent it ends the run (with the
//! checkpoint to resume from).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use glom_coordinator::sleep::{SleepSummary, SleepTrigger};
use glom_coordinator::{Action, ConnId, Coordinator, Restart, StepSummary};
use glom_net::FramedRecv;
use glom_protocol::codec::{decode_body, hello_version, Limits};
use glom_protocol::message::{Assign, ControlMessage, RefuseReason, PROTOCOL_VERSION};
use quinn::{Connection, Endpoint, VarInt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// QUIC application close code of a connection closed for bad input.
const BAD_INPUT: u32 = 2;

/// What the driver tells whoever runs it.
pub(crate) trait RunObserver {
    /// Every worker joined; the resolved tile plan, by worker.
    fn started(&mut self, assignments: &[(String, Assign)]) -> Result<()>;
    /// A step completed on every worker. An error stops the run (e.g. a
    /// loss that is no longer finite).
    fn step(&mut self, step: u64, summary: &StepSummary) -> Result<()>;
    /// A checkpoint's manifest was written: the checkpoint is complete.
    fn checkpoint(&mut self, dir: &Path, step: u64) -> Result<()>;
    /// Awake training paused after `after_step` steps for sleep job `job`.
    fn sleep_started(&mut self, job: u64, after_step: u64, trigger: SleepTrigger) -> Result<()>;
    /// Sleep job `job` finished on every worker; awake training resumes.
    fn sleep_completed(&mut self, job: u64, after_step: u64, summary: &SleepSummary) -> Result<()>;
    /// The cluster started again from its last checkpoint after a lost
    /// worker (automatic recovery).
    fn restarted(&mut self, restart: &Restart) -> Result<()>;
    /// Whether the run should stop early (checked often).
    fn stop_requested(&self) -> bool;
}

/// How the run ended.
#[derive(Debug)]
pub(crate) struct RunEnd {
    /// Steps trained.
    pub(crate) steps: u64,
}

/// Inputs of the driver loop from the connection tasks.
enum Event {
    Connected(ConnId, UnboundedSender<Out>, SocketAddr),
    Message(ConnId, ControlMessage),
    /// The connection is gone; the string says why (for the log).
    Closed(ConnId, String),
}

/// Outputs to one connection's writer.
enum Out {
    Message(ControlMessage),
    /// Flush, then close the connection with this QUIC application code
    /// and reason.
    Close {
        code: u32,
        reason: String,
    },
}

impl Out {
    /// An ordinary close, once everything queued is sent.
    fn close() -> Self {
        Out::Close {
            code: 0,
            reason: CLOSED.into(),
        }
    }
}

/// Reason of an ordinary close.
const CLOSED: &str = "closed by the coordinator";

/// Run the coordinator on `endpoint` until the run finishes or aborts.
pub(crate) async fn drive(
    mut coord: Coordinator,
    endpoint: Endpoint,
    observer: &mut dyn RunObserver,
) -> Result<RunEnd> {
    let (events_tx, mut events) = unbounded_channel();
    let accept = tokio::spawn(accept_loop(endpoint.clone(), events_tx));
    let mut writers: HashMap<ConnId, UnboundedSender<Out>> = HashMap::new();
    let mut stopping = false;
    let mut poll_stop = tokio::time::interval(Duration::from_millis(200));
    let result = loop {
        let deadline = coord
            .next_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            ev = events.recv() => {
                let now = Instant::now();
                match ev {
                    Some(Event::Connected(conn, out, remote)) => {
                        tracing::debug!(%conn, %remote, "control connection");
                        writers.insert(conn, out);
                        coord.handle_connect(conn, now);
                    }
                    Some(Event::Message(conn, msg)) => coord.handle_message(conn, msg, now),
                    Some(Event::Closed(conn, why)) => {
                        if writers.remove(&conn).is_some() {
                            tracing::debug!(%conn, "control connection closed: {why}");
                            coord.handle_disconnect(conn, now);
                        }
                    }
                    None => break Err(anyhow!("the coordinator's endpoint closed")),
                }
            }
            _ = tokio::time::sleep_until(deadline) => coord.handle_timeout(Instant::now()),
            _ = poll_stop.tick() => {
                if !stopping && observer.stop_requested() {
                    stopping = true;
                    tracing::warn!("stopping: finishing the steps in flight and writing the final checkpoint");
                    coord.stop_early(Instant::now());
                }
            }
        }
        while let Some((conn, msg)) = coord.poll_transmit() {
            if let Some(w) = writers.get(&conn) {
                let _ = w.send(Out::Message(msg));
            }
        }
        while let Some(conn) = coord.poll_close() {
            if let Some(w) = writers.remove(&conn) {
                let _ = w.send(Out::close());
            }
        }
        let mut end = None;
        while let Some(action) = coord.poll_action() {
            match handle(action, observer) {
                Ok(None) => {}
                Ok(Some(done)) => end = Some(Ok(done)),
                Err(e) => {
                    end = Some(Err(e));
                    break;
                }
            }
        }
        if let Some(end) = end {
            if end.is_err() {
                for w in writers.values() {
                    let _ = w.send(Out::Message(ControlMessage::Shutdown {
                        reason: "the run stopped on an error at the coordinator".into(),
                    }));
                }
            }
            break end;
        }
    };
    // Let the writers flush the last messages (shutdowns) and close.
    for w in writers.values() {
        let _ = w.send(Out::close());
    }
    drop(writers);
    let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
    accept.abort();
    result
}

/// Carry out one action; `Some` when the run is over.
fn handle(action: Action, observer: &mut dyn RunObserver) -> Result<Option<RunEnd>> {
    match action {
        Action::Started { assignments } => observer.started(&assignments)?,
        Action::Refused { conn, reason } => {
            tracing::warn!(%conn, "refused a worker: {reason}");
        }
        Action::StepCompleted { step, summary } => observer.step(step, &summary)?,
        Action::WriteManifest { dir, manifest } => {
            let path = Path::new(&dir);
            glom_worker::checkpoint::write_manifest(path, &manifest)?;
            observer.checkpoint(path, manifest.step)?;
        }
        Action::SleepStarted {
            job,
            after_step,
            trigger,
        } => observer.sleep_started(job, after_step, trigger)?,
        Action::SleepCompleted {
            job,
            after_step,
            summary,
        } => observer.sleep_completed(job, after_step, &summary)?,
        Action::WorkerLost { worker_id, reason } => {
            tracing::error!(worker = worker_id, "worker lost: {reason}");
        }
        Action::RollingBack {
            attempt,
            to_step,
            reason: _,
            workers,
            rejoin_timeout,
        } => {
            tracing::warn!(
                attempt,
                to_step,
                "rolling back to step {to_step}: the survivors rejoin; waiting up to {:.0} s \
                 for {workers} workers (cluster.rejoin_seconds), then going on with those there",
                rejoin_timeout.as_secs_f64()
            );
        }
        Action::Restarted(restart) => observer.restarted(&restart)?,
        Action::Abort {
            reason,
            last_checkpoint,
        } => {
            let resume = match last_checkpoint {
                Some(step) => format!(
                    "; the last complete checkpoint is checkpoints/step-{step} of the run \
                     directory: go on from it with --resume"
                ),
                None => "; no checkpoint was written".into(),
            };
            return Err(anyhow!("the run was aborted: {reason}{resume}"));
        }
        Action::Finished { steps } => return Ok(Some(RunEnd { steps })),
    }
    Ok(None)
}

async fn accept_loop(endpoint: Endpoint, events: UnboundedSender<Event>) {
    let mut next_id = 0u64;
    while let Some(incoming) = endpoint.accept().await {
        next_id += 1;
        let conn = ConnId(next_id);
        let events = events.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(connection) => serve(conn, connection, remote, events).await,
                // A client without a certificate of the cluster CA ends here.
                Err(e) => tracing::warn!(%remote, "refused a connection at the TLS handshake: {e}"),
            }
        });
    }
}

/// One control connection: a writer task for what the coordinator sends,
/// and this reader loop for what the worker sends.
async fn serve(
    conn: ConnId,
    connection: Connection,
    remote: SocketAddr,
    events: UnboundedSender<Event>,
) {
    let limits = Limits::default();
    let (send, recv) = match connection.accept_bi().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%remote, "connection closed before a stream: {e}");
            return;
        }
    };
    let (out_tx, out_rx) = unbounded_channel();
    tokio::spawn(writer(connection.clone(), send, out_rx, limits));
    if events
        .send(Event::Connected(conn, out_tx.clone(), remote))
        .is_err()
    {
        return;
    }
    let mut rx = FramedRecv::new(recv, limits);
    let mut first = true;
    let why = loop {
        let body = match rx.recv_body().await {
            Ok(Some(body)) => body,
            Ok(None) => break "the worker closed its stream".to_string(),
            // The connection ended (closed by the worker, or timed out):
            // nothing to answer.
            Err(e @ glom_net::Error::Read(quinn::ReadError::ConnectionLost(_))) => {
                break format!("{e}")
            }
            Err(e) => break bad_input(remote, &out_tx, format!("{e}")),
        };
        match decode_body::<ControlMessage>(&body, &limits) {
            Ok(msg) => {
                first = false;
                if events.send(Event::Message(conn, msg)).is_err() {
                    return;
                }
            }
            Err(e) => {
                // A hello that does not decode may still say its version.
                if first {
                    if let Some(theirs) = hello_version(&body).filter(|&v| v != PROTOCOL_VERSION) {
                        let reason = RefuseReason::VersionMismatch {
                            ours: PROTOCOL_VERSION,
                            theirs,
                        };
                        tracing::warn!(%remote, "refused a worker: {reason}");
                        let _ = out_tx.send(Out::Message(ControlMessage::Refused { reason }));
                        let _ = out_tx.send(Out::close());
                        break "protocol version mismatch".into();
                    }
                }
                break bad_input(remote, &out_tx, format!("unreadable message: {e}"));
            }
        }
    };
    let _ = events.send(Event::Closed(conn, why));
}

/// Log bad input, tell the sender why, and close its connection with the
/// reason.
fn bad_input(remote: SocketAddr, out: &UnboundedSender<Out>, why: String) -> String {
    tracing::warn!(%remote, "closing a control connection on bad input: {why}");
    let _ = out.send(Out::Message(ControlMessage::Error {
        message: format!("bad input: {why}"),
    }));
    let _ = out.send(Out::Close {
        code: BAD_INPUT,
        reason: why.clone(),
    });
    why
}

async fn writer(
    connection: Connection,
    mut send: quinn::SendStream,
    mut out: UnboundedReceiver<Out>,
    limits: Limits,
) {
    // Until told to close, or every sender is gone (the run is over).
    let (code, reason) = loop {
        match out.recv().await {
            Some(Out::Message(msg)) => {
                if let Err(e) = glom_net::send(&mut send, &msg, &limits).await {
                    tracing::debug!("control stream write failed: {e}");
                    return;
                }
            }
            Some(Out::Close { code, reason }) => break (code, reason),
            None => break (0, CLOSED.into()),
        }
    };
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    connection.close(VarInt::from_u32(code), reason.as_bytes());
}
