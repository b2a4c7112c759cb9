//! The metrics as a real Prometheus sees them, and the alert rules under
//! `promtool`. Both need the Debian package `prometheus`: without it they
//! are skipped, unless `REQUIRE_PROMETHEUS` is set (CI), then they fail.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{get, root, spawn_train, tool, wait_addr, Running};

/// A free loopback port (Prometheus cannot be told to pick one).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The result vector of an instant query, once the API answers.
fn query(api: SocketAddr, expr: &str) -> Option<Vec<Value>> {
    let (status, body) = get(api, &format!("/api/v1/query?query={expr}")).ok()?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"].as_array().cloned()
}

/// The value of a one-sample query result.
fn value(result: &[Value]) -> f64 {
    result[0]["value"][1].as_str().unwrap().parse().unwrap()
}

#[test]
fn real_prometheus_scrapes_every_level_and_sees_progress() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut train = spawn_train(&dir, &["train.steps=1000000"]);
    let target = wait_addr(&mut train, &dir);

    let port = free_port();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: glom\n    \
             static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("prometheus starts");
    let _prom = Running {
        child,
        name: "prometheus",
    };
    let api: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Wait for scrapes that hold every level (TINY has 3).
    let deadline = Instant::now() + Duration::from_secs(90);
    let ranks = loop {
        match query(api, "glom_embedding_effective_rank") {
            Some(r) if r.len() == 3 => break r,
            _ if Instant::now() > deadline => {
                let log = std::fs::read_to_string(tmp.path().join("prometheus.log"));
                panic!("no effective rank for every level; prometheus log: {log:?}");
            }
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    let mut levels: Vec<&str> = ranks
        .iter()
        .map(|s| s["metric"]["level"].as_str().unwrap())
        .collect();
    levels.sort();
    assert_eq!(levels, ["0", "1", "2"]);
    for s in &ranks {
        let r = value(std::slice::from_ref(s));
        assert!(
            (1.0..=8.0 + 1e-9).contains(&r),
            "effective rank {r} outside [1, d]"
        );
        assert_eq!(s["metric"]["job"], "glom");
    }

    // The step counter grows between two scrapes.
    let first = value(&query(api, "glom_steps_total").expect("steps"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        std::thread::sleep(Duration::from_millis(500));
        let v = value(&query(api, "glom_steps_total").expect("steps"));
        if v > first || Instant::now() > deadline {
            break v;
        }
    };
    assert!(second > first, "glom_steps_total stayed at {first}");
    let up = query(api, "up").expect("up");
    assert_eq!(value(&up), 1.0, "{up:?}");
    println!("prometheus saw glom_steps_total {first} then {second}; ranks {ranks:?}");
    assert!(train.interrupt().success());
}

#[test]
fn promtool_checks_and_tests_the_alert_rules() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    for args in [
        &["check", "rules", "scripts/prometheus/alerts.yml"][..],
        &["test", "rules", "scripts/prometheus/alerts_test.yml"],
        &["check", "config", "scripts/prometheus/prometheus.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
