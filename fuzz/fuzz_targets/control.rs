//! The control socket's lines: the daemon decodes requests from whatever
//! connects to its socket, the CLI decodes the daemon's answers. A decoded
//! message encodes back to one line that decodes to the same message.
#![no_main]

use devd_protocol::control::{decode_request, decode_response, encode_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = decode_request(line) {
        let out = encode_line(&req);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let again = decode_request(std::str::from_utf8(&out).expect("JSON is UTF-8"));
        assert_eq!(again.expect("an encoded request decodes"), req);
    }
    if let Ok(resp) = decode_response(line) {
        let out = encode_line(&resp);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        // No equality check: JSON numbers may not survive as the same f64.
        decode_response(std::str::from_utf8(&out).expect("JSON is UTF-8"))
            .expect("an encoded response decodes");
    }
});
