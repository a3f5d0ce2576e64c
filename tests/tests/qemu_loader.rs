//! Loading kernel modules for real, inside a qemu guest running Debian's kernel (issue 5).
//!
//! Each test is one boot; scenarios inside a boot are judged from the markers the guest prints. Needs the
//! packages of `tests/setup/install-deps.sh` and apt access to Debian's archive (kernel packages are fetched with
//! `apt-get download` into the cache, never installed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use kmm_e2e::debian::Kernel;
use kmm_e2e::kmod_build;
use kmm_e2e::qemu::Guest;

// A hard bound: TCG boots take 3-15 s here, more when the machine is busy building.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

fn fixture(kernel: &Kernel) -> kmod_build::Built {
    kmod_build::build(kernel, "simple-kmod", &["kmm_simple", "kmm_simple_dep"]).unwrap()
}

/// The harness itself, independent of kmm-loader: busybox `insmod`/`rmmod` load a Debian-signed module with its
/// dependencies and our fixture pair, in a guest booted from Debian's kernel.
#[test]
fn harness_busybox_insmod_debian_and_fixture_modules() {
    let kernel = Kernel::get().unwrap();
    let built = fixture(kernel);
    let mut guest = Guest::new(kernel).unwrap();
    let udf = guest.add_in_tree_modules("", &["udf"]).unwrap();
    let names: Vec<&str> = udf.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"udf"));
    assert!(
        names.contains(&"cdrom") && names.contains(&"crc_itu_t"),
        "{names:?}"
    );
    guest
        .fs
        .copy("/opt/kmm_simple.ko", &built.module("kmm_simple"), false)
        .unwrap();
    guest
        .fs
        .copy(
            "/opt/kmm_simple_dep.ko",
            &built.module("kmm_simple_dep"),
            false,
        )
        .unwrap();

    guest.scenario("uname", "uname -r");
    let insmods: String = udf
        .iter()
        .map(|(_, path)| format!("insmod {path}\n"))
        .collect();
    guest.scenario(
        "insmod-debian",
        &format!("{insmods}grep -E '^(udf|cdrom|crc_itu_t) ' /proc/modules"),
    );
    guest.scenario(
        "insmod-fixture",
        "insmod /opt/kmm_simple.ko greeting=from-qemu\n\
         insmod /opt/kmm_simple_dep.ko\n\
         grep -E '^kmm_simple' /proc/modules\n\
         cat /dev/kmm_simple\n\
         fails rmmod kmm_simple\n\
         rmmod kmm_simple_dep\n\
         rmmod kmm_simple\n\
         fails loaded kmm_simple\n\
         dmesg | grep -E 'KMM-(INIT|EXIT)'",
    );
    let console = guest.boot(BOOT_TIMEOUT).unwrap();
    eprintln!(
        "boot: {:?} in {:.2?} (timed out: {})",
        console.accel, console.elapsed, console.timed_out
    );

    assert_eq!(console.ok("uname").unwrap().trim(), kernel.release());
    let debian = console.ok("insmod-debian").unwrap();
    for m in ["udf ", "cdrom ", "crc_itu_t "] {
        assert!(
            debian.lines().any(|l| l.starts_with(m)),
            "{m} missing from /proc/modules:\n{debian}"
        );
    }
    // udf uses both of its dependencies.
    assert!(
        debian
            .lines()
            .any(|l| l.starts_with("cdrom ") && l.contains("udf")),
        "{debian}"
    );

    let ours = console.ok("insmod-fixture").unwrap();
    assert!(
        ours.contains("kmm_simple from-qemu"),
        "read of /dev/kmm_simple:\n{ours}"
    );
    assert!(
        ours.lines()
            .any(|l| l.starts_with("kmm_simple ") && l.contains("kmm_simple_dep")),
        "{ours}"
    );
    assert!(
        ours.contains("kmm_simple: KMM-INIT greeting=from-qemu"),
        "{ours}"
    );
    assert!(
        ours.contains("kmm_simple_dep: KMM-INIT answer=42"),
        "{ours}"
    );
    assert!(
        ours.contains("kmm_simple_dep: KMM-EXIT") && ours.contains("kmm_simple: KMM-EXIT"),
        "{ours}"
    );
    assert!(console.done(), "guest did not reach the end of /init");
}

const FIRMWARE_PAYLOAD: &str = "KMM-FIRMWARE-PAYLOAD v1";

fn openssl_key(
    dir: &std::path::Path,
    name: &str,
    cn: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = dir.join(format!("{name}.priv"));
    let cert = dir.join(format!("{name}.der"));
    kmm_e2e::cmd::require("openssl").unwrap();
    kmm_e2e::cmd::run(
        std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-new", "-nodes", "-utf8", "-sha256", "-days", "36500", "-batch",
            ])
            .args(["-subj", &format!("/CN={cn}"), "-outform", "DER", "-out"])
            .arg(&cert)
            .arg("-keyout")
            .arg(&key),
    )
    .unwrap();
    (key, cert)
}

/// Host-side preparation shared by the kmm-loader boots (done once per process): the static kmm-loader, keys made
/// with openssl, Debian's build-time certificate extracted from vmlinux by `kmm-loader extract-cert`, our fixtures
/// signed by `kmm-loader sign` (and unsigned, tampered and foreign-key variants), all laid out in a guest.
fn loader_guest(kernel: &Kernel) -> Guest {
    static PREPARED: std::sync::OnceLock<Guest> = std::sync::OnceLock::new();
    PREPARED
        .get_or_init(|| prepare_loader_guest(kernel))
        .clone()
}

fn prepare_loader_guest(kernel: &Kernel) -> Guest {
    let started = std::time::Instant::now();
    let built = fixture(kernel);
    let loader = kmm_e2e::qemu::static_kmm_loader().unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let run = |args: &[&std::ffi::OsStr]| {
        kmm_e2e::cmd::stdout(std::process::Command::new(&loader).args(args)).unwrap();
    };

    let (key, cert) = openssl_key(w, "ours", "kmm-e2e ours");
    let (other_key, other_cert) = openssl_key(w, "other", "kmm-e2e other");
    let debian_cert = w.join("debian.der");
    let vmlinux = kernel.vmlinux().unwrap();
    run(&[
        "extract-cert".as_ref(),
        "--kernel".as_ref(),
        vmlinux.as_os_str(),
        "--output".as_ref(),
        debian_cert.as_os_str(),
    ]);

    let sign_file = |src: &std::path::Path,
                     key: &std::path::Path,
                     cert: &std::path::Path,
                     out: &std::path::Path| {
        let args = [
            "sign".as_ref(),
            "--key".as_ref(),
            key.as_os_str(),
            "--cert".as_ref(),
            cert.as_os_str(),
            "--output".as_ref(),
            out.as_os_str(),
            src.as_os_str(),
        ];
        run(&args);
    };
    let sign =
        |module: &str, key: &std::path::Path, cert: &std::path::Path, out: &std::path::Path| {
            sign_file(&built.module(module), key, cert, out)
        };
    let signed = w.join("kmm_simple.ko");
    let signed_dep = w.join("kmm_simple_dep.ko");
    let other = w.join("kmm_simple.other.ko");
    sign("kmm_simple", &key, &cert, &signed);
    sign("kmm_simple_dep", &key, &cert, &signed_dep);
    sign("kmm_simple", &other_key, &other_cert, &other);
    // Altered bytes under a valid signature: one letter of the description in .modinfo.
    let mut tampered = std::fs::read(&signed).unwrap();
    let needle = b"a misc device at /dev/kmm_simple";
    let at = tampered
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("description in .modinfo");
    tampered[at] = b'A';

    let rel = kernel.release();
    let mut guest = Guest::new(kernel).unwrap();
    guest
        .add_static_binary("/usr/bin/kmm-loader", &loader)
        .unwrap();
    guest.fs.copy("/certs/ours.der", &cert, false).unwrap();
    guest
        .fs
        .copy("/certs/other.der", &other_cert, false)
        .unwrap();
    guest
        .fs
        .copy("/certs/debian.der", &debian_cert, false)
        .unwrap();
    // The kmod image directory: Debian's udf with its dependencies, and ours signed by kmm-loader.
    guest
        .add_in_tree_modules("/opt", &["udf", "dummy"])
        .unwrap();
    guest
        .fs
        .copy(
            &format!("/opt/lib/modules/{rel}/extra/kmm_simple.ko"),
            &signed,
            false,
        )
        .unwrap();
    guest
        .fs
        .copy(
            &format!("/opt/lib/modules/{rel}/extra/kmm_simple_dep.ko"),
            &signed_dep,
            false,
        )
        .unwrap();
    // Variants of kmm_simple in their own image directories.
    guest
        .fs
        .copy(
            &format!("/unsigned/lib/modules/{rel}/extra/kmm_simple.ko"),
            &built.module("kmm_simple"),
            false,
        )
        .unwrap();
    guest.fs.file(
        &format!("/tampered/lib/modules/{rel}/extra/kmm_simple.ko"),
        tampered,
        0o644,
    );
    guest
        .fs
        .copy(
            &format!("/otherkey/lib/modules/{rel}/extra/kmm_simple.ko"),
            &other,
            false,
        )
        .unwrap();
    // Built for another kernel: vermagic names another ABI (same length), signed again so only vermagic differs.
    let vermagic = format!("vermagic={rel} ");
    let other_rel = rel.replacen(
        &kernel.abi,
        &kernel.abi.replace(|c: char| c.is_ascii_digit(), "9"),
        1,
    );
    assert_eq!(other_rel.len(), rel.len());
    let mut foreign = std::fs::read(built.module("kmm_simple")).unwrap();
    let at = foreign
        .windows(vermagic.len())
        .position(|w| w == vermagic.as_bytes())
        .expect("vermagic in .modinfo");
    foreign[at..at + vermagic.len()].copy_from_slice(format!("vermagic={other_rel} ").as_bytes());
    let foreign_unsigned = w.join("kmm_simple.foreign-unsigned.ko");
    let foreign_path = w.join("kmm_simple.foreign.ko");
    std::fs::write(&foreign_unsigned, &foreign).unwrap();
    sign_file(&foreign_unsigned, &key, &cert, &foreign_path);
    guest
        .fs
        .copy(
            &format!("/foreign/lib/modules/{rel}/extra/kmm_simple.ko"),
            &foreign_path,
            false,
        )
        .unwrap();
    let mut crc = std::fs::read(kernel.find_module("crc-itu-t").unwrap()).unwrap();
    let needle = b"CRC ITU-T V.41 calculations";
    let at = crc
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("crc-itu-t description");
    crc[at] = b'c';
    guest.fs.file(
        &format!("/tampered-debian/lib/modules/{rel}/kernel/lib/crc-itu-t.ko"),
        crc,
        0o644,
    );
    // The "host": an in-tree module in /lib/modules, and firmware shipped by the image.
    guest.add_in_tree_modules("", &["dummy"]).unwrap();
    guest
        .fs
        .file("/fw-src/kmm_simple.bin", FIRMWARE_PAYLOAD, 0o644);
    guest.fs.dir("/var/lib");
    eprintln!("loader guest prepared in {:.2?}", started.elapsed());
    guest
}

fn lines_starting(output: &str, prefix: &str) -> usize {
    output.lines().filter(|l| l.starts_with(prefix)).count()
}

/// kmm-loader inside a guest without signature enforcement: Debian modules with dependencies, our modules signed
/// by `kmm-loader sign`, idempotence, reverse-order unload, `wait`, `--require-signature` refusals before the
/// syscall, in-tree replacement, firmware.
#[test]
fn kmm_loader_in_guest() {
    let kernel = Kernel::get().unwrap();
    let mut guest = loader_guest(kernel);
    let g = &mut guest;
    g.scenario(
        "load-debian-with-deps",
        "kmm-loader load --dir /opt --require-signature /certs/debian.der udf\n\
         grep -E '^(udf|cdrom|crc_itu_t) ' /proc/modules",
    );
    g.scenario(
        "load-idempotent",
        "kmm-loader load --dir /opt --require-signature /certs/debian.der udf\n\
         grep -E '^(udf|cdrom|crc_itu_t) ' /proc/modules",
    );
    g.scenario(
        "unload-debian",
        "kmm-loader unload --dir /opt udf\n\
         fails loaded udf\nfails loaded cdrom\nfails loaded crc_itu_t",
    );
    g.scenario(
        "load-ours-with-dep",
        "kmm-loader load --dir /opt kmm_simple_dep\n\
         grep -E '^kmm_simple' /proc/modules\n\
         echo tainted=$(cat /proc/sys/kernel/tainted)\n\
         dmesg | grep -E 'KMM-INIT'",
    );
    g.scenario(
        "unload-in-use-refused",
        "fails kmm-loader unload kmm_simple\nloaded kmm_simple",
    );
    g.scenario(
        "wait",
        "kmm-loader wait --module kmm_simple --version 1.0.0 --timeout 5s\n\
         kmm-loader wait --module kmm_simple_dep --timeout 5s\n\
         fails kmm-loader wait --module kmm_absent --timeout 1s\n\
         fails kmm-loader wait --module kmm_simple --version 9.9.9 --timeout 1s",
    );
    g.scenario(
        "unload-reverse-order",
        "kmm-loader unload --dir /opt kmm_simple_dep\n\
         fails loaded kmm_simple_dep\nfails loaded kmm_simple\n\
         dmesg | grep -E 'KMM-EXIT'",
    );
    g.scenario(
        "params",
        "kmm-loader load --dir /opt --param greeting=from-kmm-loader kmm_simple\n\
         cat /dev/kmm_simple\n\
         kmm-loader unload kmm_simple",
    );
    g.scenario(
        "require-signature-unsigned",
        "fails kmm-loader load --dir /unsigned --require-signature /certs/ours.der kmm_simple\n\
         fails loaded kmm_simple\n\
         echo CONTROL\n\
         kmm-loader load --dir /unsigned kmm_simple\n\
         loaded kmm_simple\n\
         kmm-loader unload kmm_simple",
    );
    g.scenario(
        "require-signature-tampered",
        "fails kmm-loader load --dir /tampered --require-signature /certs/ours.der kmm_simple\n\
         fails loaded kmm_simple\n\
         echo CONTROL\n\
         kmm-loader load --dir /tampered kmm_simple\n\
         loaded kmm_simple\n\
         kmm-loader unload kmm_simple",
    );
    g.scenario(
        "require-signature-tampered-debian",
        "fails kmm-loader load --dir /tampered-debian --require-signature /certs/debian.der crc_itu_t\n\
         fails loaded crc_itu_t\n\
         echo CONTROL\n\
         fails kmm-loader load --dir /tampered-debian crc_itu_t\n\
         fails loaded crc_itu_t",
    );
    g.scenario(
        "require-signature-unknown-key",
        "fails kmm-loader load --dir /otherkey --require-signature /certs/ours.der kmm_simple\n\
         fails loaded kmm_simple\n\
         echo CONTROL\n\
         kmm-loader load --dir /opt --require-signature /certs/ours.der kmm_simple\n\
         loaded kmm_simple\n\
         kmm-loader unload kmm_simple",
    );
    g.scenario(
        "in-tree-replacement",
        "insmod /lib/modules/$(uname -r)/kernel/drivers/net/dummy.ko\n\
         loaded dummy\n\
         kmm-loader load --dir /opt --remove-in-tree dummy kmm_simple\n\
         fails loaded dummy\n\
         loaded kmm_simple\n\
         kmm-loader unload kmm_simple",
    );
    g.scenario(
        "in-tree-in-use-refused",
        "kmm-loader load --dir /opt udf\n\
         fails kmm-loader load --dir /opt --remove-in-tree cdrom kmm_simple\n\
         loaded cdrom\n\
         fails loaded kmm_simple",
    );
    g.scenario(
        "vermagic-mismatch",
        "fails kmm-loader load --dir /foreign kmm_simple\n\
         fails loaded kmm_simple\n\
         echo CONTROL\n\
         insmod /foreign/lib/modules/$(uname -r)/extra/kmm_simple.ko\n\
         loaded kmm_simple\n\
         rmmod kmm_simple",
    );
    g.scenario(
        "soft-order",
        "kmm-loader load --dir /opt --order kmm_simple,dummy kmm_simple\n\
         head -n 2 /proc/modules\n\
         kmm-loader unload --order kmm_simple,dummy kmm_simple\n\
         fails loaded kmm_simple\n\
         fails loaded dummy",
    );
    g.scenario(
        "firmware",
        "fails kmm-loader load --dir /opt --param firmware=kmm_simple.bin kmm_simple\n\
         fails loaded kmm_simple\n\
         echo CONTROL\n\
         kmm-loader load --dir /opt --firmware-from /fw-src --firmware-to /var/lib/firmware \
           --param firmware=kmm_simple.bin kmm_simple\n\
         echo path=$(cat /sys/module/firmware_class/parameters/path)\n\
         ls /var/lib/firmware\n\
         dmesg | grep KMM-FIRMWARE",
    );
    let console = g.boot(BOOT_TIMEOUT).unwrap();
    eprintln!(
        "boot: {:?} in {:.2?} (timed out: {})",
        console.accel, console.elapsed, console.timed_out
    );

    // A Debian-signed module with dependencies, verified in user space against Debian's own certificate.
    let out = console.ok("load-debian-with-deps").unwrap();
    for m in ["udf ", "cdrom ", "crc_itu_t "] {
        assert_eq!(
            lines_starting(out, m),
            1,
            "{m} not in /proc/modules:\n{out}"
        );
    }
    let out = console.ok("load-idempotent").unwrap();
    for m in ["udf ", "cdrom ", "crc_itu_t "] {
        assert_eq!(
            lines_starting(out, m),
            1,
            "{m} after the second load:\n{out}"
        );
    }
    console.ok("unload-debian").unwrap();

    // Our modules, signed by kmm-loader sign: the kernel parsed the signature (a malformed one is refused even
    // without enforcement) and, not knowing our key, loaded them tainted E (8192).
    let out = console.ok("load-ours-with-dep").unwrap();
    assert!(
        out.lines()
            .any(|l| l.starts_with("kmm_simple ") && l.contains("kmm_simple_dep")),
        "{out}"
    );
    let tainted: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("tainted="))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(
        tainted & 8192,
        0,
        "expected taint E (unsigned/unknown-key module): {tainted}"
    );
    let dep_first =
        out.find("kmm_simple: KMM-INIT").unwrap() < out.find("kmm_simple_dep: KMM-INIT").unwrap();
    assert!(dep_first, "dependency must initialise first:\n{out}");

    let out = console.ok("unload-in-use-refused").unwrap();
    assert!(out.contains("in use"), "{out}");
    console.ok("wait").unwrap();
    let out = console.ok("wait").unwrap();
    assert!(
        out.contains("kmm_absent"),
        "the timeout message names the module:\n{out}"
    );

    let out = console.ok("unload-reverse-order").unwrap();
    let dep_exit = out.find("kmm_simple_dep: KMM-EXIT").unwrap();
    let simple_exit = out.find("kmm_simple: KMM-EXIT").unwrap();
    assert!(
        dep_exit < simple_exit,
        "kmm_simple_dep must be unloaded before kmm_simple:\n{out}"
    );

    let out = console.ok("params").unwrap();
    assert!(out.contains("kmm_simple from-kmm-loader"), "{out}");

    // --require-signature refuses before the syscall: the kernel (no enforcement) would load the unsigned one.
    let out = console.ok("require-signature-unsigned").unwrap();
    let (refused, control) = out.split_once("CONTROL").unwrap();
    assert!(refused.contains("refusing to load kmm_simple"), "{out}");
    assert!(!control.contains("refusing"), "{out}");
    // Altered bytes under our signature: the kernel cannot check a signature by an unknown key (sign-file
    // signatures carry no signed attributes), so only the user-space verification stops it.
    let out = console.ok("require-signature-tampered").unwrap();
    let (refused, control) = out.split_once("CONTROL").unwrap();
    assert!(refused.contains("refusing to load kmm_simple"), "{out}");
    assert!(refused.contains("content altered"), "{out}");
    assert!(!control.contains("refusing"), "{out}");
    // Altered bytes under Debian's signature: refused in user space; the kernel itself answers EKEYREJECTED,
    // which kmm-loader translates to the MOK message.
    let out = console.ok("require-signature-tampered-debian").unwrap();
    let (refused, control) = out.split_once("CONTROL").unwrap();
    assert!(refused.contains("refusing to load crc_itu_t"), "{out}");
    assert!(
        !refused.contains("MOK"),
        "refused in user space, not by the kernel:\n{out}"
    );
    assert!(
        control.contains("enroll the signing certificate in the MOK list"),
        "kernel EKEYREJECTED:\n{out}"
    );
    let out = console.ok("require-signature-unknown-key").unwrap();
    let (refused, _) = out.split_once("CONTROL").unwrap();
    assert!(
        refused.contains("refusing to load kmm_simple") && refused.contains("kmm-e2e other"),
        "{out}"
    );

    console.ok("in-tree-replacement").unwrap();
    let out = console.ok("in-tree-in-use-refused").unwrap();
    assert!(out.contains("cdrom"), "{out}");

    // vermagic names another kernel release: kmm-loader refuses before the syscall. The kernel itself would
    // accept it (with modversions it compares vermagic after the release and checks symbol CRCs instead), as
    // busybox insmod shows.
    let out = console.ok("vermagic-mismatch").unwrap();
    let (refused, _) = out.split_once("CONTROL").unwrap();
    assert!(
        refused.contains("does not match the running kernel"),
        "{out}"
    );
    // modulesLoadingOrder: the listed modules load in reverse order (dummy, then kmm_simple); /proc/modules lists
    // the newest first.
    let out = console.ok("soft-order").unwrap();
    let newest: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("kmm_simple ") || l.starts_with("dummy "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(newest, ["kmm_simple", "dummy"], "{out}");

    let out = console.ok("firmware").unwrap();
    let (missing, found) = out.split_once("CONTROL").unwrap();
    assert!(missing.contains("KMM-FAILED-AS-EXPECTED"), "{out}");
    assert!(found.contains("path=/var/lib/firmware"), "{out}");
    assert!(
        found.contains(&format!(
            "KMM-FIRMWARE kmm_simple.bin loaded {} bytes: {FIRMWARE_PAYLOAD}",
            FIRMWARE_PAYLOAD.len()
        )),
        "{out}"
    );
    assert!(console.done(), "guest did not reach the end of /init");
}

/// kmm-loader under `module.sig_enforce=1`: Debian's modules load; ours (unknown key, user-space verification
/// passed) and an unsigned one are rejected by the kernel, and kmm-loader says to enroll the key in MOK.
#[test]
fn kmm_loader_in_guest_sig_enforce() {
    let kernel = Kernel::get().unwrap();
    let mut guest = loader_guest(kernel);
    let g = &mut guest;
    g.cmdline("module.sig_enforce=1");
    g.scenario("enforced", "cat /sys/module/module/parameters/sig_enforce");
    g.scenario(
        "debian-loads",
        "kmm-loader load --dir /opt udf\nloaded udf\nloaded cdrom",
    );
    g.scenario(
        "ours-rejected",
        "fails kmm-loader load --dir /opt --require-signature /certs/ours.der kmm_simple\nfails loaded kmm_simple",
    );
    g.scenario(
        "unsigned-rejected",
        "fails kmm-loader load --dir /unsigned kmm_simple\nfails loaded kmm_simple",
    );
    let console = g.boot(BOOT_TIMEOUT).unwrap();
    eprintln!(
        "boot: {:?} in {:.2?} (timed out: {})",
        console.accel, console.elapsed, console.timed_out
    );

    assert_eq!(console.ok("enforced").unwrap().trim(), "Y");
    console.ok("debian-loads").unwrap();
    for name in ["ours-rejected", "unsigned-rejected"] {
        let out = console.ok(name).unwrap();
        assert!(
            out.contains("enroll the signing certificate in the MOK list"),
            "{name}:\n{out}"
        );
        assert!(
            !out.contains("refusing to load"),
            "{name}: must reach the kernel:\n{out}"
        );
    }
    assert!(console.done(), "guest did not reach the end of /init");
}
