//! Command-line interface: argument definitions and the commands.

use crate::config::{devd_home, repo_state_dir};
use crate::control::{self, Request};
use crate::daemon::{self, Options};
use crate::progress::{self, Progress};
use crate::repo::Repo;
use crate::status::{Status, unix_ms};
use crate::status_view;
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
  devd -C ~/src/app start   for another repository")]
    Start {
        /// Return only once the first sync is acknowledged.
        #[arg(long)]
        wait: bool,
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
    Run,
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

struct Ctx {
    workdir: PathBuf,
    home: PathBuf,
    state_dir: PathBuf,
}

impl Ctx {
    fn new(dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let dir = match dir {
            Some(d) => d,
            None => std::env::current_dir().context("current directory")?,
        };
        let repo = Repo::discover(&dir)?;
        let workdir = repo.workdir().to_owned();
        let home = devd_home()?;
        let state_dir = repo_state_dir(&home, &workdir);
        Ok(Self {
            workdir,
            home,
            state_dir,
        })
    }

    fn socket(&self) -> PathBuf {
        control::socket_path(&self.state_dir)
    }
}

/// Run the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::Completions { shell } = cli.cmd {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut cmd, "devd", &mut std::io::stdout());
        return Ok(());
    }
    if let Cmd::Workspace { cmd } = cli.cmd {
        return match cmd {
            WorkspaceCmd::Create {
                ttl,
                name,
                no_receiver,
                timeout,
                address,
                secrets_from,
                node_port,
            } => {
                crate::workspace::create(&crate::workspace::CreateOptions {
                    name,
                    ttl,
                    no_receiver,
                    timeout,
                    address,
                    secrets_from,
                    node_port,
                })
                .await
            }
            WorkspaceCmd::List { all, json } => crate::workspace::list(all, json).await,
            WorkspaceCmd::Extend { name, ttl } => crate::workspace::extend(&name, &ttl).await,
            WorkspaceCmd::Delete { name } => crate::workspace::delete(&name).await,
        };
    }
    if let Cmd::Prebuild {
        rev,
        registry,
        insecure_registry,
        services,
        json,
    } = cli.cmd
    {
        let dir = match cli.dir {
            Some(d) => d,
            None => std::env::current_dir()?,
        };
        #[cfg(not(feature = "embedded"))]
        {
            let _ = (dir, rev, registry, insecure_registry, services, json);
            anyhow::bail!(
                "this devd was built without the cargo feature `embedded`, which `devd prebuild` needs (it builds with the receiver's local backend)"
            );
        }
        #[cfg(feature = "embedded")]
        {
            let opts = crate::prebuild::Options {
                dir,
                rev,
                registry,
                insecure_registry,
                services,
            };
            let report = crate::prebuild::run(&opts, |line| {
                if !json {
                    println!("{}", crate::prebuild::describe(line));
                }
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{}: {} built, {} present, {} failed in {:.1} s",
                    &report.commit[..12],
                    report.built,
                    report.present,
                    report.failed,
                    report.ms as f64 / 1000.0
                );
            }
            anyhow::ensure!(report.failed == 0, "{} build(s) failed", report.failed);
            return Ok(());
        }
    }
    let ctx = Ctx::new(cli.dir)?;
    match cli.cmd {
        Cmd::Init {
            yes,
            force,
            dry_run,
        } => init(&ctx, yes, force, dry_run),
        Cmd::Start { wait } => start(&ctx, wait).await,
        Cmd::Stop => stop(&ctx).await,
        Cmd::Sync { json } => sync(&ctx, json).await,
        Cmd::Status { json, watch } => {
            if watch {
                watch_status(&ctx, json).await
            } else {
                status(&ctx, json).await
            }
        }
        Cmd::Logs {
            service,
            build,
            follow,
        } => crate::logs::logs(&ctx.workdir, &ctx.home, &service, build, follow).await,
        Cmd::Completions { .. } | Cmd::Workspace { .. } | Cmd::Prebuild { .. } => {
            unreachable!("handled above")
        }
        Cmd::Run => run_foreground(&ctx).await,
    }
}

/// Where the CLI reads the daemon's progress from.
enum Source<'a> {
    /// A background daemon, over its control socket.
    Socket(PathBuf),
    /// The one-shot daemon core of `devd sync` without a daemon.
    Handle(&'a daemon::Handle),
}

impl Source<'_> {
    async fn progress(&self) -> Option<Progress> {
        match self {
            Source::Socket(p) => control::request(p, &Request::Status)
                .await
                .ok()
                .flatten()
                .and_then(|r| serde_json::from_value(r.data["progress"].clone()).ok()),
            Source::Handle(h) => h.status().progress,
        }
    }
}

/// Run `work`, drawing the daemon's progress on stderr meanwhile: a bar on
/// a terminal, plain lines otherwise.
async fn with_progress<T>(src: Source<'_>, work: impl std::future::Future<Output = T>) -> T {
    let mut view = progress::View::stderr();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tokio::pin!(work);
    loop {
        tokio::select! {
            r = &mut work => {
                view.finish();
                return r;
            }
            _ = tick.tick() => {
                let p = src.progress().await;
                view.show(p.as_ref());
            }
        }
    }
}

fn print_report(v: &serde_json::Value, json: bool) {
    if json {
        println!("{v}");
    } else {
        println!(
            "synced generation {} (overlay {}): {} files, {} B sent, {} B received, {} ms",
            v["generation"],
            v["overlay_digest"]
                .as_str()
                .map(|s| &s[..12.min(s.len())])
                .unwrap_or("-"),
            v["files"],
            v["bytes_sent"],
            v["bytes_received"],
            v["latency_ms"]
        );
    }
}

async fn start(ctx: &Ctx, wait: bool) -> anyhow::Result<()> {
    if let Some(r) = control::request(&ctx.socket(), &Request::Status).await? {
        println!(
            "devd is already running for {} (pid {}); `devd sync` pushes the current state now, `devd status` shows it",
            ctx.workdir.display(),
            r.data["pid"]
        );
        return Ok(());
    }
    std::fs::create_dir_all(&ctx.state_dir)?;
    let log_path = ctx.state_dir.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let exe = std::env::current_exe().context("locating the devd binary")?;
    let mut child = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(exe)
            .arg("-C")
            .arg(&ctx.workdir)
            .arg("run")
            .env("DEVD_HOME", &ctx.home)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting the daemon")?
    };
    let started = Instant::now();
    loop {
        if control::request(&ctx.socket(), &Request::Status)
            .await?
            .is_some()
        {
            break;
        }
        if let Some(st) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bail!(
                "the daemon exited ({st}) while starting; log {}:\n{}",
                log_path.display(),
                tail.join("\n")
            );
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the daemon did not come up within 60 s; see its log {} \
                 (`devd run` runs it in the foreground, logging to the terminal)",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "devd started for {} (log: {})",
        ctx.workdir.display(),
        log_path.display()
    );
    if wait {
        let r = with_progress(
            Source::Socket(ctx.socket()),
            control::request(&ctx.socket(), &Request::Sync),
        )
        .await?
        .with_context(|| {
            format!(
                "the daemon stopped during the first sync; see its log {}",
                log_path.display()
            )
        })?;
        if !r.ok {
            bail!(
                "first sync failed: {}\nthe daemon keeps retrying; `devd status` shows the receiver's state, its log is {}",
                r.error.unwrap_or_default(),
                log_path.display()
            );
        }
        print_report(&r.data, false);
        println!("next: `devd status` for the services' state and URLs");
    }
    Ok(())
}

async fn stop(ctx: &Ctx) -> anyhow::Result<()> {
    if control::request(&ctx.socket(), &Request::Stop)
        .await?
        .is_none()
    {
        println!("devd is not running for {}", ctx.workdir.display());
        return Ok(());
    }
    let started = Instant::now();
    while ctx.socket().exists() && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The lock is released when the process exits.
    let lock = lock_path(&ctx.state_dir);
    while started.elapsed() < Duration::from_secs(15) {
        if try_lock(&lock)?.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("devd stopped");
    Ok(())
}

async fn sync(ctx: &Ctx, json: bool) -> anyhow::Result<()> {
    let socket = ctx.socket();
    if let Some(r) = with_progress(
        Source::Socket(socket.clone()),
        control::request(&socket, &Request::Sync),
    )
    .await?
    {
        if !r.ok {
            bail!(
                "sync failed: {}\n`devd status` shows the receiver's state; the daemon's log is {}",
                r.error.unwrap_or_default(),
                ctx.state_dir.join("daemon.log").display()
            );
        }
        print_report(&r.data, json);
        return Ok(());
    }
    // One-shot, without a daemon.
    let h = daemon::start(Options {
        workdir: ctx.workdir.clone(),
        home: ctx.home.clone(),
        watch: false,
    })
    .await?;
    let res = with_progress(Source::Handle(&h), h.sync(Duration::from_secs(8))).await;
    h.shutdown().await;
    let report = res.map_err(|e| {
        anyhow::anyhow!(
            "sync failed: {e}\ncheck the receiver settings in devd.local.toml (RUST_LOG=debug shows the details)"
        )
    })?;
    print_report(&serde_json::to_value(report)?, json);
    Ok(())
}

/// Options for rendering the status on stdout now.
fn view_options() -> status_view::Options {
    let term = console::Term::stdout();
    status_view::Options {
        color: console::colors_enabled(),
        width: term.size_checked().map(|(_, cols)| cols),
        now_ms: unix_ms(),
    }
}

async fn fetch_status(ctx: &Ctx) -> anyhow::Result<Option<serde_json::Value>> {
    Ok(control::request(&ctx.socket(), &Request::Status)
        .await
        .with_context(|| {
            format!(
                "cannot talk to the daemon at {}; if it hangs, `devd stop` and `devd start` again",
                ctx.socket().display()
            )
        })?
        .map(|r| r.data))
}

fn stopped_json(ctx: &Ctx) -> serde_json::Value {
    serde_json::json!({"state": "stopped", "workdir": ctx.workdir})
}

/// The text `devd status` shows for `v` (`None`: no daemon).
fn status_text(ctx: &Ctx, v: Option<&serde_json::Value>, opts: &status_view::Options) -> String {
    match v {
        None => status_view::not_running(&ctx.workdir),
        Some(v) => match serde_json::from_value::<Status>(v.clone()) {
            Ok(st) => status_view::render(&st, opts),
            Err(e) => format!(
                "the daemon answered with a status this devd cannot read ({e}); \
                 restart it with `devd stop && devd start` after an upgrade"
            ),
        },
    }
}

async fn status(ctx: &Ctx, json: bool) -> anyhow::Result<()> {
    let v = fetch_status(ctx).await?;
    if json {
        println!("{}", v.unwrap_or_else(|| stopped_json(ctx)));
    } else {
        println!("{}", status_text(ctx, v.as_ref(), &view_options()));
    }
    Ok(())
}

/// How often `devd status --watch` polls.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// `devd status --watch`: on a terminal, redraw in place until Ctrl-C;
/// otherwise print the status again whenever it changed.
async fn watch_status(ctx: &Ctx, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let tty = console::Term::stdout().is_term() && !json;
    let mut screen = tty.then(Screen::default);
    let mut last: Option<Option<serde_json::Value>> = None;
    let mut blocks = 0u64;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tick.tick() => {}
        }
        let v = fetch_status(ctx).await?;
        if let Some(screen) = &mut screen {
            let opts = view_options();
            let body = status_text(ctx, v.as_ref(), &opts);
            let title = format!(
                "devd status --watch · every {} ms · Ctrl-C to stop",
                WATCH_EVERY.as_millis()
            );
            let title = console::Style::new()
                .dim()
                .force_styling(opts.color)
                .apply_to(title)
                .to_string();
            screen.draw(&format!("{title}\n\n{body}"))?;
            continue;
        }
        if last.as_ref() == Some(&v) {
            continue;
        }
        let mut out = std::io::stdout().lock();
        if json {
            writeln!(out, "{}", v.clone().unwrap_or_else(|| stopped_json(ctx)))?;
        } else {
            blocks += 1;
            if blocks > 1 {
                writeln!(out)?;
            }
            writeln!(out, "--- devd status #{blocks} ---")?;
            writeln!(out, "{}", status_text(ctx, v.as_ref(), &view_options()))?;
        }
        out.flush()?;
        last = Some(v);
    }
    if let Some(screen) = screen {
        screen.close()?;
    }
    Ok(())
}

/// A frame redrawn in place on the terminal: the cursor goes back to the
/// frame's first line, every line is rewritten and cleared to its end, and
/// whatever the last frame had below is cleared. Lines are cut to the
/// terminal's width and the frame to its height so nothing wraps or
/// scrolls (which would leave the cursor arithmetic wrong).
#[derive(Default)]
struct Screen {
    lines: usize,
    size: Option<(u16, u16)>,
}

impl Screen {
    fn draw(&mut self, frame: &str) -> std::io::Result<()> {
        use std::io::Write;
        let size = console::Term::stdout().size_checked();
        let (rows, cols) = size.unwrap_or((24, 80));
        let mut out = String::new();
        if self.lines == 0 {
            out.push_str("\x1b[?25l");
        } else if size != self.size {
            // Resized: lines of the last frame may have wrapped; start over.
            out.push_str("\x1b[H\x1b[2J");
        } else {
            out.push_str(&format!("\x1b[{}A\r", self.lines));
        }
        let max_rows = usize::from(rows.saturating_sub(1)).max(1);
        let mut lines: Vec<String> = frame
            .lines()
            .map(|l| console::truncate_str(l, usize::from(cols), "…").into_owned())
            .collect();
        if lines.len() > max_rows {
            lines.truncate(max_rows - 1);
            lines.push(format!(
                "… (the terminal is too small for {} more lines)",
                frame.lines().count() - lines.len()
            ));
        }
        for l in &lines {
            out.push_str(l);
            out.push_str("\x1b[K\n");
        }
        out.push_str("\x1b[J");
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes())?;
        stdout.flush()?;
        self.lines = lines.len();
        self.size = size;
        Ok(())
    }

    /// Leave the last frame on screen and give the cursor back.
    fn close(self) -> std::io::Result<()> {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(b"\x1b[?25h")?;
        stdout.flush()
    }
}

fn init(ctx: &Ctx, yes: bool, force: bool, dry_run: bool) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let path = ctx.workdir.join(devd_sync::catalog::FILE);
    if path.exists() && !force && !dry_run {
        bail!(
            "{} already exists; rerun with --force to replace it (or --dry-run to only see the proposal)",
            path.display()
        );
    }
    let proposal = crate::init::propose(&ctx.workdir)?;
    let n = proposal.services.len();
    // The proposal alone on stdout (`devd init --dry-run > devd.toml`
    // works); the rest is for the person.
    eprintln!(
        "Found {n} Dockerfile{}; proposed {}:\n",
        if n == 1 { "" } else { "s" },
        path.display()
    );
    println!("{}", proposal.text);
    if dry_run {
        eprintln!("(--dry-run: nothing written)");
        return Ok(());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "no terminal to confirm on: rerun with --yes to write {} (or --dry-run to only print it)",
                path.display()
            );
        }
        eprint!("Write {}? [y/N] ", path.display());
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            println!("Nothing written.");
            return Ok(());
        }
    }
    std::fs::write(&path, &proposal.text).with_context(|| format!("writing {}", path.display()))?;
    println!("Wrote {}.", path.display());
    if crate::init::ignore_local_file(&ctx.workdir)
        .with_context(|| format!("updating {}", ctx.workdir.join(".gitignore").display()))?
    {
        println!(
            "Added {} (this laptop's settings) to .gitignore.",
            crate::config::LOCAL_FILE
        );
    }
    println!(
        "\nNext:\n  \
         git add devd.toml .gitignore && git commit -m \"devd: services\"   (the team shares it)\n  \
         devd start --wait      build and deploy every service\n  \
         devd status            their state and URLs"
    );
    Ok(())
}

fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("daemon.lock")
}

/// Take the daemon lock; `None` if another process holds it.
fn try_lock(path: &Path) -> anyhow::Result<Option<std::fs::File>> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

async fn run_foreground(ctx: &Ctx) -> anyhow::Result<()> {
    let Some(_lock) = try_lock(&lock_path(&ctx.state_dir))? else {
        println!("devd is already running for {}", ctx.workdir.display());
        return Ok(());
    };
    let h = Arc::new(
        daemon::start(Options {
            workdir: ctx.workdir.clone(),
            home: ctx.home.clone(),
            watch: true,
        })
        .await?,
    );
    tracing::info!(workdir = %ctx.workdir.display(), state = %ctx.state_dir.display(), "devd running");
    let ctl = tokio::spawn(control::serve(h.clone(), ctx.socket()));
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = h.cancel.cancelled() => {}
        }
    }
    let failed = h.status().state == "error";
    let err = h.status().last_error;
    h.cancel.cancel();
    let _ = ctl.await;
    if let Ok(h) = Arc::try_unwrap(h) {
        h.shutdown().await;
    }
    if failed {
        bail!("{}", err.unwrap_or_else(|| "daemon failed".into()));
    }
    Ok(())
}
