//! The container fixture itself, for real: private storage, the busybox
//! base, a build, a push to the local registry, a container serving a file
//! on a loopback port, and a cleanup that leaves the temporary directory
//! removable.

use devd_tests::process::Logs;
use devd_tests::{
    BUSYBOX_IMAGE, ContainerEnv, Registry, http_get, poll_until, require_container_tools,
};
use std::net::TcpListener;
use std::time::{Duration, Instant};

#[test]
fn build_push_run_and_clean_up() {
    require_container_tools();
    let tmp = tempfile::Builder::new()
        .prefix("devd-containers-")
        .tempdir()
        .expect("temp dir");
    let root = tmp.path().canonicalize().expect("canonical temp dir");
    let logs = Logs::new(root.join("logs"));

    let env = ContainerEnv::new(&root);
    let t = Instant::now();
    env.build_busybox_base();
    let base_build = t.elapsed();
    let base_id = env
        .run(
            "podman",
            &["image", "inspect", "--format", "{{.Id}}", BUSYBOX_IMAGE],
            Duration::from_secs(30),
        )
        .assert_success()
        .stdout
        .trim()
        .to_owned();
    env.build_busybox_base();
    let again = env.run(
        "podman",
        &["image", "inspect", "--format", "{{.Id}}", BUSYBOX_IMAGE],
        Duration::from_secs(30),
    );
    assert_eq!(
        again.assert_success().stdout.trim(),
        base_id,
        "the base image is reproducible"
    );

    let t = Instant::now();
    let registry = Registry::start(&root, &logs);
    let registry_start = t.elapsed();
    assert!(!registry.has_tag("fixture/hello", "v1"));
    assert!(registry.tags("fixture/hello").is_empty());

    // An image serving one file.
    let ctx = root.join("hello");
    std::fs::create_dir_all(ctx.join("www")).unwrap();
    let content = format!("hello from {}\n", root.display());
    std::fs::write(ctx.join("www/hello.txt"), &content).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {BUSYBOX_IMAGE}\nCOPY www/ /www/\nEXPOSE 8080\n\
             CMD [\"httpd\", \"-f\", \"-v\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
        ),
    )
    .unwrap();
    let image = format!("{}/fixture/hello:v1", registry.addr());
    env.run(
        "buildah",
        &[
            "bud",
            "--isolation",
            "chroot",
            "-t",
            &image,
            ctx.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    )
    .assert_success();
    let digest_file = root.join("hello.digest");
    env.run(
        "buildah",
        &[
            "push",
            "--tls-verify=false",
            "--digestfile",
            digest_file.to_str().unwrap(),
            &image,
            &format!("docker://{image}"),
        ],
        Duration::from_secs(120),
    )
    .assert_success();
    let digest = std::fs::read_to_string(&digest_file).unwrap();
    assert!(digest.starts_with("sha256:"), "digest file: {digest:?}");
    assert!(registry.has_tag("fixture/hello", "v1"));
    assert_eq!(registry.tags("fixture/hello"), ["v1"]);
    assert_eq!(
        registry.manifest_digest("fixture/hello", "v1").as_deref(),
        Some(digest.as_str()),
        "the registry serves the pushed manifest under the digest buildah reported"
    );
    assert_eq!(registry.manifest_digest("fixture/hello", "v2"), None);

    // Run it the way deploys do, by digest (pulled back from the registry).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pinned = format!("{}/fixture/hello@{digest}", registry.addr());
    env.run(
        "podman",
        &[
            "run",
            "-d",
            "--tls-verify=false",
            "--name",
            "hello",
            "--label",
            "devd.test=fixture",
            "-p",
            &format!("127.0.0.1:{port}:8080"),
            &pinned,
        ],
        Duration::from_secs(120),
    )
    .assert_success();
    let url = format!("http://127.0.0.1:{port}/hello.txt");
    let mut last = None;
    let served = poll_until(Duration::from_secs(20), || {
        let r = http_get(&url);
        let ok = matches!(&r, Ok((200, body)) if *body == content);
        last = Some(r);
        ok
    });
    assert!(
        served.is_some(),
        "GET {url} never served the file; last: {last:?}"
    );
    let (status, _) = http_get(&format!("http://127.0.0.1:{port}/missing")).unwrap();
    assert_eq!(status, 404);

    let ps = env.podman_ps();
    assert_eq!(ps.len(), 1, "{ps:#?}");
    let c = &ps[0];
    assert_eq!(c.name(), "hello");
    assert_eq!(c.state, "running");
    assert_eq!(c.image, pinned);
    assert_eq!(
        c.labels.get("devd.test").map(String::as_str),
        Some("fixture")
    );
    assert_eq!(c.host_port(8080), Some(port));
    assert_eq!(c.ports[0].host_ip, "127.0.0.1");

    // A buildah working container left mounted, as an interrupted build
    // would leave it.
    env.run(
        "buildah",
        &["from", "--name", "left-over", &image],
        Duration::from_secs(60),
    )
    .assert_success();
    env.run("buildah", &["mount", "left-over"], Duration::from_secs(60))
        .assert_success();

    // And a stray mount, which the drop unmounts as a last resort.
    let stray = env.dir().join("stray-mount");
    std::fs::create_dir_all(&stray).unwrap();
    let status = std::process::Command::new("mount")
        .arg("--bind")
        .arg(logs.dir())
        .arg(&stray)
        .status()
        .unwrap();
    assert!(status.success(), "mount --bind: {status}");

    let containers_dir = env.dir().to_owned();
    let t = Instant::now();
    drop(env);
    let cleanup = t.elapsed();
    drop(registry);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(containers_dir.to_str().unwrap()))
        .collect();
    assert!(left.is_empty(), "mounts left behind: {left:#?}");
    assert!(
        http_get(&url).is_err(),
        "the container is gone with the environment"
    );
    tmp.close()
        .expect("the temp dir is removable after the drop");
    eprintln!(
        "timings: base image build {base_build:?}, registry start {registry_start:?}, \
         drop cleanup {cleanup:?}"
    );
}
