//! The metrics endpoint of a running `glom train`: it answers a burst of
//! concurrent scrapes, and an address in use stops the run before training.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{get, sample, scrape_when_ready, spawn_train, wait_addr, TINY, TINY_BATCH};

/// Steps completed, from one scrape.
fn steps(addr: SocketAddr) -> f64 {
    let (status, body) = get(addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    sample(&body, "glom_steps_total").unwrap()
}

/// Training images/s over a window of wall time, from the step counter.
fn rate(addr: SocketAddr, during: impl FnOnce()) -> (f64, f64) {
    let (s0, t0) = (steps(addr), Instant::now());
    during();
    let (s1, secs) = (steps(addr), t0.elapsed().as_secs_f64());
    ((s1 - s0) * TINY_BATCH / secs, secs)
}

/// `THREADS` concurrent clients, each sending `REQUESTS` scrapes `pause`
/// apart; every one must get a 200 with the step counter in its body.
fn burst(addr: SocketAddr, pause: Duration) {
    const THREADS: usize = 8;
    const REQUESTS: usize = 50;
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                (0..REQUESTS)
                    .filter(|_| {
                        std::thread::sleep(pause);
                        get(addr, "/metrics").is_ok_and(|(status, body)| {
                            status == 200 && body.contains("glom_steps_total ")
                        })
                    })
                    .count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(ok, THREADS * REQUESTS, "scrapes without a 200 and a body");
}

#[test]
fn endpoint_answers_a_burst_of_scrapes_during_training() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut run = spawn_train(&dir, &["train.steps=1000000"]);
    let addr = wait_addr(&mut run, &dir);
    scrape_when_ready(addr, 20.0);

    // 400 scrapes back to back: the endpoint must answer every one.
    let started = Instant::now();
    burst(addr, Duration::ZERO);
    let back_to_back = started.elapsed().as_secs_f64();
    // Throughput: 400 scrapes spread over 2 s (200 per second, far above
    // any scrape interval) against 2 s without, before and after.
    let window = Duration::from_secs(2);
    let (before, _) = rate(addr, || std::thread::sleep(window));
    let (loaded, secs) = rate(addr, || burst(addr, window / 50));
    let (after, _) = rate(addr, || std::thread::sleep(window));
    let quiet = (before + after) / 2.0;
    println!(
        "400 scrapes back to back in {back_to_back:.2} s; training {loaded:.0} images/s \
         under 400 scrapes in {secs:.1} s, {quiet:.0} images/s without ({before:.0} before, \
         {after:.0} after): {:+.1}%",
        100.0 * (loaded / quiet - 1.0)
    );
    let status = run.interrupt();
    assert!(status.success(), "glom train failed: {status}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert!(summary["steps"].as_u64().unwrap() > 20);
    // The endpoint stopped with the training.
    assert!(get(addr, "/metrics").is_err(), "endpoint still answers");
}

#[test]
fn an_address_in_use_fails_before_training() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_glom"));
    cmd.args(["train", "--no-eval", "--out", dir.to_str().unwrap()]);
    for s in TINY {
        cmd.arg("--set").arg(s);
    }
    cmd.arg("--set").arg(format!("metrics.listen=\"{addr}\""));
    let out = cmd.env("RUST_LOG", "warn").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "trained on a taken address");
    assert!(
        err.contains("metrics.listen") && err.contains(&addr.to_string()),
        "{err}"
    );
    assert!(!dir.exists(), "a failed start left {}", dir.display());
}
