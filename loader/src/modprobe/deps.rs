//! Finding modules and their dependencies like depmod/modprobe: an index of module files under
//! `lib/modules/<kernel>/` (the kmod image first, then the host's tree), dependencies from `modules.dep` when
//! present or from each module's `.modinfo depends`, and a deps-first load order.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::softdep::{SoftdepLine, parse_alias_file, parse_softdep_file};
use super::sysfs::{module_name_from_path, normalize};
use crate::modinfo;

/// Errors of dependency resolution.
#[derive(Debug, Error)]
pub enum DepsError {
    #[error("failed to find module {module} under {dirs}")]
    FindModule { module: String, dirs: String },
    #[error("failed to resolve dependencies: cycle through {0}")]
    ResolveCycle(String),
    #[error("failed to read modinfo")]
    ReadModinfo(#[source] modinfo::ModinfoError),
    #[error("failed to read {path}")]
    ReadIndexFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Module files by name, with dependencies, soft dependencies and aliases.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    pub(super) dirs: Vec<PathBuf>,
    paths: BTreeMap<String, PathBuf>,
    /// The index in `dirs` of the tree each module comes from.
    pub(super) tree: HashMap<String, usize>,
    /// From modules.dep (names); modules missing here fall back to `.modinfo depends`.
    dep_file: HashMap<String, Vec<String>>,
    /// Per tree: its `modules.softdep` lines, when the file exists (else `.modinfo softdep` is used).
    pub(super) softdep_files: Vec<Option<Vec<SoftdepLine>>>,
    /// Per tree: its `modules.alias` lines (pattern, module), when the file exists (else `.modinfo alias`).
    pub(super) alias_files: Vec<Option<Vec<(String, String)>>>,
    /// Position of each module in its tree's `modules.order`.
    order_rank: HashMap<String, usize>,
    modinfo_cache: HashMap<String, CachedInfo>,
}

/// The `.modinfo` fields dependency resolution needs, read once per module.
#[derive(Debug, Clone, Default)]
pub(super) struct CachedInfo {
    pub depends: Vec<String>,
    pub softdeps: Vec<String>,
    pub aliases: Vec<String>,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        // Follow symlinks (kmod images link in-tree modules from /host/lib/modules).
        if p.is_dir() {
            walk(&p, out);
        } else if module_name_from_path(&p).is_some() {
            out.push(p);
        }
    }
}

/// The text of `path`, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, DepsError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DepsError::ReadIndexFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses `modules.dep` (`kernel/a.ko: kernel/b.ko kernel/c.ko`, paths relative to `base` or absolute).
pub fn parse_modules_dep(text: &str, base: &Path) -> Vec<(String, PathBuf, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            let module = module.trim();
            let name = module_name_from_path(Path::new(module))?;
            let path = if module.starts_with('/') {
                PathBuf::from(module)
            } else {
                base.join(module)
            };
            let deps = deps
                .split_whitespace()
                .filter_map(|d| module_name_from_path(Path::new(d)))
                .collect();
            Some((name, path, deps))
        })
        .collect()
}

impl ModuleIndex {
    /// Indexes the module trees `dirs` (earlier ones win for duplicate names). A `modules.dep` in a tree is used
    /// for that tree's dependencies.
    pub fn build(dirs: &[PathBuf]) -> Result<ModuleIndex, DepsError> {
        let mut idx = ModuleIndex {
            dirs: dirs.to_vec(),
            ..ModuleIndex::default()
        };
        for (t, dir) in dirs.iter().enumerate() {
            if let Some(text) = read_optional(&dir.join("modules.dep"))? {
                for (name, path, deps) in parse_modules_dep(&text, dir) {
                    if !idx.paths.contains_key(&name) {
                        idx.paths.insert(name.clone(), path);
                        idx.tree.insert(name.clone(), t);
                        idx.dep_file.insert(name, deps);
                    }
                }
            }
            idx.softdep_files
                .push(read_optional(&dir.join("modules.softdep"))?.map(|t| parse_softdep_file(&t)));
            idx.alias_files
                .push(read_optional(&dir.join("modules.alias"))?.map(|t| parse_alias_file(&t)));
            if let Some(order) = read_optional(&dir.join("modules.order"))? {
                for (rank, line) in order.lines().enumerate() {
                    if let Some(name) = module_name_from_path(Path::new(line.trim())) {
                        idx.order_rank.entry(name).or_insert(rank);
                    }
                }
            }
            let mut files = Vec::new();
            walk(dir, &mut files);
            for f in files {
                if let Some(name) = module_name_from_path(&f)
                    && !idx.paths.contains_key(&name)
                {
                    idx.tree.insert(name.clone(), t);
                    idx.paths.insert(name, f);
                }
            }
        }
        Ok(idx)
    }

    /// Module names of tree `t`, sorted.
    /// Module names of tree `t`, in `modules.order` order (the kernel build's, which depmod keeps for aliases),
    /// then by name.
    pub(super) fn modules_of_tree(&self, t: usize) -> Vec<String> {
        let mut names: Vec<String> = self
            .paths
            .keys()
            .filter(|n| self.tree.get(*n) == Some(&t))
            .cloned()
            .collect();
        names.sort_by_key(|n| self.order_rank.get(n).copied().unwrap_or(usize::MAX));
        names
    }

    /// The `.modinfo` facts of `name` (read once).
    pub(super) fn info(&mut self, name: &str) -> Result<&CachedInfo, DepsError> {
        let name = normalize(name);
        if !self.modinfo_cache.contains_key(&name) {
            let path = self.path(&name)?.to_path_buf();
            let (_, info) = modinfo::read_modinfo(&path).map_err(DepsError::ReadModinfo)?;
            let cached = CachedInfo {
                depends: info.depends().iter().map(|d| normalize(d)).collect(),
                softdeps: info.get_all("softdep"),
                aliases: info.get_all("alias"),
            };
            self.modinfo_cache.insert(name.clone(), cached);
        }
        self.modinfo_cache
            .get(&name)
            .ok_or_else(|| DepsError::FindModule {
                module: name,
                dirs: String::new(),
            })
    }

    /// The file of module `name`.
    pub fn path(&self, name: &str) -> Result<&Path, DepsError> {
        self.paths
            .get(&normalize(name))
            .map(PathBuf::as_path)
            .ok_or_else(|| DepsError::FindModule {
                module: name.to_string(),
                dirs: self
                    .dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.paths.contains_key(&normalize(name))
    }

    /// Direct dependencies of `name`.
    pub fn deps(&mut self, name: &str) -> Result<Vec<String>, DepsError> {
        let name = normalize(name);
        if let Some(d) = self.dep_file.get(&name) {
            return Ok(d.clone());
        }
        Ok(self.info(&name)?.depends.clone())
    }

    /// `name` and everything it depends on, dependencies first (depth-first post-order, like modprobe).
    pub fn load_order(&mut self, name: &str) -> Result<Vec<String>, DepsError> {
        let mut done = Vec::new();
        let mut stack = Vec::new();
        self.visit(&normalize(name), &mut stack, &mut done)?;
        Ok(done)
    }

    fn visit(
        &mut self,
        name: &str,
        stack: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Result<(), DepsError> {
        if done.iter().any(|d| d == name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            stack.push(name.to_string());
            return Err(DepsError::ResolveCycle(stack.join(" -> ")));
        }
        stack.push(name.to_string());
        let mut deps = self.deps(name)?;
        if self.dep_file.contains_key(name) {
            // A modules.dep line lists ALL dependencies, users before what they use (depmod's topological
            // sort); kmod loads them in reverse line order. Visiting them in that order keeps kmod's order.
            deps.reverse();
        }
        for dep in deps {
            self.visit(&dep, stack, done)?;
        }
        stack.pop();
        done.push(name.to_string());
        Ok(())
    }
}

/// The `/etc/modprobe.d/softdep.conf` text upstream renders for an order (kept for compatibility checks).
pub fn softdep_conf(order: &[String]) -> String {
    order
        .windows(2)
        .map(|w| format!("softdep {} pre: {}\n", w[0], w[1]))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::elf::build_elf64;

    fn module(dir: &Path, rel: &str, name: &str, depends: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let modinfo = format!(
            "license=GPL\0depends={depends}\0name={name}\0vermagic=6.1.0-56-amd64 SMP mod_unload \0"
        );
        std::fs::write(p, build_elf64(&[(".modinfo", modinfo.as_bytes())])).unwrap();
    }

    #[test]
    fn orders_dependencies_first_from_modinfo() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("img");
        let host = t.path().join("host");
        module(&img, "extra/top.ko", "top", "mid-a,mid_b");
        module(&img, "extra/mid-a.ko", "mid_a", "base");
        module(&img, "extra/mid_b.ko", "mid_b", "base");
        module(&host, "kernel/base.ko", "base", "");
        module(&host, "kernel/top.ko", "top", "");
        let mut idx = ModuleIndex::build(&[img.clone(), host.clone()]).unwrap();
        assert_eq!(
            idx.load_order("top").unwrap(),
            vec!["base", "mid_a", "mid_b", "top"]
        );
        // The image's copy wins over the host's.
        assert_eq!(idx.path("top").unwrap(), img.join("extra/top.ko"));
        assert!(matches!(
            idx.path("missing"),
            Err(DepsError::FindModule { .. })
        ));
    }

    #[test]
    fn modules_dep_takes_precedence_and_cycles_are_errors() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        module(&dir, "a.ko", "a", "b");
        module(&dir, "b.ko", "b", "");
        std::fs::write(dir.join("modules.dep"), "a.ko: c.ko\nb.ko:\nc.ko: a.ko\n").unwrap();
        module(&dir, "c.ko", "c", "");
        let mut idx = ModuleIndex::build(&[dir]).unwrap();
        assert_eq!(idx.deps("a").unwrap(), vec!["c"]);
        assert_eq!(idx.load_order("b").unwrap(), vec!["b"]);
        let err = idx.load_order("a").unwrap_err();
        assert!(
            matches!(err, DepsError::ResolveCycle(ref s) if s == "a -> c -> a"),
            "{err}"
        );
    }

    #[test]
    fn modules_dep_lines_load_in_reverse_like_kmod() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        // depmod lists users first: m uses a (which uses c) and b.
        std::fs::write(
            dir.join("modules.dep"),
            "m.ko: a.ko b.ko c.ko\na.ko: c.ko\nb.ko:\nc.ko:\n",
        )
        .unwrap();
        let mut idx = ModuleIndex::build(&[dir]).unwrap();
        assert_eq!(idx.load_order("m").unwrap(), vec!["c", "b", "a", "m"]);
    }

    #[test]
    fn softdep_conf_matches_upstream() {
        let order: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(softdep_conf(&order), "softdep a pre: b\nsoftdep b pre: c\n");
    }

    #[test]
    fn parses_modules_dep_lines() {
        let v = parse_modules_dep(
            "kernel/x/a.ko.xz: kernel/y/b.ko /abs/c.ko\nbad line\n",
            Path::new("/base"),
        );
        assert_eq!(
            v,
            vec![(
                "a".into(),
                PathBuf::from("/base/kernel/x/a.ko.xz"),
                vec!["b".into(), "c".into()]
            )]
        );
    }
}
