//! Differential fuzzing of the one-pass reader: whenever the fast path answers a body, the general path (serde
//! parse, then the handler) must give the same verdict. The fast path may decline anything; it may never differ.
#![no_main]

use kmm_webhook::admit::{Endpoint, admit, fast};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::context;

fuzz_target!(|data: &[u8]| {
    let ctx = context();
    for endpoint in [Endpoint::Pod, Endpoint::Module] {
        if let Some((req, verdict)) = fast(endpoint, data, ctx) {
            let general = kmm_webhook::review::parse(data).expect("the general path parses what the fast path read");
            assert_eq!(general.uid, req.uid);
            assert_eq!(admit(endpoint, &general, ctx), verdict);
        }
    }
});
