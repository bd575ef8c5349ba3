//! The local backend on a machine where podman's defaults do not start
//! containers, for real: devd's processes get a containers.conf with no
//! runtime and no limits (see `ContainerEnv::env`), so every deploy here
//! goes through devd's own probe of what podman needs. On top: a default
//! runtime that is not installed (devd falls back to runc), no runtime at
//! all (one line saying so and what to install), an image whose command
//! does not exist (one line naming it and the Dockerfile), and a failed
//! build that must not leave a buildah working container behind.
//!
//! Everything runs on the embedded receiver of `devd start`, as a user
//! runs it.

use devd_tests::containers::{ContainerEnv, http_get, require_container_tools};
use devd_tests::{Devd, Fixture, Service, bin, poll_until};
use std::path::Path;
use std::time::Duration;

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(150);

/// Wait until every service of the demo is deployed or failed; returns
/// them (panics with the logs on timeout).
fn settled(devd: &Devd<'_>, cenv: &ContainerEnv) -> Vec<Service> {
    let mut last = Vec::new();
    let done = poll_until(DEPLOY_TIMEOUT, || {
        last = devd.status().services();
        last.len() == 3
            && last
                .iter()
                .all(|s| s.state == "deployed" || s.state == "failed")
    });
    if done.is_none() {
        devd.fixture().dump_logs();
        cenv.dump();
        panic!("the services did not settle: {last:#?}");
    }
    last
}

fn by_name<'a>(services: &'a [Service], name: &str) -> &'a Service {
    services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}: {services:#?}"))
}

/// Containers of `service` in `cenv`'s storage, any state.
fn containers_of(cenv: &ContainerEnv, service: &str) -> Vec<String> {
    cenv.containers_with(&[("dev.devd.service", service)])
        .expect("podman ps")
}

/// A directory with symlinks to `tools` only, for a PATH without runc.
fn bin_dir(root: &Path, tools: &[&str]) -> String {
    let dir = root.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    for t in tools {
        let target =
            devd_tests::process::find_program(t).unwrap_or_else(|| panic!("{t} is not installed"));
        std::os::unix::fs::symlink(target, dir.join(t)).unwrap();
    }
    std::os::unix::fs::symlink(bin("devd"), dir.join("devd")).unwrap();
    dir.display().to_string()
}

#[test]
fn a_default_runtime_that_is_not_installed_falls_back_to_runc() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    // The user's podman is set up for crun, which this machine lacks (on
    // others it is installed and refuses hybrid cgroups: the same path).
    let env = cenv
        .env_with_engine(
            "crun-default",
            "runtime = \"crun\"\n[engine.runtimes]\ncrun = [\"/nonexistent/crun\"]\n",
        )
        .unwrap();
    let devd = fx.devd().with_env(env);
    devd.start_wait();
    let services = settled(&devd, &cenv);
    for s in &services {
        assert_eq!(s.state, "deployed", "{s:#?}");
    }
    let web = by_name(&services, "web");
    let (code, body) = http_get(web.url.as_deref().unwrap()).expect("GET web");
    assert_eq!((code, body.contains("web v1")), (200, true), "{body}");
    let web_containers = containers_of(&cenv, "web");
    assert_eq!(web_containers.len(), 1, "{web_containers:?}");
    let runtime = cenv
        .output(
            "podman",
            &["inspect", "--format", "{{.OCIRuntime}}", &web_containers[0]],
        )
        .unwrap();
    assert_eq!(runtime.trim(), "runc");
    // The probe's containers are gone.
    assert_eq!(
        cenv.containers_with(&[("dev.devd.probe", "1")]).unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn no_runtime_that_works_fails_each_service_with_one_line_saying_what_to_install() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    // Neither crun nor runc: podman's own lists point nowhere, and the
    // PATH has no runc (podman looks there too).
    let mut env = cenv
        .env_with_engine(
            "no-runtime",
            "runtime = \"crun\"\n[engine.runtimes]\ncrun = [\"/nonexistent/crun\"]\nrunc = [\"/nonexistent/runc\"]\n",
        )
        .unwrap();
    env.push((
        "PATH".into(),
        bin_dir(fx.root(), &["git", "podman", "buildah"]),
    ));
    let devd = fx.devd().with_env(env);
    devd.start_wait();
    let services = settled(&devd, &cenv);
    // podman cannot even look an image up with a runtime it cannot find,
    // so each service fails before its build, not after it.
    for s in &services {
        assert_eq!(s.state, "failed", "{s:#?}");
        assert_eq!(
            s.error.as_deref(),
            Some(
                format!(
                    "build of {} failed: podman cannot start containers on this machine: its runtime crun is not installed, nor is runc: install runc (Debian/Ubuntu: `sudo apt-get install runc`; devd then uses it by itself)",
                    s.name
                )
                .as_str()
            ),
            "{s:#?}"
        );
        // podman's own words are in the log tail, for who wants them.
        assert!(
            s.log_tail
                .iter()
                .any(|l| l.contains("default OCI runtime \"crun\" not found")),
            "{s:#?}"
        );
    }
    assert_eq!(
        cenv.containers_with(&[]).unwrap(),
        Vec::<String>::new(),
        "nothing is left of the failed starts"
    );
}

#[test]
fn an_image_whose_command_does_not_exist_fails_with_one_line_naming_it_and_leaves_no_container() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let dockerfile = "services/api/Dockerfile";
    let text = String::from_utf8(fx.read(dockerfile)).unwrap();
    fx.write(
        dockerfile,
        text.replace("CMD [\"httpd\"", "CMD [\"httpdd\""),
    );
    fx.commit_all_and_push("api: a typo in its command");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let devd = fx.devd().with_env(cenv.env());
    devd.start_wait();
    let services = settled(&devd, &cenv);
    let api = by_name(&services, "api");
    assert_eq!(api.state, "failed", "{api:#?}");
    assert_eq!(
        api.error.as_deref(),
        Some(
            "deploy of api failed: its container cannot start: its command \"httpdd\" is not in the image: fix CMD/ENTRYPOINT in services/api/Dockerfile"
        ),
        "{api:#?}"
    );
    assert!(
        api.log_tail
            .iter()
            .any(|l| l.contains("executable file not found")),
        "podman's message stays in the log tail: {api:#?}"
    );
    assert_eq!(containers_of(&cenv, "api"), Vec::<String>::new());
    // The others are not held back by it.
    for name in ["web", "greeter"] {
        assert_eq!(by_name(&services, name).state, "deployed", "{services:#?}");
    }
}

#[test]
fn a_failed_build_leaves_no_buildah_working_container() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let dockerfile = "services/web/Dockerfile";
    let text = String::from_utf8(fx.read(dockerfile)).unwrap();
    fx.write(dockerfile, text.replace("COPY www/", "CPY www/"));
    fx.commit_all_and_push("web: a typo in its Dockerfile");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let devd = fx.devd().with_env(cenv.env());
    devd.start_wait();
    let services = settled(&devd, &cenv);
    let web = by_name(&services, "web");
    assert_eq!(web.state, "failed", "{web:#?}");
    assert!(
        web.error.as_deref().unwrap_or("").contains("CPY"),
        "{web:#?}"
    );
    // A working container is mounted while it exists: none, none mounted.
    let working = cenv
        .output("buildah", &["containers", "--format", "{{.ContainerName}}"])
        .unwrap();
    assert_eq!(working.trim(), "", "buildah working containers are left");
}
