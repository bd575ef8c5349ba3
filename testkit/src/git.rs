//! git with a hermetic configuration: neither the machine's
//! `/etc/gitconfig` nor the user's `~/.gitconfig` (signing, hooks paths,
//! `init.defaultBranch`, fsmonitor, …) can change what a test or a
//! benchmark sees, no credential prompt can hang it, and an outer
//! `GIT_DIR`/`GIT_WORK_TREE` (as in a git hook) cannot redirect it.
//!
//! The commit identity is not set here: the repository's own config or
//! the caller's `-c user.name=… -c user.email=…` gives it.

use crate::process::output;
use std::path::Path;
use std::process::Command;

/// `git` to run in `dir`, with the hermetic environment.
pub fn git_command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE");
    cmd
}

/// Run `git args…` in `dir`: stdout on success, an error with the
/// arguments, the status and stderr otherwise.
pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    output(git_command(dir).args(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_in_dir_and_reports_failures() {
        let d = tempfile::tempdir().unwrap();
        git(d.path(), &["init", "-q", "-b", "main"]).unwrap();
        let top = git(d.path(), &["rev-parse", "--show-toplevel"]).unwrap();
        assert_eq!(
            Path::new(top.trim()),
            d.path().canonicalize().unwrap(),
            "runs in the given directory"
        );
        let err = format!("{:#}", git(d.path(), &["rev-parse", "HEAD"]).unwrap_err());
        assert!(err.contains("rev-parse") && err.contains("HEAD"), "{err}");
    }

    #[test]
    fn ignores_global_config() {
        let d = tempfile::tempdir().unwrap();
        let cmd = git_command(d.path());
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&("GIT_CONFIG_GLOBAL".as_ref(), Some("/dev/null".as_ref()))));
        assert!(envs.contains(&("GIT_DIR".as_ref(), None)));
    }
}
