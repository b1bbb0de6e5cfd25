//! The scheduler's modules depend downward only (issue 14 §1): config and bounds at the bottom,
//! the resources, the choice of parents and seeds, the shared state, what runs on it (the GC,
//! finished-task announcements, the service), its gRPC wrapper, and the server on top. The
//! check itself is `testkit::layers`.

use std::path::Path;
use testkit::layers::Layers;

#[test]
fn modules_depend_downward_only() {
    Layers {
        dir: &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        prefix: "crate::",
        // Bottom first. Every top-level module of `src/` is in exactly one layer.
        layers: &[
            &["config", "bounds", "metrics"],
            &["resource"],
            &["evaluator", "seed"],
            &["state"],
            &["finished", "gc"],
            &["service"],
            &["grpc"],
            &["server"],
            &["bin"],
        ],
        known_upward: &[],
    }
    .check();
}
