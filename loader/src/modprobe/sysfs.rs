//! Host paths (everything resolves under `--host-root`) and the kernel's view of loaded modules: `/proc/modules`,
//! `/sys/module/<name>/{initstate,refcnt,holders,version}` and `modules.builtin`.

use std::path::{Path, PathBuf};

/// Host file system paths, all under one root (`/` on a node, the host mount in a container).
#[derive(Debug, Clone)]
pub struct HostPaths {
    root: PathBuf,
}

impl HostPaths {
    pub fn new(root: &Path) -> HostPaths {
        HostPaths {
            root: root.to_path_buf(),
        }
    }

    /// `path` (absolute on the host) resolved under the root.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        self.root.join(rel)
    }

    pub fn sys_module(&self, name: &str) -> PathBuf {
        self.resolve(Path::new("/sys/module")).join(normalize(name))
    }

    pub fn proc_modules(&self) -> PathBuf {
        self.resolve(Path::new("/proc/modules"))
    }

    pub fn firmware_class_path(&self) -> PathBuf {
        self.resolve(Path::new("/sys/module/firmware_class/parameters/path"))
    }

    pub fn lib_modules(&self, kernel: &str) -> PathBuf {
        self.resolve(Path::new("/lib/modules")).join(kernel)
    }
}

/// Module names compare with `-` and `_` equivalent; the kernel uses `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// One line of `/proc/modules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcModule {
    pub name: String,
    pub size: u64,
    pub refcnt: i64,
    pub used_by: Vec<String>,
    pub state: String,
}

/// Parses `/proc/modules` (`name size refcnt deps state addr`); malformed lines are skipped.
pub fn parse_proc_modules(text: &str) -> Vec<ProcModule> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let name = it.next()?.to_string();
            let size = it.next()?.parse().ok()?;
            let refcnt = it.next()?.parse().ok()?;
            let deps = it.next()?;
            let state = it.next().unwrap_or("Live").to_string();
            let used_by = deps
                .split(',')
                .filter(|d| !d.is_empty() && *d != "-")
                .map(str::to_string)
                .collect();
            Some(ProcModule {
                name,
                size,
                refcnt,
                used_by,
                state,
            })
        })
        .collect()
}

/// What the kernel says about a module name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleState {
    NotLoaded,
    /// Compiled into the kernel (in `modules.builtin`, or a `/sys/module` directory without `initstate`).
    Builtin,
    Loaded {
        refcnt: i64,
        holders: Vec<String>,
        initstate: String,
    },
}

impl HostPaths {
    /// The state of `name` from `/sys/module` (falling back to `/proc/modules` for the reference count).
    pub fn module_state(&self, name: &str, builtin: &[String]) -> ModuleState {
        let name = normalize(name);
        if builtin.contains(&name) {
            return ModuleState::Builtin;
        }
        let dir = self.sys_module(&name);
        let proc_entry = std::fs::read_to_string(self.proc_modules())
            .ok()
            .and_then(|t| parse_proc_modules(&t).into_iter().find(|m| m.name == name));
        let initstate = std::fs::read_to_string(dir.join("initstate"))
            .ok()
            .map(|s| s.trim().to_string());
        match (initstate, proc_entry) {
            (None, None) => {
                if dir.is_dir() {
                    ModuleState::Builtin
                } else {
                    ModuleState::NotLoaded
                }
            }
            (initstate, proc_entry) => {
                let refcnt = std::fs::read_to_string(dir.join("refcnt"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .or(proc_entry.as_ref().map(|p| p.refcnt))
                    .unwrap_or(0);
                let mut holders: Vec<String> = std::fs::read_dir(dir.join("holders"))
                    .map(|rd| {
                        rd.filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                if holders.is_empty() {
                    holders = proc_entry
                        .as_ref()
                        .map(|p| p.used_by.clone())
                        .unwrap_or_default();
                }
                holders.sort();
                let initstate = initstate
                    .or(proc_entry.map(|p| p.state.to_lowercase()))
                    .unwrap_or_else(|| "live".into());
                ModuleState::Loaded {
                    refcnt,
                    holders,
                    initstate,
                }
            }
        }
    }

    /// `/sys/module/<name>/version`, trimmed.
    pub fn module_version(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.sys_module(name).join("version"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Names from `lib/modules/<kernel>/modules.builtin` (paths like `kernel/fs/ext4/ext4.ko`).
    pub fn builtin_modules(&self, kernel: &str) -> Vec<String> {
        std::fs::read_to_string(self.lib_modules(kernel).join("modules.builtin"))
            .map(|t| {
                t.lines()
                    .filter_map(|l| module_name_from_path(Path::new(l.trim())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `drivers/foo/bar-baz.ko.xz` -> `bar_baz`; `None` for files that are not modules.
pub fn module_name_from_path(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|s| file.strip_suffix(s))?;
    if stem.is_empty() {
        return None;
    }
    Some(normalize(stem))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn parses_proc_modules() {
        let text = "e1000e 290816 0 - Live 0x0000000000000000\nptp 32768 1 e1000e, Live 0x0\nbroken line\nx 1 2 a,b, Loading 0x0 (OE)\n";
        let m = parse_proc_modules(text);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[0],
            ProcModule {
                name: "e1000e".into(),
                size: 290816,
                refcnt: 0,
                used_by: vec![],
                state: "Live".into()
            }
        );
        assert_eq!(m[1].used_by, vec!["e1000e".to_string()]);
        assert_eq!(m[2].used_by, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(m[2].state, "Loading");
    }

    #[test]
    fn states_from_a_fake_sysfs_tree() {
        let root = tempfile::tempdir().unwrap();
        let host = HostPaths::new(root.path());
        let sys = root.path().join("sys/module");
        std::fs::create_dir_all(sys.join("ptp/holders/e1000e")).unwrap();
        std::fs::write(sys.join("ptp/initstate"), "live\n").unwrap();
        std::fs::write(sys.join("ptp/refcnt"), "1\n").unwrap();
        std::fs::create_dir_all(sys.join("e1000e/holders")).unwrap();
        std::fs::write(sys.join("e1000e/initstate"), "live\n").unwrap();
        std::fs::write(sys.join("e1000e/refcnt"), "0\n").unwrap();
        std::fs::write(sys.join("e1000e/version"), "3.8.7-NAPI\n").unwrap();
        std::fs::create_dir_all(sys.join("printk/parameters")).unwrap();
        std::fs::create_dir_all(root.path().join("lib/modules/6.1.0-56-amd64")).unwrap();
        std::fs::write(
            root.path()
                .join("lib/modules/6.1.0-56-amd64/modules.builtin"),
            "kernel/fs/ext4/ext4.ko\n",
        )
        .unwrap();
        let builtin = host.builtin_modules("6.1.0-56-amd64");
        assert_eq!(builtin, vec!["ext4".to_string()]);
        assert_eq!(
            host.module_state("ptp", &builtin),
            ModuleState::Loaded {
                refcnt: 1,
                holders: vec!["e1000e".into()],
                initstate: "live".into()
            }
        );
        assert!(matches!(
            host.module_state("e1000e", &builtin),
            ModuleState::Loaded { refcnt: 0, .. }
        ));
        assert_eq!(host.module_state("printk", &builtin), ModuleState::Builtin);
        assert_eq!(host.module_state("ext4", &builtin), ModuleState::Builtin);
        assert_eq!(host.module_state("nope", &builtin), ModuleState::NotLoaded);
        assert_eq!(host.module_version("e1000e").as_deref(), Some("3.8.7-NAPI"));
        assert_eq!(
            host.resolve(Path::new("/lib/firmware")),
            root.path().join("lib/firmware")
        );
    }

    #[test]
    fn names_from_paths() {
        assert_eq!(
            module_name_from_path(Path::new("a/b/snd-hda-intel.ko.zst")).as_deref(),
            Some("snd_hda_intel")
        );
        assert_eq!(
            module_name_from_path(Path::new("x.ko")).as_deref(),
            Some("x")
        );
        assert_eq!(module_name_from_path(Path::new("x.o")), None);
    }
}
