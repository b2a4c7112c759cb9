//! Membership: connections, hellos, the start of the run, departures.
//!
//! A hello is checked with [`check_hello`] (protocol version, then config
//! hash) and a mismatch is refused on that connection alone. Admitted
//! workers wait until `workers_expected` of them joined; then worker ids
//! are given in join order, worker `i` gets tile `i`, and each is sent
//! `Welcome` then `Assign` with the peers whose tiles intersect its halo.
//! Later hellos are refused `Full`. After a lost worker the cluster is
//! `Joining` again ([`crate::recovery`]): the survivors' new hellos and any
//! replacement's are admitted the same way.

use std::time::Instant;

use glom_protocol::message::{check_hello, Assign, ControlMessage, Hello, PeerInfo, RefuseReason};

use crate::conns::Role;
use crate::halo::{peers_of, tile_assignment};
use crate::state::{Action, ConnId, Coordinator, LostReason, Stage, Worker};

impl Coordinator {
    /// A connection was opened (its TLS handshake already passed).
    pub fn handle_connect(&mut self, conn: ConnId, now: Instant) {
        self.conns.insert(conn, now);
    }

    /// A connection was closed or failed. A member of the running cluster
    /// is lost; anyone else simply leaves.
    pub fn handle_disconnect(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.remove(conn) else {
            return;
        };
        self.waiting.retain(|&c| c != conn);
        if let Role::Worker(id) = c.role {
            self.workers[id as usize].connected = false;
            self.lose(id, LostReason::Disconnected, now);
        }
    }

    /// A message arrived on `conn`. Any message counts as proof of life.
    pub fn handle_message(&mut self, conn: ConnId, msg: ControlMessage, now: Instant) {
        let Some(c) = self.conns.touch(conn, now) else {
            return; // already closed by us: late traffic
        };
        match (&c.role, msg) {
            (_, ControlMessage::Heartbeat { .. }) => {}
            (Role::New, ControlMessage::Hello(hello)) => self.on_hello(conn, hello, now),
            (Role::Worker(id), msg) => {
                let id = *id;
                self.on_worker_message(id, msg, now);
            }
            (Role::Waiting(_), ControlMessage::Shutdown { .. } | ControlMessage::Error { .. }) => {
                self.close(conn)
            }
            (_, msg) => {
                let message = format!("unexpected {} before the run started", msg.kind());
                self.drop_conn(conn, LostReason::ProtocolViolation { message }, now);
            }
        }
    }

    fn on_worker_message(&mut self, id: u32, msg: ControlMessage, now: Instant) {
        if self.is_over() {
            return; // late reports after the end or an abort change nothing
        }
        match msg {
            ControlMessage::StepDone { step, metrics } => self.on_step_done(id, step, metrics, now),
            ControlMessage::CheckpointAck { step, shard } => {
                self.on_checkpoint_ack(id, step, shard, now)
            }
            ControlMessage::SleepDone(done) => self.on_sleep_done(id, done, now),
            ControlMessage::Error { message } => {
                self.lose(id, LostReason::ReportedError { message }, now)
            }
            ControlMessage::Shutdown { reason } => {
                self.lose(id, LostReason::ShutDown { reason }, now)
            }
            other => {
                let message = format!("unexpected {} from worker {id}", other.kind());
                self.lose(id, LostReason::ProtocolViolation { message }, now);
            }
        }
    }

    fn refuse(&mut self, conn: ConnId, reason: RefuseReason) {
        self.send(
            conn,
            ControlMessage::Refused {
                reason: reason.clone(),
            },
        );
        self.close(conn);
        self.emit(Action::Refused { conn, reason });
    }

    fn on_hello(&mut self, conn: ConnId, hello: Hello, now: Instant) {
        if let Err(reason) = check_hello(&hello, &self.config_hash) {
            return self.refuse(conn, reason);
        }
        if !matches!(self.stage, Stage::Joining) {
            let full = self.workers.iter().all(|w| w.connected);
            let reason = if full {
                RefuseReason::Full
            } else {
                RefuseReason::AlreadyStarted
            };
            return self.refuse(conn, reason);
        }
        if let Some(role) = self.conns.role_mut(conn) {
            *role = Role::Waiting(hello);
        }
        self.waiting.push(conn);
        if self.waiting.len() == self.tiles.len() {
            self.start(now);
        }
    }

    /// Every expected worker joined (or, after a restart, the rejoin
    /// deadline passed): give out ids, tiles and peers.
    pub(crate) fn start(&mut self, now: Instant) {
        self.restarted();
        let mut hellos = Vec::new();
        for (id, conn) in std::mem::take(&mut self.waiting).into_iter().enumerate() {
            let role = self
                .conns
                .role_mut(conn)
                .expect("waiting connections are open");
            let Role::Waiting(hello) = std::mem::replace(role, Role::Worker(id as u32)) else {
                unreachable!("only admitted connections wait");
            };
            self.workers.push(Worker {
                conn,
                name: hello.worker_name.clone(),
                tile: tile_assignment(&self.tiles[id]),
                done: self.completed,
                connected: true,
            });
            hellos.push(hello);
        }
        let mut assignments = Vec::new();
        for id in 0..self.workers.len() {
            let peers = peers_of(&self.tiles, id, self.reach)
                .into_iter()
                .map(|j| PeerInfo {
                    worker_id: j as u32,
                    addr: hellos[j].peer_addr.clone(),
                    tile: self.workers[j].tile,
                })
                .collect();
            let assign = Assign {
                worker_id: id as u32,
                tile: self.workers[id].tile,
                reach: self.reach as u32,
                peers,
                config_hash: self.config_hash.clone(),
                resume: self.settings.resume.clone(),
                attempt: self.attempt,
            };
            let conn = self.workers[id].conn;
            self.send(
                conn,
                ControlMessage::Welcome {
                    worker_id: id as u32,
                },
            );
            self.send(conn, ControlMessage::Assign(assign.clone()));
            assignments.push((self.workers[id].name.clone(), assign));
        }
        self.emit(Action::Started { assignments });
        self.stage = Stage::Running;
        self.drive(now);
    }
}
