//! `glom`: train, evaluate and inspect GLOM models.
//!
//! # Layout
//! - [`settings`]: configuration layers (embedded default, file, env, `--set`).
//! - [`run`]: datasets and models built from a configuration; run directories.
//! - [`train`]: `glom train` (and `glom coordinator`: the same run, workers elsewhere).
//! - [`cluster`]: the coordinator's driver and `glom worker`.
//! - [`evaluate`]: `glom eval`.
//! - [`sleep`]: `glom sleep` (one offline sleep job on a checkpoint).
//! - [`parse`]: `glom parse` (islands per level: the parse tree, as a picture).
//! - [`plot`]: `glom plot` (training curves from `metrics.jsonl`, as PNG charts).
//! - [`table`]: `glom table` (the variants table, in Markdown, from run directories).
//! - [`picture`]: the bundled font and PNG writer both pictures use.
//! - [`metrics`]: the Prometheus metrics and their endpoint (all of it).
//! - [`observe`]: the per-level measures behind them, and their cost.
//! - [`bench`]: `glom bench`; [`bench_scale`] its `--scale` figures, with
//!   [`bench_coordinator`] (simulated workers) and [`bench_halo`].

mod bench;
mod bench_coordinator;
mod bench_halo;
mod bench_scale;
mod cluster;
mod divergence;
mod evaluate;
mod metrics;
mod observe;
mod parse;
mod picture;
mod plot;
mod run;
mod settings;
mod sleep;
mod table;
mod train;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

/// GLOM (Hinton 2021) as a co-distillation trainer.
#[derive(Parser)]
#[command(name = "glom", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the configuration comes from.
#[derive(Args, Clone, Default)]
pub(crate) struct ConfigArgs {
    /// TOML config file layered over the embedded default (configs/default.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one key, e.g. `--set train.steps=20` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model, write checkpoints and metrics, then evaluate it.
    Train {
        #[command(flatten)]
        config: ConfigArgs,
        /// Run directory (default: runs/<UTC timestamp>).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Skip the evaluation at the end.
        #[arg(long)]
        no_eval: bool,
        /// In-process workers, one tile each (overrides `cluster.workers`).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
        /// Go on from this checkpoint (same configuration, any number of
        /// workers) into a new run directory, up to `train.steps`.
        #[arg(long, value_name = "CHECKPOINT")]
        resume: Option<PathBuf>,
    },
    /// Coordinate a multi-host run: wait for `cluster.workers` workers, drive
    /// the steps, write metrics and checkpoints, then evaluate.
    Coordinator {
        #[command(flatten)]
        config: ConfigArgs,
        /// Directory of the cluster's certificates (`glom certs init`).
        #[arg(long, value_name = "DIR")]
        certs: PathBuf,
        /// UDP address to listen on (overrides `cluster.listen`).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Workers to wait for (overrides `cluster.workers`).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
        /// Run directory (default: runs/<UTC timestamp>); workers write their
        /// checkpoint shards under it, so it must be on storage they share.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Skip the evaluation at the end (the coordinator then never reads the data).
        #[arg(long)]
        no_eval: bool,
        /// Go on from this checkpoint (on storage the workers see).
        #[arg(long, value_name = "CHECKPOINT")]
        resume: Option<PathBuf>,
    },
    /// Join a `glom coordinator` as one worker of a multi-host run.
    Worker {
        #[command(flatten)]
        config: ConfigArgs,
        /// The coordinator's HOST:PORT.
        #[arg(long, value_name = "HOST:PORT")]
        coordinator: String,
        /// Directory of the cluster's certificates (`glom certs init`).
        #[arg(long, value_name = "DIR")]
        certs: PathBuf,
        /// This worker's certificate name in DIR, also its name in logs.
        #[arg(long, default_value = "worker-0")]
        name: String,
        /// UDP address for halo connections from neighbouring workers.
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
        listen: SocketAddr,
        /// HOST:PORT the neighbours use to reach --listen (default: its
        /// address as seen on the way to the coordinator).
        #[arg(long, value_name = "HOST:PORT")]
        advertise: Option<String>,
        /// Seconds to keep trying to reach the coordinator.
        #[arg(long, default_value_t = 60.0)]
        wait: f64,
    },
    /// Evaluate a checkpoint against the same model at random initialisation.
    Eval {
        /// Checkpoint directory (e.g. runs/X/checkpoints/final).
        #[arg(long, value_name = "DIR")]
        checkpoint: PathBuf,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Override evaluation keys, e.g. `--set eval.images=64` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Picture and JSON of the parse tree (islands per level) of one image
    /// (of a video checkpoint: one held-out sequence, a column per frame).
    Parse {
        /// Checkpoint directory (e.g. runs/X/checkpoints/final).
        #[arg(long, value_name = "DIR")]
        checkpoint: PathBuf,
        #[command(flatten)]
        input: parse::Input,
        /// Where to write the picture (PNG).
        #[arg(long, value_name = "OUT.png")]
        out: PathBuf,
        /// Also write the parse tree as JSON here.
        #[arg(long, value_name = "OUT.json")]
        json: Option<PathBuf>,
    },
    /// PNG charts of a run's metrics.jsonl: losses, collapse measures per level, images/s;
    /// and the evaluation over its checkpoints.
    Plot {
        /// Run directory (holding metrics.jsonl).
        #[arg(value_name = "RUN_DIR")]
        run: PathBuf,
        /// Directory for the charts (created if missing; default RUN_DIR/plots).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// First evaluate every RUN_DIR/checkpoints/step-N not yet in
        /// RUN_DIR/evaluations.jsonl (as `glom eval`, without the baseline);
        /// evaluation.png is drawn from two evaluated checkpoints on.
        #[arg(long)]
        eval_checkpoints: bool,
    },
    /// Markdown table of finished runs (the variants), per dataset, with the co-distillation gap.
    Table {
        /// Run directories (each with config.toml and summary.json).
        #[arg(value_name = "RUN_DIR", required = true)]
        runs: Vec<PathBuf>,
        /// Write the Markdown here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// The command that produced the runs, quoted in the heading.
        #[arg(long, value_name = "TEXT")]
        command: Option<String>,
    },
    /// Run one offline sleep job on a checkpoint and write a new checkpoint.
    Sleep {
        /// Checkpoint directory to start from (e.g. runs/X/checkpoints/final).
        #[arg(long, value_name = "DIR")]
        checkpoint: PathBuf,
        /// Directory of the new checkpoint (must not exist).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Measure settling and training speed side by side in one process:
    /// the machine's GEMM rate, per-location vs shared nets, settle, local
    /// and BPTT steps (images/s, GFLOP/s, % of GEMM).
    Bench {
        #[command(flatten)]
        config: ConfigArgs,
        /// Timed calls per row (the median is reported), after one warm-up.
        #[arg(long, default_value_t = 5, value_name = "N",
              value_parser = clap::value_parser!(u64).range(1..))]
        repeats: u64,
        /// Also write the figures as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Start from a named configuration instead of the embedded default
        /// (`--config` and `--set` still apply over it): `peer`, the public
        /// PyTorch port's benchmark (configs/peer.toml).
        #[arg(long, value_enum, value_name = "NAME")]
        preset: Option<bench::Preset>,
        #[command(flatten)]
        scale: bench_scale::ScaleArgs,
    },
    /// Manage the cluster's TLS certificates.
    Certs {
        #[command(subcommand)]
        action: CertsCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a new cluster CA and certificates for the coordinator and workers.
    Init {
        /// Directory to write into (created if missing; existing files are never replaced).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Number of worker certificates (worker-0 .. worker-<N-1>).
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Extra host names or addresses the certificates are valid for.
        #[arg(long, value_delimiter = ',', value_name = "HOST,...")]
        hosts: Vec<String>,
    },
}

fn main() {
    tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = dispatch(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Keep freed memory in the process. A training step allocates and frees
/// hundreds of tensor buffers of 128 KiB to a few MiB (activations,
/// gradients); with glibc's defaults many of them are fresh `mmap`s and
/// the heap's top goes back to the kernel, so each step pays page faults
/// and the kernel's zeroing for the same memory again. Blocks up to 32 MiB
/// (glibc's largest threshold) now come from the heap, and up to 1 GiB of
/// free heap is kept: the resident size stays at its peak, which the first
/// step reaches anyway (docs/experiments/performance.md).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets parameters of glibc's allocator; this runs
    // first in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train {
            config,
            out,
            no_eval,
            workers,
            resume,
        } => {
            let cfg = settings::load(config.config.as_deref(), &config.sets)?;
            train::run(cfg, workers, out, !no_eval, train::Launch::Embedded, resume)
        }
        Command::Coordinator {
            config,
            certs,
            listen,
            workers,
            out,
            no_eval,
            resume,
        } => {
            let cfg = settings::load(config.config.as_deref(), &config.sets)?;
            let listen = match listen {
                Some(l) => l,
                None => cfg.cluster.listen.parse()?,
            };
            let launch = train::Launch::Remote { listen, certs };
            train::run(cfg, workers, out, !no_eval, launch, resume)
        }
        Command::Worker {
            config,
            coordinator,
            certs,
            name,
            listen,
            advertise,
            wait,
        } => {
            let cfg = settings::load(config.config.as_deref(), &config.sets)?;
            if !(wait.is_finite() && wait >= 0.0) {
                anyhow::bail!("--wait {wait} must be a number of seconds >= 0");
            }
            let args = cluster::node::WorkerArgs {
                coordinator: &coordinator,
                certs: &certs,
                name: &name,
                listen,
                advertise,
                patience: std::time::Duration::from_secs_f64(wait),
            };
            cluster::node::worker(cfg, args)
        }
        Command::Eval {
            checkpoint,
            json,
            sets,
        } => evaluate::run(&checkpoint, json, &sets),
        Command::Parse {
            checkpoint,
            input,
            out,
            json,
        } => parse::run(&checkpoint, &input, &out, json.as_deref()),
        Command::Plot {
            run,
            out,
            eval_checkpoints,
        } => plot::run(&run, out.as_deref(), eval_checkpoints),
        Command::Bench {
            config,
            repeats,
            json,
            preset,
            scale,
        } => {
            if scale.scale.is_some() || scale.scale_case.is_some() {
                if preset.is_some() {
                    anyhow::bail!(
                        "glom bench: --preset and --scale measure different things; give one"
                    );
                }
                return bench_scale::run(&scale, &config, repeats as usize, json.as_deref());
            }
            let (file, sets) = (config.config.as_deref(), &config.sets);
            let cfg = match preset {
                Some(p) => p.load(file, sets)?,
                None => settings::load(file, sets)?,
            };
            bench::run(&cfg, preset, repeats as usize, json.as_deref())
        }
        Command::Table { runs, out, command } => {
            table::run(&runs, out.as_deref(), command.as_deref())
        }
        Command::Sleep {
            checkpoint,
            out,
            config,
        } => sleep::run(&checkpoint, &out, config.config.as_deref(), &config.sets),
        Command::Certs {
            action:
                CertsCommand::Init {
                    out,
                    workers,
                    hosts,
                },
        } => {
            for path in glom_net::certs::init(&out, workers, &hosts)? {
                println!("{}", path.display());
            }
            Ok(())
        }
    }
}
