//! The benchmark scenarios: their order, keys and which repository they
//! run on.

/// The benchmark scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    Latency,
    Bytes,
    ColdStart,
    Idle,
    Bulk,
    Churn,
    /// Save → deployed with real builds ([`crate::deploy`]).
    Deploy,
    /// A fresh workspace's boot with and without prebuilt images
    /// ([`crate::boot`]).
    Boot,
    /// Save → served with live update vs an image build ([`crate::live`]).
    Live,
    /// The repository's own manifests: render time, manifest-only edits
    /// ([`crate::manifests`]).
    Manifests,
}

impl Scenario {
    /// All, in the order the report shows them.
    pub const ALL: [Scenario; 10] = [
        Scenario::Latency,
        Scenario::Bytes,
        Scenario::ColdStart,
        Scenario::Idle,
        Scenario::Bulk,
        Scenario::Churn,
        Scenario::Deploy,
        Scenario::Boot,
        Scenario::Live,
        Scenario::Manifests,
    ];

    /// Does it run on the generated repository (with rsync baselines)?
    /// Scenarios 7 and 8 run on `examples/demo` (and its copies) instead.
    pub fn uses_generated_repo(self) -> bool {
        !matches!(
            self,
            Scenario::Deploy | Scenario::Boot | Scenario::Live | Scenario::Manifests
        )
    }

    /// Key in `results.json` and the table.
    pub fn key(self) -> &'static str {
        match self {
            Scenario::Latency => "1 edit → applied",
            Scenario::Bytes => "2 bytes per edit",
            Scenario::ColdStart => "3 cold start",
            Scenario::Idle => "4 idle cost",
            Scenario::Bulk => "5 bulk change",
            Scenario::Churn => "6 churn (git checkout)",
            Scenario::Deploy => "7 save → deployed",
            Scenario::Boot => "8 fresh workspace boot",
            Scenario::Live => "9 save → served, live update",
            Scenario::Manifests => "10 own manifests",
        }
    }
}
