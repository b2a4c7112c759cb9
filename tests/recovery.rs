//! Automatic recovery end to end (DESIGN.md section 7): a worker that
//! fails, panics or is killed with SIGKILL mid-run rolls the cluster back
//! to its last checkpoint, and the run finishes by itself, with a
//! replacement or on the survivors, with the bits of the run that never
//! failed.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cluster::{certs, coordinator, glom, records, tensors, train, wait_ok, worker};
use support::ok;

/// Steps and checkpoints of every run here.
const RUN: [&str; 3] = [
    "train.steps=10",
    "checkpoint.every_steps=5",
    "train.log_every=1",
];

/// The `"phase": "restart"` records of a run.
fn restarts(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["phase"] == "restart")
        .collect()
}

/// `dir`'s final weights and optimiser state, and its records after the
/// restart, are those of the uninterrupted run `whole` (whose records
/// after step 5 are the last 5).
fn same_as(whole: &Path, dir: &Path) {
    let (a, b) = (
        tensors(&whole.join("checkpoints/final")),
        tensors(&dir.join("checkpoints/final")),
    );
    assert_eq!(a.len(), b.len());
    let differ: Vec<&String> = a
        .keys()
        .filter(|k| a[*k] != b.get(*k).cloned().unwrap_or_default())
        .collect();
    assert!(
        differ.is_empty(),
        "{} tensors differ, e.g. {:?}",
        differ.len(),
        &differ[..differ.len().min(3)]
    );
    let (w, r) = (records(whole), records(dir));
    assert_eq!(
        r[r.len() - 5..],
        w[w.len() - 5..],
        "the records after the rollback"
    );
}

/// In `glom train`, a worker whose step fails reports it and joins again;
/// one whose compute thread panics is replaced by a new in-process worker.
/// Either way the cluster goes back to checkpoint 5 once, and the run ends
/// with the uninterrupted run's bits.
#[test]
fn an_in_process_worker_that_fails_or_panics_costs_a_rollback_and_no_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    ok(&train(&whole, 2, &RUN));
    assert!(restarts(&whole).is_empty());
    // A panicked worker's connection closes while its neighbour finds
    // the halo stream from it ended; a worker whose step fails reports it
    // and joins again on a new connection, closing the old one. Whichever
    // the coordinator hears first is the recorded cause.
    for (fault, causes) in [
        ("worker-1:7", &["reported_error", "disconnected"][..]),
        ("worker-0:6:panic", &["disconnected", "reported_error"][..]),
    ] {
        let dir = tmp.path().join(fault.replace(':', "-"));
        let mut cmd = glom();
        cmd.env("GLOM_FAIL_AT_STEP", fault)
            .args(["train", "--no-eval", "--workers", "2", "--out"])
            .arg(&dir);
        support::cluster::sets(&mut cmd, &RUN);
        let out = cmd.output().unwrap();
        ok(&out);
        let r = restarts(&dir);
        assert_eq!(r.len(), 1, "{fault}: {r:?}");
        assert_eq!(
            (&r[0]["step"], &r[0]["attempt"]),
            (&Value::from(5), &Value::from(1)),
            "{fault}: {r:?}"
        );
        let cause = r[0]["cause"].as_str().unwrap_or_default();
        assert!(causes.contains(&cause), "{fault}: {r:?}");
        let reason = r[0]["reason"].as_str().unwrap_or_default();
        if fault.ends_with("panic") && cause == "reported_error" {
            assert!(reason.contains("halo stream from worker"), "{r:?}");
        }
        if cause == "disconnected" {
            let worker = &fault[..fault.find(':').unwrap()];
            assert!(reason.contains(&format!("({worker}) lost")), "{r:?}");
        }
        assert_eq!(
            (&r[0]["workers_before"], &r[0]["workers_after"]),
            (&Value::from(2), &Value::from(2))
        );
        same_as(&whole, &dir);
    }
}

/// Seconds from `since` until `log` has a line containing `needle`.
fn until_logged(log: &Path, needle: &str, since: Instant, limit: Duration) -> f64 {
    loop {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(needle)
        {
            return since.elapsed().as_secs_f64();
        }
        assert!(
            since.elapsed() < limit,
            "{needle:?} never in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three processes on loopback (a coordinator and two workers); worker-1
/// is killed with SIGKILL after checkpoint 20. The loss is noticed within
/// seconds; with a replacement process (another name) the run finishes
/// on two workers, without one on the survivor alone after
/// `cluster.rejoin_seconds`; both with the bits of the run that never
/// failed.
#[test]
fn a_killed_worker_process_is_replaced_or_left_behind_without_changing_a_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let run = [
        "train.steps=60",
        "checkpoint.every_steps=20",
        "train.log_every=1",
        "cluster.rejoin_seconds=2",
    ];
    let whole = tmp.path().join("whole");
    ok(&train(&whole, 2, &run));
    for replace in [true, false] {
        let dir = tmp
            .path()
            .join(if replace { "replaced" } else { "survivor" });
        std::fs::create_dir_all(&dir).unwrap();
        let certs = certs(&dir, 3);
        let (coord, addr) = coordinator(&dir, &certs, 2, &run);
        let w0 = worker(&dir, &certs, &addr, "worker-0", &run);
        let mut w1 = worker(&dir, &certs, &addr, "worker-1", &run);
        let manifest = dir.join("run/checkpoints/step-20/manifest.json");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !manifest.exists() {
            assert!(Instant::now() < deadline, "no checkpoint 20");
            std::thread::sleep(Duration::from_millis(5));
        }
        w1.child.kill().unwrap(); // SIGKILL
        let killed = Instant::now();
        let detect = until_logged(
            &dir.join("coordinator.log"),
            "worker lost",
            killed,
            Duration::from_secs(60),
        );
        eprintln!(
            "{}: kill -9 to \"worker lost\": {detect:.2} s",
            dir.display()
        );
        assert!(detect < 15.0, "the loss took {detect:.1} s to notice");
        let spare = replace.then(|| worker(&dir, &certs, &addr, "worker-2", &run));
        wait_ok(coord, &dir.join("coordinator.log"));
        wait_ok(w0, &dir.join("worker-0.log"));
        if let Some(w2) = spare {
            wait_ok(w2, &dir.join("worker-2.log"));
        }
        let r = restarts(&dir.join("run"));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0]["step"], 20);
        assert_eq!(r[0]["workers_after"], if replace { 2 } else { 1 });
        let plan: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("run/plan.json")).unwrap())
                .unwrap();
        assert_eq!(plan["workers"], if replace { 2 } else { 1 });
        let (a, b) = (
            tensors(&whole.join("checkpoints/final")),
            tensors(&dir.join("run/checkpoints/final")),
        );
        assert!(
            a == b,
            "{}: the final checkpoint differs from the uninterrupted run's",
            dir.display()
        );
        let (w, r) = (records(&whole), records(&dir.join("run")));
        assert_eq!(
            r[r.len() - 40..],
            w[w.len() - 40..],
            "the records after the rollback"
        );
    }
}

/// `scripts/chaos.sh 3`: three SIGKILLs of random processes (workers or
/// the coordinator, which the script starts again with `--resume`) at
/// random moments; the run survives every one, no checkpoint is corrupt,
/// and the result is bitwise that of the run that never failed.
#[test]
fn chaos_three_kills_survived_with_the_same_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .arg(support::root().join("scripts/chaos.sh"))
        .args([
            "3",
            "--seed",
            "11",
            "--glom",
            env!("CARGO_BIN_EXE_glom"),
            "--out",
        ])
        .arg(tmp.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains(
                "survived 3/3, corrupt checkpoints 0, bitwise equal to the uninterrupted run: yes"
            ),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
