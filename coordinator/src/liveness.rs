//! Liveness: heartbeats both ways, silent connections, lost workers.
//!
//! Any message counts as proof of life. A connection silent for longer
//! than [`crate::Settings::heartbeat_timeout`] is dropped: before the start
//! it simply leaves; a member of the running cluster is lost, which emits
//! [`Action::WorkerLost`] and rolls the cluster back to its last complete
//! checkpoint ([`crate::recovery`]), or, once
//! [`crate::Settings::max_restarts`] restarts are spent, emits
//! [`Action::Abort`] and tells the others to shut down
//! (`Abort::last_checkpoint` says where a rerun would resume).

use std::time::Instant;

use glom_protocol::message::ControlMessage;

use crate::conns::Role;
use crate::state::{Action, ConnId, Coordinator, LostReason, Stage};

impl Coordinator {
    /// When [`Coordinator::handle_timeout`] must be called next: the
    /// earliest heartbeat deadline, heartbeat to send or `sleep.timetable`
    /// entry; `None` once the run is over.
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.is_over() {
            return None;
        }
        let deadline = self
            .conns
            .oldest()
            .map(|seen| seen + self.settings.heartbeat_timeout);
        deadline
            .into_iter()
            .chain([self.next_heartbeat])
            .chain(self.sleep_deadline())
            .chain(self.rejoin_deadline())
            .min()
    }

    /// Declare silent connections lost, send due heartbeats, and start a
    /// sleep job the timetable made due (at the next step boundary).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_over() {
            return;
        }
        let silent = self.conns.silent(now, self.settings.heartbeat_timeout);
        for (conn, silent) in silent {
            self.drop_conn(conn, LostReason::Silent { silent }, now);
        }
        if now >= self.next_heartbeat && !self.is_over() {
            let now_ms = now.saturating_duration_since(self.started_at).as_millis() as u64;
            let members: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| !matches!(c.role, Role::New))
                .map(|(id, _)| id)
                .collect();
            for conn in members {
                self.send(conn, ControlMessage::Heartbeat { now_ms });
            }
            self.next_heartbeat = now + self.settings.heartbeat_interval;
        }
        if !self.is_over() {
            self.poll_rejoin(now);
        }
        if !self.is_over() {
            self.poll_timetable(now);
            self.drive(now);
        }
    }

    /// End a connection that misbehaved or went silent: a cluster member is
    /// lost, anyone else is told why and closed.
    pub(crate) fn drop_conn(&mut self, conn: ConnId, reason: LostReason, now: Instant) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        match c.role {
            Role::Worker(id) => self.lose(id, reason, now),
            Role::New | Role::Waiting(_) => {
                self.send(
                    conn,
                    ControlMessage::Error {
                        message: reason.to_string(),
                    },
                );
                self.close(conn);
            }
        }
    }

    /// Worker `id` is gone: report it, then roll the cluster back to its
    /// last complete checkpoint, or abort once the restarts are spent.
    pub(crate) fn lose(&mut self, id: u32, reason: LostReason, now: Instant) {
        if self.is_over() {
            return;
        }
        let w = &mut self.workers[id as usize];
        let (conn, name, connected) = (w.conn, w.name.clone(), w.connected);
        w.connected = false;
        if connected {
            self.send(
                conn,
                ControlMessage::Error {
                    message: reason.to_string(),
                },
            );
            self.close(conn);
        }
        let why = format!("worker {id} ({name}) lost: {reason}");
        self.emit(Action::WorkerLost {
            worker_id: id,
            reason: reason.clone(),
        });
        if self.attempt < self.settings.max_restarts {
            return self.restart(why, &reason, now);
        }
        let spent = match self.settings.max_restarts {
            0 => " (automatic recovery is off: cluster.max_restarts = 0)".to_string(),
            n => format!(" after {n} restarts (cluster.max_restarts = {n})"),
        };
        self.abort(format!("{why}{spent}"));
    }

    /// Stop the run: the connected workers are told to shut down.
    pub(crate) fn abort(&mut self, reason: String) {
        self.stage = Stage::Aborted;
        self.rejoin = None;
        for conn in std::mem::take(&mut self.waiting) {
            self.send(
                conn,
                ControlMessage::Shutdown {
                    reason: reason.clone(),
                },
            );
            self.close(conn);
        }
        self.broadcast(ControlMessage::Shutdown {
            reason: reason.clone(),
        });
        let last_checkpoint = self.last_checkpoint;
        self.emit(Action::Abort {
            reason,
            last_checkpoint,
        });
    }
}
