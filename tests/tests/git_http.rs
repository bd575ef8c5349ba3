//! The receiver fetches base commits from an `http://` git remote that
//! requires a token: git's own `git http-backend` behind a loopback HTTP
//! server ([`devd_tests::git_http`]). The token comes from a file on the
//! receiver's side and never shows up in its logs, its errors, or the
//! laptop's status.

use devd_tests::git_http::GitHttpServer;
use devd_tests::{Devd, FAST_SYNC, Fixture, Receiver, ReceiverOpts, assert_worktrees_equal};
use std::path::Path;

const TOKEN: &str = "devd-test-token-5b2e91c4d7";

/// Serve the fixture's bare origin over smart HTTP, requiring [`TOKEN`].
fn serve_origin(fx: &Fixture) -> GitHttpServer {
    let origin = fx.origin();
    assert_eq!(
        origin.file_name().and_then(|n| n.to_str()),
        Some("origin.git")
    );
    GitHttpServer::start(origin.parent().expect("origin has a parent"), TOKEN)
        .expect("start the git http server")
}

/// Laptop changes on top of the pushed base: an edit and a new file.
fn edit_laptop(fx: &Fixture) {
    fx.write("README.md", "# demo\n\nEdited on the laptop.\n");
    fx.write("notes/new.txt", "not committed\n");
}

fn write_token(path: &Path, token: &str) {
    std::fs::write(path, format!("{token}\n")).expect("write the token file");
}

/// The daemon paired with `rx`, started, once the receiver's worktree
/// equals the laptop's (whether it fetched the base or the laptop uploaded
/// it).
fn start_daemon<'a>(fx: &'a Fixture, rx: &Receiver<'a>) -> Devd<'a> {
    fx.write_config(&format!("{}{FAST_SYNC}", rx.config_toml()));
    let devd = fx.devd();
    devd.start_wait();
    assert_worktrees_equal(fx.laptop(), &rx.worktree());
    devd
}

/// `git cat-file -e` in the receiver's bare store.
fn store_has(rx: &Receiver<'_>, commit: &str) -> bool {
    std::process::Command::new("git")
        .arg("--git-dir")
        .arg(rx.workspace_dir().join("repo.git"))
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .status()
        .expect("run git cat-file")
        .success()
}

#[test]
fn receiver_fetches_the_base_over_http_with_the_token_from_its_config() {
    let fx = Fixture::new();
    let server = serve_origin(&fx);
    let url = server.url("origin.git");
    let token_file = fx.root().join("git-token");
    write_token(&token_file, TOKEN);
    let config = fx.root().join("receiver.toml");
    std::fs::write(
        &config,
        format!(
            "[build]\nbackend = \"none\"\n\n[git]\ntoken_file = \"{}\"\n",
            token_file.display()
        ),
    )
    .unwrap();
    let rx = Receiver::start(
        &fx,
        ReceiverOpts {
            git_remote: Some(url.clone()),
            config: Some(config),
            ..Default::default()
        },
    );
    edit_laptop(&fx);
    let devd = start_daemon(&fx, &rx);

    let status = devd.status();
    assert_eq!(
        status.base_mode, "fetched",
        "the receiver should have fetched the base over HTTP; status: {}",
        status.raw
    );
    assert_eq!(status.base, fx.rev_parse("origin/main"));
    assert!(
        store_has(&rx, &status.base),
        "base {} not in the receiver's store",
        status.base
    );

    let requests = server.requests();
    let served = |method: &str, target: &str| {
        requests
            .iter()
            .any(|r| r.method == method && r.target == target && r.authorized && r.status == 200)
    };
    assert!(
        served("GET", "/origin.git/info/refs?service=git-upload-pack"),
        "no authorized ref advertisement over HTTP: {requests:#?}"
    );
    assert!(
        served("POST", "/origin.git/git-upload-pack"),
        "no authorized upload-pack POST (the pack) over HTTP: {requests:#?}"
    );
    assert!(
        requests.iter().all(|r| r.authorized),
        "the token is sent up front, with every request: {requests:#?}"
    );

    let stderr = rx.stderr();
    assert!(
        stderr.contains("fetched base commit"),
        "receiver log lacks the fetch:\n{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "the token leaked into the log");

    // A later edit syncs too (the base is in the store now).
    fx.write(
        "src/lib.rs",
        "pub fn add(a: u32, b: u32) -> u32 {\n    b + a\n}\n",
    );
    devd.sync_and_assert_equal(&rx.worktree());
}

#[test]
fn a_rejected_token_is_reported_without_the_token_and_the_laptop_uploads_the_base() {
    let fx = Fixture::new();
    let server = serve_origin(&fx);
    let url = server.url("origin.git");
    let wrong = "wrong-token-9d41aa07e3";
    let token_file = fx.root().join("git-token");
    write_token(&token_file, wrong);
    let rx = Receiver::start(
        &fx,
        ReceiverOpts {
            git_remote: Some(url.clone()),
            env: vec![(
                "DEVD_RECEIVER_GIT_TOKEN_FILE".into(),
                token_file.display().to_string(),
            )],
            ..Default::default()
        },
    );
    edit_laptop(&fx);
    // The laptop fell back to uploading the base content.
    let devd = start_daemon(&fx, &rx);

    let status = devd.status();
    assert_eq!(status.base_mode, "uploaded", "status: {}", status.raw);
    let reason = status
        .raw
        .get("base_mode_reason")
        .and_then(|r| r.as_str())
        .unwrap_or_else(|| panic!("no base_mode_reason in {}", status.raw))
        .to_owned();
    assert!(
        reason.contains(&url) && reason.contains("rejected the token"),
        "the reason should name the remote and say the token was rejected: {reason}"
    );
    let raw = status.raw.to_string();
    assert!(
        !raw.contains(wrong),
        "the token leaked into `devd status --json`: {raw}"
    );

    let requests = server.requests();
    assert!(
        !requests.is_empty() && requests.iter().all(|r| !r.authorized && r.status == 401),
        "every request carried the wrong token and was refused: {requests:#?}"
    );
    let stderr = rx.stderr();
    assert!(
        stderr.contains("rejected the token") && stderr.contains(&url),
        "the receiver's log should say the token was rejected by {url}:\n{stderr}"
    );
    assert!(
        !stderr.contains(wrong),
        "the token leaked into the receiver's log:\n{stderr}"
    );
    assert!(!store_has(&rx, &status.base));
}

/// No token at all (the file is configured but absent, as when the Secret
/// has no `token` key): the receiver never prompts or runs credential
/// helpers; the fetch fails at once, naming the remote and the file.
#[test]
fn a_missing_token_is_reported_naming_the_file() {
    let fx = Fixture::new();
    let server = serve_origin(&fx);
    let url = server.url("origin.git");
    let token_file = fx.root().join("no-such-token");
    let rx = Receiver::start(
        &fx,
        ReceiverOpts {
            git_remote: Some(url.clone()),
            args: vec!["--git-token-file".into(), token_file.display().to_string()],
            ..Default::default()
        },
    );
    let devd = start_daemon(&fx, &rx);
    let status = devd.status();
    assert_eq!(status.base_mode, "uploaded", "status: {}", status.raw);
    let reason = status.raw["base_mode_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&url)
            && reason.contains("requires authentication")
            && reason.contains(&token_file.display().to_string()),
        "the reason should name the remote and the missing token file: {reason}"
    );
    assert!(
        server
            .requests()
            .iter()
            .all(|r| !r.authorized && r.status == 401),
        "{:#?}",
        server.requests()
    );
}

/// HTTPS: the same fetch over TLS (the server's self-signed certificate is
/// trusted through `SSL_CERT_FILE`), with reqwest's rustls on the ring
/// provider the receiver installs.
#[test]
fn receiver_fetches_the_base_over_https_with_the_token() {
    let fx = Fixture::new();
    let origin = fx.origin();
    let server = GitHttpServer::start_tls(origin.parent().unwrap(), TOKEN)
        .expect("start the git https server");
    let url = server.url("origin.git");
    assert!(url.starts_with("https://"), "{url}");
    let ca = fx.root().join("git-server-ca.pem");
    std::fs::write(&ca, server.cert_pem().unwrap()).unwrap();
    let token_file = fx.root().join("git-token");
    write_token(&token_file, TOKEN);
    let rx = Receiver::start(
        &fx,
        ReceiverOpts {
            git_remote: Some(url.clone()),
            args: vec!["--git-token-file".into(), token_file.display().to_string()],
            env: vec![("SSL_CERT_FILE".into(), ca.display().to_string())],
            ..Default::default()
        },
    );
    edit_laptop(&fx);
    let devd = start_daemon(&fx, &rx);
    let status = devd.status();
    assert_eq!(status.base_mode, "fetched", "status: {}", status.raw);
    assert!(store_has(&rx, &status.base));
    let requests = server.requests();
    assert!(
        requests.iter().any(|r| r.method == "POST"
            && r.target == "/origin.git/git-upload-pack"
            && r.authorized
            && r.status == 200),
        "no authorized upload-pack POST over HTTPS: {requests:#?}"
    );
    assert!(
        !rx.stderr().contains(TOKEN),
        "the token leaked into the log"
    );

    // The certificate is verified: with this process's roots (which lack
    // the fresh self-signed certificate) the same fetch fails, naming the
    // remote, not the token.
    let store = devd_receiver::sync::git_store::GitStore::open_or_init(
        &fx.root().join("untrusting-store.git"),
        &url,
    )
    .unwrap()
    .with_token_file(Some(token_file))
    .unwrap();
    let base = devd_protocol::GitOid::from_hex(&status.base).unwrap();
    let err = store.fetch_commit(base).unwrap_err().to_string();
    assert!(
        err.contains(&url) && !err.contains(TOKEN),
        "an untrusted certificate must fail the fetch: {err}"
    );
    assert!(
        err.to_lowercase().contains("certificate") || err.to_lowercase().contains("issuer"),
        "the error should say why: {err}"
    );
}
