//! `devd-receiver`: the receiving end of devd.

use anyhow::Context;
use clap::{Parser, Subcommand};
use devd_receiver::{ServeOptions, WorkspaceSpec};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "devd receiver: materializes laptops' worktrees from QUIC syncs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve workspaces over QUIC.
    ///
    /// Example: devd-receiver serve --data /var/lib/devd --listen 0.0.0.0:7447 --git-remote https://git.example/app.git
    Serve {
        /// Directory for all state: certificate, workspaces, blobs, worktrees.
        #[arg(long, env = "DEVD_RECEIVER_DATA")]
        data: PathBuf,
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:7447")]
        listen: SocketAddr,
        /// Address to put in pairing files (default: the bound address).
        #[arg(long)]
        advertise: Option<String>,
        /// Git remote the base commits are fetched from (for --workspace).
        #[arg(long)]
        git_remote: Option<String>,
        /// Name of the workspace served with --git-remote.
        #[arg(long, default_value = "default")]
        workspace: String,
        /// Further workspaces as NAME=GIT_REMOTE (repeatable).
        #[arg(long = "also", value_name = "NAME=GIT_REMOTE")]
        also: Vec<String>,
        /// Concurrent laptop connections, at most.
        #[arg(long, default_value_t = 64)]
        max_connections: usize,
        /// Log as JSON lines.
        #[arg(long)]
        json_logs: bool,
        /// Configuration file (TOML): build backend, registry, concurrency.
        /// Without it: the local backend (buildah + podman), no registry.
        #[arg(long, env = "DEVD_RECEIVER_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            data,
            listen,
            advertise,
            git_remote,
            workspace,
            also,
            max_connections,
            json_logs,
            config,
        } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let fmt = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            if json_logs {
                fmt.json().init();
            } else {
                fmt.init();
            }
            let mut workspaces = Vec::new();
            if let Some(remote) = git_remote {
                workspaces.push(WorkspaceSpec {
                    name: workspace,
                    git_remote: remote,
                });
            }
            for a in also {
                let (name, remote) = a
                    .split_once('=')
                    .with_context(|| format!("--also {a:?}: expected NAME=GIT_REMOTE"))?;
                workspaces.push(WorkspaceSpec {
                    name: name.into(),
                    git_remote: remote.into(),
                });
            }
            anyhow::ensure!(
                !workspaces.is_empty(),
                "no workspace: pass --git-remote URL (and optionally --workspace NAME)"
            );
            let cfg = match &config {
                Some(p) => devd_receiver::config::ReceiverConfig::load(p)?,
                None => Default::default(),
            };
            let builds = cfg.backend(&data)?.map(|backend| devd_receiver::Builds {
                backend,
                concurrency: cfg.build.concurrency,
            });
            let cancel = CancellationToken::new();
            let running = devd_receiver::start(
                ServeOptions {
                    data_dir: data,
                    listen,
                    advertise,
                    workspaces,
                    max_connections,
                    builds,
                },
                cancel.clone(),
            )
            .await?;
            println!("listening on {}", running.addr);
            for (name, pairing, worktree) in &running.workspaces {
                println!(
                    "workspace {name}: pairing {} worktree {}",
                    pairing.display(),
                    worktree.display()
                );
            }
            tracing::info!(addr = %running.addr, fingerprint = %running.fingerprint, "receiver ready");
            shutdown_signal().await;
            tracing::info!("draining (send the signal again to force)");
            cancel.cancel();
            tokio::select! {
                _ = running.drain(Duration::from_secs(20)) => {}
                _ = shutdown_signal() => { tracing::warn!("forced exit"); std::process::exit(130); }
            }
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
