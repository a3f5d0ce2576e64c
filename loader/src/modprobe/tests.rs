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
            "skip base: still in use (refcount 1, holders [other])"
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

fn module_with(name: &str, depends: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut mi = format!(
        "license=GPL\0depends={depends}\0name={name}\0vermagic={KVER} SMP preempt mod_unload modversions \0"
    );
    for (k, v) in extra {
        mi.push_str(&format!("{k}={v}\0"));
    }
    build_elf64(&[(".text", b"\xc3"), (".modinfo", mi.as_bytes())])
}

/// (module, required) of the load actions, and the skipped names with their reasons.
fn loads_and_skips(actions: &[Action]) -> (Vec<(String, bool)>, Vec<String>) {
    let mut loads = Vec::new();
    let mut skips = Vec::new();
    for a in actions {
        match a {
            Action::LoadFile {
                module, required, ..
            }
            | Action::LoadImage {
                module, required, ..
            } => loads.push((module.clone(), *required)),
            Action::Skip { module, reason } => skips.push(format!("{module}: {reason}")),
            _ => {}
        }
    }
    (loads, skips)
}

#[test]
fn softdeps_from_modinfo_load_around_the_module_like_kmod() {
    let f = fixture();
    // top depends on dep; dep has its own pre-softdep; top: pre p1 (which depends on p1dep) and a missing name,
    // post q. Extra MODULE_SOFTDEP values after the first are ignored, as modprobe does.
    put(
        &f.image,
        "top.ko",
        &module_with(
            "top",
            "dep",
            &[
                ("softdep", "pre: p1 kmm-missing post: q"),
                ("softdep", "pre: ignored"),
            ],
        ),
    );
    put(
        &f.image,
        "dep.ko",
        &module_with("dep", "", &[("softdep", "pre: dp")]),
    );
    put(&f.image, "dp.ko", &module_with("dp", "", &[]));
    put(&f.image, "p1.ko", &module_with("p1", "p1dep", &[]));
    put(&f.root, "kernel/p1dep.ko", &module_with("p1dep", "", &[]));
    put(&f.image, "q.ko", &module_with("q", "", &[]));
    put(&f.image, "ignored.ko", &module_with("ignored", "", &[]));
    let mut r = req("top");
    r.dir = f.image.clone();
    let actions = plan_load(&f.host, &r, KVER).unwrap();
    let (loads, skips) = loads_and_skips(&actions);
    assert_eq!(
        loads,
        [
            ("dp", false),
            ("dep", true),
            ("p1dep", false),
            ("p1", false),
            ("top", true),
            ("q", false)
        ]
        .map(|(m, r)| (m.to_string(), r))
    );
    assert_eq!(
        skips,
        ["kmm-missing: not found (softdep skipped, as modprobe does)"]
    );
    assert!(names(&actions).contains(&format!(
            "load q ({}) [softdep]",
            f.image.join("lib/modules").join(KVER).join("q.ko").display()
        )));

    // A softdep that cannot be loaded (built for another kernel) is skipped; the module still loads.
    put(&f.image, "q.ko", &module_bytes("q", "", "6.1.0-99-amd64"));
    let (loads, skips) = loads_and_skips(&plan_load(&f.host, &r, KVER).unwrap());
    assert!(!loads.iter().any(|(m, _)| m == "q"), "{loads:?}");
    assert!(
        skips
            .iter()
            .any(|s| s.starts_with("q: softdep not loaded: refusing to load q: vermagic")),
        "{skips:?}"
    );
    // The same problem in a real dependency is fatal.
    put(
        &f.image,
        "dep.ko",
        &module_bytes("dep", "", "6.1.0-99-amd64"),
    );
    assert!(matches!(
        plan_load(&f.host, &r, KVER),
        Err(ModprobeError::CheckVermagic { module, .. }) if module == "dep"
    ));
}

#[test]
fn softdeps_already_loaded_or_unverified_are_skipped_not_fatal() {
    let f = fixture();
    let key = TestKey::rsa(2048);
    let sign = |b: Vec<u8>| key.signer().sign_image(&b).unwrap();
    put(
        &f.image,
        "top.ko",
        &sign(module_with(
            "top",
            "",
            &[("softdep", "pre: loaded-one unsigned")],
        )),
    );
    put(
        &f.image,
        "loaded_one.ko",
        &sign(module_with("loaded_one", "", &[])),
    );
    put(&f.image, "unsigned.ko", &module_with("unsigned", "", &[]));
    mark_loaded(&f, "loaded_one", 0, &[]);
    let mut r = req("top");
    r.dir = f.image.clone();
    r.require_signature = vec![key.cert_path.clone()];
    let actions = plan_load(&f.host, &r, KVER).unwrap();
    let (loads, skips) = loads_and_skips(&actions);
    assert_eq!(loads, [("top".to_string(), true)]);
    assert_eq!(skips[0], "loaded_one: already loaded");
    assert!(
        skips[1].starts_with("unsigned: softdep not loaded: refusing to load unsigned (")
            && skips[1].contains("no module signature appended"),
        "{skips:?}"
    );
}

#[test]
fn modules_softdep_file_and_aliases_resolve_like_kmod() {
    let f = fixture();
    // The image tree has a modules.softdep (depmod's output): it wins over .modinfo, first matching line only.
    put(
        &f.image,
        "top.ko",
        &module_with("top", "", &[("softdep", "pre: from-modinfo")]),
    );
    put(
        &f.image,
        "from_modinfo.ko",
        &module_with("from_modinfo", "", &[]),
    );
    put(
        &f.image,
        "foo_generic.ko",
        &module_with(
            "foo_generic",
            "",
            &[("alias", "crypto-foo"), ("alias", "foo")],
        ),
    );
    put(
        &f.image,
        "foo_fast.ko",
        &module_with("foo_fast", "", &[("alias", "crypto-foo")]),
    );
    std::fs::write(
        f.image
            .join("lib/modules")
            .join(KVER)
            .join("modules.softdep"),
        "# Soft dependencies extracted from modules themselves.\n\
         softdep t*p pre: crypto-foo kmm-builtin-alias crc32c_generic post: platform:bar-baz\n\
         softdep top pre: from-modinfo\n",
    )
    .unwrap();
    // The host tree has a modules.alias; built-in aliases come from modules.builtin.modinfo.
    put(&f.root, "kernel/bar.ko", &module_with("bar", "", &[]));
    let host_tree = f.root.join("lib/modules").join(KVER);
    std::fs::write(
        host_tree.join("modules.alias"),
        "alias platform:bar-baz bar\n",
    )
    .unwrap();
    std::fs::write(
        host_tree.join("modules.builtin.modinfo"),
        b"sha256_generic.alias=kmm-builtin-alias\0sha256_generic.license=GPL\0",
    )
    .unwrap();
    let mut r = req("top");
    r.dir = f.image.clone();
    let actions = plan_load(&f.host, &r, KVER).unwrap();
    let (loads, skips) = loads_and_skips(&actions);
    assert_eq!(
        loads,
        [
            ("foo_fast", false),
            ("foo_generic", false),
            ("top", true),
            ("bar", false)
        ]
        .map(|(m, r)| (m.to_string(), r))
    );
    assert_eq!(
        skips,
        [
            "sha256_generic: built into the kernel",
            "crc32c_generic: built into the kernel"
        ]
    );
}

#[test]
fn order_lines_are_softdeps_and_a_module_own_softdep_wins() {
    let f = fixture();
    put(
        &f.image,
        "a.ko",
        &module_with("a", "", &[("softdep", "post: own")]),
    );
    for m in ["b", "c", "own"] {
        put(&f.image, &format!("{m}.ko"), &module_with(m, "", &[]));
    }
    let mut r = req("a");
    r.dir = f.image.clone();
    r.order = vec!["a".into(), "b".into(), "c".into()];
    // modprobe reads modules.softdep (here: a's .modinfo) before /etc/modprobe.d/softdep.conf.
    let (loads, _) = loads_and_skips(&plan_load(&f.host, &r, KVER).unwrap());
    assert_eq!(
        loads,
        [("a", true), ("own", false)].map(|(m, r)| (m.to_string(), r))
    );
    // b's order line still applies when b is loaded.
    r.module = "b".into();
    let (loads, _) = loads_and_skips(&plan_load(&f.host, &r, KVER).unwrap());
    assert_eq!(
        loads,
        [("c", false), ("b", true)].map(|(m, r)| (m.to_string(), r))
    );
}

#[test]
fn in_tree_removal_takes_unused_dependencies_in_reverse_order() {
    let f = fixture();
    // Host tree like Debian's: udf uses cdrom and crc-itu-t; a chain top -> mid -> base.
    put(
        &f.root,
        "kernel/fs/udf/udf.ko",
        &module_with("udf", "crc-itu-t,cdrom", &[]),
    );
    put(
        &f.root,
        "kernel/drivers/cdrom/cdrom.ko",
        &module_with("cdrom", "", &[]),
    );
    put(
        &f.root,
        "kernel/lib/crc-itu-t.ko",
        &module_with("crc_itu_t", "", &[]),
    );
    put(&f.root, "kernel/top.ko", &module_with("top", "mid", &[]));
    put(&f.root, "kernel/mid.ko", &module_with("mid", "base", &[]));
    put(&f.root, "kernel/base.ko", &module_with("base", "", &[]));
    put(&f.image, "extra/kmm_ci.ko", &module_with("kmm_ci", "", &[]));
    mark_loaded(&f, "udf", 0, &[]);
    mark_loaded(&f, "cdrom", 1, &["udf"]);
    mark_loaded(&f, "crc_itu_t", 1, &["udf"]);
    mark_loaded(&f, "top", 0, &[]);
    mark_loaded(&f, "mid", 1, &["top"]);
    mark_loaded(&f, "base", 1, &["mid"]);
    let mut r = req("kmm_ci");
    r.dir = f.image.clone();
    r.remove_in_tree = vec!["udf".into(), "top".into()];
    let actions = plan_load(&f.host, &r, KVER).unwrap();
    let n = names(&actions);
    assert_eq!(
        n[..6],
        [
            "unload udf",
            "unload cdrom",
            "unload crc_itu_t",
            "unload top",
            "unload mid",
            "unload base"
        ]
    );
    assert!(matches!(&actions[0], Action::Unload { required: true, .. }));
    assert!(matches!(
        &actions[1],
        Action::Unload {
            required: false,
            ..
        }
    ));
    // A dependency still used by something else stays.
    mark_loaded(&f, "cdrom", 2, &["udf", "sr_mod"]);
    let n = names(&plan_load(&f.host, &r, KVER).unwrap());
    assert_eq!(
        n[..3],
        [
            "unload udf",
            "skip cdrom: still in use (refcount 1, holders [sr_mod])",
            "unload crc_itu_t"
        ]
    );
    // The module itself in use: an error naming it, nothing planned.
    r.remove_in_tree = vec!["cdrom".into()];
    assert_eq!(
        plan_load(&f.host, &r, KVER).unwrap_err().to_string(),
        "refusing to unload cdrom: it is in use (refcount 2, holders [sr_mod,udf])"
    );
}

#[test]
fn unload_follows_softdeps_post_first_pre_last() {
    let f = fixture();
    put(
        &f.image,
        "m.ko",
        &module_with("m", "", &[("softdep", "pre: p busy post: q")]),
    );
    for x in ["p", "q", "busy"] {
        put(&f.image, &format!("{x}.ko"), &module_with(x, "", &[]));
    }
    mark_loaded(&f, "m", 0, &[]);
    mark_loaded(&f, "p", 0, &[]);
    mark_loaded(&f, "q", 0, &[]);
    mark_loaded(&f, "busy", 1, &[]);
    let actions = plan_unload(&f.host, Some(&f.image), KVER, &[], "m").unwrap();
    assert_eq!(
        names(&actions),
        [
            "unload q",
            "unload m",
            "skip busy: still in use (refcount 1, holders [])",
            "unload p"
        ]
    );
}

#[test]
fn loading_a_builtin_module_does_nothing() {
    let f = fixture();
    let actions = plan_load(&f.host, &req("crc32c-generic"), KVER).unwrap();
    assert_eq!(
        names(&actions),
        ["skip crc32c_generic: built into the kernel"]
    );
}

#[test]
fn a_loaded_module_is_left_alone_softdeps_included() {
    let f = fixture();
    put(
        &f.image,
        "m.ko",
        &module_with("m", "", &[("softdep", "post: q")]),
    );
    put(&f.image, "q.ko", &module_with("q", "", &[]));
    mark_loaded(&f, "m", 0, &[]);
    let mut r = req("m");
    r.dir = f.image.clone();
    assert_eq!(
        names(&plan_load(&f.host, &r, KVER).unwrap()),
        ["skip m: already loaded"]
    );
    // Removed as an in-tree module first: loaded again, with its softdep.
    r.remove_in_tree = vec!["m".into()];
    let (loads, _) = loads_and_skips(&plan_load(&f.host, &r, KVER).unwrap());
    assert_eq!(
        loads,
        [("m", true), ("q", false)].map(|(m, r)| (m.to_string(), r))
    );
}

#[test]
fn in_tree_removal_follows_the_order_softdeps_like_the_load_pod() {
    let f = fixture();
    // The in-tree kmm_ci (same name as the new one) and kmm_ci_b, named by the order: upstream's modprobe -rv
    // sees softdep.conf (`softdep kmm_ci pre: kmm_ci_b`) and removes both.
    put(&f.root, "kernel/kmm_ci.ko", &module_with("kmm_ci", "", &[]));
    put(
        &f.root,
        "kernel/kmm_ci_b.ko",
        &module_with("kmm_ci_b", "", &[]),
    );
    put(&f.image, "extra/kmm_ci.ko", &module_with("kmm_ci", "", &[]));
    put(
        &f.image,
        "extra/kmm_ci_b.ko",
        &module_with("kmm_ci_b", "", &[]),
    );
    mark_loaded(&f, "kmm_ci", 0, &[]);
    mark_loaded(&f, "kmm_ci_b", 0, &[]);
    let mut r = req("kmm_ci");
    r.dir = f.image.clone();
    r.order = vec!["kmm_ci".into(), "kmm_ci_b".into()];
    r.remove_in_tree = vec!["kmm_ci".into()];
    let actions = plan_load(&f.host, &r, KVER).unwrap();
    let (loads, _) = loads_and_skips(&actions);
    assert_eq!(names(&actions)[..2], ["unload kmm_ci", "unload kmm_ci_b"]);
    assert_eq!(
        loads,
        [("kmm_ci_b", false), ("kmm_ci", true)].map(|(m, r)| (m.to_string(), r))
    );
}
