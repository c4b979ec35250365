//! The management-token check must refuse any garbage with `Unauthorized`, never
//! panic or accept.
#![no_main]

use keyledger::http::auth::TokenVerifier;
use keyledger::Error;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let verifier = TokenVerifier::hs256(b"fuzz-secret-0123456789abcdef0123456789");
    match verifier.verify(token) {
        Err(Error::Unauthorized(_)) => {}
        Ok(claims) => panic!("accepted a fuzzed token: {claims:?}"),
        Err(other) => panic!("unexpected error kind: {other:?}"),
    }
});
