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
    kmod_build::build(
        kernel,
        "simple-kmod",
        &[
            "kmm_simple",
            "kmm_simple_dep",
            "kmm_softdep",
            "kmm_fail",
            "kmm_post",
        ],
    )
    .unwrap()
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
const HOST_ROOT_FIRMWARE_PAYLOAD: &str = "KMM-FW via --host-root";

/// `tool ARGS... FILE` writing the compressed file to stdout (xz-utils' and zstd's command line tools).
fn compress(tool: &str, args: &[&str], src: &std::path::Path) -> Vec<u8> {
    kmm_e2e::cmd::require(tool).unwrap();
    kmm_e2e::cmd::run(std::process::Command::new(tool).args(args).arg(src))
        .unwrap()
        .stdout
}

fn xz(src: &std::path::Path) -> Vec<u8> {
    // The kernel's own scripts/Makefile.modinst flags for .ko.xz.
    compress("xz", &["--check=crc32", "--lzma2=dict=1MiB", "-c"], src)
}

fn zstd(src: &std::path::Path) -> Vec<u8> {
    compress("zstd", &["-q", "-c"], src)
}

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
    for m in ["kmm_softdep", "kmm_fail", "kmm_post"] {
        sign(m, &key, &cert, &w.join(format!("{m}.ko")));
    }
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
        .add_in_tree_modules("/opt", &["udf", "dummy", "ipmi_msghandler", "ipmi_devintf"])
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
    // Soft dependencies: kmm_softdep declares pre: kmm_simple_dep kmm_fail kmm_nowhere post: kmm_post.
    for m in [
        "kmm_simple",
        "kmm_simple_dep",
        "kmm_softdep",
        "kmm_fail",
        "kmm_post",
    ] {
        guest
            .fs
            .copy(
                &format!("/softdep/lib/modules/{rel}/extra/{m}.ko"),
                &w.join(format!("{m}.ko")),
                false,
            )
            .unwrap();
    }
    // Compressed modules: ours (signed, then compressed, as distributions do) and Debian's own.
    guest.fs.file(
        &format!("/compressed/lib/modules/{rel}/extra/kmm_simple.ko.xz"),
        xz(&signed),
        0o644,
    );
    guest.fs.file(
        &format!("/compressed/lib/modules/{rel}/extra/kmm_simple_dep.ko.zst"),
        zstd(&signed_dep),
        0o644,
    );
    for (i, (name, path)) in kernel
        .module_closure(&["udf"])
        .unwrap()
        .into_iter()
        .enumerate()
    {
        let (ext, bytes) = if i % 2 == 0 {
            ("xz", xz(&path))
        } else {
            ("zst", zstd(&path))
        };
        guest.fs.file(
            &format!("/zdebian/lib/modules/{rel}/kernel/{name}.ko.{ext}"),
            bytes,
            0o644,
        );
    }
    // The "host": in-tree modules in /lib/modules (udf and isofs share cdrom), and firmware shipped by the image.
    guest
        .add_in_tree_modules("", &["dummy", "udf", "isofs"])
        .unwrap();
    // A container's view for --host-root: only kmm-loader, the kmod image and mount points for the host's
    // /sys, /proc, /lib and /var (mounted by the scenario); it runs chrooted there.
    // (kmm-loader itself is bind-mounted there by the scenario: a second 15 MB copy would slow every boot.)
    guest.fs.file("/container/usr/bin/kmm-loader", "", 0o755);
    for d in ["opt", "host/sys", "host/proc", "host/lib", "host/var"] {
        guest.fs.dir(&format!("/container/{d}"));
    }
    guest.fs.file(
        "/container/fw/kmm_simple.bin",
        HOST_ROOT_FIRMWARE_PAYLOAD,
        0o644,
    );
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
/// syscall, in-tree replacement, firmware, a module's own softdeps, .ko.xz/.ko.zst, `--host-root` from a chroot.
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
         fails kmm-loader wait --module kmm_absent --timeout 300ms\n\
         fails kmm-loader wait --module kmm_simple --version 9.9.9 --timeout 300ms",
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
    g.scenario(
        "softdeps",
        "kmm-loader unload kmm_simple\n\
         dmesg -c >/dev/null\n\
         kmm-loader load --dir /softdep kmm_softdep\n\
         for m in kmm_simple kmm_simple_dep kmm_softdep kmm_post; do loaded $m; done\n\
         fails loaded kmm_fail\n\
         dmesg | grep -E 'KMM-INIT'",
    );
    g.scenario(
        "softdeps-unload",
        "dmesg -c >/dev/null\n\
         kmm-loader unload --dir /softdep kmm_softdep\n\
         for m in kmm_simple kmm_simple_dep kmm_softdep kmm_post; do fails loaded $m; done\n\
         dmesg | grep -E 'KMM-EXIT'",
    );
    g.scenario(
        "compressed",
        "kmm-loader load --dir /compressed --require-signature /certs/ours.der kmm_simple_dep\n\
         loaded kmm_simple\nloaded kmm_simple_dep\n\
         cat /dev/kmm_simple\n\
         kmm-loader unload --dir /compressed kmm_simple_dep\n\
         fails loaded kmm_simple_dep\nfails loaded kmm_simple",
    );
    g.scenario(
        "host-root",
        "mount -t sysfs sysfs /container/host/sys\n\
         mount -t proc proc /container/host/proc\n\
         mount -o bind /lib /container/host/lib\n\
         mount -o bind /var /container/host/var\n\
         mount -o bind /opt /container/opt\n\
         mount -o bind /usr/bin/kmm-loader /container/usr/bin/kmm-loader\n\
         insmod /lib/modules/$(uname -r)/kernel/drivers/net/dummy.ko\n\
         fails chroot /container /usr/bin/kmm-loader wait --module dummy --timeout 200ms\n\
         echo CONTROL\n\
         chroot /container /usr/bin/kmm-loader wait --host-root /host --module dummy --timeout 1s\n\
         chroot /container /usr/bin/kmm-loader load --host-root /host --dir /opt --remove-in-tree dummy \
           --firmware-from /fw --firmware-to /var/lib/firmware-hr --param firmware=kmm_simple.bin kmm_simple\n\
         fails loaded dummy\nloaded kmm_simple\n\
         echo path=$(cat /sys/module/firmware_class/parameters/path)\n\
         cat /var/lib/firmware-hr/kmm_simple.bin; echo\n\
         dmesg | grep 'KMM-FIRMWARE.*host-root'\n\
         chroot /container /usr/bin/kmm-loader wait --host-root /host --module kmm_simple --version 1.0.0 --timeout 1s\n\
         chroot /container /usr/bin/kmm-loader unload --host-root /host --dir /opt kmm_simple\n\
         fails loaded kmm_simple",
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

    // The module's own MODULE_SOFTDEP: pre-softdeps (with their dependencies) first, the post-softdep last; the
    // failing and the missing softdeps are skipped, not fatal.
    let out = console.ok("softdeps").unwrap();
    let at = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("{needle} missing:\n{out}"))
    };
    assert!(
        at("kmm_simple: KMM-INIT") < at("kmm_simple_dep: KMM-INIT")
            && at("kmm_simple_dep: KMM-INIT") < at("kmm_fail: KMM-INIT")
            && at("kmm_fail: KMM-INIT") < at("kmm_softdep: KMM-INIT")
            && at("kmm_softdep: KMM-INIT") < at("kmm_post: KMM-INIT"),
        "softdep order:\n{out}"
    );
    assert!(out.contains("skip kmm_nowhere: not found"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("load kmm_fail (") && l.contains("failed, not fatal")),
        "{out}"
    );
    // Removal: the post-softdep first, then the module, then its pre-softdeps and their unused dependencies.
    let out = console.ok("softdeps-unload").unwrap();
    let at = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("{needle} missing:\n{out}"))
    };
    assert!(
        at("kmm_post: KMM-EXIT") < at("kmm_softdep: KMM-EXIT")
            && at("kmm_softdep: KMM-EXIT") < at("kmm_simple_dep: KMM-EXIT")
            && at("kmm_simple_dep: KMM-EXIT") < at("kmm_simple: KMM-EXIT"),
        "softdep removal order:\n{out}"
    );
    // .ko.xz and .ko.zst: decompressed in user space (Debian's kernel has no CONFIG_MODULE_DECOMPRESS), the
    // signature verified on the decompressed bytes, loaded with init_module.
    let out = console.ok("compressed").unwrap();
    assert!(
        out.contains("/extra/kmm_simple.ko.xz)") && out.contains("/extra/kmm_simple_dep.ko.zst)"),
        "{out}"
    );
    assert!(out.contains("kmm_simple hello"), "{out}");

    // --host-root: a chrooted kmm-loader that sees the host only under /host.
    let out = console.ok("host-root").unwrap();
    let (control, rest) = out.split_once("CONTROL").unwrap();
    assert!(control.contains("KMM-FAILED-AS-EXPECTED"), "{out}");
    assert!(rest.contains("unload dummy"), "{out}");
    assert!(rest.contains("path=/var/lib/firmware-hr"), "{out}");
    assert!(
        rest.contains(&format!(
            "KMM-FIRMWARE kmm_simple.bin loaded {} bytes: {HOST_ROOT_FIRMWARE_PAYLOAD}",
            HOST_ROOT_FIRMWARE_PAYLOAD.len()
        )),
        "{out}"
    );
    assert!(console.done(), "guest did not reach the end of /init");
}

/// kmm-loader under `module.sig_enforce=1`: Debian's modules load (recompressed as .ko.xz/.ko.zst too); in-tree
/// removal takes the dependencies left unused; Debian's own softdep; ours (unknown key, user-space verification
/// passed) and an unsigned one are rejected by the kernel, and kmm-loader says to enroll the key in MOK.
#[test]
fn kmm_loader_in_guest_sig_enforce() {
    let kernel = Kernel::get().unwrap();
    let mut guest = loader_guest(kernel);
    let g = &mut guest;
    g.cmdline("module.sig_enforce=1");
    g.scenario("enforced", "cat /sys/module/module/parameters/sig_enforce");
    // Debian's modules recompressed (.ko.xz, .ko.zst): decompressed in user space, verified, init_module.
    g.scenario(
        "debian-loads",
        "kmm-loader load --dir /zdebian --require-signature /certs/debian.der udf\n\
         loaded udf\nloaded cdrom\nloaded crc_itu_t",
    );
    // In-tree removal: udf, cdrom, crc_itu_t are loaded; isofs (from the host's tree, plain .ko: finit_module)
    // shares cdrom.
    g.scenario(
        "in-tree-removal-with-deps",
        "kmm-loader load --dir / isofs\n\
         grep -E '^cdrom ' /proc/modules\n\
         kmm-loader load --dir /opt --remove-in-tree udf dummy\n\
         fails loaded udf\nfails loaded crc_itu_t\nloaded cdrom\nloaded isofs\nloaded dummy\n\
         echo STEP2\n\
         kmm-loader load --dir /opt --remove-in-tree isofs dummy\n\
         fails loaded isofs\nfails loaded cdrom\n\
         kmm-loader unload dummy",
    );
    g.scenario(
        "softdep-debian",
        "kmm-loader load --dir /opt --require-signature /certs/debian.der ipmi_msghandler\n\
         loaded ipmi_msghandler\nloaded ipmi_devintf\n\
         kmm-loader unload --dir /opt ipmi_msghandler\n\
         fails loaded ipmi_devintf\nfails loaded ipmi_msghandler",
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
    // Debian's modules recompressed (.ko.xz, .ko.zst): decompressed in user space, their signatures still
    // accepted by the kernel under enforcement.
    let out = console.ok("debian-loads").unwrap();
    assert!(
        out.contains("udf.ko.xz)") && out.contains("crc_itu_t.ko.zst)"),
        "{out}"
    );
    // In-tree removal like `modprobe -rv`: udf goes with crc_itu_t, which it alone used; cdrom stays while
    // isofs holds it, and goes with isofs.
    let out = console.ok("in-tree-removal-with-deps").unwrap();
    let (first, second) = out.split_once("STEP2").unwrap();
    assert!(first.contains("unload udf\n"), "{out}");
    assert!(first.contains("unload crc_itu_t\n"), "{out}");
    assert!(
        first.contains("skip cdrom: still in use (refcount 1, holders [isofs])"),
        "{out}"
    );
    assert!(
        first.find("unload udf").unwrap() < first.find("unload crc_itu_t").unwrap(),
        "{out}"
    );
    assert!(
        second.find("unload isofs").unwrap() < second.find("unload cdrom").unwrap(),
        "{out}"
    );

    // A Debian module's own softdep (ipmi_msghandler: post: ipmi_devintf), from .modinfo (Debian ships no
    // modules.softdep), verified against Debian's certificate.
    let out = console.ok("softdep-debian").unwrap();
    assert!(
        out.find("load ipmi_msghandler").unwrap() < out.find("load ipmi_devintf").unwrap(),
        "{out}"
    );
    assert!(
        out.find("unload ipmi_devintf").unwrap() < out.find("unload ipmi_msghandler").unwrap(),
        "{out}"
    );

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
