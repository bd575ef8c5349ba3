//! `devd.toml`'s service catalog, which both the laptop and the receiver
//! read from the worktree (so from whoever can commit or sync a file):
//! parsing and validation must refuse or accept, never panic, and what is
//! accepted must be usable by the code that reads a service.
#![no_main]

use devd_protocol::RelPath;
use devd_sync::catalog::Catalog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(catalog) = Catalog::parse(text) else {
        return;
    };
    for s in &catalog.services {
        assert!(catalog.get(&s.name).is_some());
        let dockerfile = s.dockerfile_path();
        if let Some(c) = &s.context {
            assert!(s.depends_on(c));
            assert!(dockerfile.starts_with(c));
        }
        for i in &s.inputs {
            assert!(s.depends_on(i));
        }
        let _ = s.port();
        let _ = s.depends_on(&RelPath::new("x").expect("a valid path"));
    }
});
