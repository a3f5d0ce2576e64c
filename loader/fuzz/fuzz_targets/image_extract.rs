//! The kmod-image layer extractor on arbitrary bytes (plain, gzip or zstd tar), applied twice as two layers
//! into a sandbox with small limits: errors, never panics, and never writes outside the target directory.
#![no_main]

use std::path::Path;

use kmm_loader::image::extract::{Extractor, Limits, Mapping};
use libfuzzer_sys::fuzz_target;

fn outside(sandbox: &Path) -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(sandbox) {
        for e in rd.flatten() {
            if e.file_name() != "target" {
                v.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let Ok(sandbox) = tempfile::tempdir() else { return };
    let root = sandbox.path().join("target");
    if std::fs::create_dir(&root).is_err() {
        return;
    }
    let limits = Limits {
        max_file_size: 1 << 20,
        max_total_size: 4 << 20,
        max_files: 256,
        max_layer_stream: 16 << 20,
    };
    let mappings = vec![
        Mapping::new("/opt/lib/modules/6.1", "lib/modules/6.1"),
        Mapping::new("/firmware", "firmware"),
        Mapping::new("/a", "a"),
    ];
    let mut x = Extractor::new(&root, mappings, limits);
    // Split the input into two layers, so whiteouts meet content from a lower layer.
    let cut = data.len() / 2;
    let mut ok = x.apply_layer("lower", &data[..cut]).is_ok();
    ok &= x.apply_layer("upper", &data[cut..]).is_ok();
    let _ = x.apply_layer("whole", data);
    let _ = ok;
    let _ = x.finish();
    let escaped = outside(sandbox.path());
    assert!(escaped.is_empty(), "written outside the target: {escaped:?}");
    let _ = kmm_loader::image::manifest::Document::parse(data, None);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<kmm_loader::image::reference::ImageRef>();
    }
});
