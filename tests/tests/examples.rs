//! The example repositories under `examples/`: the fixture made from them,
//! and that their services build and serve what the README says, with the
//! build-context semantics devd implements (each path in `inputs` added to
//! the context at its repository-relative path) reproduced here by hand.

use devd_tests::{ContainerEnv, Fixture, http_get, poll_until, require_container_tools};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

#[test]
fn demo_fixture_is_a_pushed_clean_clone() {
    let fx = Fixture::from_example("demo");
    assert_eq!(
        fx.git(&["status", "--porcelain"]),
        "",
        "nothing uncommitted"
    );
    assert_eq!(fx.rev_parse("HEAD"), fx.rev_parse("origin/main"));
    assert_eq!(
        fx.git(&["symbolic-ref", "refs/remotes/origin/HEAD"]).trim(),
        "refs/remotes/origin/main"
    );
    let files = fx.git(&["ls-files"]);
    for f in [
        ".gitignore",
        "devd.toml",
        "README.md",
        "services/web/Dockerfile",
        "services/web/www/index.html",
        "services/api/.dockerignore",
        "services/api/NOTES.md",
        "services/greeter/Dockerfile",
        "shared/greeting.txt",
    ] {
        assert!(
            files.lines().any(|l| l == f),
            "{f} committed; ls-files:\n{files}"
        );
    }
    let ignore = String::from_utf8(fx.read(".gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "devd.local.toml"), "{ignore}");
    fx.write("devd.local.toml", "# this laptop\n");
    assert_eq!(
        fx.git(&["status", "--porcelain"]),
        "",
        "devd.local.toml is ignored"
    );

    let catalog: toml::Table = String::from_utf8(fx.read("devd.toml"))
        .unwrap()
        .parse()
        .expect("devd.toml is TOML");
    let services = catalog["services"].as_table().unwrap();
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(names, ["api", "greeter", "web"]);
    for (name, svc) in services {
        let context = svc["context"].as_str().unwrap();
        assert!(
            fx.path(context).join("Dockerfile").is_file(),
            "{name}: {context}/Dockerfile"
        );
    }
    assert_eq!(
        services["greeter"]["inputs"].as_array().unwrap()[0].as_str(),
        Some("shared")
    );
}

/// Build each demo service as devd would (context plus `inputs` at their
/// repository-relative paths, `build_args`), run it, and fetch its page.
#[test]
fn demo_services_build_and_serve() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let env = ContainerEnv::new(fx.root());
    env.build_busybox_base();
    let catalog: toml::Table = String::from_utf8(fx.read("devd.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let expected = [
        ("web", "/index.html", "web v1"),
        ("api", "/health", "api v1"),
        ("greeter", "/index.html", "greeter v1"),
        ("greeter", "/greeting.txt", "Hello from shared v1"),
        ("greeter", "/style", "plain"),
    ];
    for (name, svc) in catalog["services"].as_table().unwrap() {
        let ctx = fx.root().join("ctx").join(name);
        copy_dir(&fx.path(svc["context"].as_str().unwrap()), &ctx);
        for input in svc
            .get("inputs")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let input = input.as_str().unwrap();
            copy_dir(&fx.path(input), &ctx.join(input));
        }
        let image = format!("localhost/{}", svc["image"].as_str().unwrap());
        let mut args = vec![
            "bud".to_owned(),
            "--isolation".into(),
            "chroot".into(),
            "-t".into(),
            image.clone(),
        ];
        for (k, v) in svc
            .get("build_args")
            .and_then(|v| v.as_table())
            .into_iter()
            .flatten()
        {
            args.push("--build-arg".into());
            args.push(format!("{k}={}", v.as_str().unwrap()));
        }
        args.push(ctx.display().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        env.run("buildah", &args, Duration::from_secs(120))
            .assert_success();

        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let publish = format!("127.0.0.1:{port}:{}", svc["port"].as_integer().unwrap());
        env.run(
            "podman",
            &["run", "-d", "--name", name, "-p", &publish, &image],
            Duration::from_secs(60),
        )
        .assert_success();
        for (_, path, text) in expected.iter().filter(|(n, ..)| n == name) {
            let url = format!("http://127.0.0.1:{port}{path}");
            let mut last = None;
            let ok = poll_until(Duration::from_secs(20), || {
                let r = http_get(&url);
                let ok = matches!(&r, Ok((200, body)) if body.contains(text));
                last = Some(r);
                ok
            });
            assert!(
                ok.is_some(),
                "{name}: GET {url} never had {text:?}; last {last:?}"
            );
        }
    }
    assert_eq!(env.podman_ps().len(), 3);
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(src.join("."))
        .arg(dst)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {}/. {}",
        src.display(),
        dst.display()
    );
}
