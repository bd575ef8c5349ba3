//! `devd-receiver fetch-context`: the init container of a Kubernetes build
//! pod. Downloads the build context the receiver offers ([`crate::build::http`]),
//! checks its blake3 digest, and unpacks it into the directory the image
//! builder reads (an emptyDir shared with the Kaniko container).
//!
//! Runs as a non-root user; needs write access to `--dest` only (the
//! archive is downloaded into it and removed before unpacking ends).

use crate::build::archive;
use backon::{ExponentialBuilder, Retryable};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Attempts before giving up (the receiver may be restarting).
const ATTEMPTS: usize = 5;

/// Pauses between attempts: 1 s, doubling (1, 2, 4, 8 s), no jitter.
fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_factor(2.0)
        .with_max_times(ATTEMPTS - 1)
}

/// Errors fetching a context.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url} failed: {reason}")]
    Download { url: String, reason: String },
    #[error(
        "the context from {url} has blake3 {got}, expected {want}: corrupted in transit or not the offered build context"
    )]
    Digest {
        url: String,
        got: String,
        want: String,
    },
    #[error("--blake3 {0:?} is not 64 hex digits")]
    BadDigest(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
}

/// What was fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub bytes: u64,
    pub entries: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Download `url` into `file`, hashing it; returns (blake3 hex, bytes).
async fn download(
    client: &reqwest::Client,
    url: &str,
    file: &Path,
) -> Result<(String, u64), FetchError> {
    let dl = |reason: String| FetchError::Download {
        url: url.to_owned(),
        reason,
    };
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| dl(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(dl(format!(
            "HTTP {} (a context is only offered while its build runs)",
            resp.status()
        )));
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(file).map_err(io(file))?);
    let mut hasher = blake3::Hasher::new();
    let mut bytes = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(|e| dl(e.to_string()))? {
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
        out.write_all(&chunk).map_err(io(file))?;
    }
    out.flush().map_err(io(file))?;
    Ok((hasher.finalize().to_hex().to_string(), bytes))
}

/// Fetch the context at `url` into `dest`, verifying `blake3` (hex).
pub async fn fetch_context(url: &str, dest: &Path, blake3: &str) -> Result<Fetched, FetchError> {
    let want = blake3.to_ascii_lowercase();
    if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FetchError::BadDigest(blake3.to_owned()));
    }
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    // The context's root gets 0755 as its subdirectories do (and as a
    // checkout has): `dest` is a subdirectory of the build pod's emptyDir,
    // whose own root is world-writable, and Kaniko may carry the context
    // root's mode onto a `COPY . /app` target (kaniko#2136).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755)).map_err(io(dest))?;
    }
    let file: PathBuf = dest.join(format!(".devd-context-{}.tar.zst", std::process::id()));
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| FetchError::Download {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let attempt = std::sync::atomic::AtomicUsize::new(1);
    let downloaded = (|| download(&client, url, &file))
        .retry(backoff())
        .notify(|e, pause| {
            let attempt = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(attempt, error = %e, retry_in = ?pause, "context download failed; retrying");
        })
        .await;
    let (got, bytes) = match downloaded {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&file);
            return Err(e);
        }
    };
    if got != want {
        let _ = std::fs::remove_file(&file);
        return Err(FetchError::Digest {
            url: url.to_owned(),
            got,
            want,
        });
    }
    let (f, d) = (file.clone(), dest.to_owned());
    let unpacked = tokio::task::spawn_blocking(move || {
        let input = std::fs::File::open(&f).map_err(io(&f))?;
        // The archive is open: remove its name so it cannot end up in the
        // build context.
        std::fs::remove_file(&f).map_err(io(&f))?;
        Ok::<_, FetchError>(archive::unpack(std::io::BufReader::new(input), &d)?)
    })
    .await
    .map_err(|e| FetchError::Io {
        path: dest.display().to_string(),
        source: std::io::Error::other(e),
    });
    let entries = match unpacked {
        Ok(Ok(n)) => n,
        Ok(Err(e)) | Err(e) => {
            let _ = std::fs::remove_file(&file);
            return Err(e);
        }
    };
    Ok(Fetched { bytes, entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::http::{ContextShelf, HttpState, serve};
    use tokio_util::sync::CancellationToken;

    #[test]
    fn retries_four_times_after_one_two_four_and_eight_seconds() {
        use backon::BackoffBuilder;
        let pauses: Vec<u64> = backoff().build().map(|d| d.as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8]);
    }

    #[tokio::test]
    async fn fetches_verifies_and_unpacks() {
        devd_sync::net::install_crypto();
        let d = tempfile::tempdir().unwrap();
        let ctx = d.path().join("ctx");
        std::fs::create_dir_all(ctx.join("www")).unwrap();
        std::fs::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(ctx.join("www/index.html"), "hello\n").unwrap();
        let shelf = ContextShelf::new(&d.path().join("shelf")).unwrap();
        let cancel = CancellationToken::new();
        let srv = serve(
            "127.0.0.1:0".parse().unwrap(),
            HttpState::new(shelf.clone()),
            &tokio_util::task::TaskTracker::new(),
            cancel.clone(),
        )
        .await
        .unwrap();
        let offer = shelf.offer(&ctx).await.unwrap();
        let url = format!("http://{}{}", srv.addr, offer.path);

        let dest = d.path().join("workspace");
        let f = fetch_context(&url, &dest, &offer.packed.blake3)
            .await
            .unwrap();
        assert_eq!(f.bytes, offer.packed.bytes);
        assert_eq!(
            std::fs::read_to_string(dest.join("www/index.html")).unwrap(),
            "hello\n"
        );
        let names: Vec<_> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "no archive left behind: {names:?}");

        let e = fetch_context(&url, &d.path().join("w2"), &"0".repeat(64))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 0000"), "{e}");
        assert!(!d.path().join("w2/Dockerfile").exists());
        let e = fetch_context(&url, &dest, "abc").await.unwrap_err();
        assert!(matches!(e, FetchError::BadDigest(_)));
        cancel.cancel();
    }
}
