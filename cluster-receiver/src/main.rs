//! `devd-receiver`: the receiving end of devd.

use anyhow::Context;
use clap::{Parser, Subcommand};
use devd_receiver::{ServeConfig, WorkspaceSpec};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a drain waits for connections and builds in flight: under the
/// receiver Deployment's `terminationGracePeriodSeconds` (30).
const DRAIN_GRACE: Duration = Duration::from_secs(20);

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
        /// Address to listen on: QUIC on its UDP port and the TCP + TLS
        /// fallback on the same TCP port.
        #[arg(long, default_value = "0.0.0.0:7447")]
        listen: SocketAddr,
        /// Do not accept the TCP + TLS fallback (QUIC over UDP only).
        #[arg(long, env = "DEVD_RECEIVER_NO_TCP")]
        no_tcp: bool,
        /// Address to put in pairing files (default: the bound address).
        #[arg(long, env = "DEVD_RECEIVER_ADVERTISE")]
        advertise: Option<String>,
        /// Git remote the base commits are fetched from (for --workspace).
        #[arg(long, env = "DEVD_RECEIVER_GIT_REMOTE")]
        git_remote: Option<String>,
        /// File holding a read access token for http(s):// git remotes
        /// (sent as HTTP Basic auth `x-access-token:TOKEN`); overrides
        /// `[git] token_file` of --config.
        #[arg(long, env = "DEVD_RECEIVER_GIT_TOKEN_FILE")]
        git_token_file: Option<PathBuf>,
        /// Name of the workspace served with --git-remote.
        #[arg(long, env = "DEVD_RECEIVER_WORKSPACE", default_value = "default")]
        workspace: String,
        /// Further workspaces as NAME=GIT_REMOTE (repeatable).
        #[arg(long = "also", value_name = "NAME=GIT_REMOTE")]
        also: Vec<String>,
        /// Concurrent authenticated laptop connections, at most (connections
        /// that have not authenticated yet are bounded apart, per source
        /// address, and must authenticate within 10 s).
        #[arg(long, default_value_t = devd_receiver::run::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
        /// Log as JSON lines.
        #[arg(long, env = "DEVD_RECEIVER_JSON_LOGS")]
        json_logs: bool,
        /// Configuration file (TOML): build backend, registry, concurrency.
        /// Without it: the local backend (buildah + podman), no registry.
        #[arg(long, env = "DEVD_RECEIVER_CONFIG")]
        config: Option<PathBuf>,
        /// TCP address of the HTTP server: build contexts for Kubernetes
        /// build pods (needed by the kubernetes backend), /healthz, /readyz
        /// and Prometheus /metrics.
        #[arg(long, env = "DEVD_RECEIVER_HTTP_LISTEN")]
        http_listen: Option<SocketAddr>,
    },
    /// Download a build context offered by a receiver, verify it and unpack
    /// it (the init container of a Kubernetes build pod).
    ///
    /// Example: devd-receiver fetch-context --url http://devd-receiver.ns.svc:8080/contexts/TOKEN.tar.zst --blake3 HEX --dest /workspace
    FetchContext {
        /// URL of the context archive.
        #[arg(long)]
        url: String,
        /// blake3 digest (hex) the archive must have.
        #[arg(long)]
        blake3: String,
        /// Directory to unpack into (created).
        #[arg(long)]
        dest: PathBuf,
    },
    /// Delete workspace namespaces whose expiry has passed, and nothing
    /// else: only namespaces labelled `app.kubernetes.io/managed-by=devd`
    /// and `dev.devd/workspace` whose `dev.devd/expires-at` annotation is in
    /// the past. Runs in the cluster (a CronJob) or with KUBECONFIG.
    ///
    /// Example: devd-receiver vacuum --dry-run
    Vacuum {
        /// Only log what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or the
        /// pod's service account).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Log as JSON lines.
        #[arg(long)]
        json_logs: bool,
    },
    /// Print the DevBuild CustomResourceDefinition (YAML), generated from
    /// the receiver's Rust type: what manifests/crd/devbuild.yaml holds.
    ///
    /// Example: devd-receiver crd > manifests/crd/devbuild.yaml
    Crd,
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Crd => {
            print!("{}", devd_receiver::build::backend::devbuild::crd_yaml());
            Ok(())
        }
        Cmd::Vacuum {
            dry_run,
            kubeconfig,
            json_logs,
        } => {
            init_tracing(json_logs);
            devd_sync::net::install_crypto();
            let config = match &kubeconfig {
                Some(p) => {
                    let kc = kube::config::Kubeconfig::read_from(p)
                        .with_context(|| format!("read kubeconfig {}", p.display()))?;
                    kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
                }
                None => kube::Config::infer().await.context(
                    "no Kubernetes configuration: run in a pod with a service account, or set KUBECONFIG",
                )?,
            };
            let client = kube::Client::try_from(config)?;
            let report =
                devd_receiver::vacuum::run(client, jiff::Timestamp::now(), dry_run).await?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            for e in &report.deleted {
                println!(
                    "{verb} namespace {} (owner {}, expired {})",
                    e.namespace,
                    e.owner.as_deref().unwrap_or("unknown"),
                    e.expired_at
                );
            }
            println!(
                "{verb} {} expired workspace namespaces; kept {}",
                report.deleted.len(),
                report.kept
            );
            Ok(())
        }
        Cmd::FetchContext { url, blake3, dest } => {
            init_tracing(false);
            devd_sync::net::install_crypto();
            let f = devd_receiver::build::fetch::fetch_context(&url, &dest, &blake3).await?;
            println!(
                "fetched {} bytes, {} entries into {}",
                f.bytes,
                f.entries,
                dest.display()
            );
            Ok(())
        }
        Cmd::Serve {
            data,
            listen,
            no_tcp,
            advertise,
            git_remote,
            git_token_file,
            workspace,
            also,
            max_connections,
            json_logs,
            config,
            http_listen,
        } => {
            init_tracing(json_logs);
            let cfg = match &config {
                Some(p) => devd_receiver::config::ReceiverConfig::load(p)?,
                None => Default::default(),
            };
            let git_token_file = git_token_file.or_else(|| cfg.git.token_file.clone());
            let mut workspaces = Vec::new();
            if let Some(remote) = git_remote {
                workspaces.push(WorkspaceSpec {
                    name: workspace,
                    git_remote: remote,
                    git_token_file: git_token_file.clone(),
                });
            }
            for a in also {
                let (name, remote) = a
                    .split_once('=')
                    .with_context(|| format!("--also {a:?}: expected NAME=GIT_REMOTE"))?;
                workspaces.push(WorkspaceSpec {
                    name: name.into(),
                    git_remote: remote.into(),
                    git_token_file: git_token_file.clone(),
                });
            }
            anyhow::ensure!(
                !workspaces.is_empty(),
                "no workspace: pass --git-remote URL (and optionally --workspace NAME)"
            );
            let cancel = CancellationToken::new();
            let running = devd_receiver::run(
                ServeConfig {
                    advertise,
                    tcp: !no_tcp,
                    max_connections,
                    http_listen,
                    file: cfg,
                    ..ServeConfig::new(data, listen, workspaces)
                },
                cancel.clone(),
            )
            .await?;
            println!("listening on {}", running.addr);
            if let Some(addr) = &running.http {
                println!("http on {addr}");
            }
            for w in &running.workspaces {
                println!(
                    "workspace {}: pairing {} worktree {}",
                    w.name,
                    w.pairing.display(),
                    w.worktree.display()
                );
            }
            tracing::info!(addr = %running.addr, fingerprint = %running.fingerprint, "receiver ready");
            shutdown_signal().await;
            tracing::info!("draining (send the signal again to force)");
            cancel.cancel();
            tokio::select! {
                _ = running.drain(DRAIN_GRACE) => {}
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
