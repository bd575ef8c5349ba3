//! Blob encodings: raw, zstd, and zstd "patch" mode where the new content
//! is compressed with a version the receiver already has (the base blob or
//! the previous overlay blob of the same path) as a referenced prefix. An
//! edit to a large file then costs bytes proportional to the edit.

use crate::content_id::{ContentId, GitOid};
use serde::{Deserialize, Serialize};
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter};

/// zstd level used for blobs: fast, and patch mode does the heavy lifting.
pub const LEVEL: i32 = 3;
/// Largest window (2^28 = 256 MiB) either side accepts; bounds decoder memory.
pub const MAX_WINDOW_LOG: u32 = 28;

/// A blob the receiver already has, used as the patch reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlobRef {
    /// A blob from an earlier overlay, by content id.
    Overlay(ContentId),
    /// A blob of the base commit, by git object id.
    Base(GitOid),
}

/// How a blob's bytes are encoded on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    Raw,
    Zstd,
    ZstdPatch { reference: BlobRef },
}

/// Why decoding failed.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("blob of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(u64, u64),
    #[error("zstd failed: {0}")]
    Zstd(String),
    #[error("decoded length {got} differs from the announced {want}")]
    Length { got: u64, want: u64 },
    #[error("patch reference missing for a ZstdPatch blob")]
    MissingReference,
    /// Writing the decoded content failed (the writer's error, e.g. a full
    /// disk): not the blob's fault.
    #[error("writing the decoded blob: {0}")]
    Output(std::io::Error),
}

fn zerr(code: usize) -> CompressError {
    CompressError::Zstd(zstd::zstd_safe::get_error_name(code).to_owned())
}

fn window_log(total: usize) -> u32 {
    let mut log = 10;
    while (1usize << log) < total && log < MAX_WINDOW_LOG {
        log += 1;
    }
    log
}

/// Compress `data` in full.
pub fn compress(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, LEVEL).expect("zstd compression of an in-memory buffer")
}

/// Compress `data` with `reference` as a prefix. `None` when the pair is
/// larger than the patch window allows.
pub fn compress_patch(data: &[u8], reference: &[u8]) -> Option<Vec<u8>> {
    let total = data.len() + reference.len();
    if total > (1usize << MAX_WINDOW_LOG) {
        return None;
    }
    let mut cctx = CCtx::create();
    let wlog = window_log(total);
    cctx.set_parameter(CParameter::CompressionLevel(LEVEL))
        .ok()?;
    cctx.set_parameter(CParameter::WindowLog(wlog)).ok()?;
    if total > (1 << 20) {
        cctx.set_parameter(CParameter::EnableLongDistanceMatching(true))
            .ok()?;
    }
    cctx.ref_prefix(reference).ok()?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data).ok()?;
    Some(out)
}

/// Pick the smallest encoding for `data`: raw, zstd, or a patch against
/// `reference` when one is given.
pub fn encode(data: &[u8], reference: Option<(BlobRef, &[u8])>) -> (Encoding, Vec<u8>) {
    let mut best = (Encoding::Raw, None::<Vec<u8>>, data.len());
    let full = compress(data);
    if full.len() < best.2 {
        best = (Encoding::Zstd, None, full.len());
    }
    let mut full = Some(full);
    if let Some((r, bytes)) = reference
        && let Some(patch) = compress_patch(data, bytes)
        && patch.len() < best.2
    {
        return (Encoding::ZstdPatch { reference: r }, patch);
    }
    match best.0 {
        Encoding::Raw => (Encoding::Raw, data.to_vec()),
        e => (e, full.take().unwrap_or_default()),
    }
}

/// Decode a blob. `raw_len` is the announced length of the content; it
/// bounds allocation and is checked. `max_len` is the receiver's limit.
pub fn decode(
    encoding: Encoding,
    data: &[u8],
    raw_len: u64,
    reference: Option<&[u8]>,
    max_len: u64,
) -> Result<Vec<u8>, CompressError> {
    if raw_len > max_len {
        return Err(CompressError::TooLarge(raw_len, max_len));
    }
    let out = match encoding {
        Encoding::Raw => data.to_vec(),
        Encoding::Zstd => {
            let mut out = Vec::with_capacity(raw_len as usize);
            let mut dctx = DCtx::create();
            dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
                .map_err(zerr)?;
            dctx.decompress(&mut out, data).map_err(zerr)?;
            out
        }
        Encoding::ZstdPatch { .. } => {
            let reference = reference.ok_or(CompressError::MissingReference)?;
            let mut out = Vec::with_capacity(raw_len as usize);
            let mut dctx = DCtx::create();
            dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
                .map_err(zerr)?;
            dctx.ref_prefix(reference).map_err(zerr)?;
            dctx.decompress(&mut out, data).map_err(zerr)?;
            out
        }
    };
    if out.len() as u64 != raw_len {
        return Err(CompressError::Length {
            got: out.len() as u64,
            want: raw_len,
        });
    }
    Ok(out)
}

/// Decode a blob from `input` into `out` without holding it whole: the
/// receiver's path for blobs that arrive in chunks (spooled to disk), so a
/// large file costs a zstd window of memory, not its size. `raw_len` is the
/// announced length of the content: nothing beyond it is written, and a
/// shorter result is an error. A patch's `reference` is held in memory; it
/// is bounded by the patch window ([`MAX_WINDOW_LOG`]).
pub fn decode_stream(
    encoding: Encoding,
    input: impl std::io::Read,
    raw_len: u64,
    reference: Option<&[u8]>,
    max_len: u64,
    out: &mut impl std::io::Write,
) -> Result<(), CompressError> {
    use std::io::Read;
    if raw_len > max_len {
        return Err(CompressError::TooLarge(raw_len, max_len));
    }
    let zio = |e: std::io::Error| CompressError::Zstd(e.to_string());
    let source: Box<dyn Read + '_> = match encoding {
        Encoding::Raw => Box::new(input),
        Encoding::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(input).map_err(zio)?;
            d.window_log_max(MAX_WINDOW_LOG).map_err(zio)?;
            Box::new(d)
        }
        Encoding::ZstdPatch { .. } => {
            let reference = reference.ok_or(CompressError::MissingReference)?;
            let reader = std::io::BufReader::new(input);
            let mut d =
                zstd::stream::read::Decoder::with_ref_prefix(reader, reference).map_err(zio)?;
            d.window_log_max(MAX_WINDOW_LOG).map_err(zio)?;
            Box::new(d)
        }
    };
    // One byte past the announced length is enough to know it lies.
    let mut source = source.take(raw_len + 1);
    let mut buf = vec![0u8; 256 << 10];
    let mut copied = 0u64;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(zio(e)),
        };
        out.write_all(&buf[..n]).map_err(CompressError::Output)?;
        copied += n as u64;
    }
    out.flush().map_err(CompressError::Output)?;
    if copied != raw_len {
        return Err(CompressError::Length {
            got: copied,
            want: raw_len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        let mut x: u64 = 0x9e3779b97f4a7c15;
        while v.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(format!("line {} value {:x}\n", v.len(), x).as_bytes());
        }
        v.truncate(n);
        v
    }

    #[test]
    fn patch_of_one_line_edit_in_1mb_is_tiny() {
        let old = text(1 << 20);
        let mut new = old.clone();
        let at = 500_000;
        new.splice(at..at, b"// one more line\n".iter().copied());
        let r = BlobRef::Overlay(ContentId::of(&old));
        let (enc, bytes) = encode(&new, Some((r, &old)));
        assert_eq!(enc, Encoding::ZstdPatch { reference: r });
        assert!(bytes.len() < 512, "patch is {} bytes", bytes.len());
        let back = decode(enc, &bytes, new.len() as u64, Some(&old), 1 << 30).unwrap();
        assert_eq!(back, new);
    }

    #[test]
    fn full_compression_round_trip_and_raw_for_random() {
        let t = text(10_000);
        let (enc, bytes) = encode(&t, None);
        assert_eq!(enc, Encoding::Zstd);
        assert!(bytes.len() < t.len());
        assert_eq!(
            decode(enc, &bytes, t.len() as u64, None, 1 << 20).unwrap(),
            t
        );

        let random: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let (enc, bytes) = encode(&random, None);
        if enc == Encoding::Raw {
            assert_eq!(bytes, random);
        }
        assert_eq!(
            decode(enc, &bytes, random.len() as u64, None, 1 << 20).unwrap(),
            random
        );
    }

    /// The streaming decoder gives what the buffered one gives, for every
    /// encoding, and refuses the same lies.
    #[test]
    fn decode_stream_matches_decode() {
        let old = text(300_000);
        let mut new = old.clone();
        new.splice(1000..1000, b"inserted\n".iter().copied());
        let r = BlobRef::Overlay(ContentId::of(&old));
        let cases = [
            (Encoding::Raw, new.clone()),
            (Encoding::Zstd, compress(&new)),
            (
                Encoding::ZstdPatch { reference: r },
                compress_patch(&new, &old).unwrap(),
            ),
        ];
        for (enc, bytes) in cases {
            let mut out = Vec::new();
            decode_stream(
                enc,
                &bytes[..],
                new.len() as u64,
                Some(&old),
                1 << 30,
                &mut out,
            )
            .unwrap();
            assert_eq!(out, new, "{enc:?}");
            for lie in [new.len() as u64 - 1, new.len() as u64 + 1] {
                let got = decode_stream(enc, &bytes[..], lie, Some(&old), 1 << 30, &mut Vec::new());
                assert!(
                    matches!(got, Err(CompressError::Length { .. })),
                    "{enc:?} {lie}: {got:?}"
                );
            }
        }
        // Concatenated frames (a blob compressed piece by piece) decode too.
        let mut two = compress(&old[..1000]);
        two.extend(compress(&old[1000..]));
        let mut out = Vec::new();
        decode_stream(
            Encoding::Zstd,
            &two[..],
            old.len() as u64,
            None,
            1 << 30,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, old);
        assert!(
            decode_stream(
                Encoding::Zstd,
                &b"garbage"[..],
                7,
                None,
                1 << 20,
                &mut Vec::new()
            )
            .is_err()
        );
    }

    #[test]
    fn decode_rejects_lies_and_limits() {
        let t = text(1000);
        let c = compress(&t);
        // Announcing fewer bytes than the content has fails (buffer bound),
        // announcing more fails the length check.
        assert!(decode(Encoding::Zstd, &c, 999, None, 1 << 20).is_err());
        assert!(matches!(
            decode(Encoding::Zstd, &c, 1001, None, 1 << 20),
            Err(CompressError::Length {
                got: 1000,
                want: 1001
            })
        ));
        assert!(matches!(
            decode(Encoding::Raw, &t, 1001, None, 1 << 20),
            Err(CompressError::Length { .. })
        ));
        assert!(matches!(
            decode(Encoding::Zstd, &c, 1000, None, 10),
            Err(CompressError::TooLarge(..))
        ));
        assert!(decode(Encoding::Zstd, b"garbage", 7, None, 1 << 20).is_err());
        let r = BlobRef::Base(GitOid([0; 20]));
        assert!(matches!(
            decode(
                Encoding::ZstdPatch { reference: r },
                &c,
                1000,
                None,
                1 << 20
            ),
            Err(CompressError::MissingReference)
        ));
    }
}
