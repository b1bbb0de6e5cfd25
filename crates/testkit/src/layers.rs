//! The check behind each crate's `tests/layers.rs` (issue 14 §1): the modules of a directory
//! depend downward only. A module may use only modules of lower layers; a lower layer that
//! must call up defines a trait the upper one implements.
//!
//! Reads every path that names a sibling module (`crate::x`, or `super::x` from a file of a
//! submodule) in the directory's `.rs` files, comments excepted; `super::super::` is refused
//! too, since it can reach another module without naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One directory of modules and the order they are allowed to depend in.
#[derive(Debug, Clone, Copy)]
pub struct Layers<'a> {
    /// The directory whose files and subdirectories are the modules (`src`, `src/standalone`).
    pub dir: &'a Path,
    /// How code there names a sibling module: `crate::` for a crate's `src`;
    /// `crate::standalone::` for the modules of `standalone` (its files' `super::` is added).
    pub prefix: &'a str,
    /// Bottom first. Every module of `dir` is in exactly one layer.
    pub layers: &'a [&'a [&'a str]],
    /// Imports that still go up, `(from, to)`. The list may only shrink: the check fails when
    /// one listed here is gone, so that it is taken off.
    pub known_upward: &'a [(&'a str, &'a str)],
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module a file of `dir` belongs to (`task/driver.rs` -> `task`); `lib.rs` and `mod.rs`
/// are the parent itself.
fn module_of(dir: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(dir).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "mod").then(|| name.to_string())
}

/// The identifiers that follow each `prefix` in `code`.
fn names_after<'c>(code: &'c str, prefix: &'c str) -> impl Iterator<Item = String> + 'c {
    code.match_indices(prefix).filter_map(move |(i, _)| {
        // `crate::` must not match inside `other_crate::` (nor `super::` inside `super::super`).
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            return None;
        }
        let name: String = code[i + prefix.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        (!name.is_empty()).then_some(name)
    })
}

impl Layers<'_> {
    /// `(module, used module)` for every sibling named in code, and the lines using `super::super`.
    fn uses(&self) -> (BTreeSet<(String, String)>, Vec<String>) {
        let mut files = Vec::new();
        rust_files(self.dir, &mut files);
        let (mut edges, mut escapes) = (BTreeSet::new(), Vec::new());
        for f in files {
            let Some(from) = module_of(self.dir, &f) else {
                continue;
            };
            // `super::x` names a sibling only from a file directly in a submodule's directory.
            let direct = f.parent() == Some(self.dir) && self.prefix != "crate::";
            let text = std::fs::read_to_string(&f).expect("read source");
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or("");
                if code.contains("super::super") {
                    escapes.push(format!("{}: {}", f.display(), line.trim()));
                }
                let supers = direct.then(|| names_after(code, "super::"));
                for name in names_after(code, self.prefix).chain(supers.into_iter().flatten()) {
                    if name != from {
                        edges.insert((from.clone(), name));
                    }
                }
            }
        }
        (edges, escapes)
    }

    /// Panics, naming them, on an import that goes up or sideways, a module in no layer, a
    /// `super::super`, or a known upward import that is gone.
    pub fn check(&self) {
        let level: BTreeMap<&str, usize> = self
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.iter().map(move |m| (*m, i)))
            .collect();
        let (edges, escapes) = self.uses();
        assert!(
            escapes.is_empty(),
            "super::super reaches across modules: {escapes:#?}"
        );

        let mut files = Vec::new();
        rust_files(self.dir, &mut files);
        let unplaced: BTreeSet<String> = files
            .iter()
            .filter_map(|f| module_of(self.dir, f))
            .filter(|m| !level.contains_key(m.as_str()))
            .collect();
        assert!(
            unplaced.is_empty(),
            "modules of {} in no layer (add them to LAYERS): {unplaced:?}",
            self.dir.display()
        );

        let upward: BTreeSet<(String, String)> = edges
            .iter()
            .filter(
                |(from, to)| match (level.get(from.as_str()), level.get(to.as_str())) {
                    (Some(a), Some(b)) => b >= a,
                    // Not a module here (e.g. `crate::Result`, or `super::Item` of a parent).
                    _ => false,
                },
            )
            .cloned()
            .collect();
        let known: BTreeSet<(String, String)> = self
            .known_upward
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let new: Vec<_> = upward.difference(&known).collect();
        assert!(
            new.is_empty(),
            "imports in {} that go up or sideways (a lower layer defines a trait instead): {new:?}",
            self.dir.display()
        );
        let gone: Vec<_> = known.difference(&upward).collect();
        assert!(
            gone.is_empty(),
            "fixed, take them off KNOWN_UPWARD: {gone:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::names_after;

    #[test]
    fn prefixes_match_whole_path_segments_only() {
        let names = |code, p| names_after(code, p).collect::<Vec<_>>();
        assert_eq!(names("use crate::task::Parent;", "crate::"), ["task"]);
        assert_eq!(
            names("use dragonfly_crate::x;", "crate::"),
            Vec::<String>::new()
        );
        assert_eq!(names("use super::engine::{a, b};", "super::"), ["engine"]);
        assert_eq!(names("use super::super::x;", "super::"), ["super"]);
        assert_eq!(names("use crate::{a, b};", "crate::"), Vec::<String>::new());
    }
}
