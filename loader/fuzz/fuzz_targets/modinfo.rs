//! The ELF section reader and the modinfo parser on arbitrary bytes: never panic, and render what they parse.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kmm_loader::elf::find_section(data, b".modinfo");
    if let Ok(info) = kmm_loader::modinfo::parse(data) {
        let _ = info.render_text("fuzz.ko");
        let _ = info.to_json("fuzz.ko");
        let _ = info.depends();
        let _ = info.params();
    }
    // Compressed input goes through the same path as `kmm-loader modinfo`.
    let codec = kmm_loader::compress::Compression::detect(data, None);
    if let Ok(image) = kmm_loader::compress::decompress(codec, data) {
        let _ = kmm_loader::modinfo::parse(&image);
    }
});
