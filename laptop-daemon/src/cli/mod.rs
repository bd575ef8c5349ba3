//! The command line: argument types in [`args`], one file per command
//! (watchexec's layout), and what several commands share: the repository
//! context ([`Ctx`]), the daemon lock ([`lock`]), the progress drawn while
//! waiting ([`progress`]) and the in-place redraw of `status --watch`
//! ([`screen`]).
//!
//! Commands return `anyhow::Result`: this is the layer where errors from
//! the library modules get their context and reach the person.

mod args;
mod completions;
mod down;
mod exec;
mod init;
mod lock;
mod logs;
mod prebuild;
mod progress;
mod render;
mod retry;
mod run;
mod screen;
mod start;
mod status;
mod stop;
mod sync;
mod workspace;

pub use args::{Cli, Cmd, WorkspaceCmd};

use crate::config::{devd_home, repo_state_dir};
use crate::control;
use crate::repo::Repo;
use anyhow::Context;
use std::path::PathBuf;

/// The repository a command works on: its worktree, `DEVD_HOME`, and the
/// daemon's state directory for it.
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

    /// The daemon's control socket.
    fn socket(&self) -> PathBuf {
        control::socket_path(&self.state_dir)
    }
}

/// Run the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Commands that need no repository.
    match cli.cmd {
        Cmd::Completions { shell } => return completions::run(shell),
        Cmd::Workspace { cmd } => return workspace::run(cmd).await,
        Cmd::Prebuild {
            rev,
            registry,
            insecure_registry,
            services,
            json,
        } => {
            let dir = match cli.dir {
                Some(d) => d,
                None => std::env::current_dir()?,
            };
            return prebuild::run(dir, rev, registry, insecure_registry, services, json).await;
        }
        Cmd::Render {
            output,
            service,
            namespace,
            registry,
        } => {
            let dir = match cli.dir {
                Some(d) => d,
                None => std::env::current_dir()?,
            };
            return render::run(dir, &output, service, namespace, registry).await;
        }
        _ => {}
    }
    let ctx = Ctx::new(cli.dir)?;
    match cli.cmd {
        Cmd::Init {
            yes,
            force,
            dry_run,
        } => init::run(&ctx, yes, force, dry_run),
        Cmd::Start {
            wait,
            wait_deployed,
            take_over,
        } => start::run(&ctx, wait, wait_deployed, take_over).await,
        Cmd::Stop { keep_running } => stop::run(&ctx, keep_running).await,
        Cmd::Retry { services } => retry::run(&ctx, services).await,
        Cmd::Down { yes } => down::run(&ctx, yes).await,
        Cmd::Sync { json } => sync::run(&ctx, json).await,
        Cmd::Status { json, watch } => {
            if watch {
                status::watch(&ctx, json).await
            } else {
                status::once(&ctx, json).await
            }
        }
        Cmd::Logs {
            service,
            build,
            follow,
        } => logs::run(&ctx, &service, build, follow).await,
        Cmd::Exec {
            service,
            no_tty,
            command,
        } => exec::run(&ctx, &service, command, no_tty).await,
        Cmd::Completions { .. }
        | Cmd::Workspace { .. }
        | Cmd::Prebuild { .. }
        | Cmd::Render { .. } => {
            unreachable!("handled above")
        }
        Cmd::Run { take_over } => run::run(&ctx, take_over).await,
    }
}
