//! Every JSON command body must parse to a value or to a 400/422 error, never
//! panic, and never echo a long piece of the input (a raw key sent in the wrong
//! field must not come back in an error message).
#![no_main]

use keyledger::http::extract::parse_json;
use keyledger::http::keys::{CreateKeyRequest, DeactivateRequest, RotateRequest, UpdateKeyRequest};
use keyledger::http::verify::VerifyBody;
use keyledger::Error;
use libfuzzer_sys::fuzz_target;

fn check<T: serde::de::DeserializeOwned>(data: &[u8]) {
    match parse_json::<T>(data) {
        Ok(_) => {}
        Err(Error::MalformedRequest(m)) | Err(Error::Validation { message: m, .. }) => {
            assert!(m.len() < 2_000, "error message grows with the input");
        }
        Err(other) => panic!("unexpected error kind: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    check::<CreateKeyRequest>(data);
    check::<UpdateKeyRequest>(data);
    check::<VerifyBody>(data);
    check::<DeactivateRequest>(data);
    check::<RotateRequest>(data);
});
