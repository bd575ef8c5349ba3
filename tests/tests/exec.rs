//! `devd exec`: a command, or an interactive shell, in a service's running
//! container, streamed through the daemon's connection to the receiver.
//! Real builds and containers (local backend: buildah, podman) on the
//! example repository; the interactive session is typed into a real
//! terminal (tmux).

use devd_tests::containers::{ContainerEnv, require_container_tools};
use devd_tests::terminal::Tmux;
use devd_tests::{Devd, FAST_SYNC, Fixture, bin, wait_until};
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

fn deployed<'a>(fx: &'a Fixture, cenv: &ContainerEnv) -> Devd<'a> {
    fx.write_local_config(FAST_SYNC);
    let devd = fx.devd().with_env(cenv.env());
    devd.start_wait();
    wait_until(Duration::from_secs(120), "web deployed", || {
        devd.status()
            .service("web")
            .is_some_and(|s| s.state == "deployed")
    });
    devd
}

/// `devd exec` with standard streams that are not a terminal: the
/// command's output and error on devd's, its exit status devd's, standard
/// input passed through to its end; a service that does not exist named.
#[test]
fn exec_runs_a_command_in_the_container_with_its_streams_and_exit_status() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let devd = deployed(&fx, &cenv);

    let run = devd.run(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "cat /www/index.html; echo to-stderr >&2; exit 3",
    ]);
    let index = String::from_utf8(fx.read("services/web/www/index.html")).unwrap();
    assert_eq!(run.stdout, index, "{}", run.stderr);
    // (Before it, the CLI's own debug log of the test environment.)
    assert_eq!(
        run.stderr.lines().last(),
        Some("to-stderr"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(3),
        "the command's exit status"
    );

    // Standard input reaches the command, and its end ends the command's.
    let mut child = devd
        .command(&["exec", "web", "--", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello from the laptop\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "HELLO FROM THE LAPTOP\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());

    // A command the container does not have: the shell's 127.
    let run = devd.run(&["exec", "web", "--", "/no/such/program"]);
    assert!(!run.success());
    assert_ne!(run.status.and_then(|s| s.code()), Some(0));

    let run = devd.run(&["exec", "nosuch", "--", "true"]);
    assert!(!run.success());
    let err = run.output();
    assert!(
        err.contains("nosuch") && err.contains("api, greeter, web"),
        "{err}"
    );
    assert_eq!(run.status.and_then(|s| s.code()), Some(127));

    // Hostile frames after an exec request on the control socket (an
    // unknown kind; a length past the limit): the daemon ends that relay,
    // closing the socket, and runs the next command as before.
    use std::io::{BufRead, Read};
    let workdir = std::path::PathBuf::from(devd.status().raw["workdir"].as_str().unwrap());
    let socket = devd::control::socket_path(&devd::config::repo_state_dir(fx.home(), &workdir));
    for garbage in [[9u8, 0, 0, 0, 0], [0, 0xff, 0xff, 0xff, 0xff]] {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"{\"cmd\":\"exec\",\"service\":\"web\",\"command\":[\"cat\"]}\n")
            .unwrap();
        let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":true"), "{line}");
        s.write_all(&garbage).unwrap();
        let mut rest = Vec::new();
        reader
            .read_to_end(&mut rest)
            .expect("the daemon closes the socket");
    }
    let run = devd.run(&["exec", "web", "--", "echo", "still", "here"]);
    assert_eq!(run.stdout, "still here\n", "{}", run.stderr);
}

/// `devd exec web` typed into a terminal: a shell in the container on a
/// terminal of the laptop's size, which follows a resize; what is typed
/// reaches it; its exit status is devd's.
#[test]
fn exec_from_a_terminal_gives_an_interactive_shell_that_follows_its_size() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let _devd = deployed(&fx, &cenv);

    let bin_dir = fx.root().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(bin("devd"), bin_dir.join("devd")).unwrap();
    let mut env: Vec<(&str, String)> = vec![
        ("HOME", fx.root().display().to_string()),
        ("PATH", format!("{}:/usr/bin:/bin", bin_dir.display())),
        ("DEVD_HOME", fx.home().display().to_string()),
        ("LANG", "C.UTF-8".into()),
        ("PS1", "laptop$ ".into()),
    ];
    // The control socket's directory may come from these.
    for k in ["XDG_RUNTIME_DIR", "TMPDIR"] {
        if let Ok(v) = std::env::var(k) {
            env.push((k, v));
        }
    }
    let tmux = Tmux::start(&fx.root().join("tmux"), 120, 40, fx.laptop(), &env, &["sh"]);
    tmux.wait_for(Duration::from_secs(10), "the laptop's prompt", |s| {
        s.contains("laptop$")
    });
    tmux.send_line("devd exec web");
    tmux.send_line("echo inside-$((6*7)); stty size");
    tmux.wait_for(
        Duration::from_secs(30),
        "the container's shell answers on a 40x120 terminal",
        |s| s.contains("inside-42") && s.contains("40 120"),
    );
    tmux.resize(100, 30);
    tmux.send_line("stty size; cat /www/index.html | wc -c");
    let index = fx.read("services/web/www/index.html");
    tmux.wait_for(Duration::from_secs(20), "the new size inside", |s| {
        s.contains("30 100") && s.contains(&index.len().to_string())
    });
    tmux.send_line("exit 5");
    tmux.wait_for(Duration::from_secs(20), "the laptop's prompt again", |s| {
        s.trim_end().ends_with("laptop$")
    });
    tmux.send_line("echo laptop-rc=$?");
    tmux.wait_for(Duration::from_secs(20), "devd's exit status", |s| {
        s.contains("laptop-rc=5")
    });
}
