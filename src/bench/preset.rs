//! `glom bench --preset`: configurations measured for comparison with
//! other implementations, and the training steps timed for each.
//!
//! A preset is a configuration document under `--config`, the `GLOM_*`
//! variables and `--set` (which may shrink it, as the tests do), over the
//! built-in defaults.

use std::path::Path;

use anyhow::Result;
use glom_protocol::config::{Config, Learning, WeightMode};

use crate::settings;

/// A configuration `glom bench` knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Preset {
    /// The usual benchmark of the public PyTorch port (lucidrains/glom-pytorch):
    /// 3x28x28 images, patch 4, d 64, hidden 256, 5 levels, 10 iterations,
    /// batch 32, attention over the whole grid (`configs/peer.toml`).
    Peer,
}

/// `configs/peer.toml`, built into the binary.
const PEER_TOML: &str = include_str!("../../configs/peer.toml");

impl Preset {
    /// The name `--preset` takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Preset::Peer => "peer",
        }
    }

    /// The configuration: the preset, then `file`, the environment and `sets`.
    pub(crate) fn load(self, file: Option<&Path>, sets: &[String]) -> Result<Config> {
        let (doc, name) = match self {
            Preset::Peer => (PEER_TOML, "--preset peer (configs/peer.toml)"),
        };
        settings::load_with_base(doc, name, file, sets)
    }
}

/// The training steps timed, by row name: with no preset the design's
/// per-location nets learning locally, the same under BPTT and with shared
/// weights; with `peer`, the per-location local step beside the port's own
/// training (shared nets, BPTT, reconstruction alone). The first is the
/// per-location local step, the last the one it is compared with.
pub(crate) fn steps(cfg: &Config, preset: Option<Preset>) -> Vec<(String, Config)> {
    let mut local = cfg.clone();
    local.model.weights = WeightMode::PerLocation;
    local.train.learning = Learning::Local;
    match preset {
        None => {
            let mut bptt = local.clone();
            bptt.train.learning = Learning::Bptt;
            let mut shared = local.clone();
            shared.model.weights = WeightMode::Shared;
            vec![
                ("training step, local".into(), local),
                ("training step, BPTT".into(), bptt),
                ("training step, local, shared weights".into(), shared),
            ]
        }
        Some(Preset::Peer) => vec![
            ("training step, local (per-location nets)".into(), local),
            (
                "training step, peer (shared nets, BPTT, recon only)".into(),
                peer_training(cfg),
            ),
        ],
    }
}

/// The port's training of `cfg`: one set of shared nets, BPTT through
/// every iteration, reconstruction the only term (`configs/shared-bptt.toml`).
fn peer_training(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    c.model.weights = WeightMode::Shared;
    c.train.learning = Learning::Bptt;
    let t = &mut c.train;
    for w in [
        &mut t.distill_weight,
        &mut t.negative_weight,
        &mut t.variance_weight,
        &mut t.covariance_weight,
        &mut t.contrastive_weight,
        &mut t.autoencoder_weight,
        &mut t.neighbour_distill_weight,
    ] {
        *w = 0.0;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use glom_protocol::config::Attention;

    #[test]
    fn the_peer_preset_has_the_ports_shapes() {
        let cfg = Preset::Peer.load(None, &[]).unwrap();
        let m = &cfg.model;
        assert_eq!(
            (cfg.image_side(), cfg.channels(), cfg.grid_side()),
            (28, 3, 7)
        );
        assert_eq!((m.dim, m.hidden, m.levels, m.iterations), (64, 256, 5, 10));
        assert_eq!((m.attention, cfg.lateral_count()), (Attention::All, 48));
        assert_eq!(cfg.train.batch_size, 32);
        let steps = steps(&cfg, Some(Preset::Peer));
        let (local, peer) = (&steps[0].1, &steps[1].1);
        assert_eq!(
            (local.model.weights, local.train.learning),
            (WeightMode::PerLocation, Learning::Local)
        );
        assert_eq!(
            (peer.model.weights, peer.train.learning),
            (WeightMode::Shared, Learning::Bptt)
        );
        let only_recon = glom_worker::learn::term_weights(peer)
            .iter()
            .enumerate()
            .all(|(i, &w)| (i == 0) == (w > 0.0));
        assert!(only_recon, "{:?}", glom_worker::learn::term_weights(peer));
        // Sets go over the preset.
        let small = Preset::Peer
            .load(None, &["model.dim=8".to_string()])
            .unwrap();
        assert_eq!((small.model.dim, small.model.hidden), (8, 256));
    }
}
