//! The frame decoder both ends read the connection with, fed the input in
//! chunks whose sizes the input chooses (as a network would split it), and
//! the messages of either direction decoded from what it yields. A decoded
//! message must encode back to a frame that decodes to the same message.
#![no_main]

use devd_protocol::{ClientMsg, FrameDecoder, ServerMsg, encode_frame};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};
use std::fmt::Debug;

/// The receiver's frame limit is larger; a small one reaches the limit
/// check with small inputs.
const MAX_FRAME: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    if split & 1 == 0 {
        decode_all::<ClientMsg>(rest, split);
    } else {
        decode_all::<ServerMsg>(rest, split);
    }
});

fn decode_all<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8], split: u8) {
    let chunk = usize::from(split >> 1).max(1);
    let mut dec = FrameDecoder::new(MAX_FRAME);
    let mut fed = 0;
    for piece in bytes.chunks(chunk) {
        dec.push(piece);
        fed += piece.len();
        loop {
            match dec.decode::<T>() {
                Ok(Some(msg)) => roundtrip(&msg),
                Ok(None) => break,
                // Both ends close the stream on a bad frame.
                Err(_) => return,
            }
        }
        assert!(
            dec.buffered() <= fed,
            "the decoder holds no more than it was given"
        );
    }
}

fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + Debug>(msg: &T) {
    let frame = encode_frame(msg);
    let mut dec = FrameDecoder::new(usize::MAX);
    dec.push(&frame);
    let again: T = dec
        .decode()
        .expect("an encoded message decodes")
        .expect("an encoded frame is whole");
    assert_eq!(&again, msg);
    assert_eq!(dec.buffered(), 0);
}
