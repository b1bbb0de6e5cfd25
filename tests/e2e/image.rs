//! The container images. `scripts/image.sh` builds the `FROM scratch` image with this test's
//! (debug) binaries and proves it (chroot runs, a pull through the image's own daemon); the test
//! runs it and checks its result and the image it left, independently of the script. The
//! `Dockerfile` cannot be built here (no base image can be pulled): its instructions are checked
//! against the repository instead. Needs root and the Makefile's `TEST_PACKAGES` (podman,
//! skopeo, umoci, docker-registry, jq); a missing tool fails.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use testkit::bins::bin;
use testkit::cli::repo_file;
use testkit::process::output_ok;

/// Bin targets of the workspace that no image or install ships, and why.
const NOT_SHIPPED: &[(&str, &str)] = &[
    ("scheduler-loadgen", "a benchmark driver (make bench)"),
    ("dforigin", "a test origin"),
    ("registry-fixture", "a test registry fixture"),
];
/// The user the images run as.
const IMAGE_USER: u32 = 65532;

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The bin targets of the workspace's packages, from `cargo metadata`.
fn workspace_bins() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = output_ok(
        Command::new(cargo)
            .args([
                "metadata",
                "--no-deps",
                "--format-version",
                "1",
                "--offline",
            ])
            .current_dir(repo_file("")),
        "cargo metadata failed",
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let mut bins = BTreeSet::new();
    for package in meta["packages"].as_array().expect("packages") {
        for target in package["targets"].as_array().expect("targets") {
            if target["kind"]
                .as_array()
                .expect("kind")
                .iter()
                .any(|k| k == "bin")
            {
                bins.insert(target["name"].as_str().expect("name").to_string());
            }
        }
    }
    bins
}

/// What the images and `make install` must ship: every workspace bin but [`NOT_SHIPPED`].
fn shipped_bins() -> BTreeSet<String> {
    let mut bins = workspace_bins();
    for (name, why) in NOT_SHIPPED {
        assert!(
            bins.remove(*name),
            "NOT_SHIPPED names {name} ({why}), no such bin target"
        );
    }
    bins
}

fn words(list: &str) -> BTreeSet<String> {
    list.split_whitespace().map(str::to_string).collect()
}

/// The Dockerfile's instructions: continuation lines joined, comments and blank lines dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (op, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((op.to_ascii_uppercase(), args.trim().to_string()));
        current.clear();
    }
    assert!(
        current.is_empty(),
        "Dockerfile ends in a continuation line: {current}"
    );
    out
}

/// The default ports the shipped configs listen on, from the binaries' `--print-config`.
fn default_ports() -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for (binary, config) in [
        ("dfdaemon", "config/dfdaemon.yaml"),
        ("scheduler", "config/scheduler.yaml"),
    ] {
        let out = output_ok(
            Command::new(bin(binary))
                .arg("--config")
                .arg(repo_file(config))
                .arg("--print-config"),
            &format!("{binary} --print-config {config}"),
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((key, value)) = line.trim().split_once(':') else {
                continue;
            };
            let value = value.trim().trim_matches(['"', '\'']);
            let port = match key {
                "port" => value.parse::<u16>().ok(),
                "addr" => value.rsplit_once(':').and_then(|(_, p)| p.parse().ok()),
                _ => None,
            };
            ports.extend(port);
        }
    }
    ports
}

#[test]
fn the_dockerfile_builds_the_shipped_binaries_from_files_that_exist() {
    let shipped = shipped_bins();
    assert_eq!(
        shipped,
        words("dfdaemon dfget scheduler"),
        "a new bin target: ship it (Dockerfile, scripts/image.sh, Makefile DIST_BINS) or add it to NOT_SHIPPED"
    );
    let makefile = read("Makefile");
    let dist = makefile
        .lines()
        .find_map(|l| l.strip_prefix("DIST_BINS :="))
        .expect("DIST_BINS in the Makefile");
    assert_eq!(words(dist), shipped, "Makefile DIST_BINS");
    let script = read("scripts/image.sh");
    let script_bins = script
        .lines()
        .find_map(|l| l.strip_prefix("BINS=(")?.strip_suffix(')'))
        .expect("BINS=(...) in scripts/image.sh");
    assert_eq!(words(script_bins), shipped, "scripts/image.sh BINS");

    let text = read("Dockerfile");
    let ins = instructions(&text);
    const KNOWN: &[&str] = &[
        "FROM", "ARG", "WORKDIR", "COPY", "RUN", "LABEL", "EXPOSE", "USER", "CMD", "ENV",
    ];
    for (op, args) in &ins {
        assert!(
            KNOWN.contains(&op.as_str()),
            "unknown instruction {op} {args}"
        );
    }
    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/'))
        .collect();

    let mut stages = Vec::new();
    let mut args = BTreeMap::new();
    let mut copied_from_build = BTreeSet::new();
    let mut built = BTreeSet::new();
    for (op, rest) in &ins {
        match op.as_str() {
            "ARG" => {
                let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                args.insert(k.to_string(), v.to_string());
            }
            "FROM" => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let image = parts[0].replace("${RUST_VERSION}", &args["RUST_VERSION"]);
                assert!(
                    image.contains(':') && !image.ends_with(":latest"),
                    "FROM {image}: pin a tag"
                );
                stages.push((image, parts.get(2).map(|s| s.to_string())));
            }
            "RUN" if rest.contains("cargo build") => {
                assert!(
                    rest.contains("--release") && rest.contains("--locked"),
                    "{rest}"
                );
                let mut it = rest.split_whitespace();
                while let Some(w) = it.next() {
                    if w == "--bin" {
                        built.insert(it.next().expect("--bin NAME").to_string());
                    }
                }
            }
            "COPY" => {
                let mut parts: Vec<&str> = rest.split_whitespace().collect();
                let dest = parts.pop().expect("COPY destination");
                let from = parts
                    .iter()
                    .find_map(|p| p.strip_prefix("--from="))
                    .map(str::to_string);
                let sources: Vec<&str> = parts
                    .iter()
                    .filter(|p| !p.starts_with("--"))
                    .copied()
                    .collect();
                match from {
                    Some(stage) => {
                        assert!(
                            stages
                                .iter()
                                .any(|(_, name)| name.as_deref() == Some(&stage)),
                            "COPY --from={stage}: no earlier stage of that name"
                        );
                        assert_eq!(dest, "/usr/bin/", "binaries go to /usr/bin");
                        for s in sources {
                            let name = s.strip_prefix("/out/").expect("from /out/");
                            copied_from_build.insert(name.to_string());
                        }
                    }
                    None => {
                        for s in sources {
                            let path = repo_file(s);
                            assert!(path.exists(), "COPY {s}: {} is missing", path.display());
                            let first = s.split('/').next().unwrap_or(s);
                            assert!(
                                s == "." || !ignored.contains(&first),
                                "COPY {s}: excluded by .dockerignore"
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(stages.len(), 2, "a build stage and a run stage: {stages:?}");
    assert!(
        stages[0].0.starts_with("rust:") && stages[0].0.ends_with("-bookworm"),
        "{stages:?}"
    );
    assert_eq!(
        stages[1].0, "debian:bookworm-slim",
        "run stage on the build's Debian"
    );
    assert_eq!(built, shipped, "cargo build --bin list");
    assert_eq!(copied_from_build, shipped, "binaries copied into the image");
    for needed in ["target", ".git"] {
        assert!(
            ignored.contains(&needed),
            ".dockerignore keeps out {needed}"
        );
    }
    let version = read("Cargo.toml")
        .lines()
        .skip_while(|l| *l != "[workspace.package]")
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("workspace version");
    assert_eq!(args.get("VERSION"), Some(&version), "ARG VERSION default");

    let one = |op: &str| -> Vec<&String> {
        ins.iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a)
            .collect()
    };
    let exposed: BTreeSet<u16> = one("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .map(|p| p.parse().expect("EXPOSE port"))
        .collect();
    assert_eq!(
        exposed,
        default_ports(),
        "EXPOSE: the shipped configs' ports"
    );
    assert_eq!(one("USER"), [&format!("{IMAGE_USER}:{IMAGE_USER}")]);
    let copies = one("COPY");
    assert!(
        copies
            .iter()
            .any(|c| c.contains("config/dfdaemon.yaml") && c.ends_with("/etc/dragonfly/")),
        "default configs under /etc/dragonfly: {copies:?}"
    );
    let cmd = one("CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd[0]).expect("CMD in exec form");
    assert_eq!(
        cmd,
        [
            "/usr/bin/dfdaemon",
            "--config",
            "/etc/dragonfly/dfdaemon.yaml"
        ]
    );
}

/// `KEY=VALUE` lines.
fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The blob `digest` of the OCI layout `dir`, parsed as JSON.
fn oci_json(dir: &Path, digest: &str) -> serde_json::Value {
    let (algo, hex) = digest.split_once(':').expect("algo:hex");
    let path = dir.join("blobs").join(algo).join(hex);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("OCI JSON")
}

/// The ELF interpreter (`PT_INTERP`) of `path`, from `readelf`-free parsing of 64-bit ELF.
fn elf_interpreter(path: &Path) -> String {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &data[..5],
        b"\x7fELF\x02",
        "{}: a 64-bit ELF",
        path.display()
    );
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().expect("8 bytes"));
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().expect("2 bytes"));
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes"));
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    for i in 0..phnum as usize {
        let ph = phoff + i * phentsize as usize;
        if u32_at(ph) == 3 {
            let (off, size) = (u64_at(ph + 8) as usize, u64_at(ph + 32) as usize);
            let raw = &data[off..off + size];
            return String::from_utf8_lossy(raw.strip_suffix(b"\0").unwrap_or(raw)).into_owned();
        }
    }
    panic!("{}: no PT_INTERP", path.display());
}

#[test]
fn the_scratch_image_runs_in_a_chroot_and_pulls_through_its_own_daemon() {
    // Under the target dir, not /tmp: the debug binaries make the store, layout, rootfs,
    // registry and pulls about 1.5 GB together, too much for a /tmp in memory.
    let out = tempfile::Builder::new()
        .prefix("image-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let bin_dir = bin("dfdaemon").parent().expect("bin dir").to_path_buf();
    let run = Command::new("bash")
        .arg(repo_file("scripts/image.sh"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(out.path())
        .arg("--tag")
        .arg("e2e")
        .output()
        .expect("run scripts/image.sh");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "scripts/image.sh failed:\n{log}");
    println!("{log}");

    let proof =
        parse_env(&std::fs::read_to_string(out.path().join("proof.env")).expect("proof.env"));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(proof["DFDAEMON_VERSION"], format!("dfdaemon {version}"));
    assert_eq!(proof["IMAGE"], "localhost/dragonfly-rs:e2e");
    assert_eq!(proof["STANDALONE_SHA256"], proof["ORIGIN_SHA256"]);
    assert_eq!(proof["DAEMON_SHA256"], proof["ORIGIN_SHA256"]);
    assert_eq!(proof["PUSHED_DIGEST"], proof["MANIFEST_DIGEST"]);
    assert_eq!(proof["PULLED_DIGEST"], proof["MANIFEST_DIGEST"]);

    // The image as the OCI layout holds it.
    let oci = out.path().join("oci");
    let manifest = oci_json(&oci, &proof["MANIFEST_DIGEST"]);
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    assert_eq!(config_digest, proof["CONFIG_DIGEST"]);
    let config = oci_json(&oci, config_digest);
    let c = &config["config"];
    assert_eq!(c["User"], format!("{IMAGE_USER}:{IMAGE_USER}"));
    let ports: BTreeSet<u16> = c["ExposedPorts"]
        .as_object()
        .expect("ExposedPorts")
        .keys()
        .map(|k| k.trim_end_matches("/tcp").parse().expect("port/tcp"))
        .collect();
    assert_eq!(ports, default_ports());
    assert_eq!(c["Labels"]["org.opencontainers.image.version"], version);
    assert_eq!(
        c["Cmd"],
        serde_json::json!([
            "/usr/bin/dfdaemon",
            "--config",
            "/etc/dragonfly/dfdaemon.yaml"
        ])
    );
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest"))
        .collect();
    let mut blobs = vec![config_digest];
    blobs.extend(&layers);
    assert_eq!(proof["BLOBS"], blobs.join(" "));
    for b in &blobs {
        assert!(
            proof["REGISTRY_SERVED"].contains(&format!("{b}=")),
            "registry count of {b}: {}",
            proof["REGISTRY_SERVED"]
        );
    }

    // The unpacked root file system: the binaries, what they load, and the user's directories.
    let rootfs = out.path().join("rootfs");
    for b in shipped_bins() {
        let path = rootfs.join("usr/bin").join(&b);
        let interp = elf_interpreter(&path);
        let loader = rootfs.join(interp.trim_start_matches('/'));
        assert!(loader.is_file(), "{b}: loader {interp} in the image");
    }
    for f in [
        "etc/ssl/certs/ca-certificates.crt",
        "etc/dragonfly/dfdaemon.yaml",
        "etc/dragonfly/scheduler.yaml",
    ] {
        assert!(rootfs.join(f).is_file(), "/{f} in the image");
    }
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("/etc/passwd");
    assert!(
        passwd.contains(&format!(":{IMAGE_USER}:{IMAGE_USER}:")),
        "{passwd}"
    );
    for d in [
        "var/lib/dragonfly",
        "var/log/dragonfly",
        "var/cache/dragonfly",
        "run/dragonfly",
    ] {
        let meta = std::fs::metadata(rootfs.join(d)).unwrap_or_else(|e| panic!("/{d}: {e}"));
        assert_eq!(
            (meta.uid(), meta.gid()),
            (IMAGE_USER, IMAGE_USER),
            "/{d} owner"
        );
    }
    for d in ["", "var", "var/lib", "var/log", "run", "etc", "usr/bin"] {
        let meta = std::fs::metadata(rootfs.join(d)).unwrap_or_else(|e| panic!("/{d}: {e}"));
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "/{d} owner");
    }
    // The image's daemon wrote its default directories (as 65532, under the chroot).
    let task_files = std::fs::read_dir(rootfs.join("var/lib/dragonfly"))
        .expect("dataDir")
        .count();
    assert!(
        task_files > 0,
        "the daemon stored nothing in /var/lib/dragonfly"
    );
}
