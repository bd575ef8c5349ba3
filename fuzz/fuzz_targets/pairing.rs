//! The pairing file a laptop reads (`pairing.toml`, copied from the
//! receiver or written by `devd workspace create`), and the one key of
//! `receiver.toml` the laptop reads to find the receiver's pairing Secret.
#![no_main]

use devd_sync::pairing::{Pairing, pairing_of, secret, secret_name_in_receiver_toml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = secret_name_in_receiver_toml(text);
    let Ok(p) = Pairing::parse(text) else {
        return;
    };
    // What is read is written back the same, and survives the Secret form
    // when it has every field.
    let again = Pairing::parse(&p.to_toml()).expect("a written pairing parses");
    assert_eq!(again, p);
    match pairing_of(&secret("devd-pairing", &p)) {
        Ok(back) => assert_eq!(back, p),
        Err(key) => assert!(
            [&p.address, &p.fingerprint, &p.workspace, &p.token]
                .iter()
                .any(|v| v.is_empty()),
            "{key} lost in the Secret form"
        ),
    }
});
