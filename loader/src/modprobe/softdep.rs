//! Soft dependencies, followed the way kmod's modprobe follows them.
//!
//! - Where they come from: a tree's `modules.softdep` (depmod's output, one `softdep MODULE pre: ... post: ...`
//!   line per `.modinfo softdep` value) or, for a tree without that file, each module's own `.modinfo softdep`
//!   values (what depmod would write); then the lines of `/etc/modprobe.d/softdep.conf` that upstream KMM renders
//!   for modulesLoadingOrder. libkmod reads `modules.softdep` before `softdep.conf` (its config files are sorted
//!   by name) and only the FIRST line matching a module counts (`kmod_module_get_softdeps`), so a module's own
//!   softdep shadows an order line for the same module, and of several `MODULE_SOFTDEP`s only the first counts.
//! - How names resolve (`kmod_module_new_from_lookup`): a module name, else an alias (`modules.alias`, or
//!   `.modinfo alias` for a tree without it; every matching module), else a built-in module or alias.
//! - The probe list (`__kmod_module_get_probe_list`): for the module and each of its dependencies (load order),
//!   its pre-softdeps (each with its own dependencies and softdeps), the module, its post-softdeps. Only the
//!   requested module and its dependencies are *required*: a softdep that is missing or fails to load is
//!   skipped (`kmod_module_probe_insert_module`: "Ignore errors from softdeps").

use std::collections::HashSet;
use std::path::Path;

use super::deps::{DepsError, ModuleIndex};
use super::sysfs::{HostPaths, normalize};

/// One `softdep MODULE pre: A B post: C` line (`pattern` is a shell glob over module names).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SoftdepLine {
    pub pattern: String,
    pub pre: Vec<String>,
    pub post: Vec<String>,
}

/// Parses a softdep value (`pre: a b post: c`) like `kmod_config_add_softdep`: words after `pre:` are
/// pre-softdeps, after `post:` post-softdeps; words before either are ignored.
pub fn parse_softdep_value(pattern: &str, value: &str) -> SoftdepLine {
    enum Mode {
        None,
        Pre,
        Post,
    }
    let mut line = SoftdepLine {
        pattern: normalize_alias(pattern),
        ..SoftdepLine::default()
    };
    let mut mode = Mode::None;
    for word in value.split_whitespace() {
        match word {
            "pre:" => mode = Mode::Pre,
            "post:" => mode = Mode::Post,
            w => match mode {
                Mode::Pre => line.pre.push(w.to_string()),
                Mode::Post => line.post.push(w.to_string()),
                Mode::None => {}
            },
        }
    }
    line
}

/// The `softdep` lines of modprobe.d-style text (`modules.softdep`, `softdep.conf`); other commands and `#`
/// comments are ignored.
pub fn parse_softdep_file(text: &str) -> Vec<SoftdepLine> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix("softdep")?;
            if !rest.starts_with([' ', '\t']) {
                return None;
            }
            let rest = rest.trim_start();
            let end = rest.find([' ', '\t']).unwrap_or(rest.len());
            let (module, value) = rest.split_at(end);
            if module.is_empty() {
                return None;
            }
            Some(parse_softdep_value(module, value))
        })
        .collect()
}

/// The `alias PATTERN MODULE` lines of `modules.alias` (normalized).
pub fn parse_alias_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "alias").then_some(())?;
            let pattern = w.next()?;
            let module = w.next()?;
            Some((normalize_alias(pattern), normalize(module)))
        })
        .collect()
}

/// kmod's `alias_normalize`: `-` becomes `_` except inside `[...]`.
pub fn normalize_alias(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_class = false;
    for c in s.chars() {
        match c {
            '[' => in_class = true,
            ']' => in_class = false,
            _ => {}
        }
        out.push(if c == '-' && !in_class { '_' } else { c });
    }
    out
}

/// `fnmatch(pattern, name, 0)`: `*`, `?`, `[...]` (with `!`/`^` negation and ranges) and `\` escapes.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_at(&p, &n)
}

fn glob_at(p: &[char], n: &[char]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    // Backtracking point for the last `*`: (pattern index after it, name index it matched up to).
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => class_match(&p[pi..], n[ni]),
            Some('\\') if pi + 1 < p.len() => (p[pi + 1] == n[ni]).then_some(2),
            Some(c) => (*c == n[ni]).then_some(1),
            None => None,
        };
        match step {
            Some(len) => {
                pi += len;
                ni += 1;
            }
            None => match star {
                Some((sp, sn)) => {
                    pi = sp;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class at the start of `p` (`[...]`); the class length when it matches.
fn class_match(p: &[char], c: char) -> Option<usize> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == ']' && !first {
            break;
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|hi| *hi != ']') {
            let hi = p[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
    (matched != negate).then_some(i + 1)
}

/// Built-in modules of the running kernel: names (`modules.builtin`) and, read on first use, aliases
/// (`modules.builtin.alias`, else `modules.builtin.modinfo`).
#[derive(Debug, Clone)]
pub struct Builtins {
    pub names: Vec<String>,
    aliases: Option<Vec<(String, String)>>,
    dir: std::path::PathBuf,
}

impl Builtins {
    pub fn load(host: &HostPaths, kernel: &str) -> Builtins {
        Builtins {
            names: host.builtin_modules(kernel),
            aliases: None,
            dir: host.lib_modules(kernel),
        }
    }

    fn aliases(&mut self) -> &[(String, String)] {
        let dir = &self.dir;
        self.aliases
            .get_or_insert_with(|| read_builtin_aliases(dir))
    }
}

fn read_builtin_aliases(dir: &Path) -> Vec<(String, String)> {
    if let Ok(text) = std::fs::read_to_string(dir.join("modules.builtin.alias")) {
        return parse_alias_file(&text);
    }
    // `module.key=value\0...`, what the kernel build writes and depmod turns into modules.builtin.alias.
    let Ok(bytes) = std::fs::read(dir.join("modules.builtin.modinfo")) else {
        return Vec::new();
    };
    bytes
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = std::str::from_utf8(entry).ok()?;
            let (module, rest) = entry.split_once('.')?;
            let alias = rest.strip_prefix("alias=")?;
            Some((normalize_alias(alias), normalize(module)))
        })
        .collect()
}

/// What a softdep name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Module files (one for a name, every match for an alias).
    Modules(Vec<String>),
    /// Compiled into the kernel (by name or alias).
    Builtin(String),
    NotFound,
}

impl ModuleIndex {
    /// The softdep line that applies to `name`: per tree (image first), its `modules.softdep` or, without
    /// one, the module's first `.modinfo softdep` value; then `extra` (softdep.conf). The first match wins.
    pub fn softdep(
        &mut self,
        name: &str,
        extra: &[SoftdepLine],
    ) -> Result<Option<SoftdepLine>, DepsError> {
        let name = normalize(name);
        for t in 0..self.dirs.len() {
            match &self.softdep_files[t] {
                Some(lines) => {
                    if let Some(l) = lines.iter().find(|l| glob_match(&l.pattern, &name)) {
                        return Ok(Some(l.clone()));
                    }
                }
                None if self.tree.get(&name) == Some(&t) => {
                    if let Some(v) = self.info(&name)?.softdeps.first() {
                        return Ok(Some(parse_softdep_value(&name, v)));
                    }
                }
                None => {}
            }
        }
        Ok(extra
            .iter()
            .find(|l| glob_match(&l.pattern, &name))
            .cloned())
    }

    /// Resolves a softdep name like `kmod_module_new_from_lookup`: module name, aliases, built-ins.
    pub fn resolve(&mut self, name: &str, builtins: &mut Builtins) -> Resolved {
        let key = normalize_alias(name);
        if self.contains(&key) {
            return Resolved::Modules(vec![normalize(&key)]);
        }
        let mut found: Vec<String> = Vec::new();
        for t in 0..self.dirs.len() {
            let candidates: Vec<String> = match &self.alias_files[t] {
                Some(lines) => lines
                    .iter()
                    .filter(|(pattern, _)| glob_match(pattern, &key))
                    .map(|(_, m)| m.clone())
                    .collect(),
                None => self
                    .modules_of_tree(t)
                    .into_iter()
                    .filter(|m| {
                        self.info(m).is_ok_and(|i| {
                            i.aliases
                                .iter()
                                .any(|a| glob_match(&normalize_alias(a), &key))
                        })
                    })
                    .collect(),
            };
            for m in candidates {
                if self.contains(&m) && !found.contains(&m) {
                    found.push(m);
                }
            }
        }
        if !found.is_empty() {
            return Resolved::Modules(found);
        }
        let plain = normalize(&key);
        if builtins.names.contains(&plain) {
            return Resolved::Builtin(plain);
        }
        match builtins
            .aliases()
            .iter()
            .find(|(pattern, _)| glob_match(pattern, &key))
        {
            Some((_, m)) => Resolved::Builtin(m.clone()),
            None => Resolved::NotFound,
        }
    }
}

/// One entry of a probe list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Load `module`. `required`: the requested module or one of its dependencies (a failure is fatal);
    /// otherwise it is (only) a softdep, and a failure is skipped.
    Module { module: String, required: bool },
    /// A softdep compiled into the kernel (by name or alias): nothing to load.
    Builtin { module: String },
    /// A softdep that could not be resolved or whose dependencies could not be read (skipped, as kmod does).
    Unresolved { name: String, reason: String },
}

struct Prober<'a> {
    index: &'a mut ModuleIndex,
    extra: &'a [SoftdepLine],
    builtins: &'a mut Builtins,
    visited: HashSet<String>,
    required: HashSet<String>,
    list: Vec<Probe>,
}

/// The modules to load for `target`, in order, with softdeps (kmod's probe list). Errors concern the target
/// and its dependencies only.
pub fn probe_list(
    index: &mut ModuleIndex,
    extra: &[SoftdepLine],
    builtins: &mut Builtins,
    target: &str,
) -> Result<Vec<Probe>, DepsError> {
    let mut p = Prober {
        index,
        extra,
        builtins,
        visited: HashSet::new(),
        required: HashSet::new(),
        list: Vec::new(),
    };
    p.probe(&normalize(target), true)?;
    let required = p.required;
    Ok(p.list
        .into_iter()
        .map(|e| match e {
            Probe::Module { module, .. } => Probe::Module {
                required: required.contains(&module),
                module,
            },
            other => other,
        })
        .collect())
}

impl Prober<'_> {
    fn probe(&mut self, m: &str, required: bool) -> Result<(), DepsError> {
        if !self.visited.insert(m.to_string()) {
            return Ok(());
        }
        let mut deps = self.index.load_order(m)?;
        deps.pop();
        if required {
            self.required.insert(m.to_string());
            self.required.extend(deps.iter().cloned());
        }
        for d in &deps {
            self.fill_softdep(d)?;
        }
        self.fill_softdep(m)
    }

    fn fill_softdep(&mut self, m: &str) -> Result<(), DepsError> {
        let line = self.index.softdep(m, self.extra)?.unwrap_or_default();
        for name in &line.pre {
            self.soft(name);
        }
        self.list.push(Probe::Module {
            module: m.to_string(),
            required: false,
        });
        for name in &line.post {
            self.soft(name);
        }
        Ok(())
    }

    /// A softdep: resolved and probed; whatever goes wrong is recorded, never fatal.
    fn soft(&mut self, name: &str) {
        let modules = match self.index.resolve(name, self.builtins) {
            Resolved::Modules(m) => m,
            Resolved::Builtin(module) => {
                self.list.push(Probe::Builtin { module });
                return;
            }
            Resolved::NotFound => {
                self.list.push(Probe::Unresolved {
                    name: name.to_string(),
                    reason: "not found (softdep skipped, as modprobe does)".into(),
                });
                return;
            }
        };
        for m in modules {
            let mark = self.list.len();
            if let Err(e) = self.probe(&m, false) {
                self.list.truncate(mark);
                self.list.push(Probe::Unresolved {
                    name: m,
                    reason: format!("{e} (softdep skipped)"),
                });
            }
        }
    }
}

/// Module names in a softdep line, for messages.
pub fn describe(line: &SoftdepLine) -> String {
    let mut s = String::new();
    if !line.pre.is_empty() {
        s.push_str("pre: ");
        s.push_str(&line.pre.join(" "));
    }
    if !line.post.is_empty() {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str("post: ");
        s.push_str(&line.post.join(" "));
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn parses_softdep_values_like_kmod() {
        assert_eq!(
            parse_softdep_value("kmm-x", "pre: a b-c post: d"),
            SoftdepLine {
                pattern: "kmm_x".into(),
                pre: vec!["a".into(), "b-c".into()],
                post: vec!["d".into()],
            }
        );
        // Words before pre:/post: are ignored; modes can repeat.
        let l = parse_softdep_value("m", "gcm pre: a post: b pre: c");
        assert_eq!(l.pre, vec!["a", "c"]);
        assert_eq!(l.post, vec!["b"]);
        assert_eq!(
            parse_softdep_value("m", "sha512"),
            SoftdepLine {
                pattern: "m".into(),
                ..SoftdepLine::default()
            }
        );
    }

    #[test]
    fn parses_softdep_and_alias_files() {
        let lines = parse_softdep_file(
            "# comment\nsoftdep ext4 pre: crypto-crc32c\nsoftdep\tvfio post: vfio_iommu_type1\nalias x y\nsoftdepx a pre: b\n",
        );
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].pattern, "ext4");
        assert_eq!(lines[0].pre, vec!["crypto-crc32c"]);
        assert_eq!(lines[1].post, vec!["vfio_iommu_type1"]);
        assert_eq!(
            parse_alias_file(
                "# Aliases\nalias crypto-crc32c crc32c_generic\nalias pci:v*d* snd-hda\n"
            ),
            vec![
                ("crypto_crc32c".to_string(), "crc32c_generic".to_string()),
                ("pci:v*d*".to_string(), "snd_hda".to_string())
            ]
        );
    }

    #[test]
    fn globs_like_fnmatch() {
        for (p, n, want) in [
            ("abc", "abc", true),
            ("abc", "abd", false),
            ("a*", "a", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbbd", false),
            ("*", "", true),
            ("?b", "ab", true),
            ("?b", "b", false),
            ("pci:v00008086d*sv*", "pci:v00008086d00001234sv0000", true),
            ("x[0-9]y", "x5y", true),
            ("x[!0-9]y", "x5y", false),
            ("x[^a]y", "xby", true),
            ("x[]]y", "x]y", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("*a*b*", "xxaxxbxx", true),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} vs {n}");
        }
        assert_eq!(normalize_alias("platform:leds-gpio"), "platform:leds_gpio");
        assert_eq!(normalize_alias("x[a-b]-y"), "x[a-b]_y");
    }
}
