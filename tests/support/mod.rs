//! Helpers of the metrics tests: a `glom train` running in the background,
//! its endpoint's address, plain HTTP/1.0 GETs, and optional tools.

#![allow(dead_code)] // each test crate uses its own subset

pub(crate) mod cluster;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A two-step run of a tiny model on 16x16 scenes: 2 levels, 2
/// iterations, a 4x4 grid (the parse and checkpoint-plot tests).
pub(crate) const TWO_STEPS: &[&str] = &[
    "train.steps=2",
    "model.levels=2",
    "model.dim=8",
    "model.hidden=16",
    "model.iterations=2",
    "data.image_size=16",
    "eval.images=4",
    "eval.probe_images=8",
    // Tests run in parallel: each endpoint takes a free port.
    "metrics.listen=127.0.0.1:0",
];

/// A small, fast model (a few milliseconds per step).
pub(crate) const TINY: &[&str] = &[
    "model.levels=3",
    "model.dim=8",
    "model.hidden=16",
    "model.iterations=3",
    "data.image_size=16",
    "train.batch_size=4",
    "train.log_every=50",
    "checkpoint.every_steps=0",
    "metrics.listen=127.0.0.1:0",
    "metrics.every_steps=2",
];

/// Batch size in [`TINY`].
pub(crate) const TINY_BATCH: f64 = 4.0;

/// A child process killed when dropped (a failing test leaves nothing running).
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) name: &'static str,
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Running {
    /// Ask for a clean stop as Ctrl-C does (SIGINT) and wait for the exit.
    pub(crate) fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -INT {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not stop", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Start `glom train --no-eval --out dir` with [`TINY`] plus `extra` sets;
/// its stderr goes to `dir.log`.
pub(crate) fn spawn_train(dir: &Path, extra: &[&str]) -> Running {
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_glom"));
    cmd.args(["train", "--no-eval", "--out", dir.to_str().unwrap()]);
    for s in TINY.iter().chain(extra) {
        cmd.arg("--set").arg(s);
    }
    cmd.env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    Running {
        child: cmd.spawn().expect("the glom binary runs"),
        name: "glom train",
    }
}

/// The endpoint address `glom train` wrote to `dir/metrics_addr.txt`.
pub(crate) fn wait_addr(run: &mut Running, dir: &Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("metrics_addr.txt")) {
            if let Ok(addr) = text.trim().parse() {
                return addr;
            }
        }
        if let Some(status) = run.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
            panic!("glom train exited ({status}) before serving metrics: {log}");
        }
        assert!(Instant::now() < deadline, "no metrics_addr.txt");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` over HTTP/1.0: status code and body.
pub(crate) fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Value of the unlabelled sample `name` in a text exposition.
pub(crate) fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Scrape until the endpoint reports the per-level measures and at least
/// `min_steps` steps; the exposition then holds every metric a run exports.
pub(crate) fn scrape_when_ready(addr: SocketAddr, min_steps: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = get(addr, "/metrics").expect("the endpoint answers");
        assert_eq!(status, 200);
        let steps = sample(&body, "glom_steps_total").unwrap_or(0.0);
        if steps >= min_steps && body.contains("glom_embedding_effective_rank{") {
            return body;
        }
        assert!(Instant::now() < deadline, "metrics never appeared: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `/usr/bin/<tool>` if installed; `None` (after printing why) when it is
/// missing and `REQUIRE_PROMETHEUS` is unset; a failure when it is set.
pub(crate) fn tool(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin").join(name);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("REQUIRE_PROMETHEUS").is_none(),
        "{} is required but missing: apt-get install prometheus",
        path.display()
    );
    eprintln!(
        "skipped: {} missing (apt-get install prometheus)",
        path.display()
    );
    None
}

/// The repository root (where `scripts/` and `docs/` are).
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Keys of a `metrics.jsonl` record that depend on timing, not on what
/// was computed.
pub(crate) const TIMING_KEYS: [&str; 4] = [
    "images_per_s",
    "wall_seconds",
    "step_seconds",
    "halo_wait_fraction",
];

/// `glom ARGS --set S ...` (quiet: `RUST_LOG=warn`), ready to run.
pub(crate) fn glom(args: &[&str], sets: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_glom"));
    cmd.args(args);
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// The stdout of a `glom` run that must succeed (its stderr in the panic if not).
pub(crate) fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "glom failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stderr of a `glom` run that must fail.
pub(crate) fn failure(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "glom succeeded but should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
