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

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

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
