//! The device a model's tensors live on, from `train.device`: the CPU, or
//! a CUDA GPU when the crate is built with its `cuda` feature (candle's
//! CUDA backend; data and parameters stay f32 either way).

use candle_core::Device;
use glom_protocol::config::{Config, DeviceSpec};

use crate::error::{Error, Result};

/// Whether this build can use a CUDA GPU.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// The device `cfg.train.device` names; an error naming the key when the
/// binary was built without the `cuda` feature or the GPU cannot be opened.
pub fn device(cfg: &Config) -> Result<Device> {
    let d = &cfg.train.device;
    match cfg.train.device_spec()? {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(_) if !CUDA_BUILT => Err(Error::Config(glom_protocol::Error::config(
            "train.device",
            format!(
                "{d:?}: this binary was built without the `cuda` feature, so only \"cpu\" \
                 is available (build with `cargo build --release --features cuda` on a machine \
                 with the CUDA toolkit)"
            ),
        ))),
        DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| {
            Error::Config(glom_protocol::Error::config(
                "train.device",
                format!("{d:?}: GPU {n} cannot be used: {e}"),
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_by_default_and_a_gpu_only_in_a_cuda_build() {
        let mut cfg = Config::default();
        assert!(device(&cfg).unwrap().is_cpu());
        cfg.train.device = "cuda:0".into();
        if !CUDA_BUILT {
            let e = device(&cfg).unwrap_err().to_string();
            assert!(
                e.contains("train.device") && e.contains("without the `cuda` feature"),
                "{e}"
            );
        }
        cfg.train.device = "tpu".into();
        assert!(device(&cfg)
            .unwrap_err()
            .to_string()
            .contains("train.device"));
    }
}
