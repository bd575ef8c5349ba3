//! A service's build context: copied out of the worktree into a snapshot
//! directory (so a later apply cannot change a running build's input) and
//! digested as the builder sees it.
//!
//! The context is the service's `context` directory after `.dockerignore`,
//! plus each of its `inputs` at its repository-relative path. The digest
//! covers every file's path, exec bit, mode when narrower than git's
//! 0644/0755 (a private file stays private in the image), and content
//! (symlinks: their target),
//! the Dockerfile (even if `.dockerignore` hides it, as builders read it
//! anyway), the build arguments and the build steps (name, image, command,
//! env, workdir: a changed step is a different image, so it cannot be
//! reused). It does not cover timestamps, owners
//! or empty directories, so any checkout of the same commit — CI's, a
//! colleague's — yields the same digest, and so the same image tag.

use crate::build::dockerignore::{DockerIgnore, IgnoreError};
use devd_sync::catalog::Service;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Version of the digest's input format; part of the digest.
const FORMAT: &str = "devd-context-v1";

/// Errors snapshotting a context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("service {service:?}: {what} {path} does not exist in the worktree")]
    Missing {
        service: String,
        what: &'static str,
        path: String,
    },
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ContextError + '_ {
    move |source| ContextError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What a context holds, file by file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// `mode`: narrower than git's 0644/0755 (see
    /// [`devd_protocol::overlay::narrowed_mode`]), as the worktree has it.
    File {
        exec: bool,
        mode: Option<u16>,
        hash: blake3::Hash,
    },
    Symlink(String),
}

/// A build context copied to `dir`, with its digest.
#[derive(Debug, Clone)]
pub struct ContextSnapshot {
    pub dir: PathBuf,
    /// Hex blake3 digest of the context as defined above.
    pub digest: String,
    /// The Dockerfile, relative to `dir`.
    pub dockerfile: String,
    pub files: u64,
    pub bytes: u64,
}

impl ContextSnapshot {
    /// The image tag for this context: stable across machines.
    pub fn tag(&self) -> String {
        tag_for(&self.digest)
    }
}

/// The image tag for a context digest.
pub fn tag_for(digest: &str) -> String {
    format!("devd-{}", &digest[..40.min(digest.len())])
}

struct Walk<'a> {
    ignore: &'a DockerIgnore,
    dest: &'a Path,
    items: BTreeMap<String, Item>,
    bytes: u64,
}

impl Walk<'_> {
    /// Copy `src` (a file, symlink or directory of the worktree) to the
    /// context path `rel`, unless ignored.
    fn copy(&mut self, src: &Path, rel: &str) -> Result<(), ContextError> {
        let meta = std::fs::symlink_metadata(src).map_err(io(src))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            if !rel.is_empty() && self.ignore.can_skip_dir(rel) {
                return Ok(());
            }
            let out = self.dest.join(rel);
            std::fs::create_dir_all(&out).map_err(io(&out))?;
            // 0755 whatever the umask: the archive a build pod unpacks
            // says 0755 for every directory, so both backends see the same.
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755))
                .map_err(io(&out))?;
            let mut names: Vec<_> = std::fs::read_dir(src)
                .map_err(io(src))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(io(src))?;
            names.sort();
            for n in names {
                let Some(name) = n.to_str() else {
                    tracing::warn!(path = %src.join(&n).display(), "skipping a non-UTF-8 name in a build context");
                    continue;
                };
                if rel.is_empty() && name == ".git" {
                    continue;
                }
                let child = if rel.is_empty() {
                    name.to_owned()
                } else {
                    format!("{rel}/{name}")
                };
                self.copy(&src.join(name), &child)?;
            }
            return Ok(());
        }
        if self.ignore.excluded(rel) {
            return Ok(());
        }
        let out = self.dest.join(rel);
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(src).map_err(io(src))?;
            std::os::unix::fs::symlink(&target, &out).map_err(io(&out))?;
            self.items.insert(
                rel.to_owned(),
                Item::Symlink(target.to_string_lossy().into_owned()),
            );
        } else if ft.is_file() {
            let perm = meta.permissions().mode();
            let exec = perm & 0o100 != 0;
            let mode = devd_protocol::overlay::narrowed_mode(exec, perm);
            let hash = copy_hashing(src, &out, devd_protocol::overlay::file_mode(exec, mode))?;
            self.bytes += meta.len();
            self.items
                .insert(rel.to_owned(), Item::File { exec, mode, hash });
        }
        Ok(())
    }
}

/// Copy a file while hashing it; the copy gets `mode` (git's 0755 or 0644,
/// or narrower as the worktree has it: a private file stays private in
/// the image).
fn copy_hashing(src: &Path, dst: &Path, mode: u32) -> Result<blake3::Hash, ContextError> {
    let mut input = std::fs::File::open(src).map_err(io(src))?;
    let mut output = std::fs::File::create(dst).map_err(io(dst))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = input.read(&mut buf).map_err(io(src))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(io(dst))?;
    }
    output
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(dst))?;
    Ok(hasher.finalize())
}

/// Copy `service`'s build context out of the worktree at `root` into
/// `dest` (created; must not exist) and digest it. `extra` is more text
/// the digest must cover (e.g. build steps). Blocking.
pub fn snapshot(
    root: &Path,
    service: &Service,
    dest: &Path,
    extra: &[u8],
) -> Result<ContextSnapshot, ContextError> {
    let ctx_dir = match &service.context {
        Some(c) => root.join(c.as_str()),
        None => root.to_owned(),
    };
    if !ctx_dir.is_dir() {
        return Err(ContextError::Missing {
            service: service.name.clone(),
            what: "context directory",
            path: service
                .context
                .as_ref()
                .map_or(".".into(), |c| c.as_str().to_owned()),
        });
    }
    let dockerfile_src = ctx_dir.join(service.dockerfile.as_str());
    let dockerfile = std::fs::read(&dockerfile_src).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ContextError::Missing {
                service: service.name.clone(),
                what: "Dockerfile",
                path: service.dockerfile_path().as_str().to_owned(),
            }
        } else {
            io(&dockerfile_src)(e)
        }
    })?;
    let ignore = DockerIgnore::load(&ctx_dir)?;
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let mut walk = Walk {
        ignore: &ignore,
        dest,
        items: BTreeMap::new(),
        bytes: 0,
    };
    walk.copy(&ctx_dir, "")?;
    for input in &service.inputs {
        if service
            .context
            .as_ref()
            .is_none_or(|c| input.starts_with(c))
        {
            continue; // already inside the context
        }
        let src = root.join(input.as_str());
        if std::fs::symlink_metadata(&src).is_err() {
            return Err(ContextError::Missing {
                service: service.name.clone(),
                what: "input",
                path: input.as_str().to_owned(),
            });
        }
        walk.copy(&src, input.as_str())?;
    }
    // The builder always reads the Dockerfile, ignored or not.
    let df_rel = service.dockerfile.as_str().to_owned();
    if !walk.items.contains_key(&df_rel) {
        let out = dest.join(&df_rel);
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p).map_err(io(p))?;
        }
        std::fs::write(&out, &dockerfile).map_err(io(&out))?;
    }
    let mut h = blake3::Hasher::new();
    let mut field = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(FORMAT.as_bytes());
    field(df_rel.as_bytes());
    field(&dockerfile);
    for (k, v) in &service.build_args {
        field(b"arg");
        field(k.as_bytes());
        field(v.as_bytes());
    }
    // Only services with steps hash them: digests (and so the tags of
    // images already built) of services without steps are unchanged.
    for step in &service.steps {
        field(b"step");
        field(step.name.as_bytes());
        field(step.image.as_bytes());
        field(&(step.command.len() as u64).to_le_bytes());
        for a in &step.command {
            field(a.as_bytes());
        }
        field(&(step.env.len() as u64).to_le_bytes());
        for (k, v) in &step.env {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        field(step.workdir.as_ref().map_or("", |w| w.as_str()).as_bytes());
    }
    field(b"extra");
    field(extra);
    for (path, item) in &walk.items {
        field(path.as_bytes());
        match item {
            Item::File { exec, mode, hash } => {
                field(if *exec { b"x" } else { b"f" });
                field(hash.as_bytes());
                // Only a narrowed mode is hashed: contexts of files in
                // git's modes keep the digests (and images) they had.
                if let Some(m) = mode {
                    field(format!("mode {m:o}").as_bytes());
                }
            }
            Item::Symlink(t) => {
                field(b"l");
                field(t.as_bytes());
            }
        }
    }
    Ok(ContextSnapshot {
        dir: dest.to_owned(),
        digest: h.finalize().to_hex().to_string(),
        dockerfile: df_rel,
        files: walk.items.len() as u64,
        bytes: walk.bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use devd_sync::catalog::Catalog;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn demo() -> (tempfile::TempDir, Catalog) {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(r, "svc/Dockerfile", "FROM scratch\nCOPY . /\n");
        write(r, "svc/www/index.html", "v1\n");
        write(r, "svc/NOTES.md", "notes\n");
        write(r, "svc/.dockerignore", "*.md\n");
        write(r, "shared/greeting.txt", "hi\n");
        write(r, "other/x", "x\n");
        let c = Catalog::parse(
            "[services.svc]\ncontext = \"svc\"\ninputs = [\"shared\"]\nport = 80\n[services.svc.build_args]\nA = \"1\"\n",
        )
        .unwrap();
        (d, c)
    }

    fn snap(root: &Path, c: &Catalog, n: u32) -> ContextSnapshot {
        let dest = root.join(format!("snaps/{n}"));
        snapshot(root, &c.services[0], &dest, b"").unwrap()
    }

    #[test]
    fn snapshot_holds_what_the_builder_sees_and_digest_tracks_it() {
        let (d, c) = demo();
        let r = d.path();
        let s1 = snap(r, &c, 1);
        assert_eq!(
            std::fs::read_to_string(s1.dir.join("www/index.html")).unwrap(),
            "v1\n"
        );
        assert_eq!(
            std::fs::read_to_string(s1.dir.join("shared/greeting.txt")).unwrap(),
            "hi\n"
        );
        assert!(!s1.dir.join("NOTES.md").exists(), "ignored file copied");
        assert!(!s1.dir.join("other").exists());
        assert_eq!(
            s1.files, 4,
            "Dockerfile, .dockerignore, index.html, greeting.txt"
        );
        // An ignored file and a file outside the context change nothing.
        write(r, "svc/NOTES.md", "more notes\n");
        write(r, "other/x", "y\n");
        assert_eq!(snap(r, &c, 2).digest, s1.digest);
        // Content, inputs, exec bit, build args and extra all count.
        write(r, "shared/greeting.txt", "hello\n");
        let s3 = snap(r, &c, 3);
        assert_ne!(s3.digest, s1.digest);
        write(r, "shared/greeting.txt", "hi\n");
        assert_eq!(
            snap(r, &c, 4).digest,
            s1.digest,
            "revert gives the same digest"
        );
        std::fs::set_permissions(
            r.join("svc/www/index.html"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_ne!(snap(r, &c, 5).digest, s1.digest);
        std::fs::set_permissions(
            r.join("svc/www/index.html"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let private = snap(r, &c, 50);
        assert_ne!(private.digest, s1.digest, "a narrower mode counts");
        assert_eq!(
            std::fs::metadata(private.dir.join("www/index.html"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600,
            "and is copied as it is"
        );
        std::fs::set_permissions(
            r.join("svc/www/index.html"),
            std::fs::Permissions::from_mode(0o664),
        )
        .unwrap();
        assert_eq!(snap(r, &c, 51).digest, s1.digest, "0664 is git's 0644");
        std::fs::set_permissions(
            r.join("svc/www/index.html"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let mut c2 = c.clone();
        c2.services[0].build_args.insert("A".into(), "2".into());
        assert_ne!(snap(r, &c2, 6).digest, s1.digest);
        let dest = r.join("snaps/7");
        assert_ne!(
            snapshot(r, &c.services[0], &dest, b"step").unwrap().digest,
            s1.digest
        );
        // Every part of a build step counts, and the order of the steps.
        let step = |name: &str, command: &[&str]| devd_sync::catalog::Step {
            name: name.into(),
            image: "busybox:stable".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            workdir: None,
        };
        let with_steps = |n: u32, steps: Vec<devd_sync::catalog::Step>| {
            let mut c2 = c.clone();
            c2.services[0].steps = steps;
            snap(r, &c2, n).digest
        };
        let one = with_steps(8, vec![step("test", &["sh", "-c", "true"])]);
        assert_ne!(one, s1.digest, "adding a step");
        assert_eq!(
            with_steps(9, vec![step("test", &["sh", "-c", "true"])]),
            one
        );
        let mut variants = vec![
            vec![step("test", &["sh", "-c", "false"])],
            vec![step("test", &["sh", "-c true"])],
            vec![step("check", &["sh", "-c", "true"])],
            vec![step("a", &["true"]), step("b", &["true"])],
            vec![step("b", &["true"]), step("a", &["true"])],
        ];
        let mut s = step("test", &["sh", "-c", "true"]);
        s.image = "busybox:1.36".into();
        variants.push(vec![s]);
        let mut s = step("test", &["sh", "-c", "true"]);
        s.env.insert("CI".into(), "1".into());
        variants.push(vec![s]);
        let mut s = step("test", &["sh", "-c", "true"]);
        s.workdir = Some(devd_protocol::RelPath::new("www").unwrap());
        variants.push(vec![s]);
        let mut seen = std::collections::BTreeSet::from([s1.digest.clone(), one]);
        for (i, v) in variants.into_iter().enumerate() {
            let d = with_steps(10 + i as u32, v);
            assert!(seen.insert(d), "variant {i} must have its own digest");
        }
        assert!(s1.tag().starts_with("devd-") && s1.tag().len() == 45);
    }

    #[test]
    fn missing_pieces_are_named() {
        let (d, c) = demo();
        std::fs::remove_file(d.path().join("svc/Dockerfile")).unwrap();
        let e = snapshot(d.path(), &c.services[0], &d.path().join("snaps/x"), b"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Dockerfile") && e.contains("svc/Dockerfile"),
            "{e}"
        );
        std::fs::remove_dir_all(d.path().join("shared")).unwrap();
        write(d.path(), "svc/Dockerfile", "FROM scratch\n");
        let e = snapshot(d.path(), &c.services[0], &d.path().join("snaps/y"), b"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("input shared"), "{e}");
    }
}
