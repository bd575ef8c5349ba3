//! Locating the binaries under test in the cargo target directory.

use std::path::PathBuf;
use std::process::Command;

/// Path of the binary `name` (`devd` or `devd-receiver`) next to the test
/// executable: `target/debug/deps/<test>` → `target/debug/<name>`.
///
/// Panics with a hint when it is missing: integration tests of this crate
/// do not build other packages' binaries, so `cargo build --bins` must run
/// first (CI runs `cargo build --workspace --bins` before `cargo test`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    let mut dir = exe
        .parent()
        .expect("the test binary has a parent directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "binary `{name}` not found at {}: run `cargo build --bins` first \
         (with the same CARGO_TARGET_DIR as `cargo test`)",
        path.display()
    );
    path
}

/// `bin(name)` as a command with the environment every devd process of a
/// test gets: `RUST_LOG` from `DEVD_TEST_LOG` (default: debug, but quiet
/// QUIC, TLS and git internals), backtraces, no colors in the logs.
pub fn devd_command(name: &str) -> Command {
    devd_command_via(&[], name)
}

/// [`devd_command`] run through `prefix` (e.g. `setpriv` with options, to
/// run the binary with fewer capabilities): `prefix… <bin(name)>`.
pub fn devd_command_via(prefix: &[String], name: &str) -> Command {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin(name));
            c
        }
        None => Command::new(bin(name)),
    };
    cmd.env(
        "RUST_LOG",
        std::env::var("DEVD_TEST_LOG")
            .unwrap_or_else(|_| "debug,quinn_proto=info,rustls=info,gix=info".into()),
    )
    .env("RUST_BACKTRACE", "1")
    .env("NO_COLOR", "1");
    cmd
}
