//! The command line's shape: every subcommand, its flags and its help
//! (clap derive). The bodies live in one file per command next to this one.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  devd init              propose a devd.toml from the repository's Dockerfiles
  devd start --wait-deployed   start syncing this repository, return once every service is deployed
  devd status            what is synced, where, and each service's state and URL
  devd status --watch    the same, live
  devd logs web --build  the web service's last build log
  devd sync --json       push the current state now and wait until it is applied
  devd retry             build and deploy what failed again, e.g. after fixing the environment
  devd stop              stop the daemon and the services' containers
  devd down --yes        stop, and remove the containers, images and state devd created here
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
  devd start --wait-deployed   and once every service is deployed (or failed)
  devd start --take-over become the workspace's writer instead of another daemon
  devd -C ~/src/app start   for another repository")]
    Start {
        /// Return only once the first sync is acknowledged (builds and
        /// deploys go on in the background).
        #[arg(long)]
        wait: bool,
        /// Return only once every service is deployed, printing each URL;
        /// fails if one failed. Implies --wait.
        #[arg(long)]
        wait_deployed: bool,
        /// Make this daemon the workspace's writer even though another
        /// daemon (another laptop or checkout) writes it; that one stops
        /// syncing and says so in its `devd status`.
        #[arg(long)]
        take_over: bool,
    },
    /// Stop the daemon and the services' local containers.
    #[command(after_help = "\
With the embedded receiver (the default), the services' containers stop
too: their URLs live in the daemon. `devd start` runs them again from
their images, without building. A remote receiver's services keep running.

Examples:
  devd stop                  the daemon and the services' containers
  devd stop --keep-running   the daemon only; the containers keep running")]
    Stop {
        /// Leave the services' containers running (their devd URLs answer
        /// again after `devd start`).
        #[arg(long)]
        keep_running: bool,
    },
    /// Build and deploy services again at the current content.
    #[command(after_help = "\
For a service that failed for a reason outside the worktree, now fixed
(a missing base image, the container runtime): no edit needed. A service
already deployed at the current content is left as it is. `devd start`
does this by itself for every service that is not deployed.

Examples:
  devd retry             every service
  devd retry api web     these two")]
    Retry {
        /// Services, as named in devd.toml (default: all).
        services: Vec<String>,
    },
    /// Stop devd and remove everything it created for this worktree.
    #[command(after_help = "\
Removes what the receiver deployed (embedded receiver: the services'
containers and devd's images of them; a remote receiver: the Deployments,
Services and Ingresses devd created in its namespace) and devd's state for
this worktree (the receiver's copy, build logs, caches, the daemon's log).
Asks first, unless --yes.

Examples:
  devd down              asks, then removes
  devd down --yes        without asking (scripts)")]
    Down {
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
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
    /// Show a service's logs (runtime, or its last build and deploy with --build).
    #[command(after_help = "\
Examples:
  devd logs web          the web service's container logs
  devd logs web --follow keep printing new lines (Ctrl-C to stop)
  devd logs api --build  the api's last build and deploy, e.g. after either failed")]
    Logs {
        /// The service, as named in devd.toml.
        service: String,
        /// The last attempt's log instead of the running container's: the
        /// build's output (or the reuse of an existing image), then the
        /// deploy, so a failed deploy's error is there too.
        #[arg(long)]
        build: bool,
        /// Keep printing new lines.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Run a command, or a shell, in a running container of a service.
    #[command(after_help = "\
The command runs in one of the service's running containers (the local
container, or a pod of its Deployment in the cluster), through the daemon's
connection to the receiver: no kubeconfig is needed. From a terminal it gets
a terminal of its own (Ctrl-C, colours and full-screen programs work); its
exit status is devd's.

Examples:
  devd exec web                       a shell in the web service's container
  devd exec web -- ls -l /srv         one command
  devd exec -T api -- cat /etc/os-release > os.txt   no terminal, output to a file")]
    Exec {
        /// The service, as named in devd.toml.
        service: String,
        /// Never give the command a terminal (the default when standard
        /// input or output is not one).
        #[arg(short = 'T', long)]
        no_tty: bool,
        /// The command and its arguments (default: the container's shell).
        #[arg(last = true)]
        command: Vec<String>,
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
    /// Print the objects devd would apply for the repository's own
    /// manifests ([deploy] in devd.toml), with devd's images in them.
    #[command(after_help = "\
Renders the worktree as it is now, as the receiver does: the kustomization
(kubectl kustomize) or the YAML files [deploy] names, every namespaced
object in the workspace's namespace, and each devd-built service's image
as REGISTRY/REPOSITORY:devd-<context digest> (the tag its build gets, known
before any build; the receiver deploys it by digest). Nothing is built or
applied, no daemon is needed: use it in CI and for review. Warnings go to
standard error. Exits non-zero if the manifests do not render.

Examples:
  devd render                       YAML of every object
  devd render -o json | jq '.items[].metadata.name'
  devd render --service web         the workloads that run web's image, and their Services
  devd render --namespace devd-alice --registry registry.example:5000")]
    Render {
        /// yaml (default) or json (a v1 List).
        #[arg(long, short = 'o', default_value = "yaml", value_parser = ["yaml", "json"])]
        output: String,
        /// Only the workloads that run this service's image and the
        /// Services that select them.
        #[arg(long = "service", value_name = "NAME")]
        service: Option<String>,
        /// The namespace the objects go into; default the workspace's
        /// ([receiver] workspace in devd.local.toml, else `local`).
        #[arg(long)]
        namespace: Option<String>,
        /// The registry (host:port[/prefix]) the images are pushed to;
        /// without it, `localhost/` (the embedded receiver's local storage).
        #[arg(long, env = "DEVD_REGISTRY")]
        registry: Option<String>,
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
