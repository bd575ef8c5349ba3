//! `devd prebuild`: every service's image built for a commit unless it
//! exists (for CI). Needs the cargo feature `embedded` (the receiver's
//! local build backend).

use std::path::PathBuf;

#[cfg(not(feature = "embedded"))]
pub(super) async fn run(
    dir: PathBuf,
    rev: Option<String>,
    registry: Option<String>,
    insecure_registry: bool,
    services: Vec<String>,
    json: bool,
) -> anyhow::Result<()> {
    let _ = (dir, rev, registry, insecure_registry, services, json);
    anyhow::bail!(
        "this devd was built without the cargo feature `embedded`, which `devd prebuild` needs (it builds with the receiver's local backend)"
    );
}

#[cfg(feature = "embedded")]
pub(super) async fn run(
    dir: PathBuf,
    rev: Option<String>,
    registry: Option<String>,
    insecure_registry: bool,
    services: Vec<String>,
    json: bool,
) -> anyhow::Result<()> {
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
    Ok(())
}
