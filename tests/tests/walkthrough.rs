//! README.md's walkthrough, run exactly as written: the test reads the
//! shell blocks of its "Walkthrough" section and types them, line by line,
//! into a real terminal (a private tmux server), answering `devd init`'s
//! question with `y` as a user would, pressing Ctrl-C to leave `devd
//! status --watch`, and polling `devd status` until all three services say
//! deployed. Every typed line must succeed (the prompt shows `$?`).
//!
//! What the README asks the reader to have is given the way it says: the
//! `devd` binary on `PATH`, buildah, podman and runc installed, and the
//! demo's base image built the way `scripts/try.sh` does. Nothing else:
//! no containers.conf that makes containers start (the storage is private
//! to the test, and podman's run state with it; see `ContainerEnv::env`).

use devd_tests::containers::{ContainerEnv, http_get, require_container_tools};
use devd_tests::terminal::Tmux;
use devd_tests::{Fixture, Status, bin, poll_until};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long one typed command may run (`devd start --wait` builds
/// nothing yet; the builds are awaited separately).
const LINE_TIMEOUT: Duration = Duration::from_secs(180);
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);

/// The ```sh blocks of README.md's "## Walkthrough" section, before its
/// first subsection, each as its lines.
fn walkthrough_blocks(readme: &str) -> Vec<Vec<String>> {
    let start = readme
        .find("\n## Walkthrough\n")
        .expect("README.md has a ## Walkthrough section");
    let section = &readme[start + 1..];
    let end = section[3..]
        .find("\n## ")
        .map(|i| i + 3)
        .unwrap_or(section.len());
    let section = &section[..end];
    let section = section
        .find("\n### ")
        .map(|i| &section[..i])
        .unwrap_or(section);
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().expect("open block")),
            (Some(b), l) => b.push(l.to_owned()),
            (None, _) => {}
        }
    }
    blocks
}

/// The command of a line without its trailing `# comment` (for matching;
/// what is typed is the whole line); empty for a comment or blank line,
/// which are not typed.
fn command_of(line: &str) -> &str {
    let command = line.split(" #").next().unwrap_or(line).trim();
    if command.starts_with('#') {
        ""
    } else {
        command
    }
}

/// Runs `devd stop` in the walkthrough's repository on drop, if it exists.
struct StopDaemon {
    repo: PathBuf,
    env: Vec<(String, String)>,
}

impl Drop for StopDaemon {
    fn drop(&mut self) {
        if self.repo.is_dir() {
            let _ = Command::new(bin("devd"))
                .arg("stop")
                .current_dir(&self.repo)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .output();
        }
    }
}

struct Shell<'a> {
    tmux: &'a Tmux,
    typed: usize,
}

impl Shell<'_> {
    /// Type `line` and wait for the next prompt; panics unless it
    /// succeeded (exit 0, or 130 if `during` pressed Ctrl-C, as the
    /// shell reports an interrupted command). `during` may answer what the
    /// command asks (it sees the screen; returns true once it has
    /// answered).
    fn run(&mut self, line: &str, mut during: impl FnMut(&Tmux, &str) -> bool) -> String {
        self.tmux.send_line(line);
        self.typed += 1;
        let done = format!("[{} rc=", self.typed + 1);
        let mut answered = false;
        let mut last = String::new();
        let found = poll_until(LINE_TIMEOUT, || {
            last = self.tmux.screen();
            if !answered {
                answered = during(self.tmux, &last);
            }
            last.contains(&done)
        });
        assert!(
            found.is_some(),
            "`{line}` did not finish within {LINE_TIMEOUT:?}; the screen:\n{last}"
        );
        let rc = last
            .split(&done)
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .unwrap_or("?");
        let interrupted = answered && last.contains("^C");
        assert!(
            rc == "0" || (interrupted && rc == "130"),
            "`{line}` failed (exit {rc}); the screen:\n{last}"
        );
        last
    }
}

fn status(repo: &Path, env: &[(String, String)]) -> Status {
    let out = Command::new(bin("devd"))
        .args(["status", "--json"])
        .current_dir(repo)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run devd status");
    assert!(
        out.status.success(),
        "devd status --json: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Status::parse(&String::from_utf8_lossy(&out.stdout)).expect("status JSON")
}

#[test]
fn readme_walkthrough_runs_as_written_and_serves_the_edit() {
    require_container_tools();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let readme = std::fs::read_to_string(source.join("README.md")).unwrap();
    // The install block (`cargo install --locked --path laptop-daemon`) is
    // the one step not typed: it builds in release mode for 20+ minutes,
    // and the test gives the shell the `devd` under test on `PATH` instead.
    let mut blocks = walkthrough_blocks(&readme);
    let installs = blocks.len();
    blocks.retain(|b| {
        !b.iter()
            .any(|l| command_of(l).starts_with("cargo install --locked --path laptop-daemon"))
    });
    assert_eq!(
        installs - blocks.len(),
        1,
        "the walkthrough has one install block: {blocks:#?}"
    );
    assert_eq!(
        blocks.len(),
        3,
        "the walkthrough has three shell blocks: set up and start, edit, look around: {blocks:#?}"
    );

    let fx = Fixture::new();
    let cenv = ContainerEnv::new(fx.root());
    // "on a machine that cannot pull, build that image first the way
    // scripts/try.sh does"
    cenv.build_busybox_base();
    let tmp = fx.root().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let devd_dir = bin("devd").parent().unwrap().to_path_buf();
    let mut env: Vec<(String, String)> = cenv.env();
    env.extend([
        (
            "PATH".to_owned(),
            format!(
                "{}:{}",
                devd_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
        ("HOME".to_owned(), fx.home().display().to_string()),
        (
            "DEVD_HOME".to_owned(),
            fx.home().join("devd").display().to_string(),
        ),
        // `mktemp -d` creates the walkthrough's directory in the test's.
        ("TMPDIR".to_owned(), tmp.display().to_string()),
        ("GIT_CONFIG_NOSYSTEM".to_owned(), "1".to_owned()),
        ("GIT_AUTHOR_NAME".to_owned(), "A User".to_owned()),
        (
            "GIT_AUTHOR_EMAIL".to_owned(),
            "user@devd.invalid".to_owned(),
        ),
        ("GIT_COMMITTER_NAME".to_owned(), "A User".to_owned()),
        (
            "GIT_COMMITTER_EMAIL".to_owned(),
            "user@devd.invalid".to_owned(),
        ),
        ("NO_COLOR".to_owned(), "1".to_owned()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
    ]);
    let env_refs: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let tmux = Tmux::start(
        &fx.root().join("tmux"),
        160,
        50,
        &source,
        &env_refs,
        &["bash", "--norc", "--noprofile"],
    );
    // A prompt that counts commands and shows the last one's status.
    tmux.send_line("PS1='[\\# rc=$?] $ '");
    tmux.wait_for(Duration::from_secs(20), "the prompt", |s| {
        s.contains("[2 rc=0] $")
    });
    let mut shell = Shell {
        tmux: &tmux,
        typed: 1,
    };
    let mut stop = StopDaemon {
        repo: PathBuf::new(),
        env: env.clone(),
    };

    // 1. The repository, `devd init` (answered y), commit, start.
    for line in &blocks[0] {
        let command = command_of(line);
        if command.is_empty() {
            continue;
        }
        if command == "devd status" {
            // "until all three say deployed": the user runs it until then.
            continue;
        }
        if command.starts_with("devd start") && stop.repo.as_os_str().is_empty() {
            stop.repo = find_repo(&tmp);
        }
        let screen = shell.run(line, |t, screen| {
            if command == "devd init" && screen.contains("[y/N]") {
                t.send_line("y");
                true
            } else {
                false
            }
        });
        if command == "devd init" {
            assert!(screen.contains("Wrote "), "{screen}");
        }
    }
    let repo = find_repo(&tmp);
    let catalog = std::fs::read_to_string(repo.join("devd.toml")).unwrap();
    for s in ["web", "api", "greeter"] {
        assert!(catalog.contains(&format!("[services.{s}]")), "{catalog}");
    }
    let mut last = None;
    let deployed = poll_until(DEPLOY_TIMEOUT, || {
        let st = status(&repo, &env);
        let services = st.services();
        let ok = services.len() == 3 && services.iter().all(|s| s.state == "deployed");
        let failed = services.iter().any(|s| s.state == "failed");
        last = Some(services);
        ok || failed
    });
    let services = last.unwrap_or_default();
    if deployed.is_none() || services.iter().any(|s| s.state != "deployed") {
        fx.dump_logs();
        cenv.dump();
        panic!("not all three services deployed: {services:#?}");
    }
    let screen = shell.run("devd status", |_, _| false);
    for s in ["api", "greeter", "web"] {
        assert!(
            screen
                .lines()
                .any(|l| l.starts_with(&format!("│ {s} ")) && l.contains("deployed")),
            "{screen}"
        );
    }
    let web = services.iter().find(|s| s.name == "web").unwrap();
    let web_url = web.url.clone().expect("web has a URL");
    let (code, body) = http_get(&web_url).expect("GET web");
    assert_eq!(code, 200);
    assert!(body.contains("web v1"), "{body}");

    // 2. The edit, served at the same URL.
    for line in &blocks[1] {
        if !command_of(line).is_empty() {
            shell.run(line, |_, _| false);
        }
    }
    let served = poll_until(DEPLOY_TIMEOUT, || {
        http_get(&web_url).is_ok_and(|(c, b)| c == 200 && b.contains("web v2"))
    });
    if served.is_none() {
        fx.dump_logs();
        panic!(
            "{web_url} does not serve the edit; status: {:#?}",
            status(&repo, &env).services()
        );
    }
    let after = status(&repo, &env).services();
    assert_eq!(
        after
            .iter()
            .find(|s| s.name == "web")
            .unwrap()
            .url
            .as_deref(),
        Some(web_url.as_str())
    );

    // 3. Looking around, then stop.
    for line in &blocks[2] {
        let command = command_of(line);
        if command.is_empty() {
            continue;
        }
        let screen = shell.run(line, |t, screen| {
            // "redrawn in place every 0.5 s until Ctrl-C"
            if command == "devd status --watch" && screen.contains("│ web ") {
                t.send_keys(&["C-c"]);
                true
            } else {
                false
            }
        });
        if command == "devd logs web --build" {
            assert!(screen.contains("STEP"), "the build log: {screen}");
        }
        if command == "devd exec web -- ls /www" {
            assert!(
                screen.contains("index.html"),
                "ls in the container: {screen}"
            );
        }
    }
}

/// The repository the walkthrough created: `$work/shop` under `tmp`.
fn find_repo(tmp: &Path) -> PathBuf {
    std::fs::read_dir(tmp)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("shop"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("no */shop under {}", tmp.display()))
}

#[test]
fn walkthrough_blocks_are_read_from_the_section() {
    let readme = "# x\n\n## Two\n```sh\nnot this\n```\n## Walkthrough\n\ntext\n```sh\na\nb # c\n```\n```text\nout\n```\n```sh\nd\n```\n### Sub\n```sh\nno\n```\n## Next\n```sh\nno\n```\n";
    assert_eq!(
        walkthrough_blocks(readme),
        vec![
            vec!["a".to_owned(), "b # c".to_owned()],
            vec!["d".to_owned()]
        ]
    );
    assert_eq!(
        command_of("devd start --wait      # syncs"),
        "devd start --wait"
    );
}
