//! `devd exec` on the Kubernetes backend, against the kmock emulator (no
//! API server or kubelet can run here): the real receiver finds the
//! service's pod and opens the pod exec websocket on the emulator, whose
//! played kubelet runs the command for real with `podman exec` in a
//! busybox container the test started for the pod; the laptop's devd
//! relays it as on the local backend.

use devd_tests::containers::{BUSYBOX_IMAGE, ContainerEnv, require_container_tools};
use devd_tests::kube_cluster::{ClusterOpts, Setup};
use devd_tests::terminal::Tmux;
use devd_tests::{Fixture, bin};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

const NS: &str = "devd-exec";

#[test]
fn emulator_exec_runs_the_command_in_the_services_pod_through_the_exec_api() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    // The container the played kubelet runs api's pod in.
    let run = cenv.run(
        "podman",
        &[
            "run",
            "-d",
            "--name",
            "played-api",
            BUSYBOX_IMAGE,
            "sleep",
            "600",
        ],
        Duration::from_secs(60),
    );
    run.assert_success();
    let st = Setup::start(
        &fx,
        &ClusterOpts {
            namespace: NS,
            kubernetes_config: "registry_secret = \"devd-registry\"\n",
        },
    );
    st.wait_service("api", "deployed", |s| s.state == "deployed");
    let podman = cenv.command("podman");
    let env: serde_json::Map<String, serde_json::Value> = podman
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), json!(v?.to_str()?))))
        .collect();
    let played = json!({"argv": ["podman", "exec"], "env": env, "target": "played-api"});
    let pods = st
        .cluster
        .block_on(
            st.cluster
                .api::<Pod>()
                .list(&ListParams::default().labels("dev.devd/service=api")),
        )
        .unwrap();
    assert!(!pods.items.is_empty(), "api has pods");
    for p in &pods.items {
        let name = p.metadata.name.clone().unwrap();
        let patch =
            json!({"metadata": {"annotations": {"devd.test/exec.api": played.to_string()}}});
        st.cluster
            .block_on(st.cluster.api::<Pod>().patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            ))
            .unwrap();
    }

    // Output, error and exit status.
    let run = st.devd.run(&[
        "exec",
        "api",
        "--",
        "sh",
        "-c",
        "echo out-$((6*7)); echo err >&2; exit 4",
    ]);
    assert_eq!(run.stdout, "out-42\n", "{}", run.stderr);
    assert_eq!(run.stderr.lines().last(), Some("err"), "{}", run.stderr);
    assert_eq!(run.status.and_then(|s| s.code()), Some(4));

    // Standard input to its end (the v5 close of the stdin stream).
    let mut child = st
        .devd
        .command(&["exec", "api", "--", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"through the exec api\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "THROUGH THE EXEC API\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());

    // From a terminal: a shell in the pod on a terminal of its size.
    let bin_dir = fx.root().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(bin("devd"), bin_dir.join("devd")).unwrap();
    let mut env: Vec<(&str, String)> = vec![
        ("HOME", fx.root().display().to_string()),
        ("PATH", format!("{}:/usr/bin:/bin", bin_dir.display())),
        ("DEVD_HOME", fx.home().display().to_string()),
        ("PS1", "laptop$ ".into()),
    ];
    for k in ["XDG_RUNTIME_DIR", "TMPDIR"] {
        if let Ok(v) = std::env::var(k) {
            env.push((k, v));
        }
    }
    let tmux = Tmux::start(&fx.root().join("tmux"), 110, 35, fx.laptop(), &env, &["sh"]);
    tmux.wait_for(Duration::from_secs(10), "the laptop's prompt", |s| {
        s.contains("laptop$")
    });
    tmux.send_line("devd exec api");
    tmux.send_line("echo in-pod-$((7*6)); stty size");
    tmux.wait_for(
        Duration::from_secs(30),
        "the pod's shell on a 35x110 terminal",
        |s| s.contains("in-pod-42") && s.contains("35 110"),
    );
    tmux.resize(90, 25);
    // The played pod's terminal is `podman exec`'s, which passes a resize
    // on when its SIGWINCH handler runs: a `stty size` typed at once can
    // still see the old size (it did in CI, about one run in four), so ask
    // again until the new size shows, within the same 20 s.
    let resized = devd_tests::poll_until(Duration::from_secs(20), || {
        tmux.send_line("stty size");
        std::thread::sleep(Duration::from_millis(500));
        tmux.screen().contains("25 90")
    });
    assert!(
        resized.is_some(),
        "the new size never reached the pod; the screen:\n{}",
        tmux.screen()
    );
    tmux.send_line("exit 6");
    tmux.wait_for(Duration::from_secs(20), "the laptop's prompt again", |s| {
        s.trim_end().ends_with("laptop$")
    });
    tmux.send_line("echo laptop-rc=$?");
    tmux.wait_for(Duration::from_secs(20), "devd's exit status", |s| {
        s.contains("laptop-rc=6")
    });
    st.cluster.assert_no_errors();
}
