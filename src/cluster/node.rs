//! `glom worker`: one worker of a multi-host run, joining a `glom
//! coordinator` (DESIGN.md section 4). A cluster scheduler (SLURM, a
//! Kubernetes StatefulSet; see `scripts/`) starts one per node or GPU; the
//! worker reads its own data, holds its tile's nets and talks QUIC with
//! mutual TLS to the coordinator and to its neighbours only.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use glom_net::certs::{load_ca, load_identity};
use glom_net::tls::{client_config, server_config, server_endpoint};
use glom_protocol::Config;
use glom_worker::runtime::{run_worker, WorkerOptions};

use crate::run::{datasets, device};
use crate::train::{runtime, tuning};

/// How `glom worker` was asked to run.
pub(crate) struct WorkerArgs<'a> {
    pub(crate) coordinator: &'a str,
    pub(crate) certs: &'a Path,
    /// Certificate name in `certs` (`worker-<i>`), also the worker's name.
    pub(crate) name: &'a str,
    pub(crate) listen: SocketAddr,
    pub(crate) advertise: Option<String>,
    /// How long to wait for the coordinator to answer.
    pub(crate) patience: Duration,
}

/// Run one worker until the coordinator ends the run.
pub(crate) fn worker(cfg: Config, args: WorkerArgs<'_>) -> Result<()> {
    cfg.validate()?;
    glom_worker::runtime::fault::validate()?;
    let device = device(&cfg)?;
    let data = datasets(&cfg)?;
    let ca = load_ca(args.certs)?;
    let id = load_identity(args.certs, args.name).with_context(|| {
        format!(
            "the worker's identity {name}.pem/{name}.key in {} (see `glom certs init`)",
            args.certs.display(),
            name = args.name
        )
    })?;
    let rt = runtime()?;
    let exit = rt.block_on(async {
        let t = tuning(&cfg);
        let endpoint = server_endpoint(
            args.listen,
            server_config(&id, &ca, &t)?,
            Some(client_config(&id, &ca, &t)?),
        )?;
        tracing::info!(name = args.name, coordinator = args.coordinator,
            listen = %endpoint.local_addr()?, "joining");
        let opts = WorkerOptions {
            cfg: cfg.clone(),
            name: args.name.to_string(),
            coordinator: args.coordinator.to_string(),
            endpoint,
            advertise: args.advertise.clone(),
            patience: args.patience,
            device,
        };
        anyhow::Ok(run_worker(opts, data.train).await?)
    })?;
    let rejoins = match exit.rejoins {
        0 => String::new(),
        n => format!(" (joined again after {n} rollbacks of the cluster)"),
    };
    println!(
        "worker {} ({}) trained {} steps{rejoins}: {}",
        exit.worker_id, args.name, exit.steps, exit.reason
    );
    Ok(())
}
