//! `glom`: train, evaluate and inspect GLOM models.
//!
//! # Layout
//! - [`settings`]: configuration layers (embedded default, file, env, `--set`).
//! - [`run`]: datasets and models built from a configuration; run directories.
//! - [`train`]: `glom train`.
//! - [`evaluate`]: `glom eval`.
//! - [`parse`]: `glom parse` (islands per level: the parse tree, as a picture).
//! - [`metrics`]: the Prometheus metrics and their endpoint (all of it).
//! - [`observe`]: the per-level measures behind them, and their cost.

mod cluster;
mod evaluate;
mod metrics;
mod observe;
mod parse;
mod run;
mod settings;
mod train;

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
    /// Picture and JSON of the parse tree (islands per level) of one image.
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

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train {
            config,
            out,
            no_eval,
            workers,
        } => {
            let cfg = settings::load(config.config.as_deref(), &config.sets)?;
            train::run(cfg, workers, out, !no_eval)
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
