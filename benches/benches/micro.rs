//! Criterion micro benchmarks of devd's hot pure functions:
//! - overlay diff of 100k entries (one entry changed, and all changed);
//! - blake3 throughput, single-threaded and split over two threads
//!   (b3sum-style tree parallelism, via blake3's `hazmat` subtree API);
//! - frame encode/decode of a typical single-edit `Changes` message and of
//!   a 16,384-change frame;
//! - zstd of a 1 MB source file with a one-line edit: full vs patch.
//!
//! `cargo bench -p devd-benches --bench micro` (add `-- --quick` for a
//! short run).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use devd_protocol::message::{Blob, ClientMsg};
use devd_protocol::{
    Change, ContentId, Encoding, Entry, FrameDecoder, Overlay, RelPath, compress, encode_frame,
};
use std::hint::black_box;

fn text(n: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 64);
    let mut x = seed | 1;
    let words = [
        "config", "handler", "buffer", "session", "value", "state", "event", "token",
    ];
    let mut line = 0u64;
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        line += 1;
        let w = words[(x % words.len() as u64) as usize];
        v.extend_from_slice(
            format!(
                "    let {w}_{line} = compute_{w}({}, {:#x}); // step {line}\n",
                x % 1000,
                x >> 40
            )
            .as_bytes(),
        );
    }
    v.truncate(n);
    v
}

fn overlay(n: usize, salt: u8) -> Overlay {
    (0..n)
        .map(|i| {
            let path = RelPath::new(format!("crates/c{:02}/m{:02}/f{i:06}.rs", i % 40, i % 49))
                .expect("valid path");
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            id[31] = salt;
            (
                path,
                Entry::File {
                    id: ContentId(id),
                    exec: false,
                    mode: None,
                },
            )
        })
        .collect()
}

fn bench_overlay_diff(c: &mut Criterion) {
    let mut g = c.benchmark_group("overlay_diff_100k");
    let a = overlay(100_000, 0);
    let mut one = a.clone();
    let (p, _) = one
        .iter()
        .nth(50_000)
        .map(|(p, e)| (p.clone(), e.clone()))
        .expect("entry");
    one.insert(p, Entry::Deleted);
    let all = overlay(100_000, 1);
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("one_changed", |b| {
        b.iter(|| black_box(Overlay::diff(&a, &one)))
    });
    g.bench_function("all_changed", |b| {
        b.iter(|| black_box(Overlay::diff(&a, &all)))
    });
    g.bench_function("digest", |b| b.iter(|| black_box(a.digest())));
    g.finish();
}

/// blake3 of `data` split into two subtrees hashed on two threads.
fn blake3_two_threads(data: &[u8]) -> blake3::Hash {
    use blake3::hazmat::{HasherExt, Mode, left_subtree_len, merge_subtrees_root};
    if data.len() <= blake3::CHUNK_LEN {
        return blake3::hash(data);
    }
    let split = left_subtree_len(data.len() as u64) as usize;
    let (l, r) = data.split_at(split);
    let (lcv, rcv) = std::thread::scope(|s| {
        let h = s.spawn(|| blake3::Hasher::new().update(l).finalize_non_root());
        let rcv = blake3::Hasher::new()
            .set_input_offset(split as u64)
            .update(r)
            .finalize_non_root();
        (h.join().expect("hash thread"), rcv)
    });
    merge_subtrees_root(&lcv, &rcv, Mode::Hash)
}

fn bench_blake3(c: &mut Criterion) {
    let mut g = c.benchmark_group("blake3");
    let big = text(16 << 20, 7);
    assert_eq!(blake3_two_threads(&big), blake3::hash(&big));
    for (name, data) in [
        ("2KB", &big[..2048]),
        ("1MB", &big[..1 << 20]),
        ("16MB", &big[..]),
    ] {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(format!("single_thread/{name}"), |b| {
            b.iter(|| black_box(blake3::hash(black_box(data))))
        });
        if data.len() >= 1 << 20 {
            g.bench_function(format!("two_threads/{name}"), |b| {
                b.iter(|| black_box(blake3_two_threads(black_box(data))))
            });
        }
    }
    g.finish();
}

fn single_edit_msg() -> ClientMsg {
    let data = compress::compress(&text(2048, 3));
    ClientMsg::Changes {
        generation: 42,
        changes: vec![Change {
            path: RelPath::new("crates/c07/m12/f012345.rs").expect("path"),
            entry: Some(Entry::File {
                id: ContentId([7; 32]),
                exec: false,
                mode: None,
            }),
        }],
        blobs: vec![Blob {
            id: ContentId([7; 32]),
            encoding: Encoding::Zstd,
            raw_len: 2048,
            data,
        }],
    }
}

fn big_changes_msg() -> ClientMsg {
    let o = overlay(16_384, 2);
    ClientMsg::Changes {
        generation: 43,
        changes: Overlay::diff(&Overlay::new(), &o),
        blobs: vec![],
    }
}

fn bench_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for (name, msg) in [
        ("single_edit", single_edit_msg()),
        ("16384_changes", big_changes_msg()),
    ] {
        let frame = encode_frame(&msg);
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| black_box(encode_frame(black_box(&msg))))
        });
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter_batched(
                || {
                    let mut d = FrameDecoder::new(devd_protocol::message::MAX_FRAME);
                    d.push(&frame);
                    d
                },
                |mut d| {
                    black_box(
                        d.decode::<ClientMsg>()
                            .expect("valid")
                            .expect("whole frame"),
                    )
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_zstd(c: &mut Criterion) {
    let mut g = c.benchmark_group("zstd_1MB_one_line_edit");
    let old = text(1 << 20, 11);
    let mut new = old.clone();
    let at = new[..500_000]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    new.splice(at..at, b"    // one more line\n".iter().copied());
    let full = compress::compress(&new);
    let patch = compress::compress_patch(&new, &old).expect("patch fits the window");
    eprintln!(
        "zstd on a 1 MB file with a one-line edit: full {} B, patch {} B ({:.0}× smaller)",
        full.len(),
        patch.len(),
        full.len() as f64 / patch.len() as f64
    );
    g.throughput(Throughput::Bytes(new.len() as u64));
    g.bench_function("full", |b| {
        b.iter(|| black_box(compress::compress(black_box(&new))))
    });
    g.bench_function("patch", |b| {
        b.iter(|| black_box(compress::compress_patch(black_box(&new), black_box(&old))))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_overlay_diff,
    bench_blake3,
    bench_frames,
    bench_zstd
);
criterion_main!(benches);
