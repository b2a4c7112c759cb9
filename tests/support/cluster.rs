//! Helpers of the cluster tests: `glom train` on a few workers, a
//! coordinator and workers as separate processes, and what a run leaves
//! (checkpoint tensors as bits, metrics records).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use serde_json::Value;

use super::{ok, Running, TINY};

pub(crate) fn glom() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_glom"));
    cmd.env("RUST_LOG", "info");
    cmd
}

pub(crate) fn sets(cmd: &mut Command, extra: &[&str]) {
    for s in TINY.iter().chain(extra) {
        cmd.arg("--set").arg(s);
    }
}

/// `glom train` with [`TINY`] on `workers` workers.
pub(crate) fn train(dir: &Path, workers: usize, extra: &[&str]) -> Output {
    let mut cmd = glom();
    cmd.args(["train", "--no-eval", "--out", dir.to_str().unwrap()])
        .args(["--workers", &workers.to_string()]);
    sets(&mut cmd, extra);
    cmd.output().unwrap()
}

/// Every tensor of every shard of checkpoint `dir`, by name, as raw bits.
pub(crate) fn tensors(dir: &Path) -> BTreeMap<String, Vec<u32>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            for (name, t) in candle_core::safetensors::load(&path, &Device::Cpu).unwrap() {
                let bits = t
                    .to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                assert!(out.insert(name.clone(), bits).is_none(), "{name} twice");
            }
        }
    }
    out
}

/// The awake records of `metrics.jsonl` (in file order, across restarts)
/// without what depends on timing or on the tiling.
pub(crate) fn records(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"phase\":\"awake\""))
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            // Halo bytes depend on the tiling too.
            for k in super::TIMING_KEYS.iter().chain(&["halo_bytes"]) {
                assert!(o.remove(*k).is_some(), "record without {k}: {l}");
            }
            v
        })
        .collect()
}

/// Certificates for a cluster of `workers` workers.
pub(crate) fn certs(dir: &Path, workers: usize) -> PathBuf {
    let certs = dir.join("certs");
    ok(&glom()
        .args(["certs", "init", "--out", certs.to_str().unwrap()])
        .args(["--workers", &workers.to_string()])
        .output()
        .unwrap());
    certs
}

/// Start `glom coordinator` on a free loopback port; its address once bound.
pub(crate) fn coordinator(
    dir: &Path,
    certs: &Path,
    workers: usize,
    extra: &[&str],
) -> (Running, String) {
    let run = dir.join("run");
    let log = std::fs::File::create(dir.join("coordinator.log")).unwrap();
    let mut cmd = glom();
    cmd.args(["coordinator", "--no-eval", "--listen", "127.0.0.1:0"])
        .args(["--certs", certs.to_str().unwrap()])
        .args(["--workers", &workers.to_string()])
        .args(["--out", run.to_str().unwrap()]);
    sets(&mut cmd, extra);
    cmd.stdout(Stdio::null()).stderr(Stdio::from(log));
    let mut running = Running {
        child: cmd.spawn().unwrap(),
        name: "glom coordinator",
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(addr) = std::fs::read_to_string(run.join("coordinator_addr.txt")) {
            return (running, addr.trim().to_string());
        }
        if let Some(status) = running.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.join("coordinator.log")).unwrap();
            panic!("the coordinator exited ({status}): {log}");
        }
        assert!(Instant::now() < deadline, "the coordinator never bound");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start `glom worker` `name` against `addr`.
pub(crate) fn worker(dir: &Path, certs: &Path, addr: &str, name: &str, extra: &[&str]) -> Running {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut cmd = glom();
    cmd.args(["worker", "--coordinator", addr, "--name", name])
        .args(["--certs", certs.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"]);
    sets(&mut cmd, extra);
    cmd.stdout(Stdio::null()).stderr(Stdio::from(log));
    Running {
        child: cmd.spawn().unwrap(),
        name: "glom worker",
    }
}

/// Wait for `p` to exit successfully (its log in the panic if not).
pub(crate) fn wait_ok(mut p: Running, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(status.success(), "{} failed ({status}): {text}", p.name);
            return;
        }
        assert!(Instant::now() < deadline, "{} did not finish", p.name);
        std::thread::sleep(Duration::from_millis(50));
    }
}
