//! What both fuzz targets share: the handlers' context, with one Module that loads a kmod and advertises a device.

use std::sync::{Arc, OnceLock};

use kmm_webhook::admit::Context;
use kmm_webhook::catalog::StaticCatalog;
use kmm_webhook::mutate::MutateConfig;

pub fn context() -> &'static Context {
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
