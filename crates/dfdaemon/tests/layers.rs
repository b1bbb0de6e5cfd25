//! The crate's modules depend downward only (issue 14 §1): config and small shared parts at the
//! bottom, then storage and sources, the task engines, the servers and the scheduler client,
//! the daemon's wiring, and the binaries on top. A module may use only modules of lower layers;
//! a lower layer that must call up defines a trait the upper one implements.
//!
//! Reads every `crate::<module>` path in `src/` (comments excepted; `super::super::` is refused
//! too, since it can reach another module without naming it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom first. Every top-level module of `src/` is in exactly one layer.
const LAYERS: &[&[&str]] = &[
    &["config", "rate", "stats", "sendfile", "serve"],
    &["storage", "source"],
    &["standalone", "task"],
    &["upload", "proxy", "scheduling"],
    &["daemon"],
    &["client", "bin"],
];

/// Imports that still go up. Each is to go (issue 14): the list may only shrink, and the test
/// fails when one listed here is gone, so that it is taken off.
const KNOWN_UPWARD: &[(&str, &str)] = &[
    // The driver's per-task scheduler session.
    ("task", "scheduling"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`task/driver.rs` -> `task`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_string())
}

/// `(module, used module)` for every `crate::x` in code, and the files using `super::super`.
fn uses(src: &Path) -> (BTreeSet<(String, String)>, Vec<String>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let (mut edges, mut escapes) = (BTreeSet::new(), Vec::new());
    for f in files {
        let Some(from) = module_of(src, &f) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).expect("read source");
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("super::super") {
                escapes.push(format!("{}: {}", f.display(), line.trim()));
            }
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != from {
                    edges.insert((from.clone(), name));
                }
            }
        }
    }
    (edges, escapes)
}

#[test]
fn modules_depend_downward_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let level: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (*m, i)))
        .collect();
    let (edges, escapes) = uses(&src);
    assert!(
        escapes.is_empty(),
        "super::super reaches across modules: {escapes:#?}"
    );

    let mut modules = Vec::new();
    rust_files(&src, &mut modules);
    let unplaced: BTreeSet<String> = modules
        .iter()
        .filter_map(|f| module_of(&src, f))
        .filter(|m| !level.contains_key(m.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules in no layer (add them to LAYERS): {unplaced:?}"
    );

    let upward: BTreeSet<(String, String)> = edges
        .iter()
        .filter(
            |(from, to)| match (level.get(from.as_str()), level.get(to.as_str())) {
                (Some(a), Some(b)) => b >= a,
                // Not a module of this crate (e.g. `crate::Result` in a doc example).
                _ => false,
            },
        )
        .cloned()
        .collect();
    let known: BTreeSet<(String, String)> = KNOWN_UPWARD
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<_> = upward.difference(&known).collect();
    assert!(
        new.is_empty(),
        "imports that go up or sideways (a lower layer defines a trait instead): {new:?}"
    );
    let gone: Vec<_> = known.difference(&upward).collect();
    assert!(
        gone.is_empty(),
        "fixed, take them off KNOWN_UPWARD: {gone:?}"
    );
}
