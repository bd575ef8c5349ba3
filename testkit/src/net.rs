//! Loopback networking for fixtures: a free port, and a tiny blocking
//! HTTP/1.0 client for what a container serves and for the registry API
//! (no TLS, no redirects, no chunked encoding: the server closes the
//! connection after the body).

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A free loopback port. Another process may take it before the caller
/// binds it: callers retry, or fail with the reason.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How long a request may wait.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    /// Bounds every read and write, not the whole response.
    pub(crate) io: Duration,
}

impl Timeouts {
    /// Connect 5 s, each read or write 10 s.
    pub(crate) const DEFAULT: Self = Self {
        connect: Duration::from_secs(5),
        io: Duration::from_secs(10),
    };
}

/// A response of [`http_request`].
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl HttpResponse {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn status_and_text(self) -> (u16, String) {
        (
            self.status,
            String::from_utf8_lossy(&self.body).into_owned(),
        )
    }
}

/// `GET url` (plain `http://host:port/path`) over HTTP/1.0: the status and
/// the body (lossily UTF-8). Connect timeout 5 s, read timeout 10 s.
pub fn http_get(url: &str) -> Result<(u16, String)> {
    Ok(http_request("GET", url, &[], Timeouts::DEFAULT)?.status_and_text())
}

/// [`http_get`] where `timeout` bounds the connect and each read and write
/// (a poller that must notice a server going away quickly).
pub fn http_get_within(url: &str, timeout: Duration) -> Result<(u16, String)> {
    let t = Timeouts {
        connect: timeout,
        io: timeout,
    };
    Ok(http_request("GET", url, &[], t)?.status_and_text())
}

pub(crate) fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    timeouts: Timeouts,
) -> Result<HttpResponse> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addrs: Vec<_> = authority
        .to_socket_addrs()
        .with_context(|| format!("resolve {authority}"))?
        .collect();
    let mut last_err = None;
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeouts.connect) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let mut stream = match (stream, last_err) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e).with_context(|| format!("connect to {authority}")),
        (None, None) => bail!("{authority} resolves to no address"),
    };
    stream.set_read_timeout(Some(timeouts.io))?;
    stream.set_write_timeout(Some(timeouts.io))?;
    let mut req =
        format!("{method} {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: devd-testkit\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .with_context(|| format!("send request to {url}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("read response of {url}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("{url}: no end of headers in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("{url}: bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot server answering `reply`; returns its address and the
    /// request it read.
    fn serve_once(reply: &'static [u8]) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            s.write_all(reply).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (addr, server)
    }

    #[test]
    fn http_get_reads_status_and_body() {
        let (addr, server) = serve_once(b"HTTP/1.0 404 Not Found\r\nX-A: b\r\n\r\nnot here\n");
        let (status, body) = http_get(&format!("http://{addr}/some/path")).unwrap();
        assert_eq!((status, body.as_str()), (404, "not here\n"));
        let req = server.join().unwrap();
        assert!(req.starts_with("GET /some/path HTTP/1.0\r\n"), "{req}");
        assert!(http_get("https://x/").is_err());
    }

    #[test]
    fn http_get_within_reads_status_and_body() {
        let (addr, server) = serve_once(b"HTTP/1.0 404 Not Found\r\nX-A: b\r\n\r\nnot here\n");
        let (status, body) =
            http_get_within(&format!("http://{addr}/a/b"), Duration::from_secs(5)).unwrap();
        assert_eq!((status, body.as_str()), (404, "not here\n"));
        assert!(server.join().unwrap().starts_with("GET /a/b HTTP/1.0\r\n"));
        assert!(http_get_within("https://x/", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn request_headers_go_out_and_response_headers_come_back() {
        let (addr, server) =
            serve_once(b"HTTP/1.0 200 OK\r\nDocker-Content-Digest: sha256:ab\r\n\r\n");
        let resp = http_request(
            "HEAD",
            &format!("http://{addr}/v2/x/manifests/v1"),
            &[("Accept", "a/b")],
            Timeouts::DEFAULT,
        )
        .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("docker-content-digest"), Some("sha256:ab"));
        let req = server.join().unwrap();
        assert!(
            req.starts_with("HEAD /v2/x/manifests/v1 HTTP/1.0\r\n"),
            "{req}"
        );
        assert!(req.contains("\r\nAccept: a/b\r\n"), "{req}");
    }
}
