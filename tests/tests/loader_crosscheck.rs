//! kmm-loader's library cross-checked against the real tools on Debian's whole module tree:
//! - `modinfo` output equals Debian kmod's `modinfo`, byte for byte, on every module of the kernel package;
//! - every Debian module verifies against the certificate extracted from Debian's own `vmlinuz`;
//! - signatures are byte-identical with Debian's `sign-file` (linux-kbuild) on 200+ modules with one fresh key;
//! - load plans (dependencies and softdeps) equal kmod's `modprobe --show-depends`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kmm_e2e::debian::Kernel;
use kmm_loader::keys::{self, TrustStore};
use kmm_loader::modinfo;
use kmm_loader::sign::Signer;
use kmm_loader::signature::{self, HashAlgo, SignatureError};

fn all_modules(kernel: &Kernel) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.to_string_lossy().contains(".ko") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&kernel.modules_dir(), &mut out);
    out.sort();
    assert!(
        out.len() > 4000,
        "expected Debian's 4000+ modules, found {}",
        out.len()
    );
    out
}

fn openssl_key(dir: &Path, newkey: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{}.priv", newkey.replace(':', "-")));
    let cert = dir.join(format!("{}.der", newkey.replace(':', "-")));
    kmm_e2e::cmd::run(
        Command::new("openssl")
            .args([
                "req", "-x509", "-new", "-nodes", "-utf8", "-sha256", "-days", "36500", "-batch",
                "-outform", "DER",
            ])
            .args(["-newkey", newkey, "-subj", "/CN=kmm-rs crosscheck key"])
            .arg("-out")
            .arg(&cert)
            .arg("-keyout")
            .arg(&key),
    )
    .unwrap();
    (key, cert)
}

#[test]
fn modinfo_matches_debian_kmod_on_every_module() {
    let kernel = Kernel::get().unwrap();
    let modinfo_bin = kmm_e2e::cmd::require("modinfo").unwrap();
    let modules = all_modules(kernel);
    let mut compared = 0;
    for chunk in modules.chunks(500) {
        let reference = kmm_e2e::cmd::run(Command::new(&modinfo_bin).args(chunk))
            .unwrap()
            .stdout;
        let mut ours = Vec::new();
        for m in chunk {
            let (_, info) = modinfo::read_modinfo(m).unwrap();
            ours.extend(info.render_text(&modinfo::display_filename(m)));
        }
        if ours != reference {
            // Name the first module that differs.
            for m in chunk {
                let r = kmm_e2e::cmd::run(Command::new(&modinfo_bin).arg(m))
                    .unwrap()
                    .stdout;
                let (_, info) = modinfo::read_modinfo(m).unwrap();
                let o = info.render_text(&modinfo::display_filename(m));
                assert_eq!(
                    String::from_utf8_lossy(&o),
                    String::from_utf8_lossy(&r),
                    "modinfo differs for {}",
                    m.display()
                );
            }
        }
        compared += chunk.len();
    }
    assert_eq!(compared, modules.len());
}

#[test]
fn verify_accepts_every_debian_module_with_the_certificate_from_vmlinuz() {
    let kernel = Kernel::get().unwrap();
    let image = std::fs::read(kernel.vmlinuz()).unwrap();
    let certs = keys::extract_kernel_certificates(&image, keys::KERNEL_KEY_CN);
    assert_eq!(certs.len(), 1, "one build-time key expected in vmlinuz");
    let store = TrustStore::new(certs.clone());
    let modules = all_modules(kernel);
    let mut failures = Vec::new();
    for m in &modules {
        let file = modinfo::read_module(m).unwrap();
        match signature::verify(&file.image, &store) {
            Ok(v) => assert_eq!(
                (v.signer.as_str(), v.hash),
                (keys::KERNEL_KEY_CN, HashAlgo::Sha256)
            ),
            Err(e) => failures.push(format!("{}: {e}", m.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        modules.len(),
        failures.join("\n")
    );

    // The certificate's serial is the sig_key kmod prints for Debian's modules.
    let (_, info) = modinfo::read_modinfo(&modules[0]).unwrap();
    let serial = certs[0].cert.tbs_certificate.serial_number.as_bytes();
    assert_eq!(
        info.get("sig_key").unwrap(),
        signature::hex_colon(serial.strip_prefix(&[0]).unwrap_or(serial))
    );

    // The failure reasons on real modules: altered, unsigned, unknown key.
    let mut altered = modinfo::read_module(&modules[0]).unwrap().image;
    altered[0x100] ^= 0xff;
    assert_eq!(
        signature::verify(&altered, &store),
        Err(SignatureError::ContentAltered)
    );
    let unsigned = signature::strip(&altered).to_vec();
    assert_eq!(
        signature::verify(&unsigned, &store),
        Err(SignatureError::Unsigned)
    );
    let tmp = tempfile::tempdir().unwrap();
    let (_, cert) = openssl_key(tmp.path(), "rsa:2048");
    let other = TrustStore::load(&[cert]).unwrap();
    let original = modinfo::read_module(&modules[0]).unwrap().image;
    match signature::verify(&original, &other) {
        Err(SignatureError::UnknownKey { signer, key_id }) => {
            assert_eq!(signer, keys::KERNEL_KEY_CN);
            assert_eq!(key_id, info.get("sig_key").unwrap());
        }
        other => panic!("expected an unknown key, got {other:?}"),
    }
}

/// Strips Debian's signature from `n` modules spread over the tree, signs each with `sign-file` and with
/// kmm-loader (same key, same hash) and compares the bytes.
fn compare_with_sign_file(kernel: &Kernel, newkey: &str, hash: HashAlgo, n: usize) -> usize {
    let sign_file = kernel.sign_file();
    assert!(sign_file.is_file(), "{} missing", sign_file.display());
    let tmp = tempfile::tempdir().unwrap();
    let (key, cert) = openssl_key(tmp.path(), newkey);
    let signer = Signer {
        key: keys::load_private_key(&key, None).unwrap(),
        cert: keys::load_certificates(&cert).unwrap().remove(0),
        hash,
    };
    let modules = all_modules(kernel);
    let step = (modules.len() / n).max(1);
    let mut compared = 0;
    for (i, m) in modules.iter().step_by(step).take(n).enumerate() {
        let plain = signature::strip(&std::fs::read(m).unwrap()).to_vec();
        let work = tmp.path().join(format!("m{i}.ko"));
        std::fs::write(&work, &plain).unwrap();
        kmm_e2e::cmd::run(
            Command::new(&sign_file)
                .arg(hash.name())
                .arg(&key)
                .arg(&cert)
                .arg(&work),
        )
        .unwrap();
        let theirs = std::fs::read(&work).unwrap();
        let ours = signer.sign_image(&plain).unwrap();
        assert!(
            ours == theirs,
            "signature of {} differs from sign-file's ({newkey}, {})",
            m.display(),
            hash.name()
        );
        // Re-signing Debian's signed module replaces its signature: same bytes again.
        assert!(signer.sign_image(&std::fs::read(m).unwrap()).unwrap() == theirs);
        compared += 1;
    }
    compared
}

#[test]
fn sign_is_byte_identical_with_sign_file() {
    let kernel = Kernel::get().unwrap();
    assert_eq!(
        compare_with_sign_file(kernel, "rsa:2048", HashAlgo::Sha256, 200),
        200
    );
    assert_eq!(
        compare_with_sign_file(kernel, "rsa:4096", HashAlgo::Sha512, 10),
        10
    );
    assert_eq!(
        compare_with_sign_file(kernel, "rsa:3072", HashAlgo::Sha384, 10),
        10
    );
}

#[test]
fn compressed_modules_are_signed_inside_and_recompressed_with_the_same_codec() {
    use kmm_loader::compress::{Compression, compress, decompress};
    let kernel = Kernel::get().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (key, cert) = openssl_key(tmp.path(), "rsa:2048");
    let signer = Signer {
        key: keys::load_private_key(&key, None).unwrap(),
        cert: keys::load_certificates(&cert).unwrap().remove(0),
        hash: HashAlgo::Sha256,
    };
    let module = all_modules(kernel)
        .into_iter()
        .find(|m| m.ends_with("e1000e.ko"))
        .unwrap();
    let plain = signature::strip(&std::fs::read(&module).unwrap()).to_vec();
    let reference = tmp.path().join("ref.ko");
    std::fs::write(&reference, &plain).unwrap();
    kmm_e2e::cmd::run(
        Command::new(kernel.sign_file())
            .args(["sha256"])
            .arg(&key)
            .arg(&cert)
            .arg(&reference),
    )
    .unwrap();
    let reference = std::fs::read(&reference).unwrap();
    for codec in [Compression::Xz, Compression::Zstd, Compression::Gzip] {
        let path = tmp.path().join(format!("e1000e.ko{}", codec.suffix()));
        std::fs::write(
            &path,
            compress(codec, &std::fs::read(&module).unwrap()).unwrap(),
        )
        .unwrap();
        signer.sign_file(&path, &path).unwrap();
        let packed = std::fs::read(&path).unwrap();
        assert_eq!(Compression::detect(&packed, None), codec);
        assert!(decompress(codec, &packed).unwrap() == reference, "{codec}");
    }
    // Debian's own modinfo reads the recompressed xz module and sees our signer.
    let xz = tmp.path().join("e1000e.ko.xz");
    let out =
        kmm_e2e::cmd::stdout(Command::new(kmm_e2e::cmd::require("modinfo").unwrap()).arg(&xz))
            .unwrap();
    assert!(
        out.contains("signer:         kmm-rs crosscheck key"),
        "{out}"
    );
}

/// kmm-loader's probe list (dependencies and softdeps, the modules it would load, in order) against kmod's own:
/// `modprobe --show-depends --dry-run` prints the list and loads NOTHING. kmod needs depmod's index files, so it
/// runs on a hard-linked copy of Debian's tree after `depmod -b`, with an empty modprobe.d (`-C`), for every module
/// that declares a softdep and every 25th module. kmm-loader must give the same list, duplicates included, on that
/// copy (modules.dep, modules.softdep, modules.alias) and the same modules on Debian's tree as shipped (no index
/// files: `.modinfo` depends, softdep and alias).
#[test]
fn probe_lists_match_kmod_modprobe_show_depends() {
    use kmm_loader::modprobe::sysfs::module_name_from_path;
    use kmm_loader::modprobe::{Builtins, HostPaths, ModuleIndex, Probe, normalize, probe_list};

    let kernel = Kernel::get().unwrap();
    let rel = kernel.release();
    let depmod = kmm_e2e::cmd::require("depmod").unwrap();
    let modprobe = kmm_e2e::cmd::require("modprobe").unwrap();
    let scratch = tempfile::tempdir_in(kmm_e2e::cache::subdir("scratch").unwrap()).unwrap();
    let root = scratch.path();
    std::fs::create_dir_all(root.join("lib/modules")).unwrap();
    kmm_e2e::cmd::run(
        Command::new("cp")
            .arg("-al")
            .arg(kernel.modules_dir())
            .arg(root.join("lib/modules")),
    )
    .unwrap();
    kmm_e2e::cmd::run(Command::new(&depmod).arg("-b").arg(root).arg(&rel)).unwrap();
    let empty_conf = root.join("modprobe.d");
    std::fs::create_dir_all(&empty_conf).unwrap();

    let indexed = HostPaths::new(root);
    let softdeps =
        std::fs::read_to_string(indexed.lib_modules(&rel).join("modules.softdep")).unwrap();
    let mut targets: Vec<String> = softdeps
        .lines()
        .filter_map(|l| l.strip_prefix("softdep "))
        .filter_map(|l| l.split_whitespace().next())
        .map(normalize)
        .collect();
    assert!(
        targets.len() >= 20,
        "Debian declares softdeps in dozens of modules: {targets:?}"
    );
    targets.extend(
        all_modules(kernel)
            .iter()
            .step_by(25)
            .filter_map(|p| module_name_from_path(p)),
    );
    targets.sort();
    targets.dedup();

    let ours = |index: &mut ModuleIndex, builtins: &mut Builtins, m: &str| {
        probe_list(index, &[], builtins, m)
            .unwrap_or_else(|e| panic!("{m}: {e}"))
            .into_iter()
            .filter_map(|p| match p {
                Probe::Module { module, .. } | Probe::Builtin { module } => Some(module),
                Probe::Unresolved { .. } => None,
            })
            .collect::<Vec<String>>()
    };
    let shipped = HostPaths::new(kernel.image_root());
    let mut index_b = ModuleIndex::build(&[indexed.lib_modules(&rel)]).unwrap();
    let mut builtins_b = Builtins::load(&indexed, &rel);
    let mut index_a = ModuleIndex::build(&[shipped.lib_modules(&rel)]).unwrap();
    let mut builtins_a = Builtins::load(&shipped, &rel);
    let (mut with_softdeps, mut same_order_shipped) = (0, 0);
    for m in &targets {
        let out = kmm_e2e::cmd::stdout(
            Command::new(&modprobe)
                .args(["--show-depends", "--dry-run", "-C"])
                .arg(&empty_conf)
                .arg("-d")
                .arg(root)
                .args(["-S", &rel, m]),
        )
        .unwrap();
        let kmod: Vec<String> = out
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                match w.next()? {
                    "insmod" => module_name_from_path(Path::new(w.next()?)),
                    "builtin" => Some(normalize(w.next()?)),
                    _ => None,
                }
            })
            .collect();
        assert!(!kmod.is_empty(), "{m}: no output from modprobe:\n{out}");
        let b = ours(&mut index_b, &mut builtins_b, m);
        assert_eq!(b, kmod, "{m}: probe list with depmod's index files");
        let a = ours(&mut index_a, &mut builtins_a, m);
        let set = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v.dedup();
            v
        };
        assert_eq!(set(&a), set(&kmod), "{m}: modules to load, tree as shipped");
        assert_eq!(a.last(), kmod.last(), "{m}");
        same_order_shipped += usize::from(a == kmod);
        with_softdeps += usize::from(kmod.len() > index_b.load_order(m).unwrap().len());
    }
    eprintln!(
        "{} modules: kmod's probe list reproduced exactly with depmod's files; {} of them pull softdeps; \
         {same_order_shipped} in the same order from .modinfo alone",
        targets.len(),
        with_softdeps
    );
    assert!(with_softdeps >= 10, "{with_softdeps}");
}
