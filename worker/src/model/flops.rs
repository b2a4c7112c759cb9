//! Exact arithmetic cost of settling and of a training step, from the
//! configuration alone: the matrix products of the nets, of lateral
//! attention and of the batch terms, counted as 2 floating-point operations
//! per multiply-accumulate (the usual convention for GFLOP/s). Element-wise
//! work (biases, activations, layer norm, softmax, the optimiser) is left
//! out: it is memory-bound, and its time shows in the measured rate instead.
//!
//! A backward pass costs twice its forward (one product for the gradient of
//! the input, one for the weights) for every product that carries a
//! gradient: in local learning the students' one-step predictions (front
//! end, bottom-up and top-down nets at every iteration, the decoder, and
//! the autoencoder and neighbour co-distillation predictions when on); under
//! BPTT every product of the settle, lateral attention and the initial
//! bottom-up pass included.

use glom_protocol::config::{Config, Learning, WeightMode};

/// Floating-point operations of one batch of `train.batch_size` images on
/// the whole grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flops {
    /// A settle in inference mode (no learning terms), decoder included.
    pub settle: f64,
    /// One training step with the configured learning mode and terms:
    /// forward, extra learning-only products and backward.
    pub train_step: f64,
}

/// [`Flops`] of `cfg` (its `train.learning`, weight mode and terms).
pub fn flops(cfg: &Config) -> Flops {
    let m = &cfg.model;
    let t = &cfg.train;
    let rows = (cfg.grid_side() * cfg.grid_side() * t.batch_size) as f64;
    let (k, d, h, iters) = (
        m.levels as f64,
        m.dim as f64,
        m.hidden as f64,
        cfg.settle_iterations() as f64,
    );
    let pix = (m.patch * m.patch * cfg.channels()) as f64;
    let mlp = |input: f64, output: f64| 2.0 * rows * (input * h + h * output);
    let code = match (m.weights, m.location_code) {
        (WeightMode::Shared, true) => m.location_code_dim as f64,
        _ => 0.0,
    };
    let front = mlp(pix, d);
    let bu = mlp(d, d);
    let td = mlp(d + code, d);
    let decoder = mlp(d, pix);
    // Scores and the weighted sum over n neighbours, per level.
    let lateral = 4.0 * rows * cfg.lateral_count() as f64 * d;

    let initial = front + (k - 1.0) * bu;
    let students = front + (k - 1.0) * (bu + td);
    let settle = initial + iters * (students + k * lateral) + decoder;

    // Forward products only learning computes: the autoencoder's top-down
    // pass and neighbour co-distillation's bottom-up pass.
    let mut extra_forward = 0.0;
    if t.autoencoder_weight > 0.0 && m.levels > 1 {
        extra_forward += iters * (k - 1.0) * td;
    }
    if t.neighbour_distill_weight > 0.0 && m.levels > 1 {
        extra_forward += iters * (k - 1.0) * bu;
    }
    // The products that carry a gradient in local learning.
    let learned = iters * students + decoder + extra_forward;
    // Batch terms over every student prediction (decorrelation's covariance
    // matrix, InfoNCE's similarities): forward and backward, 3x.
    let predictions = iters * (2.0 * k - 1.0);
    let b = t.batch_size as f64;
    let locations = rows / b;
    let mut batch_terms = 0.0;
    if t.covariance_weight > 0.0 {
        batch_terms += predictions * 2.0 * locations * b * d * d;
    }
    if t.contrastive_weight > 0.0 {
        batch_terms += predictions * 2.0 * locations * b * b * d;
    }
    let train_step = match t.learning {
        Learning::Local => settle + extra_forward + 2.0 * learned + 3.0 * batch_terms,
        Learning::Bptt => 3.0 * (settle + extra_forward + batch_terms),
    };
    Flops { settle, train_step }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Config {
        let mut c = Config::default();
        c.model.levels = 2;
        c.model.dim = 4;
        c.model.hidden = 8;
        c.model.patch = 2;
        c.model.iterations = 1;
        c.model.neighbours = 3;
        c.data.image_size = 4; // a 2x2 grid of RGB 2x2 patches
        c.train.batch_size = 5;
        c.train.variance_weight = 0.0;
        c.train.covariance_weight = 0.0;
        c
    }

    #[test]
    fn a_tiny_configuration_counted_by_hand() {
        let c = tiny();
        // rows = 4 locations x 5 images = 20; pix = 2*2*3 = 12.
        let front = 2.0 * 20.0 * (12.0 * 8.0 + 8.0 * 4.0); // 5120
        let mlp_dd = 2.0 * 20.0 * (4.0 * 8.0 + 8.0 * 4.0); // 2560
        let decoder = 2.0 * 20.0 * (4.0 * 8.0 + 8.0 * 12.0); // 5120
        let lateral = 4.0 * 20.0 * 3.0 * 4.0; // 960 per level
                                              // Initial pass: front + one BU; one iteration: front + BU + TD and
                                              // two levels of lateral attention; then the decoder.
        let settle = (front + mlp_dd) + (front + 2.0 * mlp_dd + 2.0 * lateral) + decoder;
        let f = flops(&c);
        assert_eq!(f.settle, settle);
        // Local: the settle, then the backward (2x) of the iteration's
        // students and the decoder.
        let learned = front + 2.0 * mlp_dd + decoder;
        assert_eq!(f.train_step, settle + 2.0 * learned);
        let mut bptt = c.clone();
        bptt.train.learning = Learning::Bptt;
        assert_eq!(flops(&bptt).train_step, 3.0 * settle);
    }

    #[test]
    fn terms_and_weights_change_the_count_where_they_should() {
        let c = tiny();
        let base = flops(&c);
        let mut nd = c.clone();
        nd.train.neighbour_distill_weight = 1.0;
        // One more BU forward per iteration and level above 0, and its backward.
        assert_eq!(flops(&nd).train_step - base.train_step, 3.0 * 2560.0);
        assert_eq!(flops(&nd).settle, base.settle);
        let mut cov = c.clone();
        cov.train.covariance_weight = 1.0;
        // 3 predictions (front, BU, TD) x 2 x 4 locations x 5 x 4 x 4, x3.
        assert_eq!(
            flops(&cov).train_step - base.train_step,
            3.0 * 3.0 * 2.0 * 4.0 * 5.0 * 16.0
        );
        // Shared weights with a location code widen the top-down input.
        let mut shared = c.clone();
        shared.model.weights = WeightMode::Shared;
        shared.model.location_code = true;
        shared.model.location_code_dim = 2;
        let td = 2.0 * 20.0 * (6.0 * 8.0 + 8.0 * 4.0);
        assert_eq!(flops(&shared).settle - base.settle, td - 2560.0);
        // Attention over every other location of the 2x2 grid: 3, as many
        // as the tiny configuration samples.
        let mut all = c.clone();
        all.model.attention = glom_protocol::config::Attention::All;
        assert_eq!(flops(&all), base);
        all.model.neighbours = 1;
        assert_eq!(flops(&all), base);
    }
}
