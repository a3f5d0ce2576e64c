//! Driving the real `kmm-device-plugin` binary in the tests: a temporary host tree (`sys/module`, `dev`), a Modules
//! directory and a device plugin directory, and the plugin process with its log.
//!
//! The binary is `$KMM_DEVICE_PLUGIN_BIN` when set; otherwise `kmm-device-plugin` in the target directory the test
//! binary lives in, rebuilt with `cargo build -p kmm-device-plugin` when it is missing or older than the sources of
//! `device-plugin/` and `api/` (cargo's lock is not taken when it is fresh, so tests do not wait on other builds).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Building the binary failed.
    #[error("failed to build kmm-device-plugin: {0}")]
    Build(String),
    /// A file operation failed.
    #[error("failed to {op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Starting or signalling the process failed.
    #[error("failed to {0} the plugin process")]
    Process(&'static str, #[source] std::io::Error),
    /// The process did not exit in time.
    #[error("the plugin process did not exit within {0:?}")]
    ExitTimeout(Duration),
    /// The HTTP request failed.
    #[error("failed to GET {0}")]
    Http(String, #[source] std::io::Error),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HarnessError {
    let path = path.to_path_buf();
    move |source| HarnessError::Io { op, path, source }
}

/// The `kmm-device-plugin` binary, built on first use.
pub fn binary() -> Result<PathBuf, HarnessError> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("KMM_DEVICE_PLUGIN_BIN") {
            return Ok(PathBuf::from(p));
        }
        // <target>/<profile>/deps/<test binary>
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .ok_or("no target directory")?;
        let target_dir = profile_dir.parent().ok_or("no target directory")?;
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let bin = profile_dir.join("kmm-device-plugin");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        let sources = ["device-plugin", "api", "Cargo.lock"]
            .iter()
            .filter_map(|d| newest(&workspace.join(d)))
            .max();
        if let (Some(built), Some(sources)) = (built, sources)
            && built >= sources
        {
            return Ok(bin);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "kmm-device-plugin",
            "--bin",
            "kmm-device-plugin",
            "--target-dir",
        ])
        .arg(target_dir)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        if profile == "release" {
            cmd.arg("--release");
        }
        let out = cmd.output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(bin)
    })
    .clone()
    .map_err(HarnessError::Build)
}

/// The newest modification time of the files under `path` (or of the file itself).
fn newest(path: &Path) -> Option<std::time::SystemTime> {
    let md = std::fs::metadata(path).ok()?;
    if !md.is_dir() {
        return md.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter_map(|e| newest(&e.path()))
        .max()
}

/// A temporary node: host tree, Modules directory and device plugin directory.
pub struct Node {
    root: tempfile::TempDir,
}

impl Node {
    /// Creates the directories (`host/sys/module`, `host/dev`, `modules`, `plugins`).
    pub fn new() -> Result<Self, HarnessError> {
        let root = tempfile::Builder::new()
            .prefix("kmm-dp")
            .tempdir()
            .map_err(io("create", Path::new("/tmp")))?;
        for d in ["host/sys/module", "host/dev", "modules", "plugins"] {
            let p = root.path().join(d);
            std::fs::create_dir_all(&p).map_err(io("create", &p))?;
        }
        Ok(Self { root })
    }

    /// `--host-root`.
    pub fn host_root(&self) -> PathBuf {
        self.root.path().join("host")
    }

    /// `--modules-from`.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.path().join("modules")
    }

    /// `--device-plugin-dir`.
    pub fn plugin_dir(&self) -> PathBuf {
        self.root.path().join("plugins")
    }

    /// Where the plugin's log goes.
    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("plugin.log")
    }

    /// The kmod `name` is loaded (`sys/module/<name>/initstate` = `live`).
    pub fn load(&self, kmod: &str) -> Result<(), HarnessError> {
        let d = self.host_root().join("sys/module").join(kmod);
        std::fs::create_dir_all(&d).map_err(io("create", &d))?;
        write_atomic(&d.join("initstate"), "live\n")
    }

    /// The kmod `name` is unloaded (its `sys/module` directory goes).
    pub fn unload(&self, kmod: &str) -> Result<(), HarnessError> {
        let d = self.host_root().join("sys/module").join(kmod);
        std::fs::remove_dir_all(&d).map_err(io("remove", &d))
    }

    /// A device node appears at host path `/dev/<rel>`.
    pub fn add_dev(&self, rel: &str) -> Result<(), HarnessError> {
        let p = self.host_root().join("dev").join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        std::fs::write(&p, "").map_err(io("write", &p))
    }

    /// The device node `/dev/<rel>` goes.
    pub fn remove_dev(&self, rel: &str) -> Result<(), HarnessError> {
        let p = self.host_root().join("dev").join(rel);
        std::fs::remove_file(&p).map_err(io("remove", &p))
    }

    /// Writes a Modules file (atomically).
    pub fn write_modules(&self, file: &str, yaml: &str) -> Result<(), HarnessError> {
        write_atomic(&self.modules_dir().join(file), yaml)
    }

    /// Files in the device plugin directory.
    pub fn plugin_dir_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.plugin_dir())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<(), HarnessError> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))
}

/// A Module YAML document with a devices section (`devices` is the YAML flow mapping of `spec.devices`).
pub fn module_yaml(name: &str, kmod: Option<&str>, selector: &str, devices: &str) -> String {
    let loader = kmod.map_or(String::new(), |k| {
        format!(
            "  moduleLoader:\n    container:\n      modprobe: {{moduleName: {k}}}\n      kernelMappings: [{{regexp: '^.+$', containerImage: 'registry.example/kmod:${{KERNEL_FULL_VERSION}}'}}]\n"
        )
    });
    format!(
        "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata: {{name: {name}, namespace: kmm}}\nspec:\n  selector: {selector}\n{loader}  devices: {devices}\n"
    )
}

/// The running plugin process.
pub struct Plugin {
    child: Option<Child>,
    log: PathBuf,
}

impl Plugin {
    /// Starts the plugin in standalone mode on `node` with `--node-labels labels`, health on 127.0.0.1 port 0,
    /// a 200 ms poll and the given extra flags (e.g. `--unhealthy-grace 1s`). The log is appended to; the plugin's
    /// `RUST_LOG` is `$KMM_TEST_PLUGIN_LOG` (default `info`).
    pub fn start(node: &Node, labels: &str, extra: &[&str]) -> Result<Self, HarnessError> {
        Self::start_with(&binary()?, node, labels, extra)
    }

    /// [`Plugin::start`] with the binary `bin` (e.g. a release build for the benchmark).
    pub fn start_with(
        bin: &Path,
        node: &Node,
        labels: &str,
        extra: &[&str],
    ) -> Result<Self, HarnessError> {
        let log_path = node.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io("open", &log_path))?;
        let log2 = log.try_clone().map_err(io("open", &log_path))?;
        let child = Command::new(bin)
            .arg("--host-root")
            .arg(node.host_root())
            .arg("--device-plugin-dir")
            .arg(node.plugin_dir())
            .arg("--modules-from")
            .arg(node.modules_dir())
            .args([
                "--node-labels",
                labels,
                "--health-listen",
                "127.0.0.1:0",
                "--poll-interval",
                "200ms",
            ])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("KMM_TEST_PLUGIN_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log)
            .spawn()
            .map_err(|e| HarnessError::Process("start", e))?;
        Ok(Self {
            child: Some(child),
            log: log_path,
        })
    }

    /// The process ID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The health server's address (the last one logged), waiting up to 5 s for it.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self
                .log()
                .lines()
                .rev()
                .filter(|l| l.contains("health and metrics listening"))
                .filter_map(|l| l.split("addr=").nth(1))
                .filter_map(|a| a.split_whitespace().next())
                .find_map(|a| a.parse().ok());
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `sig` and waits for the exit (at most 5 s).
    fn signal_and_wait(
        &mut self,
        sig: rustix::process::Signal,
    ) -> Result<ExitStatus, HarnessError> {
        let Some(mut child) = self.child.take() else {
            return Err(HarnessError::Process(
                "signal",
                std::io::Error::other("already stopped"),
            ));
        };
        rustix::process::kill_process(rustix::process::Pid::from_child(&child), sig)
            .map_err(|e| HarnessError::Process("signal", e.into()))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| HarnessError::Process("wait for", e))?
            {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::ExitTimeout(Duration::from_secs(5)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> Result<ExitStatus, HarnessError> {
        self.signal_and_wait(rustix::process::Signal::TERM)
    }

    /// SIGKILL (no clean-up by the plugin).
    pub fn kill(&mut self) -> Result<ExitStatus, HarnessError> {
        self.signal_and_wait(rustix::process::Signal::KILL)
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), HarnessError> {
    let err = |e| HarnessError::Http(format!("http://{addr}{path}"), e);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(err)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(err)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(err)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}
