//! Blob decoding as the receiver does it for every blob a laptop sends
//! (raw, zstd, zstd patch against a reference it holds): it must fail
//! cleanly or return exactly the announced number of bytes. The input also
//! round-trips through the laptop's encoder.
#![no_main]

use devd_protocol::ContentId;
use devd_protocol::compress::{self, BlobRef, Encoding};
use libfuzzer_sys::fuzz_target;

/// The receiver's blob limit is 1 GiB; a small one keeps the fuzzer fast
/// and is within reach of the announced length (two bytes of input).
const MAX_LEN: u64 = 1 << 15;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (head, rest) = data.split_at(4);
    // Byte 0: encoding (and bit 2: whether a reference is held); byte 1:
    // where the reference ends; bytes 2-3: the announced length.
    let split = usize::from(head[1]).min(rest.len());
    let (reference, body) = rest.split_at(split);
    let raw_len = u64::from(u16::from_le_bytes([head[2], head[3]]));
    let encoding = match head[0] % 3 {
        0 => Encoding::Raw,
        1 => Encoding::Zstd,
        _ => Encoding::ZstdPatch {
            reference: BlobRef::Overlay(ContentId([0; 32])),
        },
    };
    let with_ref = head[0] & 4 != 0;
    let reference = with_ref.then_some(reference);
    if let Ok(out) = compress::decode(encoding, body, raw_len, reference, MAX_LEN) {
        assert_eq!(out.len() as u64, raw_len);
        assert!(raw_len <= MAX_LEN);
    }

    // The laptop's side: whatever it picks decodes back to the content.
    let r = reference.map(|r| (BlobRef::Overlay(ContentId([1; 32])), r));
    let (enc, bytes) = compress::encode(body, r);
    let back = compress::decode(enc, &bytes, body.len() as u64, reference, MAX_LEN)
        .expect("an encoded blob decodes");
    assert_eq!(back, body);
});
