//! Build-context archives: a context snapshot packed as a zstd-compressed
//! tar for a build pod, and unpacked there by `devd-receiver fetch-context`.
//!
//! The archive is deterministic (sorted entries, fixed mtime, uid/gid 0,
//! only the exec bit of the mode kept), so the same context gives the same
//! bytes; its blake3 digest travels with the download URL and the fetcher
//! refuses anything else. Symlinks stay symlinks; unpacking never writes
//! outside the destination (the `tar` crate refuses `..` and absolute
//! paths, and entries through symlinks that leave it).

use std::io::{Read, Write};
use std::path::Path;

/// zstd level: fast; contexts are mostly source text.
const LEVEL: i32 = 3;

/// Errors packing or unpacking.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot pack the build context {dir}: {source}")]
    Pack { dir: String, source: std::io::Error },
    #[error("cannot unpack the build context into {dir}: {source}")]
    Unpack { dir: String, source: std::io::Error },
}

/// What [`pack`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// Hex blake3 of the archive's bytes.
    pub blake3: String,
    pub bytes: u64,
    pub entries: u64,
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Pack the directory `dir` into `out` (a `.tar.zst` file, created or
/// truncated). Blocking.
pub fn pack(dir: &Path, out: &Path) -> Result<Packed, ArchiveError> {
    let err = |source| ArchiveError::Pack {
        dir: dir.display().to_string(),
        source,
    };
    let file = std::fs::File::create(out).map_err(err)?;
    let hashing = Hashing {
        inner: std::io::BufWriter::new(file),
        hasher: blake3::Hasher::new(),
        bytes: 0,
    };
    let encoder = zstd::Encoder::new(hashing, LEVEL).map_err(err)?;
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    let mut entries = 0u64;
    append_dir(&mut builder, dir, "", &mut entries).map_err(err)?;
    let encoder = builder.into_inner().map_err(err)?;
    let mut hashing = encoder.finish().map_err(err)?;
    hashing.flush().map_err(err)?;
    hashing
        .inner
        .into_inner()
        .map_err(|e| err(e.into_error()))?
        .sync_all()
        .map_err(err)?;
    Ok(Packed {
        blake3: hashing.hasher.finalize().to_hex().to_string(),
        bytes: hashing.bytes,
        entries,
    })
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Append the children of `dir` (archive path `rel`), sorted by name.
fn append_dir<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    rel: &str,
    entries: &mut u64,
) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let name = name.to_string_lossy();
        let child = if rel.is_empty() {
            name.into_owned()
        } else {
            format!("{rel}/{name}")
        };
        let meta = std::fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            b.append_data(&mut h, format!("{child}/"), std::io::empty())?;
            *entries += 1;
            append_dir(b, &path, &child, entries)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path)?;
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, &child, &target)?;
            *entries += 1;
        } else if ft.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let perm = meta.permissions().mode();
            let exec = perm & 0o100 != 0;
            let mode = devd_protocol::overlay::file_mode(
                exec,
                devd_protocol::overlay::narrowed_mode(exec, perm),
            );
            let mut h = header(tar::EntryType::Regular, mode, meta.len());
            let f = std::fs::File::open(&path)?;
            b.append_data(&mut h, &child, f.take(meta.len()))?;
            *entries += 1;
        }
    }
    Ok(())
}

/// Unpack the `.tar.zst` stream `input` into `dest` (created). Modes are
/// kept, owners are not (the unpacking user owns everything). Blocking.
pub fn unpack(input: impl Read, dest: &Path) -> Result<u64, ArchiveError> {
    let err = |source| ArchiveError::Unpack {
        dir: dest.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dest).map_err(err)?;
    let decoder = zstd::Decoder::new(input).map_err(err)?;
    let mut archive = tar::Archive::new(decoder);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(false);
    archive.set_overwrite(true);
    let mut n = 0u64;
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        // `unpack_in` refuses paths that would land outside `dest`.
        if entry.unpack_in(dest).map_err(err)? {
            n += 1;
        } else {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "entry {:?} points outside the destination",
                    entry
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ),
            )));
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn roundtrip_is_exact_and_deterministic() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("www/deep")).unwrap();
        std::fs::write(src.join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
        std::fs::write(src.join("www/index.html"), "v1\n").unwrap();
        std::fs::write(src.join("www/deep/run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            src.join("www/deep/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        // Private on the laptop, private in the build pod; a group-writable
        // umask's 0664 is git's 0644.
        std::fs::write(src.join("www/secret.key"), "k\n").unwrap();
        std::fs::set_permissions(
            src.join("www/secret.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::set_permissions(
            src.join("www/index.html"),
            std::fs::Permissions::from_mode(0o664),
        )
        .unwrap();
        std::os::unix::fs::symlink("www/index.html", src.join("latest")).unwrap();
        std::fs::create_dir_all(src.join("empty")).unwrap();

        let a = pack(&src, &d.path().join("a.tar.zst")).unwrap();
        let b = pack(&src, &d.path().join("b.tar.zst")).unwrap();
        assert_eq!(a, b, "same tree, same archive");
        assert_eq!(a.entries, 8);
        let bytes = std::fs::read(d.path().join("a.tar.zst")).unwrap();
        assert_eq!(a.bytes, bytes.len() as u64);
        assert_eq!(blake3::hash(&bytes).to_hex().to_string(), a.blake3);

        let out = d.path().join("out");
        assert_eq!(unpack(&bytes[..], &out).unwrap(), 8);
        assert_eq!(
            std::fs::read_to_string(out.join("www/index.html")).unwrap(),
            "v1\n"
        );
        let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("www/deep/run.sh"), 0o755);
        assert_eq!(mode("Dockerfile"), 0o644);
        assert_eq!(mode("www/secret.key"), 0o600);
        assert_eq!(mode("www/index.html"), 0o644);
        assert_eq!(
            std::fs::read_link(out.join("latest")).unwrap(),
            Path::new("www/index.html")
        );
        assert!(out.join("empty").is_dir());
    }

    #[test]
    fn refuses_paths_outside_the_destination() {
        let d = tempfile::tempdir().unwrap();
        let mut raw = Vec::new();
        {
            let enc = zstd::Encoder::new(&mut raw, 1).unwrap().auto_finish();
            let mut b = tar::Builder::new(enc);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(2);
            h.set_mode(0o644);
            // `append_data` refuses "..", so write the name by hand.
            h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
            h.set_cksum();
            b.append(&h, &b"x\n"[..]).unwrap();
            b.finish().unwrap();
        }
        let out = d.path().join("out");
        let e = unpack(&raw[..], &out).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        assert!(!d.path().join("escape").exists());
    }
}
