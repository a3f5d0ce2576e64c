//! Running host tools (apt-get, dpkg, make, xz, qemu) with errors that say what ran and what it printed.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The script that installs every system package the end-to-end tests need.
pub const SETUP_SCRIPT: &str = "tests/setup/install-deps.sh";

/// Errors of running host tools.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("required tool `{tool}` is not installed: run {SETUP_SCRIPT} (as root) first")]
    MissingTool { tool: String },
    #[error("failed to start `{command}`")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Find `tool` in `PATH` (and the sbin directories, where kmod and dpkg tools live).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// Like [`which`], but an absent tool is an error naming the setup script.
pub fn require(tool: &str) -> Result<PathBuf, Error> {
    which(tool).ok_or_else(|| Error::MissingTool {
        tool: tool.to_owned(),
    })
}

/// Render a command line for messages.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Run `cmd` to completion; a non-zero exit is an error carrying its stderr.
pub fn run(cmd: &mut Command) -> Result<Output, Error> {
    let command = display(cmd);
    let out = cmd.output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        Err(Error::Failed {
            command,
            status: out.status.to_string(),
            stderr,
        })
    }
}

/// Run `cmd` and return its stdout as text.
pub fn stdout(cmd: &mut Command) -> Result<String, Error> {
    run(cmd).map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
}
