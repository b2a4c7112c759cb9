//! Linear probes: how much class information an embedding carries, and
//! the same probe on raw pixels as a reference.

use candle_core::DType;
use glom_protocol::config::Config;

use super::available;
use crate::analysis::{LinearProbe, ProbeOptions};
use crate::data::{Dataset, Image};
use crate::error::{Error, Result};
use crate::model::Settled;

/// Probe images per split: 0 unless both splits declare classes.
pub(crate) fn probe_count(
    cfg: &Config,
    held_out: &dyn Dataset,
    probe_train: &dyn Dataset,
) -> usize {
    match (held_out.num_classes(), probe_train.num_classes()) {
        (Some(_), Some(_)) => cfg.eval.probe_images,
        _ => 0,
    }
}

/// The same linear probe, with the same images, on the flattened raw pixels.
pub fn raw_pixel_probe(
    cfg: &Config,
    held_out: &dyn Dataset,
    probe_train: &dyn Dataset,
) -> Option<f64> {
    let n = probe_count(cfg, held_out, probe_train);
    let set = |data: &dyn Dataset, count: usize| {
        let mut s = ProbeSet::default();
        for i in 0..count {
            let im = data.get(i);
            s.features.extend_from_slice(&im.pixels);
            s.labels.push(im.label);
        }
        s
    };
    let train = set(probe_train, available(probe_train, n));
    let test = set(held_out, available(held_out, n));
    run_probe(cfg, held_out, &train, &test, held_out.shape().numel())
}

/// Probe features (one row per image) and labels.
#[derive(Debug, Default)]
pub(crate) struct ProbeSet {
    features: Vec<f32>,
    labels: Vec<Option<u32>>,
}

impl ProbeSet {
    /// Add the mean embedding at `level` of the first `take` images of a batch.
    pub(crate) fn extend(
        &mut self,
        settled: &Settled,
        level: usize,
        images: &[Image],
        take: usize,
    ) -> Result<()> {
        let take = take.min(images.len());
        if take == 0 {
            return Ok(());
        }
        let top = settled
            .levels
            .get(level)
            .ok_or_else(|| Error::Shape(format!("the model has no level {level}")))?;
        let mean = top.to_dtype(DType::F32)?.mean(0)?.narrow(0, 0, take)?;
        self.features.extend(mean.flatten_all()?.to_vec1::<f32>()?);
        self.labels.extend(images[..take].iter().map(|im| im.label));
        Ok(())
    }
}

/// Test accuracy of a probe fitted on `train`; None when either set is
/// empty or any label is missing or out of range.
pub(crate) fn run_probe(
    cfg: &Config,
    data: &dyn Dataset,
    train: &ProbeSet,
    test: &ProbeSet,
    dim: usize,
) -> Option<f64> {
    let classes = data.num_classes()?;
    let labels = |s: &ProbeSet| -> Option<Vec<u32>> {
        s.labels
            .iter()
            .map(|l| l.filter(|&l| (l as usize) < classes))
            .collect()
    };
    let (train_labels, test_labels) = (labels(train)?, labels(test)?);
    if train_labels.is_empty() || test_labels.is_empty() {
        return None;
    }
    let opts = ProbeOptions {
        seed: cfg.seed,
        ..ProbeOptions::default()
    };
    let probe = LinearProbe::train(&train.features, dim, &train_labels, classes, &opts);
    Some(probe.accuracy(&test.features, &test_labels))
}
