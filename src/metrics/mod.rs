//! Everything Prometheus: the metrics `glom train` exports, behind the small
//! [`Telemetry`] trait, and the text endpoint that serves them ([`server`]).
//!
//! Training reports plain numbers through [`Telemetry`]; it does not know
//! how (or whether) they are exported. [`NoTelemetry`] drops them (metrics
//! disabled); [`PromTelemetry`] keeps them in a registry that the endpoint
//! encodes on each scrape. Every name is prefixed `glom_` and documented in
//! `docs/metrics.md`; tests check that the docs, the alert rules and the
//! dashboard name only metrics that a run exports.

pub(crate) mod server;

use anyhow::Result;
use glom_worker::learn::LossValues;
use glom_worker::monitor::Agreement;
use prometheus::{
    exponential_buckets, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, Opts, Registry,
};

/// What one training step reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepReport {
    /// Wall time of the step itself (batch, settle, backward, update).
    pub(crate) seconds: f64,
    /// Training throughput over the recent window of steps.
    pub(crate) images_per_second: f64,
    pub(crate) losses: LossValues,
}

/// The measures of one level, computed every `metrics.every_steps` steps.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LevelReport {
    pub(crate) effective_rank: f64,
    pub(crate) dim_std: f64,
    /// Mean cosine across images; `None` with a batch of one image.
    pub(crate) mean_cosine: Option<f64>,
    /// Mean cosine between locations of the same image.
    pub(crate) mean_cosine_within_image: Option<f64>,
    pub(crate) islands_per_image: f64,
    pub(crate) codistill_disagreement: f64,
    pub(crate) agreement: Agreement,
}

/// Where training sends its numbers.
pub(crate) trait Telemetry {
    /// After every step.
    fn step(&self, report: &StepReport);
    /// After a measurement pass; `seconds` is what the pass cost.
    fn levels(&self, levels: &[LevelReport], seconds: f64);
    /// The current phase (`awake` or `sleep`).
    fn phase(&self, phase: Phase);
    /// After every step: each worker's halo traffic and waiting.
    fn cluster(&self, _summary: &glom_coordinator::StepSummary) {}
    /// After every sleep job, with the effective rank per level of the
    /// bottom-up pass before and after it (empty when not measured).
    fn sleep_job(
        &self,
        _summary: &glom_coordinator::sleep::SleepSummary,
        _rank_before: &[f64],
        _rank_after: &[f64],
    ) {
    }
    /// The cluster restarted from its last checkpoint after a lost worker
    /// of kind `cause` (`glom_coordinator::LostReason::label`).
    fn restart(&self, _cause: &str) {}
}

/// Training phase, as the `phase` label of `glom_phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Awake,
    /// A scheduled sleep job runs (awake training paused).
    Sleep,
}

/// Telemetry that drops everything.
pub(crate) struct NoTelemetry;

impl Telemetry for NoTelemetry {
    fn step(&self, _: &StepReport) {}
    fn levels(&self, _: &[LevelReport], _: f64) {}
    fn phase(&self, _: Phase) {}
}

/// Labels of `glom_info`.
pub(crate) struct RunInfo<'a> {
    pub(crate) weights: &'a str,
    pub(crate) learning: &'a str,
    /// Embedding dimension d (alert rules compare the effective rank with it).
    pub(crate) dim: usize,
    /// Workers the run needs (`cluster.workers`; the alert rules compare
    /// `glom_workers` with it).
    pub(crate) workers: usize,
    /// Levels K (the per-level series of sleep jobs exist from the start).
    pub(crate) levels: usize,
}

/// The metrics of a training run in a Prometheus registry.
pub(crate) struct PromTelemetry {
    pub(crate) registry: Registry,
    steps: IntCounter,
    images_per_second: Gauge,
    step_seconds: Histogram,
    loss: GaugeVec,
    phase: GaugeVec,
    effective_rank: GaugeVec,
    dim_std: GaugeVec,
    mean_cosine: GaugeVec,
    mean_cosine_within: GaugeVec,
    islands: GaugeVec,
    disagreement: GaugeVec,
    agreement: GaugeVec,
    monitor_seconds: Gauge,
    workers: GaugeVec,
    halo_bytes: IntCounterVec,
    halo_wait: HistogramVec,
    halo_wait_fraction: Gauge,
    sleep_jobs: IntCounter,
    sleep_loss: GaugeVec,
    sleep_seconds: Gauge,
    sleep_rank: GaugeVec,
    restarts: IntCounterVec,
}

fn gauge_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge(reg: &Registry, name: &str, help: &str) -> Result<Gauge> {
    let g = Gauge::new(name, help)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

impl PromTelemetry {
    /// A registry holding every `glom_` metric of a run.
    pub(crate) fn new(info: &RunInfo) -> Result<Self> {
        let reg = Registry::new();
        let steps = IntCounter::new("glom_steps_total", "Training steps completed.")?;
        reg.register(Box::new(steps.clone()))?;
        let step_seconds = Histogram::with_opts(
            HistogramOpts::new("glom_step_seconds", "Wall time of one training step.")
                .buckets(exponential_buckets(0.005, 2.0, 14)?),
        )?;
        reg.register(Box::new(step_seconds.clone()))?;
        let level = &["level"];
        let halo_bytes = IntCounterVec::new(
            Opts::new(
                "glom_halo_bytes_total",
                "Framed halo bytes a worker sent to its neighbours.",
            ),
            &["worker"],
        )?;
        reg.register(Box::new(halo_bytes.clone()))?;
        let halo_wait = HistogramVec::new(
            HistogramOpts::new(
                "glom_halo_wait_seconds",
                "Time a worker waited for halos during one step.",
            )
            .buckets(exponential_buckets(0.0005, 2.0, 16)?),
            &["worker"],
        )?;
        reg.register(Box::new(halo_wait.clone()))?;
        let sleep_jobs = IntCounter::new("glom_sleep_jobs_total", "Sleep jobs completed.")?;
        reg.register(Box::new(sleep_jobs.clone()))?;
        let restarts = IntCounterVec::new(
            Opts::new(
                "glom_restarts_total",
                "Restarts of the cluster from its last checkpoint after a lost worker, by the \
                 kind of loss.",
            ),
            &["reason"],
        )?;
        reg.register(Box::new(restarts.clone()))?;
        // Exported from 0, so that `increase()` sees the first restart.
        for reason in glom_coordinator::LostReason::LABELS {
            restarts.with_label_values(&[reason]);
        }
        let t = Self {
            restarts,
            workers: gauge_vec(
                &reg,
                "glom_workers",
                "Workers of the run by state (training, sleeping).",
                &["state"],
            )?,
            halo_bytes,
            halo_wait,
            halo_wait_fraction: gauge(
                &reg,
                "glom_halo_wait_fraction",
                "Part of the last step the slowest worker spent waiting for halos.",
            )?,
            sleep_jobs,
            sleep_loss: gauge_vec(
                &reg,
                "glom_sleep_loss",
                "Loss of the last sleep job (negative_first, negative_last, positive_last).",
                &["term"],
            )?,
            sleep_seconds: gauge(
                &reg,
                "glom_sleep_seconds",
                "Wall time of the last sleep job (the pause of awake training).",
            )?,
            sleep_rank: gauge_vec(
                &reg,
                "glom_sleep_bottom_up_effective_rank",
                "Effective rank of the bottom-up pass of fixed images before and after the last sleep job.",
                &["level", "when"],
            )?,
            images_per_second: gauge(
                &reg,
                "glom_images_per_second",
                "Training images per second over the recent steps.",
            )?,
            loss: gauge_vec(&reg, "glom_loss", "Loss term of the last step.", &["term"])?,
            phase: gauge_vec(&reg, "glom_phase", "1 for the current phase.", &["phase"])?,
            effective_rank: gauge_vec(
                &reg,
                "glom_embedding_effective_rank",
                "RankMe effective rank of a sample of settled embeddings.",
                level,
            )?,
            dim_std: gauge_vec(
                &reg,
                "glom_embedding_dim_std",
                "Mean per-dimension std of L2-normalised settled embeddings.",
                level,
            )?,
            mean_cosine: gauge_vec(
                &reg,
                "glom_embedding_mean_cosine",
                "Mean cosine between settled embeddings of different images.",
                level,
            )?,
            mean_cosine_within: gauge_vec(
                &reg,
                "glom_embedding_mean_cosine_within_image",
                "Mean cosine between settled embeddings of one image.",
                level,
            )?,
            islands: gauge_vec(
                &reg,
                "glom_islands_per_image",
                "Threshold islands per image, as the evaluation counts them.",
                level,
            )?,
            disagreement: gauge_vec(
                &reg,
                "glom_codistill_disagreement",
                "Mean squared distance of per-location bottom-up outputs on a common probe to their mean.",
                level,
            )?,
            agreement: gauge_vec(
                &reg,
                "glom_prediction_agreement_cosine",
                "Mean cosine of the bottom-up or top-down prediction with the settled consensus.",
                &["level", "net"],
            )?,
            monitor_seconds: gauge(
                &reg,
                "glom_monitor_seconds",
                "Wall time of the last pass of per-level measures.",
            )?,
            steps,
            step_seconds,
            registry: reg,
        };
        let info_vec = gauge_vec(
            &t.registry,
            "glom_info",
            "Constant 1, labelled with the build and the run's mode.",
            &["version", "weights", "learning"],
        )?;
        info_vec
            .with_label_values(&[env!("CARGO_PKG_VERSION"), info.weights, info.learning])
            .set(1.0);
        // Series that exist before their first event, so queries and
        // alerts can name them from the start.
        for term in ["negative_first", "negative_last", "positive_last"] {
            t.sleep_loss.with_label_values(&[term]).set(0.0);
        }
        for state in ["training", "sleeping"] {
            t.workers.with_label_values(&[state]).set(0.0);
        }
        for level in 0..info.levels {
            for when in ["before", "after"] {
                t.sleep_rank
                    .with_label_values(&[&level.to_string(), when])
                    .set(0.0);
            }
        }
        gauge(
            &t.registry,
            "glom_embedding_dim",
            "Embedding dimension d of every level.",
        )?
        .set(info.dim as f64);
        gauge(
            &t.registry,
            "glom_workers_expected",
            "Workers the run needs (cluster.workers).",
        )?
        .set(info.workers as f64);
        Ok(t)
    }

    /// The registry in the text exposition format.
    #[cfg(test)]
    pub(crate) fn encode(&self) -> String {
        server::encode(&self.registry)
    }
}

impl Telemetry for PromTelemetry {
    fn step(&self, r: &StepReport) {
        self.steps.inc();
        self.step_seconds.observe(r.seconds);
        self.images_per_second.set(r.images_per_second);
        let l = &r.losses;
        for (term, v) in l.named() {
            self.loss.with_label_values(&[term]).set(v);
        }
    }

    fn levels(&self, levels: &[LevelReport], seconds: f64) {
        self.monitor_seconds.set(seconds);
        for (i, r) in levels.iter().enumerate() {
            let l = i.to_string();
            let l = [l.as_str()];
            self.effective_rank
                .with_label_values(&l)
                .set(r.effective_rank);
            self.dim_std.with_label_values(&l).set(r.dim_std);
            if let Some(c) = r.mean_cosine {
                self.mean_cosine.with_label_values(&l).set(c);
            }
            if let Some(c) = r.mean_cosine_within_image {
                self.mean_cosine_within.with_label_values(&l).set(c);
            }
            self.islands.with_label_values(&l).set(r.islands_per_image);
            self.disagreement
                .with_label_values(&l)
                .set(r.codistill_disagreement);
            for (net, v) in [
                ("bottom_up", r.agreement.bottom_up),
                ("top_down", r.agreement.top_down),
            ] {
                if let Some(v) = v {
                    self.agreement.with_label_values(&[l[0], net]).set(v);
                }
            }
        }
    }

    fn cluster(&self, summary: &glom_coordinator::StepSummary) {
        for w in &summary.workers {
            let id = w.worker_id.to_string();
            self.halo_bytes
                .with_label_values(&[&id])
                .inc_by(w.halo_bytes_sent);
            self.halo_wait
                .with_label_values(&[&id])
                .observe(w.halo_wait_seconds);
        }
        self.halo_wait_fraction
            .set(summary.max_halo_wait_seconds / summary.max_step_seconds.max(1e-12));
        self.workers
            .with_label_values(&["training"])
            .set(summary.workers.len() as f64);
    }

    fn restart(&self, cause: &str) {
        self.restarts.with_label_values(&[cause]).inc();
    }

    fn sleep_job(
        &self,
        s: &glom_coordinator::sleep::SleepSummary,
        rank_before: &[f64],
        rank_after: &[f64],
    ) {
        for (when, ranks) in [("before", rank_before), ("after", rank_after)] {
            for (level, r) in ranks.iter().enumerate() {
                self.sleep_rank
                    .with_label_values(&[&level.to_string(), when])
                    .set(*r);
            }
        }
        self.sleep_jobs.inc();
        for (term, v) in [
            ("negative_first", s.loss_negative_first),
            ("negative_last", s.loss_negative_last),
            ("positive_last", s.loss_positive_last),
        ] {
            self.sleep_loss.with_label_values(&[term]).set(v);
        }
        self.sleep_seconds.set(s.max_seconds);
    }

    fn phase(&self, phase: Phase) {
        let awake = phase == Phase::Awake;
        self.phase
            .with_label_values(&["awake"])
            .set(f64::from(u8::from(awake)));
        self.phase
            .with_label_values(&["sleep"])
            .set(f64::from(u8::from(!awake)));
        // Every worker sleeps during a job: move the count between states.
        let (training, sleeping) = (
            self.workers.with_label_values(&["training"]),
            self.workers.with_label_values(&["sleeping"]),
        );
        let n = training.get().max(sleeping.get());
        training.set(if awake { n } else { 0.0 });
        sleeping.set(if awake { 0.0 } else { n });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_appear_in_the_exposition() {
        let info = RunInfo {
            weights: "per_location",
            learning: "local",
            dim: 8,
            workers: 2,
            levels: 3,
        };
        let t = PromTelemetry::new(&info).unwrap();
        t.phase(Phase::Awake);
        let losses = LossValues {
            loss_total: 1.5,
            ..LossValues::default()
        };
        t.step(&StepReport {
            seconds: 0.02,
            images_per_second: 100.0,
            losses,
        });
        let level = LevelReport {
            effective_rank: 3.5,
            ..LevelReport::default()
        };
        t.levels(&[level, level], 0.001);
        let job = glom_coordinator::sleep::SleepSummary {
            loss_negative_first: 0.75,
            max_seconds: 2.5,
            ..Default::default()
        };
        t.phase(Phase::Sleep);
        t.sleep_job(&job, &[1.0, 1.25, 1.5], &[1.0, 17.5, 20.0]);
        t.phase(Phase::Awake);
        t.restart("disconnected");
        let text = t.encode();
        for line in [
            "glom_restarts_total{reason=\"disconnected\"} 1",
            "glom_sleep_jobs_total 1",
            "glom_sleep_loss{term=\"negative_first\"} 0.75",
            "glom_sleep_seconds 2.5",
            "glom_sleep_bottom_up_effective_rank{level=\"1\",when=\"after\"} 17.5",
            "glom_sleep_bottom_up_effective_rank{level=\"2\",when=\"before\"} 1.5",
            "glom_workers_expected 2",
            "glom_steps_total 1",
            "glom_loss{term=\"total\"} 1.5",
            "glom_embedding_effective_rank{level=\"1\"} 3.5",
            "glom_phase{phase=\"awake\"} 1",
            "glom_phase{phase=\"sleep\"} 0",
            "glom_embedding_dim 8",
            "glom_step_seconds_count 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(text.contains("glom_info{learning=\"local\""), "{text}");
    }
}
