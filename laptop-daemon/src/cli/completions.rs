//! `devd completions SHELL`: a shell completion script on stdout.

use super::Cli;

pub(super) fn run(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "devd", &mut std::io::stdout());
    Ok(())
}
