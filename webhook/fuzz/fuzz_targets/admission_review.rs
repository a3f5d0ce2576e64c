//! Fuzzes the AdmissionReview parser and, for what parses, every admission handler: any byte string must yield an
//! `Ok` request or a `ParseError`, and any request a verdict whose patch (if any) serialises, without panicking.
#![no_main]

use std::sync::{Arc, OnceLock};

use kmm_webhook::admit::{Context, Endpoint, Outcome, handle};
use kmm_webhook::catalog::StaticCatalog;
use kmm_webhook::mutate::MutateConfig;
use libfuzzer_sys::fuzz_target;

fn context() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        let module: Option<kmm_api::Module> = serde_json::from_str(
            r#"{"apiVersion":"kmm.sigs.x-k8s.io/v1beta1","kind":"Module",
                "metadata":{"name":"simple","namespace":"team"},
                "spec":{"selector":{},"devices":{"resourceName":"example.com/gpu","slots":1},
                  "moduleLoader":{"container":{"modprobe":{"moduleName":"simple_kmod"},"version":"1",
                  "kernelMappings":[{"regexp":"^.+$","containerImage":"reg/kmod:1"}]}}}}"#,
        )
        .ok();
        Context {
            catalog: Arc::new(StaticCatalog::new(module)),
            mutate: MutateConfig::new("loader:1"),
            kube_version: None,
        }
    })
}

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
