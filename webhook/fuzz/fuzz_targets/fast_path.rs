//! Differential fuzzing of the one-pass reader: whenever the fast path answers a body, the general path (serde
//! parse, then the handler) must give the same verdict. The fast path may decline anything; it may never differ.
#![no_main]

use std::sync::{Arc, OnceLock};

use kmm_webhook::admit::{Context, Endpoint, admit, fast};
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
    for endpoint in [Endpoint::Pod, Endpoint::Module] {
        if let Some((req, verdict)) = fast(endpoint, data, ctx) {
            let general = kmm_webhook::review::parse(data).expect("the general path parses what the fast path read");
            assert_eq!(general.uid, req.uid);
            assert_eq!(admit(endpoint, &general, ctx), verdict);
        }
    }
});
