//! Booting Debian's kernel in qemu with a test-built initramfs and reading the result from the serial console.
//!
//! A [`Guest`] is an initramfs ([`initramfs::Initramfs`]: busybox-static, our static binaries, module files)
//! plus a generated `/init` made of named scenarios. Each scenario runs in a `set -e` subshell and is framed by
//! `KMM-BEGIN <name>` / `KMM-MARK <name> rc=<n>` lines; `/init` ends with `KMM-DONE` and `poweroff -f`.
//! [`Guest::boot`] runs qemu (`-kernel vmlinux`, the PVH ELF, KVM only when a short probe boot shows it works,
//! else TCG) under a hard timeout and returns the [`Console`]. Results are judged ONLY from what the guest
//! printed, never from qemu's exit status.

pub mod initramfs;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::debian::Kernel;
use crate::{cache, cmd, debian};
pub use initramfs::Initramfs;

/// Errors of building and booting a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Command(#[from] cmd::Error),
    #[error(transparent)]
    Cache(#[from] cache::Error),
    #[error(transparent)]
    Debian(#[from] debian::Error),
    #[error(transparent)]
    Initramfs(#[from] initramfs::Error),
    #[error("failed to create a work directory for the guest")]
    WorkDir { source: io::Error },
    #[error("failed to start qemu: `{command}`")]
    SpawnQemu { command: String, source: io::Error },
    #[error("failed to wait for qemu")]
    WaitQemu { source: io::Error },
    #[error(
        "{path} is not a static executable (it has a program interpreter): the guest has no libc"
    )]
    NotStatic { path: PathBuf },
    #[error("failed to read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("failed to build static {package}: {reason}")]
    BuildStatic { package: String, reason: String },
}

/// The qemu accelerator in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => &["-accel", "tcg"],
        }
    }

    /// `KMM_QEMU_ACCEL=kvm|tcg` if set; else TCG unless `/dev/kvm` opens read-write and a probe boot of a
    /// minimal guest prints its marker within a few seconds under KVM. The probe result is cached per host boot.
    pub fn detect(kernel: &Kernel) -> Result<Accel, Error> {
        static ACCEL: OnceLock<Accel> = OnceLock::new();
        if let Some(a) = ACCEL.get() {
            return Ok(*a);
        }
        let accel = match std::env::var("KMM_QEMU_ACCEL").ok().as_deref() {
            Some("kvm") => Accel::Kvm,
            Some("tcg") => Accel::Tcg,
            _ => probe(kernel)?,
        };
        Ok(*ACCEL.get_or_init(|| accel))
    }
}

fn probe(kernel: &Kernel) -> Result<Accel, Error> {
    let usable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        return Ok(Accel::Tcg);
    }
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let record = cache::subdir("qemu")?.join(format!("kvm-probe-{}", boot_id.trim()));
    if let Ok(seen) = fs::read_to_string(&record) {
        return Ok(if seen.trim() == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        });
    }
    let mut guest = Guest::new(kernel)?;
    guest.scenario("kvm-probe", "true");
    let console = guest.boot_with(Accel::Kvm, Duration::from_secs(6))?;
    let accel = if console.scenario("kvm-probe").is_some_and(|s| s.rc == 0) {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let tmp = cache::temp_sibling(&record);
    let word = if accel == Accel::Kvm { "kvm" } else { "tcg" };
    if fs::write(&tmp, word).is_ok() {
        cache::commit_file(&tmp, &record)?;
    }
    Ok(accel)
}

/// One scenario's result as printed by the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Exit status of the scenario's subshell.
    pub rc: i32,
    /// Everything printed between its BEGIN and MARK lines (kernel console messages may be interleaved).
    pub output: String,
}

/// The serial console of one boot.
#[derive(Debug, Clone)]
pub struct Console {
    /// The full console text (`\r` removed).
    pub text: String,
    /// The accelerator used.
    pub accel: Accel,
    /// Wall time from qemu's start to its exit (or to the kill at the timeout).
    pub elapsed: Duration,
    /// Whether qemu was killed at the timeout.
    pub timed_out: bool,
    scenarios: BTreeMap<String, Scenario>,
}

impl Console {
    fn parse(text: String, accel: Accel, elapsed: Duration, timed_out: bool) -> Console {
        let mut scenarios = BTreeMap::new();
        let mut current: Option<(String, String)> = None;
        for line in text.lines() {
            if let Some(name) = marker_arg(line, "KMM-BEGIN ") {
                current = Some((name.to_owned(), String::new()));
            } else if let Some(rest) = marker_arg(line, "KMM-MARK ") {
                let mut words = rest.split_whitespace();
                let name = words.next().unwrap_or_default();
                let rc = words
                    .next()
                    .and_then(|w| w.strip_prefix("rc="))
                    .and_then(|n| n.parse().ok());
                if let (Some((cur, output)), Some(rc)) = (current.take(), rc)
                    && cur == name
                {
                    scenarios.insert(cur, Scenario { rc, output });
                }
            } else if let Some((_, output)) = current.as_mut() {
                output.push_str(line);
                output.push('\n');
            }
        }
        Console {
            text,
            accel,
            elapsed,
            timed_out,
            scenarios,
        }
    }

    /// The scenario `name`, if the guest printed both of its markers.
    pub fn scenario(&self, name: &str) -> Option<&Scenario> {
        self.scenarios.get(name)
    }

    /// Whether `/init` reached its end (`KMM-DONE`).
    pub fn done(&self) -> bool {
        self.text.lines().any(|l| l.trim_end() == "KMM-DONE")
    }

    /// The output of scenario `name` if it ran and exited 0, else a report with the console tail.
    pub fn ok(&self, name: &str) -> Result<&str, ScenarioFailed> {
        match self.scenario(name) {
            Some(s) if s.rc == 0 => Ok(&s.output),
            other => Err(self.failed(name, other)),
        }
    }

    fn failed(&self, name: &str, scenario: Option<&Scenario>) -> ScenarioFailed {
        let tail: Vec<&str> = self.text.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        ScenarioFailed {
            name: name.to_owned(),
            rc: scenario.map(|s| s.rc),
            output: scenario.map(|s| s.output.clone()).unwrap_or_default(),
            console_tail: tail.join("\n"),
            timed_out: self.timed_out,
        }
    }
}

/// A scenario that did not run or exited non-zero, with what the guest printed.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "guest scenario {name} failed (rc {rc:?}, qemu timed out: {timed_out})\n--- scenario output ---\n{output}\n--- console tail ---\n{console_tail}"
)]
pub struct ScenarioFailed {
    pub name: String,
    pub rc: Option<i32>,
    pub output: String,
    pub console_tail: String,
    pub timed_out: bool,
}

/// `rest` after `prefix` anywhere in the line (kernel messages may precede a marker on the same line).
fn marker_arg<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.find(prefix).map(|i| line[i + prefix.len()..].trim())
}

/// Shell functions available to every scenario.
const PRELUDE: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
# fails CMD...: succeed (printing the status) only if CMD fails.
fails() {
    rc=0
    "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then echo "KMM-UNEXPECTED-SUCCESS: $*"; return 1; fi
    echo "KMM-FAILED-AS-EXPECTED rc=$rc"
}
# loaded NAME: succeed if module NAME is in /proc/modules.
loaded() { grep -q "^$1 " /proc/modules; }
echo "KMM-READY $(uname -r)"
"#;

/// A guest under construction: its initramfs, `/init` scenarios and kernel command line.
#[derive(Debug, Clone)]
pub struct Guest {
    kernel: Kernel,
    /// The initramfs; add files with its methods.
    pub fs: Initramfs,
    scenarios: Vec<(String, String)>,
    cmdline: Vec<String>,
    dmesg_at_end: bool,
}

impl Guest {
    /// A guest with busybox-static installed as `/bin/busybox`.
    pub fn new(kernel: &Kernel) -> Result<Guest, Error> {
        cmd::require("qemu-system-x86_64")?;
        let busybox = PathBuf::from("/bin/busybox");
        if !busybox.is_file() {
            return Err(cmd::Error::MissingTool {
                tool: "busybox (package busybox-static)".into(),
            }
            .into());
        }
        require_static(&busybox)?;
        let mut fs = Initramfs::new();
        fs.copy("/bin/busybox", &busybox, true)?;
        fs.symlink("/bin/sh", "busybox");
        Ok(Guest {
            kernel: kernel.clone(),
            fs,
            scenarios: Vec::new(),
            cmdline: Vec::new(),
            dmesg_at_end: false,
        })
    }

    /// Add a static executable at `guest_path` (refused if it needs a dynamic loader).
    pub fn add_static_binary(&mut self, guest_path: &str, host: &Path) -> Result<&mut Self, Error> {
        require_static(host)?;
        self.fs.copy(guest_path, host, true)?;
        Ok(self)
    }

    /// Copy Debian's in-tree modules `names` and their dependency closure to
    /// `<guest_root>/lib/modules/<release>/kernel/...` (their path in the package). Returns (module name, guest
    /// path) in load order, dependencies first. No modules.dep is written (Debian ships none).
    pub fn add_in_tree_modules(
        &mut self,
        guest_root: &str,
        names: &[&str],
    ) -> Result<Vec<(String, String)>, Error> {
        let modules_dir = self.kernel.modules_dir();
        let mut added = Vec::new();
        for (name, path) in self.kernel.module_closure(names)? {
            let rel = path.strip_prefix(&modules_dir).unwrap_or(&path);
            let guest = format!(
                "{}/lib/modules/{}/{}",
                guest_root.trim_end_matches('/'),
                self.kernel.release(),
                rel.display()
            );
            self.fs.copy(&guest, &path, false)?;
            added.push((name, guest));
        }
        Ok(added)
    }

    /// Append a kernel command-line word (e.g. `module.sig_enforce=1`).
    pub fn cmdline(&mut self, word: &str) -> &mut Self {
        self.cmdline.push(word.to_owned());
        self
    }

    /// Append a scenario: `body` runs in a `set -e` subshell; its output and status are reported.
    pub fn scenario(&mut self, name: &str, body: &str) -> &mut Self {
        self.scenarios.push((name.to_owned(), body.to_owned()));
        self
    }

    /// Print the kernel log (between `KMM-DMESG-BEGIN`/`-END`) before powering off, for diagnosis.
    pub fn dmesg_at_end(&mut self, on: bool) -> &mut Self {
        self.dmesg_at_end = on;
        self
    }

    /// The generated `/init`.
    pub fn init_script(&self) -> String {
        render_init(&self.scenarios, self.dmesg_at_end)
    }

    /// Boot with the detected accelerator; qemu is killed after `timeout`.
    pub fn boot(&self, timeout: Duration) -> Result<Console, Error> {
        let accel = Accel::detect(&self.kernel)?;
        self.boot_with(accel, timeout)
    }

    /// Boot with the given accelerator; qemu is killed after `timeout`.
    pub fn boot_with(&self, accel: Accel, timeout: Duration) -> Result<Console, Error> {
        let work = tempfile::Builder::new()
            .prefix("kmm-guest-")
            .tempdir()
            .map_err(|source| Error::WorkDir { source })?;
        let mut fs = self.fs.clone();
        fs.file("/init", self.init_script(), 0o755);
        let initrd = work.path().join("initrd.gz");
        fs.write_gz(&initrd)?;
        let kernel_image = match self.kernel.vmlinux() {
            Ok(vmlinux) => vmlinux,
            Err(_) => self.kernel.vmlinuz(),
        };
        let mut append = String::from("console=ttyS0 panic=-1 quiet");
        for word in &self.cmdline {
            append.push(' ');
            append.push_str(word);
        }
        let console_log = work.path().join("console.log");
        let log = fs::File::create(&console_log).map_err(|source| Error::Read {
            path: console_log.clone(),
            source,
        })?;
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(accel.args())
            .args([
                "-m",
                "512",
                "-smp",
                "1",
                "-nographic",
                "-no-reboot",
                "-nic",
                "none",
            ])
            .arg("-kernel")
            .arg(&kernel_image)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(&append)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::piped());
        let command = cmd::display(&qemu);
        let start = Instant::now();
        let mut child = qemu
            .spawn()
            .map_err(|source| Error::SpawnQemu { command, source })?;
        let mut timed_out = false;
        loop {
            match child
                .try_wait()
                .map_err(|source| Error::WaitQemu { source })?
            {
                Some(_) => break,
                None if start.elapsed() >= timeout => {
                    timed_out = true;
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let elapsed = start.elapsed();
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let raw = fs::read(&console_log).map_err(|source| Error::Read {
            path: console_log.clone(),
            source,
        })?;
        let mut text = String::from_utf8_lossy(&raw).replace('\r', "");
        if !stderr.trim().is_empty() {
            text.push_str("\n[qemu stderr] ");
            text.push_str(stderr.trim());
            text.push('\n');
        }
        Ok(Console::parse(text, accel, elapsed, timed_out))
    }
}

fn render_init(scenarios: &[(String, String)], dmesg_at_end: bool) -> String {
    let mut s = String::from(PRELUDE);
    for (name, body) in scenarios {
        s.push_str(&format!(
            "echo 'KMM-BEGIN {name}'\n(\nset -e\n{body}\n) </dev/null 2>&1\n"
        ));
        s.push_str(&format!("echo \"KMM-MARK {name} rc=$?\"\n"));
    }
    if dmesg_at_end {
        s.push_str("echo KMM-DMESG-BEGIN\ndmesg\necho KMM-DMESG-END\n");
    }
    s.push_str("echo KMM-DONE\nsync\npoweroff -f\n");
    s
}

/// Refuse executables with a program interpreter (`PT_INTERP`): the guest has no dynamic loader.
pub fn require_static(path: &Path) -> Result<(), Error> {
    let data = fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    match has_interpreter(&data) {
        Some(false) => Ok(()),
        Some(true) => Err(Error::NotStatic {
            path: path.to_owned(),
        }),
        None => Err(Error::Read {
            path: path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                "not a little-endian ELF64 executable",
            ),
        }),
    }
}

/// Whether a little-endian ELF64 file has a `PT_INTERP` program header (`None`: not such a file).
fn has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return None;
    }
    let u16_at = |off: usize| {
        elf.get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let phoff = usize::try_from(u64::from_le_bytes(elf.get(0x20..0x28)?.try_into().ok()?)).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?);
        if p_type == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

/// Build `package`'s binary `bin` as a fully static executable (glibc's libc.a, static-pie) and return its path.
///
/// Uses `RUSTFLAGS=-C target-feature=+crt-static`, an explicit `--target` (so build scripts and proc-macros stay
/// dynamic) and its own target directory (`<cache>/static-target`), so it never fights the normal build's flags.
/// The release profile is used without LTO (see below).
pub fn build_static(package: &str, bin: &str) -> Result<PathBuf, Error> {
    const TARGET: &str = "x86_64-unknown-linux-gnu";
    let target_dir = cache::subdir("static-target")?;
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "-p",
            package,
            "--bin",
            bin,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // No LTO and more codegen units: a change to the loader recompiles one crate instead of relinking
        // everything through thin LTO (minutes on 2 cores); the guest does not need the last few percent.
        .env("CARGO_PROFILE_RELEASE_LTO", "false")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    cmd::run(&mut build).map_err(|e| Error::BuildStatic {
        package: package.to_owned(),
        reason: e.to_string(),
    })?;
    let path = target_dir.join(TARGET).join("release").join(bin);
    require_static(&path)?;
    Ok(path)
}

/// The static `kmm-loader` for the guest: `$KMM_STATIC_LOADER` if set (a prebuilt static binary), else built
/// from this workspace by [`build_static`].
pub fn static_kmm_loader() -> Result<PathBuf, Error> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = BUILT.get() {
        return Ok(p.clone());
    }
    let path = match std::env::var_os("KMM_STATIC_LOADER").filter(|p| !p.is_empty()) {
        Some(prebuilt) => {
            let prebuilt = PathBuf::from(prebuilt);
            require_static(&prebuilt)?;
            prebuilt
        }
        None => build_static("kmm-loader", "kmm-loader")?,
    };
    Ok(BUILT.get_or_init(|| path).clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn console_parsing_finds_scenarios_and_tolerates_kernel_noise() {
        let text = "KMM-READY 6.1\nKMM-BEGIN a\nline 1\n[    1.0] noise KMM-MARK a rc=0\nKMM-BEGIN b\nboom\n\
                    KMM-MARK b rc=3\nKMM-BEGIN c\nKMM-DONE\n"
            .to_owned();
        let c = Console::parse(text, Accel::Tcg, Duration::ZERO, false);
        assert_eq!(
            c.scenario("a"),
            Some(&Scenario {
                rc: 0,
                output: "line 1\n".into()
            })
        );
        assert_eq!(c.scenario("b").map(|s| s.rc), Some(3));
        assert!(c.scenario("c").is_none(), "no MARK, no result");
        assert!(c.ok("a").is_ok());
        let err = c.ok("b").unwrap_err();
        assert_eq!(err.rc, Some(3));
        assert!(err.to_string().contains("boom"));
        assert!(c.done());
    }

    #[test]
    fn interpreter_detection() {
        assert_eq!(
            has_interpreter(&std::fs::read("/bin/busybox").unwrap()),
            Some(false),
            "busybox-static"
        );
        assert_eq!(
            has_interpreter(&std::fs::read("/bin/ls").unwrap()),
            Some(true)
        );
        assert_eq!(has_interpreter(b"#!/bin/sh"), None);
    }

    #[test]
    fn init_script_frames_scenarios_and_powers_off() {
        let init = render_init(&[("x".into(), "echo hi".into())], true);
        assert!(init.starts_with("#!/bin/busybox sh\n"));
        assert!(init.contains(
            "echo 'KMM-BEGIN x'\n(\nset -e\necho hi\n) </dev/null 2>&1\necho \"KMM-MARK x rc=$?\"\n"
        ));
        assert!(init.contains("dmesg"));
        assert!(init.trim_end().ends_with("poweroff -f"));
    }
}
