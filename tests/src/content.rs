//! Deterministic bulk content, built in-process (no shell loops).

/// `len` pseudo-random bytes derived from `seed` (blake3 in XOF mode):
/// incompressible, and the same for the same seed.
pub fn random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(b"devd-tests random_bytes\0");
    h.update(seed.as_bytes());
    let mut out = vec![0u8; len];
    h.finalize_xof().fill(&mut out);
    out
}

/// Text made of numbered lines (`line 000042: <tag> ...`) until it is at
/// least `min_len` bytes long. Line `n` can be found by its prefix.
pub fn text_lines(tag: &str, min_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(min_len + 128);
    let mut n = 0usize;
    while out.len() < min_len {
        out.extend_from_slice(
            format!(
                "line {n:06}: {tag} the quick brown fox jumps over the lazy dog {}\n",
                n * 7919 % 10007
            )
            .as_bytes(),
        );
        n += 1;
    }
    out
}
