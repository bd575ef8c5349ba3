//! A smart-HTTP git server on loopback: git's own `git http-backend` CGI
//! behind a small HTTP/1.1 server, requiring a token as HTTP Basic auth
//! (`Authorization: Basic base64(USER:TOKEN)`, any user), like GitHub or
//! GitLab with an access token. Records every request it answered.
//! [`GitHttpServer::start_tls`] serves HTTPS with a fresh self-signed
//! certificate (rustls with ring), whose PEM a client trusts through
//! `SSL_CERT_FILE`.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where Debian's git installs the CGI.
pub const HTTP_BACKEND: &str = "/usr/lib/git-core/git-http-backend";

/// One answered request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path and query as sent, e.g. `/origin.git/info/refs?service=git-upload-pack`.
    pub target: String,
    /// The `Authorization` header was the expected one.
    pub authorized: bool,
    /// The status code of the reply.
    pub status: u16,
}

/// A running server; stops accepting on drop.
pub struct GitHttpServer {
    addr: SocketAddr,
    scheme: &'static str,
    /// The self-signed certificate (PEM) of an HTTPS server.
    cert_pem: Option<String>,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

struct Shared {
    project_root: PathBuf,
    /// The accepted `Authorization` header value.
    authorization: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl GitHttpServer {
    /// Serve the bare repositories under `project_root` (URL path
    /// `/NAME.git`) on 127.0.0.1, accepting only `token` (any user name).
    pub fn start(project_root: &Path, token: &str) -> Result<Self> {
        Self::start_with(project_root, token, None)
    }

    /// Like [`start`](Self::start), over TLS with a self-signed certificate
    /// for `127.0.0.1` and `localhost` ([`cert_pem`](Self::cert_pem)).
    pub fn start_tls(project_root: &Path, token: &str) -> Result<Self> {
        devd_sync::net::install_crypto();
        let ck = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])?;
        let pem = ck.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .map_err(|e| anyhow::anyhow!("private key: {e}"))?;
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)?;
        let mut server = Self::start_with(project_root, token, Some(Arc::new(config)))?;
        server.cert_pem = Some(pem);
        Ok(server)
    }

    fn start_with(
        project_root: &Path,
        token: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self> {
        anyhow::ensure!(
            Path::new(HTTP_BACKEND).is_file(),
            "{HTTP_BACKEND} is missing: install git (Debian's git package ships it)"
        );
        let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            project_root: project_root.to_path_buf(),
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
            ),
            requests: requests.clone(),
        });
        let stop_flag = stop.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        std::thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (shared, tls) = (shared.clone(), tls.clone());
                        std::thread::spawn(move || {
                            let served = stream
                                .set_nonblocking(false)
                                .and_then(|()| {
                                    stream.set_read_timeout(Some(Duration::from_secs(60)))
                                })
                                .map_err(anyhow::Error::from)
                                .and_then(|()| match tls {
                                    None => serve_connection(stream, &shared),
                                    Some(config) => {
                                        let conn = rustls::ServerConnection::new(config)?;
                                        serve_connection(
                                            rustls::StreamOwned::new(conn, stream),
                                            &shared,
                                        )
                                    }
                                });
                            if let Err(e) = served {
                                eprintln!("git http server: {e:#}");
                            }
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => {
                        eprintln!("git http server: accept: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        });
        Ok(Self {
            addr,
            scheme,
            cert_pem: None,
            requests,
            stop,
        })
    }

    /// `http(s)://127.0.0.1:PORT/NAME` for the repository `NAME` under the
    /// root.
    pub fn url(&self, name: &str) -> String {
        format!("{}://{}/{name}", self.scheme, self.addr)
    }

    /// The certificate of an HTTPS server, PEM.
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert_pem.as_deref()
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Requests on one connection, until the client closes it.
fn serve_connection(stream: impl Read + Write, shared: &Shared) -> Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // A TLS client may hang up without close_notify.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        let (method, target) = match (parts.next(), parts.next()) {
            (Some(m), Some(t)) => (m.to_owned(), t.to_owned()),
            _ => bail!("bad request line {line:?}"),
        };
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                bail!("connection closed inside the headers");
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h
                .split_once(':')
                .with_context(|| format!("bad header line {h:?}"))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            read_chunked(&mut reader)?
        } else {
            let len: usize = header("content-length")
                .map(|v| v.parse().context("bad Content-Length"))
                .transpose()?
                .unwrap_or(0);
            let mut b = vec![0; len];
            reader.read_exact(&mut b)?;
            b
        };
        let authorized = header("authorization") == Some(shared.authorization.as_str());
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let (status, reply_headers, reply_body) = if authorized {
            run_cgi(shared, &method, &target, &headers, &body)?
        } else {
            (
                401,
                vec![
                    (
                        "WWW-Authenticate".to_owned(),
                        "Basic realm=\"git\"".to_owned(),
                    ),
                    ("Content-Type".to_owned(), "text/plain".to_owned()),
                ],
                b"authentication required\n".to_vec(),
            )
        };
        shared.requests.lock().unwrap().push(Request {
            method,
            target,
            authorized,
            status,
        });
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (k, v) in &reply_headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n", reply_body.len()));
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let writer = reader.get_mut();
        writer.write_all(head.as_bytes())?;
        writer.write_all(&reply_body)?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Status",
    }
}

fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let size = size.trim_end();
        let hex = size.split(';').next().unwrap_or("");
        let n = usize::from_str_radix(hex.trim(), 16)
            .with_context(|| format!("bad chunk size {size:?}"))?;
        if n == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t)? == 0 || t.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + n, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}

type Reply = (u16, Vec<(String, String)>, Vec<u8>);

/// Run `git http-backend` for one request.
fn run_cgi(
    shared: &Shared,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Reply> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut cmd = Command::new(HTTP_BACKEND);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &shared.project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1");
    if let Some(v) = header("content-type") {
        cmd.env("CONTENT_TYPE", v);
    }
    if let Some(v) = header("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", v);
    }
    if let Some(v) = header("git-protocol") {
        cmd.env("GIT_PROTOCOL", v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {HTTP_BACKEND}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        // The CGI may answer before reading everything (errors).
        let _ = stdin.write_all(&body);
    });
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.stderr.is_empty() {
        eprintln!(
            "git http-backend {method} {target}: {}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    let stdout = out.stdout;
    let (head_end, sep) = match find(&stdout, b"\r\n\r\n") {
        Some(i) => (i, 4),
        None => (
            find(&stdout, b"\n\n").with_context(|| {
                format!(
                    "git http-backend wrote no CGI header block: {:?}",
                    String::from_utf8_lossy(&stdout[..stdout.len().min(200)])
                )
            })?,
            2,
        ),
    };
    let mut status = 200;
    let mut reply_headers = Vec::new();
    for line in String::from_utf8_lossy(&stdout[..head_end]).lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("status") {
            status = v
                .split(' ')
                .next()
                .and_then(|c| c.parse().ok())
                .with_context(|| format!("bad CGI Status {v:?}"))?;
        } else if !k.eq_ignore_ascii_case("content-length") {
            reply_headers.push((k.to_owned(), v.to_owned()));
        }
    }
    Ok((status, reply_headers, stdout[head_end + sep..].to_vec()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
