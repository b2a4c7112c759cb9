//! The halo exchange of a networked worker (DESIGN.md section 4).
//!
//! [`HaloPlan`] is pure: from the worker's tile and its peers' tiles it
//! derives which of its own locations each peer needs (the part of the
//! tile inside that peer's halo) and which peer owns each location of its
//! own halo. Every worker derives the same plan from the same assignment,
//! so a frame's location list is known in advance and checked on arrival.
//!
//! [`QuicHalo`] is the engine's [`HaloExchange`] over those plans: `send`
//! cuts the boundary rows out of the tile's state, encodes one frame per
//! peer and hands it to that peer's sender task without waiting; `receive`
//! blocks until every peer's frame of the same step and iteration is in,
//! and assembles the halo in [`Tile::halo`] order. The time blocked there
//! is the halo wait: what overlapping the exchange with the predictions
//! did not hide.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use glom_protocol::codec::{encode, Limits};
use glom_protocol::config::HaloPrecision;
use glom_protocol::halo::{HaloFrame, HaloPayload};
use glom_protocol::message::{PeerMessage, TileAssignment};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{Error, Result};
use crate::model::grid::{Grid, Tile};
use crate::model::HaloExchange;

/// The tile of an assignment, with its halo of `reach` cells.
pub fn tile_of(grid: Grid, t: &TileAssignment, reach: usize) -> Tile {
    Tile::rect(
        grid,
        t.rows.0 as usize..t.rows.1 as usize,
        t.cols.0 as usize..t.cols.1 as usize,
        reach,
    )
}

/// What one worker exchanges with one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPlan {
    pub worker_id: u32,
    /// Own locations the peer reads (inside its halo), as positions in the
    /// own tile's order, ascending.
    pub send_rows: Vec<usize>,
    /// Their global ids: the `locations` of every frame sent to the peer.
    pub send_locations: Vec<u32>,
    /// Global ids of the halo locations the peer owns: the `locations` of
    /// every frame it sends here.
    pub recv_locations: Vec<u32>,
}

/// Who sends what to whom, for one tile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaloPlan {
    pub peers: Vec<PeerPlan>,
    /// Halo locations of the tile, in [`Tile::halo`] order.
    pub halo: Vec<usize>,
}

impl HaloPlan {
    /// The plan of `tile` among `peers` (worker id and tile of each), all
    /// tiles with halos of `reach` cells. Errors if a halo location has no
    /// owner among the peers (the assignment does not cover the grid).
    pub fn new(tile: &Tile, peers: &[(u32, TileAssignment)], reach: usize) -> Result<Self> {
        let mut plans = Vec::with_capacity(peers.len());
        let mut owned = vec![false; tile.halo.len()];
        let halo_pos: HashMap<usize, usize> =
            tile.halo.iter().enumerate().map(|(i, &g)| (g, i)).collect();
        for (id, assignment) in peers {
            let theirs = tile_of(tile.grid, assignment, reach);
            let (send_rows, send_locations): (Vec<usize>, Vec<u32>) = tile
                .locs
                .iter()
                .enumerate()
                .filter(|(_, g)| theirs.halo.binary_search(g).is_ok())
                .map(|(i, &g)| (i, g as u32))
                .unzip();
            let mut recv_locations = Vec::new();
            for &g in &theirs.locs {
                if let Some(&i) = halo_pos.get(&g) {
                    owned[i] = true;
                    recv_locations.push(g as u32);
                }
            }
            plans.push(PeerPlan {
                worker_id: *id,
                send_rows,
                send_locations,
                recv_locations,
            });
        }
        if let Some(i) = owned.iter().position(|o| !o) {
            return Err(Error::Runtime(format!(
                "halo location {} of the tile has no owner among its {} peers",
                tile.halo[i],
                peers.len()
            )));
        }
        Ok(Self {
            peers: plans,
            halo: tile.halo.clone(),
        })
    }

    /// Values a step puts on the wire from this tile (payload only):
    /// levels x d x halo locations sent x T x batch x bytes per value.
    pub fn payload_bytes_per_step(
        &self,
        levels: usize,
        dim: usize,
        iterations: usize,
        batch: usize,
        precision: HaloPrecision,
    ) -> u64 {
        let per_value = match precision {
            HaloPrecision::F32 => 4,
            HaloPrecision::Bf16 => 2,
        };
        let locations: usize = self.peers.iter().map(|p| p.send_locations.len()).sum();
        (levels * dim * locations * iterations * batch * per_value) as u64
    }
}

/// A frame as it came off a peer's stream, with the bytes it took there.
#[derive(Debug)]
pub struct Arrived {
    pub frame: HaloFrame,
    pub wire_bytes: u64,
}

/// One peer's side of a [`QuicHalo`].
pub struct PeerLink {
    pub plan: PeerPlan,
    /// Encoded frames to the peer's sender task.
    pub outbound: UnboundedSender<Vec<u8>>,
    /// Frames from the peer's receiver task, or why it stopped.
    pub inbound: Receiver<std::result::Result<Arrived, String>>,
}

/// Traffic and waiting of the current step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HaloStats {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub wait: Duration,
}

/// The engine's [`HaloExchange`] over QUIC streams (see the module docs).
pub struct QuicHalo {
    worker_id: u32,
    links: Vec<PeerLink>,
    halo: Vec<usize>,
    /// Position in `halo` of every halo location.
    halo_pos: HashMap<u32, usize>,
    precision: HaloPrecision,
    limits: Limits,
    /// Longest wait for one peer's frame before giving up.
    timeout: Duration,
    /// Set when the worker abandons its work (the cluster rolls back): a
    /// wait for a frame then ends at once.
    cancel: Arc<AtomicBool>,
    device: Device,
    dtype: DType,
    step: u64,
    /// Shape of the state sent this iteration: levels, batch, dim.
    shape: Option<(usize, usize, usize)>,
    stats: HaloStats,
}

impl QuicHalo {
    pub fn new(
        worker_id: u32,
        plan: &HaloPlan,
        links: Vec<PeerLink>,
        precision: HaloPrecision,
        timeout: Duration,
        device: &Device,
        dtype: DType,
    ) -> Self {
        Self {
            worker_id,
            halo_pos: plan
                .halo
                .iter()
                .enumerate()
                .map(|(i, &g)| (g as u32, i))
                .collect(),
            halo: plan.halo.clone(),
            links,
            precision,
            limits: Limits::default(),
            timeout,
            cancel: Arc::new(AtomicBool::new(false)),
            device: device.clone(),
            dtype,
            step: 0,
            shape: None,
            stats: HaloStats::default(),
        }
    }

    /// The flag that, once set, ends any wait for a frame with an error.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Tag the frames of the next settle with `step`; resets the stats.
    pub fn begin_step(&mut self, step: u64) {
        self.step = step;
        self.stats = HaloStats::default();
    }

    /// Traffic and waiting since [`QuicHalo::begin_step`].
    pub fn stats(&self) -> HaloStats {
        self.stats
    }

    fn frame_for(
        &self,
        link: &PeerLink,
        iteration: usize,
        own: &[Vec<f32>],
        b: usize,
        d: usize,
    ) -> HaloFrame {
        let rows = &link.plan.send_rows;
        let mut values = Vec::with_capacity(own.len() * rows.len() * b * d);
        for level in own {
            for &r in rows {
                values.extend_from_slice(&level[r * b * d..(r + 1) * b * d]);
            }
        }
        let payload = match self.precision {
            HaloPrecision::F32 => HaloPayload::F32(values),
            HaloPrecision::Bf16 => HaloPayload::bf16_from_f32(&values),
        };
        HaloFrame {
            step: self.step,
            iteration: iteration as u32,
            from_worker: self.worker_id,
            levels: own.len() as u32,
            locations: link.plan.send_locations.clone(),
            batch: b as u32,
            dim: d as u32,
            payload,
        }
    }

    /// Check an arrived frame against what this step and iteration expect.
    fn check(&self, link: &PeerLink, f: &HaloFrame, iteration: usize) -> Result<()> {
        let (levels, b, d) = self.shape.unwrap_or_default();
        let peer = link.plan.worker_id;
        let bad = |what: String| {
            Err(Error::Runtime(format!(
                "halo frame from worker {peer} for step {} iteration {iteration}: {what}",
                self.step
            )))
        };
        if (f.step, f.iteration as usize) != (self.step, iteration) {
            return bad(format!(
                "got step {} iteration {} instead",
                f.step, f.iteration
            ));
        }
        if f.from_worker != peer {
            return bad(format!("it claims to come from worker {}", f.from_worker));
        }
        if (f.levels as usize, f.batch as usize, f.dim as usize) != (levels, b, d) {
            return bad(format!(
                "shape {}x{}x{} (levels x batch x dim), expected {levels}x{b}x{d}",
                f.levels, f.batch, f.dim
            ));
        }
        if f.locations != link.plan.recv_locations {
            return bad(format!(
                "{} locations that are not the {} the plan gives this peer",
                f.locations.len(),
                link.plan.recv_locations.len()
            ));
        }
        if let Err(e) = f.validate() {
            return bad(e.to_string());
        }
        Ok(())
    }
}

impl HaloExchange for QuicHalo {
    fn send(&mut self, iteration: usize, own: &[Tensor]) -> Result<()> {
        let Some(first) = own.first() else {
            return Ok(());
        };
        let (_, b, d) = first.dims3()?;
        self.shape = Some((own.len(), b, d));
        if self.links.is_empty() {
            return Ok(());
        }
        let values: Vec<Vec<f32>> = own
            .iter()
            .map(|t| Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?))
            .collect::<Result<_>>()?;
        for link in &self.links {
            let frame = self.frame_for(link, iteration, &values, b, d);
            let bytes = encode(&PeerMessage::Halo(frame), &self.limits)
                .map_err(|e| Error::Runtime(format!("cannot encode a halo frame: {e}")))?;
            self.stats.bytes_sent += bytes.len() as u64;
            link.outbound.send(bytes).map_err(|_| {
                Error::Runtime(format!(
                    "the connection to worker {} is closed",
                    link.plan.worker_id
                ))
            })?;
        }
        Ok(())
    }

    fn receive(&mut self, iteration: usize) -> Result<Vec<Tensor>> {
        let Some((levels, b, d)) = self.shape else {
            return Err(Error::Runtime("halo receive before send".into()));
        };
        if self.halo.is_empty() {
            return Ok(Vec::new());
        }
        let h = self.halo.len();
        let mut out = vec![vec![0f32; h * b * d]; levels];
        let started = Instant::now();
        for i in 0..self.links.len() {
            let link = &self.links[i];
            let peer = link.plan.worker_id;
            let arrived = match wait(&link.inbound, self.timeout, &self.cancel) {
                Ok(Ok(a)) => a,
                Ok(Err(why)) => {
                    return Err(Error::Runtime(format!(
                        "the halo stream from worker {peer} failed: {why}"
                    )))
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::Runtime(format!(
                        "no halo from worker {peer} for {:?} (step {}, iteration {iteration})",
                        self.timeout, self.step
                    )))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Runtime(format!(
                        "the halo stream from worker {peer} ended (step {}, iteration {iteration})",
                        self.step
                    )))
                }
            };

            self.check(link, &arrived.frame, iteration)?;
            self.stats.bytes_received += arrived.wire_bytes;
            let f = arrived.frame;
            let values = f.payload.to_f32();
            let n = f.locations.len();
            for (level, dst) in out.iter_mut().enumerate() {
                for (j, g) in f.locations.iter().enumerate() {
                    let pos = self.halo_pos[g];
                    let src = (level * n + j) * b * d;
                    dst[pos * b * d..(pos + 1) * b * d].copy_from_slice(&values[src..src + b * d]);
                }
            }
        }
        self.stats.wait += started.elapsed();
        out.into_iter()
            .map(|v| Ok(Tensor::from_vec(v, (h, b, d), &self.device)?.to_dtype(self.dtype)?))
            .collect()
    }
}

/// How often a wait for a frame looks at its cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// The next item of `inbound`, waiting up to `timeout`; a set `cancel`
/// ends the wait early as [`RecvTimeoutError::Disconnected`].
fn wait<T>(
    inbound: &Receiver<T>,
    timeout: Duration,
    cancel: &AtomicBool,
) -> std::result::Result<T, RecvTimeoutError> {
    let deadline = Instant::now() + timeout;
    loop {
        if cancel.load(Ordering::SeqCst) {
            return Err(RecvTimeoutError::Disconnected);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RecvTimeoutError::Timeout);
        }
        match inbound.recv_timeout(left.min(CANCEL_POLL)) {
            Err(RecvTimeoutError::Timeout) => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(rows: (u32, u32), cols: (u32, u32)) -> TileAssignment {
        TileAssignment { rows, cols }
    }

    #[test]
    fn plans_of_two_halves_mirror_each_other() {
        let grid = Grid::square(4);
        let left = assignment((0, 4), (0, 2));
        let right = assignment((0, 4), (2, 4));
        let a = HaloPlan::new(&tile_of(grid, &left, 1), &[(1, right)], 1).unwrap();
        let b = HaloPlan::new(&tile_of(grid, &right, 1), &[(0, left)], 1).unwrap();
        // Reach 1: the left tile sends its column 1, the right its column 2.
        assert_eq!(a.peers[0].send_locations, [1, 5, 9, 13]);
        assert_eq!(b.peers[0].send_locations, [2, 6, 10, 14]);
        assert_eq!(a.peers[0].send_locations, b.peers[0].recv_locations);
        assert_eq!(b.peers[0].send_locations, a.peers[0].recv_locations);
        assert_eq!(a.peers[0].send_rows, [1, 3, 5, 7]);
        assert_eq!(a.halo, [2, 6, 10, 14]);
        assert_eq!(
            a.payload_bytes_per_step(5, 32, 6, 16, HaloPrecision::F32),
            5 * 32 * 4 * 6 * 16 * 4
        );
    }

    #[test]
    fn a_halo_cell_without_owner_is_an_error() {
        let grid = Grid::square(4);
        let left = assignment((0, 4), (0, 2));
        let e = HaloPlan::new(&tile_of(grid, &left, 1), &[], 1).unwrap_err();
        assert!(e.to_string().contains("no owner"), "{e}");
    }
}
