//! A multi-host run across three network namespaces joined by veth pairs
//! (`scripts/netns-cluster.sh`, which makes and removes them itself): the
//! coordinator in one, a worker in each of the others, QUIC with mutual TLS
//! over the links. Skipped, with the reason printed, where namespaces
//! cannot be made (no root or no CAP_NET_ADMIN, as in most containers).

mod support;

use std::process::Command;

use support::TINY;

#[test]
fn a_short_run_across_network_namespaces() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut cmd = Command::new("bash");
    cmd.arg(support::root().join("scripts/netns-cluster.sh"))
        .args(["--glom", env!("CARGO_BIN_EXE_glom"), "--out"])
        .arg(&run)
        .arg("--");
    for s in TINY
        .iter()
        .chain(&["train.steps=6", "checkpoint.every_steps=3"])
    {
        cmd.arg("--set").arg(s);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(77) {
        eprintln!("{}", stdout.trim());
        return;
    }
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("6 steps on 2 workers"), "{stdout}");
    for ck in ["step-3", "step-6"] {
        let dir = run.join("checkpoints").join(ck);
        assert!(dir.join("manifest.json").is_file(), "{}", dir.display());
        assert!(dir.join("shard-1.safetensors").is_file());
    }
    let plan = std::fs::read_to_string(run.join("plan.json")).unwrap();
    assert!(plan.contains("worker-1"), "{plan}");
}
