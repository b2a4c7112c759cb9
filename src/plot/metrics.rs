//! Reading a run's `metrics.jsonl` (one JSON object per logged step, see
//! README.md, "What a run writes") into what the charts use.
//!
//! Awake records are the lines, in file order: a record without a value (a
//! missing key or `null`) breaks the line there, and an awake record whose
//! step is not after the one before it is a restart, and so is a
//! `"phase": "restart"` record (automatic recovery, at the step the
//! cluster went back to). Records with `"phase": "sleep"` are sleep jobs, at their `step` (at the step of the
//! record before them when they have none). Keys the charts do not use are
//! ignored; a used key whose value has the wrong type is an error naming
//! the file, the line and the key.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use glom_protocol::message::LOSS_TERMS;
use serde_json::Value;

/// The loss keys of a record: `loss_<name>` for every term of
/// `LOSS_TERM_NAMES`, in its order, then `loss_total` (a test holds them
/// together).
pub(crate) const LOSS_KEYS: [&str; LOSS_TERMS + 1] = [
    "loss_recon",
    "loss_distill_bu",
    "loss_distill_td",
    "loss_negative",
    "loss_variance",
    "loss_covariance",
    "loss_contrastive",
    "loss_autoencoder",
    "loss_neighbour_distill",
    "loss_total",
];
/// The scalar keys of a record that the charts use besides the losses.
const OTHER_SCALARS: [&str; 1] = ["images_per_s"];
/// The per-level keys (one value per level) that the charts use.
const PER_LEVEL: [&str; 3] = [
    "effective_rank_by_level",
    "dim_std_by_level",
    "mean_cosine_by_level",
];

/// One awake record: its step and the values the charts use.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Record {
    pub(crate) step: f64,
    pub(crate) scalars: BTreeMap<&'static str, f64>,
    pub(crate) per_level: BTreeMap<&'static str, Vec<Option<f64>>>,
}

/// The records of a `metrics.jsonl`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Metrics {
    /// Awake records, in file order.
    pub(crate) awake: Vec<Record>,
    /// Steps of the sleep records, in file order.
    pub(crate) sleep: Vec<f64>,
    /// Steps of the awake records that do not follow the step before them
    /// (the log of a restarted run appended to the old one).
    pub(crate) restarts: Vec<f64>,
}

/// Read the records of a `metrics.jsonl` (`file` names it in errors).
/// Blank lines are skipped; a file without any record is an error.
pub(crate) fn parse_metrics(text: &str, file: &Path) -> Result<Metrics> {
    let name = file.display();
    let mut metrics = Metrics::default();
    let mut records = 0;
    let mut last_step = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("{name} line {n}: not valid JSON"))?;
        let Value::Object(obj) = value else {
            bail!("{name} line {n}: expected a JSON object, found {value}");
        };
        records += 1;
        let at = |key: &str| format!("{name} line {n}: {key:?}");
        let step = number(obj.get("step"), || at("step"))?;
        let phase = match obj.get("phase") {
            None | Some(Value::Null) => "awake",
            Some(Value::String(p)) => p.as_str(),
            Some(other) => bail!("{} is {other}, not a string", at("phase")),
        };
        if phase == "restart" {
            // Automatic recovery: training goes on after this step again.
            let Some(step) = step else {
                bail!("{name} line {n}: a restart record needs a \"step\"");
            };
            metrics.restarts.push(step);
            last_step = Some(step);
            continue;
        }
        if phase == "sleep" {
            if let Some(s) = step.or(last_step) {
                metrics.sleep.push(s);
            }
            continue;
        }
        let Some(step) = step else {
            bail!("{name} line {n}: an awake record needs a \"step\"");
        };
        if last_step.is_some_and(|last| step <= last) {
            metrics.restarts.push(step);
        }
        last_step = Some(step);
        let mut record = Record {
            step,
            ..Record::default()
        };
        for &key in LOSS_KEYS.iter().chain(&OTHER_SCALARS) {
            if let Some(v) = number(obj.get(key), || at(key))? {
                record.scalars.insert(key, v);
            }
        }
        for key in PER_LEVEL {
            match obj.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    let values = items
                        .iter()
                        .enumerate()
                        .map(|(l, v)| number(Some(v), || format!("{}[{l}]", at(key))))
                        .collect::<Result<_>>()?;
                    record.per_level.insert(key, values);
                }
                Some(other) => bail!("{} is {other}, not an array of numbers", at(key)),
            }
        }
        metrics.awake.push(record);
    }
    if records == 0 {
        bail!("{name} is empty: no records to plot");
    }
    if metrics.awake.is_empty() {
        bail!("{name} has no awake records (only sleep jobs): nothing to plot");
    }
    Ok(metrics)
}

/// A number, `None` for a missing key or `null`; `what` names the value in
/// the error for any other type.
fn number(value: Option<&Value>, what: impl Fn() -> String) -> Result<Option<f64>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(x)) => Ok(x.as_f64()),
        Some(other) => bail!("{} is {other}, not a number", what()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Metrics> {
        parse_metrics(text, Path::new("run/metrics.jsonl"))
    }

    #[test]
    fn the_loss_keys_are_the_protocols_terms_then_the_total() {
        let mut want: Vec<String> = glom_protocol::message::LOSS_TERM_NAMES
            .iter()
            .map(|n| format!("loss_{n}"))
            .collect();
        want.push("loss_total".into());
        assert_eq!(LOSS_KEYS.to_vec(), want);
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn records_keep_what_the_charts_use() {
        let m = parse(concat!(
            r#"{"step":1,"phase":"awake","loss_recon":0.5,"effective_rank_by_level":[3.0,null],"extra":"x"}"#,
            "\n\n",
            r#"{"step":2,"phase":"sleep","loss_negative":0.1}"#,
            "\n",
            r#"{"phase":"sleep"}"#,
            "\n",
            r#"{"step":3,"images_per_s":10}"#,
            "\n",
        ))
        .unwrap();
        assert_eq!(
            m.sleep,
            [2.0, 1.0],
            "a sleep record without a step sits at the last awake step"
        );
        assert_eq!(m.awake.len(), 2);
        assert_eq!(m.awake[0].step, 1.0);
        assert_eq!(m.awake[0].scalars.get("loss_recon"), Some(&0.5));
        assert_eq!(
            m.awake[0].per_level.get("effective_rank_by_level"),
            Some(&vec![Some(3.0), None])
        );
        assert_eq!(m.awake[1].scalars.get("images_per_s"), Some(&10.0));
        assert!(m.awake[1].per_level.is_empty());
        assert!(m.restarts.is_empty());
    }

    #[test]
    fn a_step_back_is_a_restart() {
        let m = parse("{\"step\":10}\n{\"step\":20}\n{\"step\":11}\n{\"step\":21}\n").unwrap();
        assert_eq!(m.restarts, [11.0]);
        assert_eq!(m.awake.len(), 4, "every record is kept");
        // Automatic recovery writes its own record: one marker, not two.
        let m = parse(concat!(
            "{\"step\":10}\n{\"step\":20}\n",
            "{\"step\":10,\"phase\":\"restart\",\"attempt\":1}\n",
            "{\"step\":20}\n"
        ))
        .unwrap();
        assert_eq!(m.restarts, [10.0]);
        assert_eq!(m.awake.len(), 3);
    }

    #[test]
    fn bad_records_name_the_file_line_and_key() {
        let e = err("{\"step\":1}\n{\"step\":2,\n");
        assert!(
            e.contains("run/metrics.jsonl line 2: not valid JSON"),
            "{e}"
        );
        let e = err("{\"step\":1}\n[1,2]\n");
        assert!(e.contains("line 2: expected a JSON object"), "{e}");
        let e = err("{\"step\":1,\"loss_total\":\"high\"}");
        assert!(
            e.contains("line 1: \"loss_total\" is \"high\", not a number"),
            "{e}"
        );
        let e = err("{\"step\":1,\"dim_std_by_level\":[0.1,\"x\"]}");
        assert!(
            e.contains("line 1: \"dim_std_by_level\"[1] is \"x\""),
            "{e}"
        );
        let e = err("{\"step\":1,\"dim_std_by_level\":3}");
        assert!(e.contains("not an array of numbers"), "{e}");
        let e = err("{\"loss_total\":1}");
        assert!(
            e.contains("line 1: an awake record needs a \"step\""),
            "{e}"
        );
        let e = err("\n \n");
        assert!(e.contains("run/metrics.jsonl is empty"), "{e}");
        let e = err("{\"step\":1,\"phase\":\"sleep\"}");
        assert!(e.contains("no awake records"), "{e}");
    }
}
