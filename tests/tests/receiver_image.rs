//! `cluster-receiver/Dockerfile` builds with buildah, and the image runs
//! under podman: `serve` answers `/healthz` and `/readyz` as a non-root
//! user on a read-only root filesystem, and `devd-receiver` is on the PATH
//! (the Kaniko Jobs' init container runs `devd-receiver fetch-context`).
//!
//! No base image can be pulled here, so the test sets the Dockerfile's
//! base-image ARGs: `ROOTFS` names an image the test builds `FROM scratch`
//! holding `/out/rootfs` — the `devd-receiver` binary cargo built on the
//! host (debug info stripped) and, since that binary is linked against
//! glibc, the shared libraries `ldd` lists, at their paths — and
//! `RUNTIME_IMAGE=scratch`. The Rust build stage (a static musl binary
//! from `rust:1.95-bookworm`) is skipped: it needs the pulled builder image
//! and a full release build. What runs is the Dockerfile's own final stage:
//! its COPY of the rootfs, PATH, USER 65532 and ENTRYPOINT.

use devd_tests::containers::{ContainerEnv, http_get};
use devd_tests::{Fixture, bin, poll_until};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ROOTFS_IMAGE: &str = "localhost/devd-receiver-rootfs:test";
const IMAGE: &str = "localhost/devd-receiver:test";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shared libraries `binary` loads (absolute paths), from `ldd`; empty
/// for a static binary.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// `<ctx>/out/rootfs` with the binary and its libraries.
fn rootfs(ctx: &Path) -> PathBuf {
    let root = ctx.join("out/rootfs");
    let bin_dir = root.join("usr/local/bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let dest = bin_dir.join("devd-receiver");
    let st = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&dest)
        .arg(bin("devd-receiver"))
        .status()
        .expect("run strip (binutils)");
    assert!(st.success(), "strip failed");
    for lib in shared_libraries(&dest) {
        let target = root.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        // Follow symlinks: the image gets the library's content under the
        // name the loader asks for.
        std::fs::copy(&lib, &target).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
    }
    root
}

#[test]
fn dockerfile_builds_with_buildah_and_the_image_answers_healthz_under_podman() {
    let fx = Fixture::new();
    let env = ContainerEnv::new(fx.root());
    let long = Duration::from_secs(300);

    // The rootfs image standing in for the Rust build stage.
    let ctx = fx.root().join("rootfs-image");
    rootfs(&ctx);
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY out /out\n").unwrap();
    let ctx_s = ctx.display().to_string();
    env.run(
        "buildah",
        &["bud", "--isolation", "chroot", "-t", ROOTFS_IMAGE, &ctx_s],
        long,
    )
    .assert_success();

    // The Dockerfile itself; the context is empty, as the stage that copies
    // the sources does not run.
    let dockerfile = repo_root().join("cluster-receiver/Dockerfile");
    let empty = fx.root().join("empty-context");
    std::fs::create_dir_all(&empty).unwrap();
    let build = env.run(
        "buildah",
        &[
            "bud",
            "--isolation",
            "chroot",
            "--build-arg",
            &format!("ROOTFS={ROOTFS_IMAGE}"),
            "--build-arg",
            "RUNTIME_IMAGE=scratch",
            // The amd64 path of the multi-arch build (TARGETARCH=amd64).
            "--platform",
            "linux/amd64",
            "-f",
            &dockerfile.display().to_string(),
            "-t",
            IMAGE,
            &empty.display().to_string(),
        ],
        long,
    );
    build.assert_success();
    assert!(
        !build.output().contains("rust:1.95") && !build.output().contains("bookworm-slim"),
        "the unused stages must be skipped:\n{}",
        build.output()
    );

    // An amd64 image (arm64 is built the same way, but not here).
    let arch = env.run(
        "podman",
        &["image", "inspect", "--format", "{{.Architecture}}", IMAGE],
        Duration::from_secs(60),
    );
    arch.assert_success();
    assert_eq!(arch.stdout.trim(), "amd64");

    // The image's configuration: non-root, the binary as entrypoint.
    let inspect = env.run(
        "podman",
        &[
            "image",
            "inspect",
            "--format",
            "{{.Config.User}}|{{json .Config.Entrypoint}}",
            IMAGE,
        ],
        Duration::from_secs(60),
    );
    inspect.assert_success();
    assert_eq!(inspect.stdout.trim(), "65532:65532|[\"devd-receiver\"]");

    // `devd-receiver` by name, as the build pod's init container calls it.
    let help = env.run(
        "podman",
        &[
            "run",
            "--rm",
            "--read-only",
            "--entrypoint",
            "devd-receiver",
            IMAGE,
            "fetch-context",
            "--help",
        ],
        Duration::from_secs(120),
    );
    help.assert_success();
    assert!(help.stdout.contains("--blake3"), "{}", help.stdout);

    // The receiver, as the Deployment runs it: read-only root, writable
    // /tmp, data on a volume, HTTP published on loopback.
    let data = fx.root().join("image-data");
    std::fs::create_dir_all(&data).unwrap();
    // Owned by the image's user, as fsGroup makes the PVC writable.
    let st = Command::new("chown")
        .arg("65532:65532")
        .arg(&data)
        .status()
        .unwrap();
    assert!(st.success());
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.run(
        "podman",
        &[
            "run",
            "-d",
            "--name",
            "receiver",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--tmpfs",
            "/tmp:rw,mode=1777",
            "-v",
            &format!("{}:/var/lib/devd", data.display()),
            "-p",
            &format!("127.0.0.1:{port}:8080"),
            IMAGE,
            "serve",
            "--data=/var/lib/devd",
            "--listen=0.0.0.0:7447",
            "--http-listen=0.0.0.0:8080",
            "--git-remote=file:///nonexistent/origin.git",
            "--json-logs",
        ],
        Duration::from_secs(120),
    )
    .assert_success();
    let base = format!("http://127.0.0.1:{port}");
    let mut last = None;
    let up = poll_until(Duration::from_secs(30), || {
        let r = http_get(&format!("{base}/healthz"));
        let ok = matches!(&r, Ok((200, body)) if body == "ok\n");
        last = Some(r);
        ok
    });
    assert!(up.is_some(), "GET /healthz never answered: {last:?}");
    // Ready once the workspace is open (503 until then, as a probe sees it).
    let mut last = None;
    let ready = poll_until(Duration::from_secs(30), || {
        let r = http_get(&format!("{base}/readyz"));
        let ok = matches!(&r, Ok((200, body)) if body == "ready\n");
        assert!(
            matches!(&r, Ok((200 | 503, _))),
            "GET /readyz answered {r:?}"
        );
        last = Some(r);
        ok
    });
    assert!(ready.is_some(), "GET /readyz never said ready: {last:?}");
    let (status, metrics) = http_get(&format!("{base}/metrics")).unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("devd_receiver_syncs_applied_total{workspace=\"default\"} 0"),
        "{metrics}"
    );
    // It ran as 65532 and wrote its state to the volume.
    assert!(
        data.join("workspaces/default/pairing.toml").is_file(),
        "no pairing file on the data volume"
    );
    let logs = env.run("podman", &["logs", "receiver"], Duration::from_secs(60));
    assert!(
        logs.output().contains("\"receiver ready\""),
        "JSON logs:\n{}",
        logs.output()
    );
}

/// The Rust build stage takes its target from the platform being built
/// (`TARGETARCH`), through `cluster-receiver/rust-target.sh`, for both the
/// `rustup target add` and the `cargo build`: amd64 and arm64 nodes get a
/// binary they can run (arm64 cannot be built here; the mapping is what is
/// checked).
#[test]
fn the_dockerfile_builds_for_the_platforms_architecture() {
    let script = repo_root().join("cluster-receiver/rust-target.sh");
    let target = |arch: &str| {
        let out = Command::new("sh").arg(&script).arg(arch).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(target("amd64").1, "x86_64-unknown-linux-musl");
    assert_eq!(target("arm64").1, "aarch64-unknown-linux-musl");
    let host = target("");
    assert!(host.0, "{}", host.2);
    assert_eq!(
        host.1,
        match std::env::consts::ARCH {
            "x86_64" => "x86_64-unknown-linux-musl",
            "aarch64" => "aarch64-unknown-linux-musl",
            other => panic!("untested host architecture {other}"),
        },
        "without TARGETARCH: this machine's"
    );
    let (ok, _, err) = target("riscv64");
    assert!(
        !ok && err.contains("no Rust target for architecture 'riscv64'"),
        "{err}"
    );
    let dockerfile =
        std::fs::read_to_string(repo_root().join("cluster-receiver/Dockerfile")).unwrap();
    assert!(
        !dockerfile.contains("x86_64-unknown-linux-musl"),
        "no fixed target left in the Dockerfile"
    );
    assert!(dockerfile.contains("ARG TARGETARCH"));
    assert_eq!(
        dockerfile.matches("rust-target \"${TARGETARCH}\"").count(),
        2,
        "rustup and cargo both use the platform's target"
    );
}
