//! Real image builds, a real registry and real containers, private to a
//! test: the fixtures of [`devd_testkit::containers`] (shared with the
//! benchmarks), its HTTP client, and [`receiver_pushing_to`], a
//! `devd-receiver` whose local backend builds in a [`ContainerEnv`] and
//! pushes to a [`Registry`], paired with the fixture's laptop.

pub use devd_testkit::containers::*;
pub use devd_testkit::net::http_get;
pub use devd_testkit::registry::Registry;

/// A `devd-receiver` started with `opts` whose local backend builds with
/// `cenv`'s storage and looks up and pushes images in `registry`; the
/// laptop's `devd.local.toml` points at it (with [`crate::FAST_SYNC`]).
pub fn receiver_pushing_to<'a>(
    fx: &'a crate::Fixture,
    cenv: &ContainerEnv,
    registry: &Registry,
    opts: crate::ReceiverOpts,
) -> crate::Receiver<'a> {
    let config = fx.root().join(format!("receiver-{}.toml", opts.workspace));
    std::fs::write(
        &config,
        format!(
            "[build]\nbackend = \"local\"\nregistry = \"{}\"\ninsecure_registry = true\nconcurrency = 2\n",
            registry.addr()
        ),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
    let mut env = cenv.env();
    env.extend(opts.env.iter().cloned());
    let rx = fx.receiver_with(crate::ReceiverOpts {
        config: Some(config),
        env,
        ..opts
    });
    fx.write_local_config(&format!("{}{}", rx.config_toml(), crate::FAST_SYNC));
    rx
}
