//! The documentation, the alert rules and the dashboard name only metrics
//! that `glom train` really exports: a short run is scraped for the names.

mod support;

use std::collections::BTreeSet;

use support::{get, root, scrape_when_ready, spawn_train, wait_addr};

/// Every name a text exposition exports, with a histogram's series names.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        names.insert(name.to_string());
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// Every `glom_` metric name mentioned in `text`.
fn referenced(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("glom_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        // A bare `glom_` is the prefix itself, not a name.
        if !before.is_some_and(is_name) && end > "glom_".len() {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn name_extraction_sees_names_and_ignores_neighbours() {
    let text = "rate(glom_steps_total[1m]) / x_glom_no glom-training `glom_loss{term}` `glom_`";
    let names: Vec<String> = referenced(text).into_iter().collect();
    assert_eq!(names, ["glom_loss", "glom_steps_total"]);
    let exp = exported("# TYPE glom_step_seconds histogram\n# TYPE glom_loss gauge\n");
    assert!(exp.contains("glom_step_seconds_bucket") && exp.contains("glom_loss"));
}

#[test]
fn docs_rules_and_dashboard_name_only_exported_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut run = spawn_train(&dir, &["train.steps=1000000"]);
    let addr = wait_addr(&mut run, &dir);
    let text = scrape_when_ready(addr, 3.0);
    let exported = exported(&text);
    assert!(get(addr, "/other").unwrap().0 == 404);
    assert!(run.interrupt().success(), "glom train failed after Ctrl-C");
    assert!(dir.join("summary.json").is_file());

    let r = root();
    let files = [
        "docs/metrics.md",
        "scripts/prometheus/alerts.yml",
        "scripts/prometheus/alerts_test.yml",
        "scripts/prometheus/grafana-dashboard.json",
        "README.md",
    ];
    let mut missing = Vec::new();
    let mut documented = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(r.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        if f.ends_with(".json") {
            let _: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
        let names = referenced(&text);
        assert!(
            f == "README.md" || names.contains("glom_embedding_effective_rank"),
            "{f} does not mention glom_embedding_effective_rank"
        );
        for n in &names {
            if !exported.contains(n) {
                missing.push(format!("{f}: {n}"));
            }
        }
        if f == "docs/metrics.md" {
            documented = names;
        }
    }
    assert!(
        missing.is_empty(),
        "not exported: {missing:#?}\nexported: {exported:?}"
    );
    // And the reverse: every exported family is documented.
    let undocumented: Vec<_> = exported
        .iter()
        .filter(|n| !documented.contains(*n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/metrics.md: {undocumented:?}"
    );
}
