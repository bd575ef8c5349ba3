//! `devd init`: propose a `devd.toml` from the Dockerfiles, and write it.

use super::Ctx;
use anyhow::{Context, bail};

pub(super) fn run(ctx: &Ctx, yes: bool, force: bool, dry_run: bool) -> anyhow::Result<()> {
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
