//! The overlay: every path whose worktree state differs from the base tree.
//!
//! Pure data: [`Overlay::diff`] computes the [`Change`]s from one overlay to
//! another, [`Overlay::apply`] replays them, and [`Overlay::digest`] is the
//! blake3 both sides compute to detect divergence.

use crate::content_id::ContentId;
use crate::path::RelPath;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The permission bits git gives a file: 0755 when executable, else 0644.
pub fn git_mode(exec: bool) -> u32 {
    if exec { 0o755 } else { 0o644 }
}

/// What an overlay entry says of a file whose permission bits on the
/// laptop are `laptop`: `None` when it grants at least git's mode (0664
/// under a group-writable umask still means 0644), else the bits of git's
/// mode it grants (0600 for a private file). A receiver never grants more
/// than git's mode, nor more than the laptop does.
pub fn narrowed_mode(exec: bool, laptop: u32) -> Option<u16> {
    let git = git_mode(exec);
    let m = git & laptop;
    (m != git).then_some(m as u16)
}

/// The permission bits a receiver gives a file entry: git's mode, narrowed
/// by `mode` (whatever `mode` holds, never wider than git's).
pub fn file_mode(exec: bool, mode: Option<u16>) -> u32 {
    git_mode(exec) & mode.map_or(0o777, u32::from)
}

/// The state of one path in the overlay.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Entry {
    /// A regular file with this content; `exec` is the executable bit;
    /// `mode` the permission bits when narrower than git's (see
    /// [`narrowed_mode`]), `None` when git's (protocol version 3).
    File {
        id: ContentId,
        exec: bool,
        mode: Option<u16>,
    },
    /// A symbolic link. The target is stored verbatim, never followed.
    Symlink { target: String },
    /// The path exists in the base tree but not in the worktree.
    Deleted,
}

/// One change between two overlays: `entry: None` means the path left the
/// overlay (its state is the base tree's again).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub path: RelPath,
    pub entry: Option<Entry>,
}

/// blake3 digest of an overlay's sorted entries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..12])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Path → entry, sorted by path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    entries: BTreeMap<RelPath, Entry>,
}

impl Overlay {
    /// An empty overlay (the worktree equals the base).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the worktree equals the base.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `path`, if the path is in the overlay.
    pub fn get(&self, path: &RelPath) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Set or replace the entry for `path`.
    pub fn insert(&mut self, path: RelPath, entry: Entry) -> Option<Entry> {
        self.entries.insert(path, entry)
    }

    /// Drop `path` from the overlay.
    pub fn remove(&mut self, path: &RelPath) -> Option<Entry> {
        self.entries.remove(path)
    }

    /// Entries in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&RelPath, &Entry)> {
        self.entries.iter()
    }

    /// Entries at or below `prefix`, in path order.
    pub fn iter_prefix<'a>(
        &'a self,
        prefix: &'a RelPath,
    ) -> impl Iterator<Item = (&'a RelPath, &'a Entry)> + 'a {
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.as_str().starts_with(prefix.as_str()))
            .filter(move |(p, _)| p.starts_with(prefix))
    }

    /// Content ids of all files in the overlay.
    pub fn blob_ids(&self) -> impl Iterator<Item = ContentId> + '_ {
        self.entries.values().filter_map(|e| match e {
            Entry::File { id, .. } => Some(*id),
            _ => None,
        })
    }

    /// blake3 over the sorted entries, in a fixed encoding independent of the
    /// wire codec: for each entry `len(path) ‖ path ‖ tag ‖ payload`.
    pub fn digest(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(b"devd-overlay-v1");
        for (path, entry) in &self.entries {
            h.update(&(path.as_str().len() as u64).to_le_bytes());
            h.update(path.as_str().as_bytes());
            match entry {
                Entry::File {
                    id,
                    exec,
                    mode: None,
                } => {
                    h.update(&[if *exec { 2 } else { 1 }]);
                    h.update(&id.0);
                }
                Entry::File {
                    id,
                    exec,
                    mode: Some(m),
                } => {
                    h.update(&[if *exec { 6 } else { 5 }]);
                    h.update(&id.0);
                    h.update(&m.to_le_bytes());
                }
                Entry::Symlink { target } => {
                    h.update(&[3]);
                    h.update(&(target.len() as u64).to_le_bytes());
                    h.update(target.as_bytes());
                }
                Entry::Deleted => {
                    h.update(&[4]);
                }
            }
        }
        Digest(*h.finalize().as_bytes())
    }

    /// The changes that turn `old` into `new`, in path order.
    pub fn diff(old: &Overlay, new: &Overlay) -> Vec<Change> {
        let mut out = Vec::new();
        let mut a = old.entries.iter().peekable();
        let mut b = new.entries.iter().peekable();
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some((pa, _)), None) => {
                    out.push(Change {
                        path: (*pa).clone(),
                        entry: None,
                    });
                    a.next();
                }
                (None, Some((pb, eb))) => {
                    out.push(Change {
                        path: (*pb).clone(),
                        entry: Some((*eb).clone()),
                    });
                    b.next();
                }
                (Some((pa, ea)), Some((pb, eb))) => match pa.cmp(pb) {
                    std::cmp::Ordering::Less => {
                        out.push(Change {
                            path: (*pa).clone(),
                            entry: None,
                        });
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        out.push(Change {
                            path: (*pb).clone(),
                            entry: Some((*eb).clone()),
                        });
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if ea != eb {
                            out.push(Change {
                                path: (*pb).clone(),
                                entry: Some((*eb).clone()),
                            });
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
        out
    }

    /// Replay `changes` onto this overlay.
    pub fn apply(&mut self, changes: &[Change]) {
        for c in changes {
            match &c.entry {
                Some(e) => {
                    self.entries.insert(c.path.clone(), e.clone());
                }
                None => {
                    self.entries.remove(&c.path);
                }
            }
        }
    }

    /// The first path present in `self` (not deleted) below another path
    /// present in `self` (a file or symlink at `a` and anything at `a/b`).
    /// Such an overlay cannot exist on a real filesystem; receivers reject
    /// it (`View::validate` checks the same against the base tree too).
    pub fn conflicting_path(&self) -> Option<&RelPath> {
        let present = |p: &RelPath| {
            self.entries
                .get(p)
                .is_some_and(|e| !matches!(e, Entry::Deleted))
        };
        self.entries
            .iter()
            .filter(|(_, e)| !matches!(e, Entry::Deleted))
            .map(|(path, _)| path)
            .find(|path| {
                let mut anc = path.parent();
                while let Some(a) = anc {
                    if present(&a) {
                        return true;
                    }
                    anc = a.parent();
                }
                false
            })
    }
}

impl FromIterator<(RelPath, Entry)> for Overlay {
    fn from_iter<T: IntoIterator<Item = (RelPath, Entry)>>(iter: T) -> Self {
        Self {
            entries: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn file(n: u8) -> Entry {
        Entry::File {
            id: ContentId([n; 32]),
            exec: false,
            mode: None,
        }
    }

    #[test]
    fn diff_and_apply_simple() {
        let a: Overlay = [(p("a"), file(1)), (p("b"), Entry::Deleted)]
            .into_iter()
            .collect();
        let b: Overlay = [
            (p("a"), file(2)),
            (p("c"), Entry::Symlink { target: "a".into() }),
        ]
        .into_iter()
        .collect();
        let d = Overlay::diff(&a, &b);
        assert_eq!(
            d,
            vec![
                Change {
                    path: p("a"),
                    entry: Some(file(2))
                },
                Change {
                    path: p("b"),
                    entry: None
                },
                Change {
                    path: p("c"),
                    entry: Some(Entry::Symlink { target: "a".into() })
                },
            ]
        );
        let mut x = a.clone();
        x.apply(&d);
        assert_eq!(x, b);
        assert_eq!(x.digest(), b.digest());
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn digest_is_pinned() {
        let o: Overlay = [(p("src/a.rs"), file(1)), (p("gone"), Entry::Deleted)]
            .into_iter()
            .collect();
        assert_eq!(
            o.digest().to_hex(),
            "933e2f39fe8c47b736f93fe663b3a985d10f2abbc81bef358a67de935b3061ba",
            "changing the digest encoding breaks every stored receiver state"
        );
    }

    #[test]
    fn exec_bit_changes_digest() {
        let a: Overlay = [(p("x"), file(1))].into_iter().collect();
        let b: Overlay = [(
            p("x"),
            Entry::File {
                id: ContentId([1; 32]),
                exec: true,
                mode: None,
            },
        )]
        .into_iter()
        .collect();
        assert_ne!(a.digest(), b.digest());
        assert_eq!(Overlay::diff(&a, &b).len(), 1);
    }

    /// A narrower mode is a change of its own; git's modes and a
    /// group-writable umask are not.
    #[test]
    fn narrowed_modes() {
        assert_eq!(narrowed_mode(false, 0o644), None);
        assert_eq!(narrowed_mode(false, 0o664), None);
        assert_eq!(narrowed_mode(false, 0o777), None);
        assert_eq!(narrowed_mode(false, 0o600), Some(0o600));
        assert_eq!(narrowed_mode(false, 0o640), Some(0o640));
        assert_eq!(narrowed_mode(false, 0o444), Some(0o444));
        assert_eq!(narrowed_mode(true, 0o775), None);
        assert_eq!(narrowed_mode(true, 0o700), Some(0o700));
        assert_eq!(narrowed_mode(true, 0o750), Some(0o750));
        assert_eq!(file_mode(false, None), 0o644);
        assert_eq!(file_mode(true, Some(0o700)), 0o700);
        // A hostile laptop asking for more gets git's mode at most.
        assert_eq!(file_mode(false, Some(0o7777)), 0o644);
        assert_eq!(file_mode(true, Some(0o4777)), 0o755);
        let a: Overlay = [(p("x"), file(1))].into_iter().collect();
        let b: Overlay = [(
            p("x"),
            Entry::File {
                id: ContentId([1; 32]),
                exec: false,
                mode: Some(0o600),
            },
        )]
        .into_iter()
        .collect();
        assert_ne!(a.digest(), b.digest());
        assert_eq!(Overlay::diff(&a, &b).len(), 1);
    }

    #[test]
    fn prefix_iteration() {
        let o: Overlay = [
            (p("a"), file(1)),
            (p("a/b"), file(2)),
            (p("a.txt"), file(3)),
            (p("ab"), file(4)),
        ]
        .into_iter()
        .collect();
        let a = p("a");
        let got: Vec<_> = o.iter_prefix(&a).map(|(k, _)| k.as_str()).collect();
        assert_eq!(got, ["a", "a/b"]);
    }

    #[test]
    fn detects_file_directory_conflict() {
        let ok: Overlay = [(p("a"), Entry::Deleted), (p("a/b"), file(1))]
            .into_iter()
            .collect();
        assert_eq!(ok.conflicting_path(), None);
        let bad: Overlay = [(p("a"), file(1)), (p("a/b"), file(2))]
            .into_iter()
            .collect();
        assert_eq!(bad.conflicting_path(), Some(&p("a/b")));
        let bad2: Overlay = [
            (
                p("l"),
                Entry::Symlink {
                    target: "/etc".into(),
                },
            ),
            (p("l/passwd"), file(2)),
        ]
        .into_iter()
        .collect();
        assert_eq!(bad2.conflicting_path(), Some(&p("l/passwd")));
    }

    /// Found by the `session` fuzz target, which checks this against the
    /// receiver's `View::validate`: a deleted path below a file is no
    /// conflict, and a sibling sorting between a file and its would-be
    /// children (`a-b` between `a` and `a/x`) must not hide one.
    #[test]
    fn conflicts_skip_deleted_paths_and_see_past_siblings() {
        let deleted_below: Overlay = [(p("a"), file(1)), (p("a/b"), Entry::Deleted)]
            .into_iter()
            .collect();
        assert_eq!(deleted_below.conflicting_path(), None);
        for between in [file(2), Entry::Deleted] {
            let o: Overlay = [(p("a"), file(1)), (p("a-b"), between), (p("a/x"), file(3))]
                .into_iter()
                .collect();
            assert_eq!(o.conflicting_path(), Some(&p("a/x")));
        }
    }

    fn arb_path() -> impl Strategy<Value = RelPath> {
        prop::collection::vec("[a-c]{1,2}", 1..4).prop_map(|c| RelPath::new(c.join("/")).unwrap())
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        prop_oneof![
            (any::<u8>(), any::<bool>(), any::<Option<u16>>()).prop_map(|(n, exec, mode)| {
                Entry::File {
                    id: ContentId([n; 32]),
                    exec,
                    mode: mode.map(|m| m & 0o644),
                }
            }),
            "[a-z/]{0,8}".prop_map(|target| Entry::Symlink { target }),
            Just(Entry::Deleted),
        ]
    }

    fn arb_overlay() -> impl Strategy<Value = Overlay> {
        prop::collection::btree_map(arb_path(), arb_entry(), 0..20)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn apply_diff_gives_target(a in arb_overlay(), b in arb_overlay()) {
            let d = Overlay::diff(&a, &b);
            let mut x = a.clone();
            x.apply(&d);
            prop_assert_eq!(&x, &b);
            prop_assert_eq!(x.digest(), b.digest());
            prop_assert!(d.len() <= a.len() + b.len());
            prop_assert!(Overlay::diff(&b, &b).is_empty());
        }

        #[test]
        fn postcard_round_trip(a in arb_overlay()) {
            let bytes = postcard::to_stdvec(&a).unwrap();
            let back: Overlay = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back, a);
        }
    }
}
