//! The command line's shape: every subcommand, its flags and its help
//! (clap derive). The bodies live in one file per command next to this one.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  devd init              propose a devd.toml from the repository's Dockerfiles
  devd start --wait      start syncing this repository, return after the first sync
  devd status            what is synced, where, and each service's state and URL
  devd status --watch    the same, live
  devd logs web --build  the web service's last build log
  devd sync --json       push the current state now and wait until it is applied
  devd stop              stop the daemon
  devd workspace create  a namespace of your own on the cluster, for 12 hours
  devd completions bash  shell completions (also zsh, fish)";

/// devd: your worktree, on the receiver, as you save.
#[derive(Parser, Debug)]
#[command(version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// Run as if started in DIR.
    #[arg(short = 'C', global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Propose a devd.toml with one service per Dockerfile, and write it.
    #[command(after_help = "\
Finds the Dockerfiles that git does not ignore (skipping .git, target and
node_modules) and proposes one [services.NAME] per Dockerfile: the context is
its directory, the image <repo-name>/<service>, the port its first EXPOSE.
Also adds devd.local.toml (this laptop's settings) to .gitignore.

Examples:
  devd init              show the proposal and ask before writing it
  devd init --yes        write it without asking (scripts)
  devd init --dry-run    only show the proposal
  devd init --force      replace an existing devd.toml")]
    Init {
        /// Write without asking for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Replace an existing devd.toml.
        #[arg(long)]
        force: bool,
        /// Print the proposal and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Start the background daemon for the repository here.
    #[command(after_help = "\
Examples:
  devd start             start the daemon and return
  devd start --wait      return once the first sync is applied (shows progress)
  devd start --take-over become the workspace's writer instead of another daemon
  devd -C ~/src/app start   for another repository")]
    Start {
        /// Return only once the first sync is acknowledged.
        #[arg(long)]
        wait: bool,
        /// Make this daemon the workspace's writer even though another
        /// daemon (another laptop or checkout) writes it; that one stops
        /// syncing and says so in its `devd status`.
        #[arg(long)]
        take_over: bool,
    },
    /// Stop the daemon.
    #[command(after_help = "\
Examples:
  devd stop")]
    Stop,
    /// Sync the current state now; returns once the receiver applied it.
    #[command(after_help = "\
Without a running daemon, syncs once in the foreground.

Examples:
  devd sync              push what changed, print a summary
  devd sync --json       the report as JSON (generation, files, bytes, latency)")]
    Sync {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what the daemon is doing: connection, base, last sync, services.
    #[command(after_help = "\
Colors only on a terminal; set NO_COLOR=1 to turn them off.

Examples:
  devd status            the state and a table of the services
  devd status --watch    follow it live (Ctrl-C to stop)
  devd status --json     every field, for scripts
  devd status --json | jq -r '.services[] | select(.state == \"deployed\") | .url'")]
    Status {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Follow the status live: redraw on a terminal, else print it
        /// again whenever it changes.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Show a service's logs (runtime, or its last build with --build).
    #[command(after_help = "\
Examples:
  devd logs web          the web service's container logs
  devd logs web --follow keep printing new lines (Ctrl-C to stop)
  devd logs api --build  the api's last build log, e.g. after a failed build")]
    Logs {
        /// The service, as named in devd.toml.
        service: String,
        /// The last build's log instead of the running container's.
        #[arg(long)]
        build: bool,
        /// Keep printing new lines.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Build every service's image for a commit unless it exists (for CI).
    #[command(after_help = "\
For each service in the commit's devd.toml, the build context is taken from
the commit (not the worktree) and digested as a receiver does; an image
tagged with that digest that is already in the registry is left alone, any
other is built with buildah (build steps first) and pushed. A workspace at
that commit then deploys every service from these images without a build.
Exits non-zero if a build failed.

Examples:
  devd prebuild --registry registry.example:5000            in CI, on every push to main
  devd prebuild --registry 127.0.0.1:5000 --insecure-registry --rev origin/main
  devd prebuild --service web --json                        one service, a JSON report")]
    Prebuild {
        /// The commit (any rev spec); default HEAD.
        #[arg(long)]
        rev: Option<String>,
        /// Registry (host:port[/prefix]) the receivers look images up in;
        /// without it images stay in this machine's container storage.
        #[arg(long, env = "DEVD_REGISTRY")]
        registry: Option<String>,
        /// Talk plain HTTP to the registry.
        #[arg(long)]
        insecure_registry: bool,
        /// Only this service (repeatable).
        #[arg(long = "service", value_name = "NAME")]
        services: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Your workspaces on the cluster: namespaces that expire.
    #[command(after_help = "\
A workspace is a namespace devd-<user>[-<name>] labelled as devd's, with
its owner and expiry in annotations; the cluster's vacuum deletes it once
it expires. Uses your kubeconfig (KUBECONFIG, else ~/.kube/config). The
owner is `git config user.email`, else $USER.

Examples:
  devd workspace create                    devd-<user> with a receiver, paired, for 12h
  devd workspace create --name feat --ttl 2d
  devd workspace list                      yours, with the time left
  devd workspace list --all --json         everyone's, for scripts
  devd workspace extend devd-alice --ttl 6h   now expires 6h from now
  devd workspace delete devd-alice-feat")]
    Workspace {
        #[command(subcommand)]
        cmd: WorkspaceCmd,
    },
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  devd completions bash > ~/.local/share/bash-completion/completions/devd
  devd completions zsh > \"${fpath[1]}/_devd\"
  devd completions fish > ~/.config/fish/completions/devd.fish")]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Run the daemon in the foreground (what `start` runs in the background).
    #[command(after_help = "\
Examples:
  RUST_LOG=debug devd run   the daemon's log on the terminal")]
    Run {
        /// Take the workspace over from another daemon (see `start`).
        #[arg(long)]
        take_over: bool,
    },
}

/// `devd workspace` subcommands.
#[derive(Subcommand, Debug)]
pub enum WorkspaceCmd {
    /// Create a workspace: a namespace with a receiver, paired with this
    /// repository.
    #[command(after_help = "\
Creates the namespace, copies the receiver's registry and git Secrets into
it from the namespace `kubectl apply -k manifests/` installed (--secrets-from),
applies the receiver (manifests/receiver, compiled into devd), waits for it
to be ready, reads its pairing from the Secret it publishes, and writes
[receiver] into this repository's devd.local.toml (other sections stay).
The address is the QUIC Service's LoadBalancer address, or a node's address
and its nodePort, unless --address says otherwise.

Examples:
  devd workspace create                   namespace devd-<user>, for 12h
  devd workspace create --name feat --ttl 2d   devd-<user>-feat, for 2 days
  devd workspace create --address 127.0.0.1:7447   dial a port-forward
  devd workspace create --node-port       no LoadBalancer: a node's address and a nodePort
  devd workspace create --no-receiver     the namespace only")]
    Create {
        /// How long it lives: 12h, 90m, 2d, 1h30m.
        #[arg(long, default_value = "12h")]
        ttl: String,
        /// A name, for more than one workspace: devd-<user>-<NAME>.
        #[arg(long)]
        name: Option<String>,
        /// Create the namespace only: no receiver, no pairing.
        #[arg(long)]
        no_receiver: bool,
        /// How long to wait for the receiver to be ready and reachable.
        #[arg(long, default_value = "5m")]
        timeout: String,
        /// Address laptops dial (HOST:PORT) instead of the Service's.
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<String>,
        /// Namespace to copy the devd-registry and devd-git Secrets from.
        #[arg(long, value_name = "NAMESPACE", default_value = "devd")]
        secrets_from: String,
        /// Expose the receiver's QUIC Service as a NodePort (the cluster
        /// picks the port; laptops dial a node's address) instead of a
        /// LoadBalancer.
        #[arg(long)]
        node_port: bool,
    },
    /// List your workspaces with owner, expiry and time left.
    #[command(after_help = "\
Examples:
  devd workspace list
  devd workspace list --all      everyone's
  devd workspace list --json")]
    List {
        /// Everyone's workspaces, not only yours.
        #[arg(long)]
        all: bool,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Move a workspace's expiry to TTL from now.
    #[command(after_help = "\
NAME is the namespace, or the --name it was created with.

Examples:
  devd workspace extend devd-alice --ttl 6h
  devd workspace extend feat --ttl 1d     devd-<user>-feat")]
    Extend {
        /// The workspace's namespace, or its --name.
        name: String,
        /// The new time to live, from now: 6h, 90m, 2d.
        #[arg(long)]
        ttl: String,
    },
    /// Delete a workspace's namespace and everything in it.
    #[command(after_help = "\
Refuses namespaces that do not carry devd's workspace labels.

Examples:
  devd workspace delete devd-alice
  devd workspace delete feat              devd-<user>-feat")]
    Delete {
        /// The workspace's namespace, or its --name.
        name: String,
    },
}
