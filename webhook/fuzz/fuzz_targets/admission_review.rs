//! Fuzzes the AdmissionReview parser and, for what parses, every admission handler: any byte string must yield an
//! `Ok` request or a `ParseError`, and any request a verdict whose patch (if any) serialises, without panicking.
#![no_main]

use kmm_webhook::admit::{Endpoint, Outcome, handle};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::context;

fuzz_target!(|data: &[u8]| {
    let ctx = context();
    for (endpoint, _, _) in Endpoint::ROUTES {
        match handle(endpoint, data, ctx) {
            Outcome::Review { uid, body, .. } => {
                assert!(!uid.is_empty());
                let body: serde_json::Value =
                    serde_json::from_slice(&body).expect("the response is JSON");
                assert_eq!(body["response"]["uid"].as_str(), Some(uid.as_str()));
            }
            Outcome::BadRequest(msg) => assert!(!msg.is_empty()),
        }
    }
});
