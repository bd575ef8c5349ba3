//! The control socket: a Unix socket in the repository's state directory
//! over which `devd status`, `sync`, `stop`, `retry` and `down` talk to the
//! running daemon, one JSON line each way (`logs` answers with a line per
//! chunk, relayed by [`crate::logs::relay`]).

use crate::daemon::Handle;
pub use devd_protocol::control::{Request, Response};
use devd_protocol::control::{decode_request, decode_response, encode_line};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// The longest socket path every laptop OS binds: `sun_path` holds 108
/// bytes on Linux and 104 on macOS, the terminating NUL included.
const SUN_PATH_MAX: usize = 103;

/// Path of the socket for a state directory: `control.sock` in it when
/// that fits in a socket address, else (a deep `DEVD_HOME`) a name derived
/// from the state directory in a private per-user directory, the way ssh's
/// `ControlPath %C` and tmux's `/tmp/tmux-UID` keep theirs short.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    let p = state_dir.join("control.sock");
    if p.as_os_str().len() <= SUN_PATH_MAX {
        return p;
    }
    let name = format!(
        "{}.sock",
        &blake3::hash(state_dir.as_os_str().as_encoded_bytes()).to_hex()[..16]
    );
    let uid = rustix::process::geteuid().as_raw();
    let candidates = [
        std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("devd")),
        Some(std::env::temp_dir().join(format!("devd-{uid}"))),
        Some(PathBuf::from(format!("/tmp/devd-{uid}"))),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|d| d.join(&name))
        .find(|p| p.as_os_str().len() <= SUN_PATH_MAX)
        .unwrap_or(p)
}

/// Make sure the directory holding a socket outside the state directory
/// is ours alone before listening or talking there: anyone could have
/// made `/tmp/devd-UID` first and put their own socket in it.
fn private_socket_dir(path: &Path, create: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    if path.file_name() == Some("control.sock".as_ref()) {
        return Ok(()); // in the state directory, made 0700 by the daemon
    }
    if create {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let uid = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} (where the control socket goes, since the state directory's path is too long \
                 for one) is not a directory only you can use; remove it or set XDG_RUNTIME_DIR",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Serve requests until the daemon is cancelled.
pub async fn serve(handle: Arc<Handle>, path: PathBuf) -> std::io::Result<()> {
    private_socket_dir(&path, true)?;
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    // One task per connection, owned here: on shutdown the ones still
    // answering (e.g. `devd stop`'s own reply) get a moment to finish,
    // then the rest (a `logs --follow`) are aborted with the set.
    let mut connections = tokio::task::JoinSet::new();
    let result = loop {
        let (stream, _) = tokio::select! {
            _ = handle.cancel.cancelled() => break Ok(()),
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => break Err(e),
            },
        };
        let h = handle.clone();
        connections.spawn(async move {
            if let Err(e) = answer(h, stream).await {
                tracing::debug!(error = %e, "control connection failed");
            }
        });
    };
    let _ = std::fs::remove_file(&path);
    let _ = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
    result
}

/// How long connections still being answered get once the daemon stops:
/// `devd stop`'s own answer comes after the services' containers are
/// removed, which takes seconds on a loaded machine (with 2 s, a slow
/// `podman rm` cut the answer off and `devd stop` said the daemon was not
/// running). A `logs --follow` ends at once when the daemon stops.
const DRAIN: Duration = Duration::from_secs(60);

/// The longest request line read: every request is a few dozen bytes, and
/// a client that never ends its line must not grow the daemon.
const MAX_REQUEST: u64 = 64 * 1024;

/// How long a client may take to send its request line.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

async fn answer(h: Arc<Handle>, stream: UnixStream) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST));
    let read = reader.read_line(&mut line);
    let Ok(read) = tokio::time::timeout(REQUEST_DEADLINE, read).await else {
        return Ok(()); // silent for too long: closed
    };
    let req = match read {
        Ok(_) if !line.ends_with('\n') && line.len() as u64 >= MAX_REQUEST => Err(format!(
            "request longer than {MAX_REQUEST} bytes without a newline"
        )),
        Ok(_) => decode_request(&line).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err("request is not UTF-8".to_owned())
        }
        Err(e) => return Err(e),
    };
    let req = match req {
        Ok(Request::Exec {
            service,
            command,
            tty,
        }) => {
            // What the CLI sent after its line (nothing, as it waits for
            // the answer first) comes before the rest of the socket.
            let early = std::io::Cursor::new(reader.buffer().to_vec());
            let rest = reader.into_inner().into_inner();
            return crate::exec::serve(&h, service, command, tty, early.chain(rest), w).await;
        }
        other => other,
    };
    if let Ok(Request::Logs {
        service,
        build,
        follow,
    }) = &req
    {
        return answer_logs(&h, service, *build, *follow, w).await;
    }
    let resp = match req {
        Err(e) => Response {
            ok: false,
            data: serde_json::Value::Null,
            error: Some(format!("bad request: {e}")),
        },
        Ok(Request::Status) => Response {
            ok: true,
            data: serde_json::to_value(h.status()).expect("status"),
            error: None,
        },
        Ok(Request::Sync) => match h.sync(Duration::from_secs(10)).await {
            Ok(r) => Response {
                ok: true,
                data: serde_json::to_value(r).expect("report"),
                error: None,
            },
            Err(e) => Response {
                ok: false,
                data: serde_json::Value::Null,
                error: Some(e),
            },
        },
        Ok(Request::TakeOver) => match h.take_over(Duration::from_secs(10)).await {
            Ok(r) => Response {
                ok: true,
                data: serde_json::to_value(r).expect("report"),
                error: None,
            },
            Err(e) => Response {
                ok: false,
                data: serde_json::Value::Null,
                error: Some(e),
            },
        },
        Ok(Request::Logs { .. } | Request::Exec { .. }) => unreachable!("answered above"),
        Ok(Request::Stop { keep_running }) => {
            let st = h.status();
            let deployed: Vec<String> = st
                .services
                .iter()
                .filter(|s| s.image.is_some())
                .map(|s| s.name.clone())
                .collect();
            // Cancel first: no build starts or deploys once the containers
            // are gone.
            h.cancel.cancel();
            let stopped = match keep_running {
                true => None,
                false => h.stop_services().await,
            };
            let (stopped, error) = match stopped {
                Some(Ok(names)) => (names, None),
                Some(Err(e)) => (Vec::new(), Some(e)),
                None => (Vec::new(), None),
            };
            let kept: Vec<&String> = deployed.iter().filter(|n| !stopped.contains(n)).collect();
            Response {
                ok: true,
                data: serde_json::json!({
                    "stopped": stopped,
                    "kept": kept,
                    "embedded": st.receiver.embedded,
                    "stop_error": error,
                }),
                error: None,
            }
        }
        Ok(Request::Retry { services }) => match h.retry(services).await {
            Ok(queued) => Response {
                ok: true,
                data: serde_json::json!({ "queued": queued }),
                error: None,
            },
            Err(e) => Response {
                ok: false,
                data: serde_json::Value::Null,
                error: Some(e),
            },
        },
        Ok(Request::Down) => match h.remove_deployed().await {
            Ok(removed) => {
                h.cancel.cancel();
                Response {
                    ok: true,
                    data: serde_json::json!({ "removed": removed }),
                    error: None,
                }
            }
            Err(e) => Response {
                ok: false,
                data: serde_json::Value::Null,
                error: Some(e),
            },
        },
    };
    w.write_all(&encode_line(&resp)).await?;
    w.shutdown().await
}

/// Daemon side of the control socket's `logs` request: one JSON line per
/// chunk (`{"ok":true,"data":{"log":"…"}}`), then one closing line
/// (`{"ok":…,"data":{"end":true},"error":…}`).
async fn answer_logs(
    handle: &Handle,
    service: &str,
    build: bool,
    follow: bool,
    mut w: impl tokio::io::AsyncWrite + Unpin,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let relay = crate::logs::relay(handle, service, build, follow, tx);
    tokio::pin!(relay);
    let mut result = None;
    loop {
        tokio::select! {
            // The daemon stops: a followed log ends here, so that the
            // stop's drain waits only for answers that end by themselves.
            () = handle.cancel.cancelled(), if result.is_none() => {
                result = Some(Err("the daemon stopped".to_owned()));
                break;
            }
            r = &mut relay, if result.is_none() => result = Some(r),
            chunk = rx.recv() => match chunk {
                Some(data) => {
                    let line = Response {
                        ok: true,
                        data: serde_json::json!({ "log": String::from_utf8_lossy(&data) }),
                        error: None,
                    };
                    // The CLI went away: dropping `rx` ends the relay.
                    w.write_all(&encode_line(&line)).await?;
                }
                None => break,
            },
        }
    }
    let result = match result {
        Some(r) => r,
        None => relay.await,
    };
    let end = Response {
        ok: result.is_ok(),
        data: serde_json::json!({ "end": true }),
        error: result.err(),
    };
    w.write_all(&encode_line(&end)).await?;
    w.shutdown().await
}

/// Send `req` to the daemon behind `path` and return the answer's lines
/// to read. `Ok(None)`: no daemon there.
pub async fn stream(path: &Path, req: &Request) -> std::io::Result<Option<UnixStream>> {
    private_socket_dir(path, false)?;
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        // A daemon killed with `kill -9` a moment ago can reset the
        // connection while it is being made (restarts.rs saw `devd start`
        // fail so right after the kill).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) || dead_daemon(&e) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    match stream.write_all(&encode_line(req)).await {
        Ok(()) => Ok(Some(stream)),
        Err(e) if dead_daemon(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The error of a socket whose daemon died (`kill -9`) while or before we
/// talked to it: no daemon there.
fn dead_daemon(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof
    )
}

/// Send `req` to the daemon behind `path` and read its one-line answer.
/// `Ok(None)`: no daemon there (or it closed the connection unanswered).
pub async fn request(path: &Path, req: &Request) -> std::io::Result<Option<Response>> {
    let Some(stream) = stream(path, req).await? else {
        return Ok(None);
    };
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line).await {
        Ok(_) => {}
        Err(e) if dead_daemon(&e) => return Ok(None),
        Err(e) => return Err(e),
    }
    if line.is_empty() {
        return Ok(None);
    }
    decode_response(&line)
        .map(Some)
        .map_err(std::io::Error::other)
}
