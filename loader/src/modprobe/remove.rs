//! Planning removals like `modprobe -r` (kmod's `rmmod_do_module`), used by `unload` and by in-tree removal
//! before a load (upstream runs `modprobe -rv` on inTreeModulesToRemove):
//!
//! 1. the module's post-softdeps, in reverse order (failures are not fatal);
//! 2. the module itself, only if nothing uses it (refcount 0, no holders); otherwise a requested module is an
//!    error naming it, never a forced removal;
//! 3. its dependencies that became unused, in reverse dependency order (users before what they use), so a
//!    chain `top -> mid -> base` is removed entirely when nothing else holds `mid` or `base`. (kmod 30+ walks
//!    them in load order and leaves `base` loaded in that case; removing what became unused is what
//!    `modprobe -r` documents and what older modprobe did.) A dependency still in use is kept and reported;
//! 4. its pre-softdeps, in reverse order (failures are not fatal).
//!
//! The plan simulates the removals it schedules: a holder removed earlier no longer counts, neither in the
//! holders nor in the reference count.

use std::collections::HashSet;

use super::deps::ModuleIndex;
use super::softdep::{Builtins, Resolved, SoftdepLine};
use super::sysfs::{HostPaths, ModuleState, normalize};
use super::{Action, ModprobeError};

/// Accumulates the actions of one or more removals.
pub(super) struct Remover<'a> {
    pub host: &'a HostPaths,
    pub index: &'a mut ModuleIndex,
    pub builtins: &'a mut Builtins,
    /// Softdep lines besides the trees' own (upstream's softdep.conf, mounted in load pods only).
    pub extra: Vec<SoftdepLine>,
    /// Modules this plan unloads, in order.
    pub removed: Vec<String>,
    pub actions: Vec<Action>,
    visiting: HashSet<String>,
}

/// Why a loaded module cannot go: the reference count and holders left after this plan's removals, `None` when
/// nothing uses it.
fn in_use(refcnt: i64, holders: &[String], removed: &[String]) -> Option<(i64, Vec<String>)> {
    let gone = i64::try_from(holders.iter().filter(|h| removed.contains(h)).count()).unwrap_or(0);
    let left: Vec<String> = holders
        .iter()
        .filter(|h| !removed.contains(h))
        .cloned()
        .collect();
    let refcnt = refcnt - gone;
    (refcnt > 0 || !left.is_empty()).then_some((refcnt, left))
}

impl<'a> Remover<'a> {
    pub fn new(
        host: &'a HostPaths,
        index: &'a mut ModuleIndex,
        builtins: &'a mut Builtins,
    ) -> Remover<'a> {
        Remover {
            host,
            index,
            builtins,
            extra: Vec::new(),
            removed: Vec::new(),
            actions: Vec::new(),
            visiting: HashSet::new(),
        }
    }

    fn skip(&mut self, module: &str, reason: String) {
        self.actions.push(Action::Skip {
            module: module.to_string(),
            reason,
        });
    }

    /// Plans the removal of `module`. `requested`: named by the user (in use is an error, not loaded is
    /// reported); otherwise a softdep (in use or absent is skipped). `not_loaded` is the message for a
    /// requested module that is not loaded.
    pub fn remove(
        &mut self,
        module: &str,
        requested: bool,
        not_loaded: &str,
    ) -> Result<(), ModprobeError> {
        let m = normalize(module);
        if self.removed.contains(&m) || !self.visiting.insert(m.clone()) {
            return Ok(());
        }
        let (refcnt, holders) = match self.host.module_state(&m, &self.builtins.names) {
            ModuleState::NotLoaded => {
                if requested {
                    self.skip(&m, not_loaded.to_string());
                }
                return Ok(());
            }
            ModuleState::Builtin => {
                self.skip(&m, "built into the kernel, cannot remove".into());
                return Ok(());
            }
            ModuleState::Loaded {
                refcnt, holders, ..
            } => (refcnt, holders),
        };
        let line = match self.index.softdep(&m, &self.extra) {
            Ok(l) => l.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(module = %m, error = %e, "failed to read softdeps; removing without them");
                Default::default()
            }
        };

        for name in line.post.iter().rev() {
            self.remove_soft(name)?;
        }

        if let Some((refcnt, holders)) = in_use(refcnt, &holders, &self.removed) {
            if requested {
                return Err(ModprobeError::UnloadInUse {
                    module: m,
                    refcnt,
                    holders: holders.join(","),
                });
            }
            self.skip(
                &m,
                format!(
                    "still in use (refcount {refcnt}, holders [{}])",
                    holders.join(",")
                ),
            );
            return Ok(());
        }
        self.actions.push(Action::Unload {
            module: m.clone(),
            required: requested,
        });
        self.removed.push(m.clone());

        let deps = if self.index.contains(&m) {
            match self.index.load_order(&m) {
                Ok(mut d) => {
                    d.pop();
                    d
                }
                Err(e) => {
                    tracing::warn!(module = %m, error = %e, "failed to resolve dependencies; keeping them");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        for d in deps.iter().rev() {
            if self.removed.contains(d) {
                continue;
            }
            match self.host.module_state(d, &self.builtins.names) {
                ModuleState::Loaded {
                    refcnt, holders, ..
                } => match in_use(refcnt, &holders, &self.removed) {
                    Some((refcnt, holders)) => self.skip(
                        d,
                        format!(
                            "still in use (refcount {refcnt}, holders [{}])",
                            holders.join(",")
                        ),
                    ),
                    None => {
                        self.actions.push(Action::Unload {
                            module: d.clone(),
                            required: false,
                        });
                        self.removed.push(d.clone());
                    }
                },
                ModuleState::Builtin => self.skip(d, "built into the kernel".into()),
                ModuleState::NotLoaded => {}
            }
        }

        for name in line.pre.iter().rev() {
            self.remove_soft(name)?;
        }
        Ok(())
    }

    fn remove_soft(&mut self, name: &str) -> Result<(), ModprobeError> {
        match self.index.resolve(name, self.builtins) {
            Resolved::Modules(mods) => {
                for m in mods.iter().rev() {
                    self.remove(m, false, "")?;
                }
            }
            Resolved::Builtin(_) | Resolved::NotFound => {}
        }
        Ok(())
    }
}
