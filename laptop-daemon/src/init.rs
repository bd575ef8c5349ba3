//! `devd init`: find the repository's Dockerfiles and propose a `devd.toml`
//! with one service per Dockerfile, validated by the receiver's own
//! catalog parser before anyone sees it.
//!
//! Per Dockerfile: the name comes from its directory (made a valid service
//! name), the context is that directory, `dockerfile` is set only when the
//! file is not called `Dockerfile`, the image is `<repo-name>/<service>`,
//! the port is the first `EXPOSE`, and paths the Dockerfile copies from
//! outside its context but that exist at the repository root become
//! `inputs` (devd adds them to the context at their repository path).

use devd_sync::catalog::{Catalog, CatalogError, valid_dns_label};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Directories never searched, besides what `.gitignore` excludes.
pub const SKIP_DIRS: [&str; 3] = [".git", "target", "node_modules"];

/// Why no proposal could be made.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "no Dockerfile found under {root} (searched every directory that is not git-ignored, \
         skipping .git, target and node_modules); add a Dockerfile per service, or write \
         devd.toml by hand (see the README's \"Services\" section)"
    )]
    NoDockerfiles { root: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the proposed devd.toml does not validate ({0}); please report this, and write devd.toml by hand meanwhile"
    )]
    Invalid(#[from] CatalogError),
}

/// One proposed service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposed {
    pub name: String,
    /// The Dockerfile, relative to the repository root.
    pub dockerfile_path: String,
    /// The build context relative to the root; "." is the root.
    pub context: String,
    /// The Dockerfile relative to the context, when it is not `Dockerfile`.
    pub dockerfile: Option<String>,
    pub image: String,
    /// The first `EXPOSE`d port.
    pub port: Option<u16>,
    /// Paths copied from outside the context.
    pub inputs: Vec<String>,
}

/// The proposal: services and the text of `devd.toml`.
#[derive(Clone, Debug)]
pub struct Proposal {
    pub services: Vec<Proposed>,
    pub text: String,
    /// The validated catalog of `text`.
    pub catalog: Catalog,
}

fn is_dockerfile(name: &str) -> bool {
    if name.ends_with(".dockerignore") {
        return false;
    }
    let lower = name.to_ascii_lowercase();
    name == "Dockerfile"
        || name == "Containerfile"
        || name.starts_with("Dockerfile.")
        || name.starts_with("Containerfile.")
        || lower.ends_with(".dockerfile")
        || lower.ends_with(".containerfile")
}

/// Every Dockerfile under `root` that git does not ignore, relative to
/// `root`, sorted.
pub fn find_dockerfiles(root: &Path) -> Vec<PathBuf> {
    let mut wb = crate::walk::worktree(root);
    wb.filter_entry(|e| {
        !(e.file_type().is_some_and(|t| t.is_dir())
            && e.file_name()
                .to_str()
                .is_some_and(|n| SKIP_DIRS.contains(&n)))
    });
    let mut out: Vec<PathBuf> = wb
        .build()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_some_and(|t| t.is_file()))
        .filter(|e| e.file_name().to_str().is_some_and(is_dockerfile))
        .filter_map(|e| e.path().strip_prefix(root).ok().map(Path::to_path_buf))
        .collect();
    out.sort();
    out
}

/// `s` made a service name: lower-case letters, digits and '-', starting
/// with a letter, at most 40 characters.
pub fn service_name(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let mut out = out.trim_matches('-').to_owned();
    if out.is_empty() {
        return "service".into();
    }
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out = format!("svc-{out}");
    }
    out.truncate(40);
    let out = out.trim_end_matches('-').to_owned();
    if valid_dns_label(&out, 40) {
        out
    } else {
        "service".into()
    }
}

/// `s` made an image path component: lower-case letters, digits, '.', '_'
/// and '-', starting with a letter or digit.
pub fn image_component(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    out = out
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned();
    if out.is_empty() { "app".into() } else { out }
}

/// The instructions of a Dockerfile: (keyword upper-cased, arguments),
/// with continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
            continue;
        }
        if t.starts_with('#') {
            continue;
        }
        cur.push_str(t);
        let full = std::mem::take(&mut cur);
        let mut parts = full.trim().splitn(2, char::is_whitespace);
        let kw = parts.next().unwrap_or("").to_ascii_uppercase();
        let args = parts.next().unwrap_or("").trim().to_owned();
        out.push((kw, args));
    }
    out
}

/// Replace `$NAME` / `${NAME}` / `${NAME:-default}` with known values.
fn expand(s: &str, vars: &HashMap<String, String>) -> Option<String> {
    if !s.contains('$') {
        return Some(s.to_owned());
    }
    let name = s.strip_prefix('$')?;
    let name = name
        .strip_prefix('{')
        .and_then(|n| n.strip_suffix('}'))
        .unwrap_or(name);
    let (name, default) = match name.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (name, None),
    };
    vars.get(name)
        .cloned()
        .or_else(|| default.map(str::to_owned))
}

/// Record `ARG`/`ENV` defaults (`NAME=value`, or `ENV NAME value`).
fn record_vars(kw: &str, args: &str, vars: &mut HashMap<String, String>) {
    if kw == "ENV"
        && !args.contains('=')
        && let Some((k, v)) = args.split_once(char::is_whitespace)
    {
        vars.insert(k.to_owned(), v.trim().trim_matches('"').to_owned());
        return;
    }
    for part in args.split_whitespace() {
        if let Some((k, v)) = part.split_once('=') {
            vars.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
    }
}

/// The first port of the first `EXPOSE` (`8080`, `8080/tcp`, `$PORT` with
/// an `ARG`/`ENV` default, the start of a range).
pub fn first_expose(dockerfile: &str) -> Option<u16> {
    let mut vars = HashMap::new();
    for (kw, args) in instructions(dockerfile) {
        match kw.as_str() {
            "ARG" | "ENV" => record_vars(&kw, &args, &mut vars),
            "EXPOSE" => {
                let first = args.split_whitespace().next()?;
                let port = expand(first, &vars)?;
                let port = port.split('/').next()?.split('-').next()?;
                return port.parse::<u16>().ok().filter(|p| *p != 0);
            }
            _ => {}
        }
    }
    None
}

/// Sources of `COPY`/`ADD` instructions that read the build context (not
/// `--from` another stage or image), as written.
pub fn copy_sources(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (kw, args) in instructions(dockerfile) {
        if kw != "COPY" && kw != "ADD" {
            continue;
        }
        let mut rest = args.as_str();
        let mut from_stage = false;
        while let Some(flag) = rest.strip_prefix("--") {
            let (f, r) = flag.split_once(char::is_whitespace).unwrap_or((flag, ""));
            from_stage |= f.starts_with("from=");
            rest = r.trim_start();
        }
        if from_stage {
            continue;
        }
        let mut words: Vec<String> = if rest.starts_with('[') {
            serde_json::from_str(rest).unwrap_or_default()
        } else {
            rest.split_whitespace().map(str::to_owned).collect()
        };
        if words.len() < 2 {
            continue;
        }
        words.pop();
        out.extend(words);
    }
    out
}

/// The part of a source path before the first component with a glob
/// character; `None` for URLs, absolute paths and `..`.
fn literal_prefix(src: &str) -> Option<String> {
    if src.contains("://") || src.starts_with('/') || src.starts_with("git@") {
        return None;
    }
    let mut parts = Vec::new();
    for c in src.split('/') {
        if c.is_empty() || c == "." {
            continue;
        }
        if c == ".." || c.contains('$') {
            return None;
        }
        if c.contains(['*', '?', '[']) {
            break;
        }
        parts.push(c);
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Paths a Dockerfile copies that are missing from its context but exist
/// at the repository root.
fn outside_inputs(root: &Path, context: &str, dockerfile: &str) -> Vec<String> {
    if context == "." {
        return Vec::new();
    }
    let mut out = BTreeSet::new();
    for src in copy_sources(dockerfile) {
        let Some(p) = literal_prefix(&src) else {
            continue;
        };
        if !root.join(context).join(&p).exists() && root.join(&p).exists() {
            out.insert(p);
        }
    }
    out.into_iter().collect()
}

/// The name a Dockerfile's service gets before de-duplication.
fn base_name(rel: &Path, repo_name: &str) -> String {
    let file = rel.file_name().and_then(|f| f.to_str()).unwrap_or("");
    let dir = rel
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|d| d.to_str())
        .unwrap_or(repo_name);
    // Dockerfile.dev, api.Dockerfile: the variant joins the directory's name.
    let variant = file
        .strip_prefix("Dockerfile.")
        .or_else(|| file.strip_prefix("Containerfile."))
        .or_else(|| {
            let lower = file.to_ascii_lowercase();
            [".dockerfile", ".containerfile"]
                .iter()
                .find(|s| lower.ends_with(*s))
                .map(|s| &file[..file.len() - s.len()])
        });
    match variant {
        Some(v) if !v.is_empty() => service_name(&format!("{dir}-{v}")),
        _ => service_name(dir),
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The `devd.toml` text of `services`.
pub fn render(services: &[Proposed]) -> String {
    let mut t = String::from(
        "# devd.toml — the services of this repository (commit this file).\n\
         # Proposed by `devd init` from the Dockerfiles; every field is described\n\
         # in the README's \"Services\" section.\n",
    );
    for s in services {
        t.push_str(&format!(
            "\n# {}\n[services.{}]\n",
            s.dockerfile_path, s.name
        ));
        t.push_str(&format!("context = {}\n", toml_str(&s.context)));
        if let Some(d) = &s.dockerfile {
            t.push_str(&format!("dockerfile = {}\n", toml_str(d)));
        }
        if !s.inputs.is_empty() {
            let list: Vec<String> = s.inputs.iter().map(|i| toml_str(i)).collect();
            t.push_str(&format!(
                "inputs = [{}]   # copied from outside the context\n",
                list.join(", ")
            ));
        }
        t.push_str(&format!("image = {}\n", toml_str(&s.image)));
        match s.port {
            Some(p) => t.push_str(&format!("port = {p}\nexpose = \"internal\"\n")),
            None => t.push_str(
                "expose = \"none\"   # no EXPOSE in the Dockerfile: add port = N and expose = \"internal\" for a URL\n",
            ),
        }
    }
    t
}

/// Propose a `devd.toml` for the repository at `root`.
pub fn propose(root: &Path) -> Result<Proposal, InitError> {
    let files = find_dockerfiles(root);
    if files.is_empty() {
        return Err(InitError::NoDockerfiles {
            root: root.display().to_string(),
        });
    }
    let repo_name = root
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("app")
        .to_owned();
    let image_prefix = image_component(&repo_name);
    let mut taken = BTreeSet::new();
    let mut services = Vec::new();
    for rel in files {
        let path = root.join(&rel);
        let text = std::fs::read_to_string(&path).map_err(|source| InitError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let context = match rel.parent().and_then(Path::to_str) {
            Some("") | None => ".".to_owned(),
            Some(d) => d.to_owned(),
        };
        let file = rel
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("Dockerfile");
        let mut name = base_name(&rel, &repo_name);
        if taken.contains(&name) {
            // Two directories of the same name: prefix the parent's.
            let parent = rel
                .parent()
                .and_then(Path::parent)
                .and_then(|p| p.file_name())
                .and_then(|p| p.to_str());
            if let Some(p) = parent {
                name = service_name(&format!("{p}-{name}"));
            }
            let stem = name.clone();
            let mut n = 2;
            while taken.contains(&name) {
                name = format!("{}-{n}", &stem[..stem.len().min(37)]);
                n += 1;
            }
        }
        taken.insert(name.clone());
        services.push(Proposed {
            image: format!("{image_prefix}/{}", image_component(&name)),
            dockerfile_path: rel.to_string_lossy().into_owned(),
            dockerfile: (file != "Dockerfile").then(|| file.to_owned()),
            port: first_expose(&text),
            inputs: outside_inputs(root, &context, &text),
            context,
            name,
        });
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let text = render(&services);
    let catalog = Catalog::parse(&text)?;
    Ok(Proposal {
        services,
        text,
        catalog,
    })
}

/// Append `devd.local.toml` to the root's `.gitignore` unless it is
/// there; true if the file changed.
pub fn ignore_local_file(root: &Path) -> std::io::Result<bool> {
    let path = root.join(".gitignore");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let local = crate::config::LOCAL_FILE;
    if text
        .lines()
        .any(|l| l.trim() == local || l.trim() == format!("/{local}"))
    {
        return Ok(false);
    }
    let sep = if text.is_empty() || text.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    std::fs::write(
        &path,
        format!("{text}{sep}# this laptop's devd settings\n{local}\n"),
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn names_ports_and_sources() {
        assert_eq!(service_name("My_Service"), "my-service");
        assert_eq!(service_name("2fa"), "svc-2fa");
        assert_eq!(service_name("--"), "service");
        assert_eq!(image_component("My Repo"), "my-repo");
        assert_eq!(first_expose("FROM x\nEXPOSE 8080/tcp 9090\n"), Some(8080));
        assert_eq!(
            first_expose("FROM x\nARG PORT=3000\nEXPOSE ${PORT}\n"),
            Some(3000)
        );
        assert_eq!(first_expose("FROM x\nexpose 80-90\n"), Some(80));
        assert_eq!(first_expose("FROM x\nEXPOSE $UNKNOWN\n"), None);
        assert_eq!(first_expose("FROM x\nCMD [\"x\"]\n"), None);
        assert_eq!(
            copy_sources(
                "FROM a AS b\nCOPY --from=b /x /y\nCOPY --chown=1:1 shared/g.txt www/ /www/\n\
                 ADD [\"a b\", \"/dst\"]\nCOPY \\\n  lib/*.rs /src/\n"
            ),
            ["shared/g.txt", "www/", "a b", "lib/*.rs"]
        );
        assert_eq!(literal_prefix("./lib/*.rs").as_deref(), Some("lib"));
        assert_eq!(literal_prefix("https://x/y"), None);
        assert_eq!(literal_prefix("../x"), None);
    }

    #[test]
    fn proposes_one_valid_service_per_dockerfile() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("Shop");
        write(&root, ".gitignore", "ignored/\n");
        write(&root, "Dockerfile", "FROM x\nEXPOSE 80\n");
        write(
            &root,
            "services/cart/Dockerfile",
            "FROM x\nCOPY protos/cart.proto www/ /app/\nEXPOSE 9000\n",
        );
        write(&root, "services/cart/www/index.html", "hi\n");
        write(&root, "services/cart/Dockerfile.dev", "FROM x\n");
        write(&root, "tools/cart/Dockerfile", "FROM x\nEXPOSE 1\n");
        write(&root, "protos/cart.proto", "syntax\n");
        write(&root, "ignored/Dockerfile", "FROM x\n");
        write(&root, "node_modules/pkg/Dockerfile", "FROM x\n");
        write(&root, "target/Dockerfile", "FROM x\n");
        let p = propose(&root).unwrap();
        type Row<'a> = (&'a str, &'a str, Option<&'a str>, Option<u16>, &'a str);
        let got: Vec<Row<'_>> = p
            .services
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.context.as_str(),
                    s.dockerfile.as_deref(),
                    s.port,
                    s.image.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("cart", "services/cart", None, Some(9000), "shop/cart"),
                (
                    "cart-dev",
                    "services/cart",
                    Some("Dockerfile.dev"),
                    None,
                    "shop/cart-dev"
                ),
                ("shop", ".", None, Some(80), "shop/shop"),
                ("tools-cart", "tools/cart", None, Some(1), "shop/tools-cart"),
            ]
        );
        let cart = p.catalog.get("cart").unwrap();
        assert_eq!(cart.inputs.len(), 1);
        assert_eq!(cart.inputs[0].as_str(), "protos/cart.proto");
        assert_eq!(p.catalog.services.len(), 4);
        assert_eq!(
            p.catalog
                .get("cart-dev")
                .unwrap()
                .dockerfile_path()
                .as_str(),
            "services/cart/Dockerfile.dev"
        );
    }

    #[test]
    fn no_dockerfile_says_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let e = propose(tmp.path()).unwrap_err().to_string();
        assert!(
            e.contains("no Dockerfile found") && e.contains("by hand"),
            "{e}"
        );
    }

    #[test]
    fn gitignore_gets_the_local_file_once() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(".gitignore"), "*.log").unwrap();
        assert!(ignore_local_file(tmp.path()).unwrap());
        assert!(!ignore_local_file(tmp.path()).unwrap());
        let text = std::fs::read_to_string(tmp.path().join(".gitignore")).unwrap();
        assert_eq!(
            text,
            "*.log\n# this laptop's devd settings\ndevd.local.toml\n"
        );
    }
}
