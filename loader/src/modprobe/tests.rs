//! Plans of loads and unloads on temporary module trees and fake `/sys` + `/proc` trees. Nothing is loaded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use super::*;
use crate::compress::{Compression, compress};
use crate::elf::build_elf64;
use crate::test_keys::TestKey;

const KVER: &str = "6.1.0-56-amd64";

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    image: PathBuf,
    host: HostPaths,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("host");
    let image = tmp.path().join("opt");
    std::fs::create_dir_all(root.join("sys/module")).unwrap();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::write(root.join("proc/modules"), "").unwrap();
    std::fs::create_dir_all(root.join("lib/modules").join(KVER)).unwrap();
    std::fs::write(
        root.join("lib/modules").join(KVER).join("modules.builtin"),
        "kernel/crypto/crc32c_generic.ko\n",
    )
    .unwrap();
    std::fs::create_dir_all(image.join("lib/modules").join(KVER)).unwrap();
    let host = HostPaths::new(&root);
    Fixture {
        _tmp: tmp,
        root,
        image,
        host,
    }
}

fn module_bytes(name: &str, depends: &str, vermagic: &str) -> Vec<u8> {
    let mi = format!(
        "license=GPL\0depends={depends}\0name={name}\0vermagic={vermagic} SMP preempt mod_unload modversions \0"
    );
    build_elf64(&[(".text", b"\xc3"), (".modinfo", mi.as_bytes())])
}

fn put(dir: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join("lib/modules").join(KVER).join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

fn mark_loaded(f: &Fixture, name: &str, refcnt: i64, holders: &[&str]) {
    let d = f.root.join("sys/module").join(name);
    std::fs::create_dir_all(d.join("holders")).unwrap();
    std::fs::write(d.join("initstate"), "live\n").unwrap();
    std::fs::write(d.join("refcnt"), format!("{refcnt}\n")).unwrap();
    for h in holders {
        std::fs::create_dir_all(d.join("holders").join(h)).unwrap();
    }
}

fn req(module: &str) -> LoadRequest {
    LoadRequest {
        dir: PathBuf::new(),
        module: module.into(),
        ..LoadRequest::default()
    }
}

fn names(actions: &[Action]) -> Vec<String> {
    actions.iter().map(ToString::to_string).collect()
}

#[test]
fn loads_dependencies_first_and_skips_loaded_and_builtin() {
    let f = fixture();
    put(
        &f.image,
        "extra/kmm_ci_a.ko",
        &module_bytes("kmm_ci_a", "kmm_ci_b,crc32c_generic", KVER),
    );
    put(
        &f.image,
        "extra/kmm_ci_b.ko.xz",
        &compress(Compression::Xz, &module_bytes("kmm_ci_b", "ptp", KVER)).unwrap(),
    );
    put(
        &f.root,
        "kernel/drivers/ptp/ptp.ko",
        &module_bytes("ptp", "", KVER),
    );
    put(
        &f.root,
        "kernel/crypto/crc32c_generic.ko",
        &module_bytes("crc32c_generic", "", KVER),
    );
    mark_loaded(&f, "ptp", 0, &[]);
    let mut r = req("kmm-ci-a");
    r.dir = f.image.clone();
    r.params = vec!["debug=1".into(), "name=two words".into()];
    let actions = plan_load(&f.host, &r, KVER).unwrap();
    let a = f
        .image
        .join("lib/modules")
        .join(KVER)
        .join("extra/kmm_ci_a.ko");
    let b = f
        .image
        .join("lib/modules")
        .join(KVER)
        .join("extra/kmm_ci_b.ko.xz");
    assert_eq!(
        names(&actions),
        vec![
            "skip ptp: already loaded".to_string(),
            format!("load kmm_ci_b ({})", b.display()),
            "skip crc32c_generic: built into the kernel".to_string(),
            format!("load kmm_ci_a ({}) debug=1 name=\"two words\"", a.display()),
        ]
    );
    // The compressed module is loaded from its decompressed bytes, the plain one from its file.
    assert!(
        matches!(&actions[1], Action::LoadImage { image, params, .. } if image.starts_with(b"\x7fELF") && params.is_empty())
    );
    assert!(matches!(&actions[3], Action::LoadFile { .. }));
}

#[test]
fn vermagic_mismatch_is_refused_before_the_syscall() {
    let f = fixture();
    put(&f.image, "m.ko", &module_bytes("m", "", "6.1.0-99-amd64"));
    let mut r = req("m");
    r.dir = f.image.clone();
    let err = plan_load(&f.host, &r, KVER).unwrap_err();
    assert_eq!(
        err.to_string(),
        "refusing to load m: vermagic '6.1.0-99-amd64 SMP preempt mod_unload modversions' does not match the running kernel 6.1.0-56-amd64"
    );
    // An explicit --kernel-version picks the tree, but the check is still against the running kernel.
    r.kernel_version = Some("6.1.0-99-amd64".into());
    assert!(matches!(
        plan_load(&f.host, &r, KVER),
        Err(ModprobeError::Resolve(_))
    ));
}

#[test]
fn require_signature_refuses_unsigned_tampered_and_foreign_modules() {
    let f = fixture();
    let key = TestKey::rsa(2048);
    let other = TestKey::rsa(2048);
    let signed = key
        .signer()
        .sign_image(&module_bytes("good", "", KVER))
        .unwrap();
    put(&f.image, "good.ko", &signed);
    put(&f.image, "unsigned.ko", &module_bytes("unsigned", "", KVER));
    let mut tampered = signed.clone();
    tampered[0x41] ^= 1;
    put(&f.image, "tampered.ko", &tampered);
    put(
        &f.image,
        "foreign.ko.zst",
        &compress(
            Compression::Zstd,
            &other
                .signer()
                .sign_image(&module_bytes("foreign", "", KVER))
                .unwrap(),
        )
        .unwrap(),
    );
    let plan = |m: &str| {
        let mut r = req(m);
        r.dir = f.image.clone();
        r.require_signature = vec![key.cert_path.clone()];
        plan_load(&f.host, &r, KVER)
    };
    let ok = plan("good").unwrap();
    assert!(matches!(&ok[0], Action::LoadImage { image, .. } if *image == signed));
    for (m, want) in [
        ("unsigned", "unsigned: no module signature appended"),
        ("tampered", "content altered"),
        ("foreign", "signed by an unknown key: signer 'kmm-test"),
    ] {
        let err = plan(m).unwrap_err().to_string();
        assert!(err.starts_with(&format!("refusing to load {m} (")), "{err}");
        assert!(err.contains(want), "{m}: {err}");
    }
}

#[test]
fn in_tree_removal_unloads_first_or_refuses_when_in_use() {
    let f = fixture();
    put(
        &f.image,
        "extra/e1000e.ko",
        &module_bytes("e1000e", "", KVER),
    );
    mark_loaded(&f, "e1000e", 0, &[]);
    mark_loaded(&f, "busy", 1, &["user"]);
    let mut r = req("e1000e");
    r.dir = f.image.clone();
    r.remove_in_tree = vec!["e1000e".into(), "absent".into()];
    let actions = plan_load(&f.host, &r, KVER).unwrap();
    let path = f
        .image
        .join("lib/modules")
        .join(KVER)
        .join("extra/e1000e.ko");
    assert_eq!(
        names(&actions),
        vec![
            "unload e1000e".to_string(),
            "skip absent: in-tree module not loaded".into(),
            format!("load e1000e ({})", path.display())
        ]
    );
    r.remove_in_tree = vec!["busy".into()];
    let err = plan_load(&f.host, &r, KVER).unwrap_err().to_string();
    assert_eq!(
        err,
        "refusing to unload busy: it is in use (refcount 1, holders [user])"
    );
}

#[test]
fn firmware_is_copied_and_the_path_set_only_when_different() {
    let f = fixture();
    put(&f.image, "m.ko", &module_bytes("m", "", KVER));
    let fw_param = f.root.join("sys/module/firmware_class/parameters");
    std::fs::create_dir_all(&fw_param).unwrap();
    std::fs::write(fw_param.join("path"), "\n").unwrap();
    let mut r = req("m");
    r.dir = f.image.clone();
    r.firmware = Some((f.image.join("firmware"), PathBuf::from("/var/lib/firmware")));
    let actions = plan_load(&f.host, &r, KVER).unwrap();
    assert_eq!(
        actions[0],
        Action::CopyFirmware {
            from: f.image.join("firmware"),
            to: f.root.join("var/lib/firmware")
        }
    );
    assert_eq!(
        actions[1],
        Action::SetFirmwarePath {
            file: fw_param.join("path"),
            value: "/var/lib/firmware".into()
        }
    );
    std::fs::write(fw_param.join("path"), "/var/lib/firmware\n").unwrap();
    let actions = plan_load(&f.host, &r, KVER).unwrap();
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::SetFirmwarePath { .. }))
    );
    // The copy itself (no syscall involved).
    std::fs::create_dir_all(f.image.join("firmware/vendor")).unwrap();
    std::fs::write(f.image.join("firmware/vendor/fw.bin"), b"fw").unwrap();
    let copy: Vec<Action> = actions
        .into_iter()
        .filter(|a| matches!(a, Action::CopyFirmware { .. }))
        .collect();
    execute(copy, KVER).unwrap();
    assert_eq!(
        std::fs::read(f.root.join("var/lib/firmware/vendor/fw.bin")).unwrap(),
        b"fw"
    );
}

#[test]
fn order_loads_softdeps_in_reverse_before_the_first() {
    let f = fixture();
    for m in ["a", "b", "c"] {
        put(&f.image, &format!("{m}.ko"), &module_bytes(m, "", KVER));
    }
    let mut r = req("a");
    r.dir = f.image.clone();
    r.order = vec!["a".into(), "b".into(), "c".into()];
    let loads: Vec<String> = plan_load(&f.host, &r, KVER)
        .unwrap()
        .into_iter()
        .filter_map(|a| match a {
            Action::LoadFile { module, .. } => Some(module),
            _ => None,
        })
        .collect();
    assert_eq!(loads, vec!["c", "b", "a"]);
}

#[test]
fn unload_goes_in_reverse_dependency_order_and_never_forces() {
    let f = fixture();
    put(&f.image, "top.ko", &module_bytes("top", "mid", KVER));
    put(&f.image, "mid.ko", &module_bytes("mid", "base", KVER));
    put(&f.image, "base.ko", &module_bytes("base", "", KVER));
    mark_loaded(&f, "top", 0, &[]);
    mark_loaded(&f, "mid", 1, &["top"]);
    mark_loaded(&f, "base", 2, &["mid", "other"]);
    let actions = plan_unload(&f.host, Some(&f.image), KVER, &[], "top").unwrap();
    assert_eq!(
        names(&actions),
        vec![
            "unload top",
            "unload mid",
            "skip base: still in use (refcount 2, holders [other])"
        ]
    );
    // A target in use is an error, not a forced removal.
    let err = plan_unload(&f.host, Some(&f.image), KVER, &[], "mid")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "refusing to unload mid: it is in use (refcount 1, holders [top])"
    );
    // Not loaded: nothing to do (idempotent).
    std::fs::remove_dir_all(f.root.join("sys/module/top")).unwrap();
    std::fs::remove_dir_all(f.root.join("sys/module/mid")).unwrap();
    std::fs::remove_dir_all(f.root.join("sys/module/base")).unwrap();
    assert_eq!(
        names(&plan_unload(&f.host, Some(&f.image), KVER, &[], "top").unwrap()),
        vec!["skip top: not loaded"]
    );
}

#[test]
fn wait_sees_the_module_and_names_it_on_timeout() {
    let f = fixture();
    let err = wait(&f.host, "kmm-ci", None, Duration::from_millis(150))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "timed out after 150ms waiting for module kmm-ci");
    mark_loaded(&f, "kmm_ci", 0, &[]);
    std::fs::write(f.root.join("sys/module/kmm_ci/version"), "1.0\n").unwrap();
    wait(&f.host, "kmm-ci", None, Duration::from_millis(150)).unwrap();
    wait(&f.host, "kmm-ci", Some("1.0"), Duration::from_millis(150)).unwrap();
    let err = wait(&f.host, "kmm-ci", Some("2.0"), Duration::from_millis(100))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "timed out after 100ms waiting for module kmm-ci version 2.0"
    );
}

#[test]
fn kernel_errors_are_translated() {
    use rustix::io::Errno;
    assert_eq!(explain_load_error(Errno::EXIST, KVER), None);
    assert!(
        explain_load_error(Errno::KEYREJECTED, KVER)
            .unwrap()
            .contains("enroll the signing certificate in the MOK list")
    );
    assert!(
        explain_load_error(Errno::NOKEY, KVER)
            .unwrap()
            .contains("MOK")
    );
    assert_eq!(
        explain_load_error(Errno::NOEXEC, KVER).unwrap(),
        format!("module format or vermagic does not match the running kernel {KVER}")
    );
    assert!(
        explain_load_error(Errno::PERM, KVER)
            .unwrap()
            .contains("CAP_SYS_MODULE")
    );
    assert_eq!(explain_unload_error(Errno::NOENT), None);
    assert_eq!(
        explain_unload_error(Errno::WOULDBLOCK).unwrap(),
        "the module is in use"
    );
}

#[test]
fn params_are_quoted_for_the_kernel() {
    assert_eq!(
        build_params(&["a=1".into(), "b=x y".into(), "flag".into()]).unwrap(),
        "a=1 b=\"x y\" flag"
    );
    assert!(build_params(&["bad=\"x y\"".into()]).is_err());
}
