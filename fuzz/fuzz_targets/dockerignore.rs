//! A service's `.dockerignore` (or `.containerignore`), which the receiver
//! compiles for every build context: compiling must refuse or accept, and
//! matching must not panic. The input's first line is a path to match.
#![no_main]

use devd_sync::dockerignore::DockerIgnore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, rules) = text.split_once('\n').unwrap_or(("", text));
    let Ok(ignore) = DockerIgnore::parse(rules, ".dockerignore") else {
        return;
    };
    let excluded = ignore.excluded(path);
    if ignore.can_skip_dir(path) {
        // A skipped directory's files are excluded, as a walk assumes.
        assert!(excluded);
        assert!(ignore.excluded(&format!("{path}/x")));
    }
});
