//! Adam with decoupled weight decay (AdamW), deterministic and with its
//! state exposed, so checkpoints can store and restore it exactly.
//!
//! The update is elementwise, so in per-location mode each location's nets
//! are optimised independently: no statistic is pooled across locations.

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::error::Result;

/// Hyper-parameters of [`Adam`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamParams {
    /// The usual betas and epsilon with the given rate and decay.
    pub fn new(lr: f64, weight_decay: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }
}

/// AdamW over a fixed list of variables.
pub struct Adam {
    pub params: AdamParams,
    vars: Vec<Var>,
    /// First and second moment estimates, one per variable.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Number of updates applied so far.
    pub t: u64,
}

impl Adam {
    /// An optimiser with zero moments for `vars`.
    pub fn new(vars: Vec<Var>, params: AdamParams) -> Result<Self> {
        let m = vars
            .iter()
            .map(|v| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            params,
            vars,
            m,
            v,
            t: 0,
        })
    }

    /// Apply one update from `grads`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.t += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.t as i32);
        let bc2 = 1.0 - p.beta2.powi(self.t as i32);
        for (i, var) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let m = ((&self.m[i] * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let v = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&m / bc1)?;
            let v_hat = (&v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - p.lr * p.weight_decay))?;
            var.set(&(decayed - (update * p.lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One Adam step from zero moments moves every parameter by exactly
    /// lr * sign(grad) (m_hat = g, v_hat = g^2, so update = g / |g|).
    #[test]
    fn first_step_moves_by_lr_times_sign() {
        let x = Var::new(&[1.0f64, -2.0, 3.0], &Device::Cpu).unwrap();
        let mut opt = Adam::new(
            vec![x.clone()],
            AdamParams {
                eps: 0.0,
                ..AdamParams::new(0.1, 0.0)
            },
        )
        .unwrap();
        // loss = sum(x^2): grad = 2x.
        let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let got: Vec<f64> = x.as_tensor().to_vec1().unwrap();
        for (g, want) in got.iter().zip([0.9, -1.9, 2.9]) {
            assert!((g - want).abs() < 1e-12, "{got:?}");
        }
        assert_eq!(opt.t, 1);
    }
}
