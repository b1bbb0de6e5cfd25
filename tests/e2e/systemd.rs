//! `make install` and the systemd units (`config/systemd/`). systemd is not PID 1 here, so the
//! units cannot be started: `systemd-analyze verify` checks them, and each unit's exact
//! `ExecStart` runs with its installed config in a namespace that rebuilds the unit's file
//! system sandbox (`ProtectSystem=strict` with only its `*Directory=` and `ReadWritePaths=`
//! writable, `PrivateTmp`, `ProtectHome`, `ProtectProc`), its `CapabilityBoundingSet`, `NoNewPrivileges` and
//! `LimitNOFILE`, in a network namespace of its own so the default ports are free. The seccomp
//! based settings (`MemoryDenyWriteExecute`, `RestrictNamespaces`, ...) and `PrivateDevices`
//! are not rebuilt. Needs root, `systemd-analyze` (Debian systemd), `unshare` and `setpriv`
//! (util-linux).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use testkit::bins::bin;
use testkit::cli::repo_file;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A directory for an install, outside what the sandbox covers: /tmp (the scheduler's unit has
/// PrivateTmp), /root and /home (ProtectHome), and the tmpfs tops /var/lib, /var/log, /var/cache,
/// /run. The target dir, or /opt when the checkout itself is under one of them (a CI clone in
/// /tmp).
fn install_root() -> tempfile::TempDir {
    let target = env!("CARGO_TARGET_TMPDIR");
    let covered = [
        "/tmp/",
        "/var/tmp/",
        "/root/",
        "/home/",
        "/var/lib/",
        "/var/log/",
        "/var/cache/",
        "/run/",
    ];
    let hidden = covered.iter().any(|p| target.starts_with(p));
    let base = if hidden { "/opt" } else { target };
    tempfile::Builder::new()
        .prefix("dragonfly-e2e-install-")
        .tempdir_in(base)
        .unwrap_or_else(|e| panic!("a temp dir in {base}: {e}"))
}

/// `make install` (or another target) with `vars`, binaries from this test's directory.
fn make(target: &str, vars: &[(&str, &Path)]) -> Output {
    let bin_dir = bin("dfdaemon").parent().expect("bin dir").to_path_buf();
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(repo_file(""))
        .arg("--no-print-directory")
        .arg(target);
    cmd.arg(format!("BINS_FROM={}", bin_dir.display()));
    for (k, v) in vars {
        cmd.arg(format!("{k}={}", v.display()));
    }
    // `make test` runs this test: the outer make's jobserver and flags are not for this one.
    cmd.env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL");
    let out = cmd.output().expect("run make");
    assert!(
        out.status.success(),
        "make {target} failed:\n{}",
        text(&out)
    );
    out
}

const SHIPPED: [&str; 3] = ["dfdaemon", "dfget", "scheduler"];
const UNITS: [&str; 2] = ["dfdaemon", "scheduler"];

#[test]
fn make_install_puts_every_file_in_place_and_keeps_an_existing_config() {
    let root = install_root();
    let dest = root.path();
    make("install", &[("DESTDIR", dest)]);
    for b in SHIPPED {
        let installed = std::fs::read(dest.join("usr/local/bin").join(b)).expect(b);
        assert!(
            installed == std::fs::read(bin(b)).expect(b),
            "{b} is not the built binary"
        );
    }
    for u in UNITS {
        let unit = std::fs::read_to_string(dest.join(format!("etc/systemd/system/{u}.service")))
            .expect("unit installed");
        assert!(
            unit.contains(&format!(
                "\nExecStart=/usr/local/bin/{u} --config /etc/dragonfly/{u}.yaml\n"
            )),
            "{u}.service ExecStart:\n{unit}"
        );
        let config = std::fs::read(dest.join(format!("etc/dragonfly/{u}.yaml"))).expect("config");
        assert_eq!(
            config,
            std::fs::read(repo_file(&format!("config/{u}.yaml"))).expect("src")
        );
    }

    // A changed config survives a second install and the uninstall; an unchanged one goes.
    let changed = dest.join("etc/dragonfly/dfdaemon.yaml");
    std::fs::write(&changed, "verbose: true\n").expect("edit config");
    let again = make("install", &[("DESTDIR", dest)]);
    assert_eq!(
        std::fs::read_to_string(&changed).expect("config"),
        "verbose: true\n"
    );
    assert!(
        text(&again).contains(&format!("kept {}", changed.display())),
        "{}",
        text(&again)
    );

    make("uninstall", &[("DESTDIR", dest)]);
    for b in SHIPPED {
        assert!(
            !dest.join("usr/local/bin").join(b).exists(),
            "{b} left behind"
        );
    }
    for u in UNITS {
        assert!(
            !dest
                .join(format!("etc/systemd/system/{u}.service"))
                .exists()
        );
    }
    assert!(changed.exists(), "uninstall removed a changed config");
    assert!(
        !dest.join("etc/dragonfly/scheduler.yaml").exists(),
        "unchanged config left"
    );
}

/// `systemd-analyze verify --root ROOT UNIT...`: its output (warnings are printed with exit
/// code 0, so the output is the verdict) and whether it succeeded.
fn verify(root: &Path, units: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units.iter().map(|u| format!("/etc/systemd/system/{u}")))
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("systemd-analyze (Debian package systemd) runs");
    (out.status.success(), text(&out))
}

#[test]
fn systemd_analyze_verifies_the_installed_units_and_catches_a_typo() {
    let root = install_root();
    let dest = root.path();
    make("install", &[("DESTDIR", dest)]);
    // The units they name (network-online.target, multi-user.target, ...) from this system.
    std::fs::create_dir_all(dest.join("usr/lib/systemd")).expect("mkdir");
    let cp = Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/systemd/system")
        .arg(dest.join("usr/lib/systemd/"))
        .status()
        .expect("cp runs");
    assert!(
        cp.success(),
        "cannot copy /usr/lib/systemd/system (Debian package systemd)"
    );

    let (ok, out) = verify(dest, &["dfdaemon.service", "scheduler.service"]);
    assert!(
        ok && out.trim().is_empty(),
        "verify of the installed units:\n{out}"
    );

    // The same checker on broken copies: a typo'd directive, a bad value, a missing binary.
    let unit_dir = dest.join("etc/systemd/system");
    let good = std::fs::read_to_string(unit_dir.join("dfdaemon.service")).expect("unit");
    for (name, from, to, expect) in [
        (
            "typo.service",
            "\nRestart=",
            "\nRestrat=",
            "Unknown key 'Restrat'",
        ),
        (
            "value.service",
            "\nProtectSystem=strict\n",
            "\nProtectSystem=stric\n",
            "stric",
        ),
        (
            "nobinary.service",
            "/usr/local/bin/dfdaemon",
            "/usr/local/bin/dfdaemon-missing",
            "dfdaemon-missing",
        ),
    ] {
        assert!(good.contains(from), "{from} in dfdaemon.service");
        std::fs::write(unit_dir.join(name), good.replacen(from, to, 1)).expect("write");
        let (ok, out) = verify(dest, &[name]);
        assert!(
            !(ok && out.trim().is_empty()) && out.contains(expect),
            "verify of {name} did not report {expect:?}: ok={ok}\n{out}"
        );
    }
}

/// A unit's `[Service]` settings (a repeated key keeps every value, in order).
fn service_section(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut section = "";
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]"
            && let Some((k, v)) = line.split_once('=')
            && !line.starts_with('#')
        {
            map.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    map
}

/// The host side of the sandbox, run by `unshare --mount --net` (see the module doc): a network
/// namespace with the default ports free; the unit's directories on tmpfs tops (nothing is
/// created on the host), bound to `BINDS/<path>` for the test to read; the service started in a
/// further mount namespace ([`SANDBOX_SERVICE`]), its output to `LOG` (systemd's journal).
/// After `READY` succeeds `CLIENT` runs here, where the test's files are writable, then the
/// service gets SIGTERM like systemd and at most TimeoutStopSec. Prints `service-exit=N`.
const SANDBOX: &str = r#"
set -euo pipefail
ip link set lo up
for top in /var/lib /var/log /var/cache /run; do mount -t tmpfs -o mode=0755 tmpfs "$top"; done
WRITABLE=" "
for d in $UNIT_DIRS; do
  src="$BINDS/$(tr / _ <<<"$d")"
  mkdir -p "$src" "$d"
  mount --bind "$src" "$d"
  WRITABLE+="$d "
done
for d in $RW_PATHS; do mount --bind "$d" "$d"; WRITABLE+="$d "; done
export WRITABLE
# LimitNOFILE= as far as this process may raise it (raising the hard limit needs
# CAP_SYS_RESOURCE, which systemd has and a container may not).
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] || [ "$NOFILE" -le "$hard" ] || NOFILE=$hard
ulimit -n "$NOFILE"
echo "limit-nofile=$NOFILE"
unshare --mount --propagation private -- bash -c "$SANDBOX_SERVICE" service "$@" >"$LOG" 2>&1 &
pid=$!
ready=no
for _ in $(seq 600); do
  if eval "$READY" >/dev/null 2>&1; then ready=yes; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
[ "$ready" = yes ] || { echo "sandbox: the service did not get ready: $(tail -20 "$LOG")"; exit 1; }
echo "service-nofile=$(awk '/Max open files/ {print $4 ":" $5}' /proc/$pid/limits)"
echo "service-capbnd=$(awk '/CapBnd/ {print $2}' /proc/$pid/status)"
echo "service-nonewprivs=$(awk '/NoNewPrivs/ {print $2}' /proc/$pid/status)"
eval "$CLIENT"
kill -TERM "$pid"
for _ in $(seq $((STOP_SECS * 20))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
if kill -0 "$pid" 2>/dev/null; then
  echo "sandbox: still running ${STOP_SECS}s (TimeoutStopSec) after SIGTERM: systemd would SIGKILL it"
  kill -KILL "$pid"
fi
set +e
wait "$pid"
echo "service-exit=$?"
"#;

/// The service side: `PrivateTmp`, `ProtectProc`, `ProtectHome`, `ProtectSystem=strict` (every mount
/// read-only but /dev, /proc, /sys and `WRITABLE`), then the bounding set and
/// `NoNewPrivileges` with setpriv, and `exec` of the `ExecStart` words.
const SANDBOX_SERVICE: &str = r#"
set -euo pipefail
if [ "$PRIVATE_TMP" = yes ]; then mount -t tmpfs -o mode=1777 tmpfs /tmp; WRITABLE+="/tmp "; fi
if [ "$PROTECT_PROC" = invisible ]; then mount -t proc -o hidepid=invisible proc /proc; fi
if [ "$PROTECT_HOME" = yes ]; then
  for h in /home /root; do [ -d "$h" ] && mount -t tmpfs -o ro,mode=0755 tmpfs "$h"; done
fi
for mp in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
  case "$mp" in /proc | /proc/* | /sys | /sys/* | /dev | /dev/*) continue ;; esac
  case "$WRITABLE" in *" $mp "*) continue ;; esac
  # Mounts under what this namespace covered (its /tmp, the tmpfs tops) are out of reach.
  [ "$PRIVATE_TMP" = yes ] && case "$mp" in /tmp/*) continue ;; esac
  [ -e "$mp" ] || continue
  mount -o remount,bind,ro "$mp" || { echo "sandbox: cannot make $mp read-only"; exit 1; }
done
for probe in /etc /usr "$PROBE_RO"; do
  if touch "$probe/.sandbox-probe" 2>/dev/null; then echo "sandbox: $probe is writable"; exit 1; fi
done
exec setpriv --no-new-privs --bounding-set "$CAPS" --inh-caps -all -- "$@"
"#;

/// The capabilities of `CapabilityBoundingSet=` as setpriv's `--bounding-set`.
fn setpriv_caps(set: &str) -> String {
    let mut caps = String::from("-all");
    for cap in set.split_whitespace() {
        let name = cap
            .strip_prefix("CAP_")
            .expect("CAP_ name")
            .to_ascii_lowercase();
        caps.push_str(&format!(",+{name}"));
    }
    caps
}

/// The directories systemd makes writable for `service`'s `*Directory=` settings.
fn unit_dirs(service: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut dirs = Vec::new();
    for (key, top) in [
        ("StateDirectory", "/var/lib"),
        ("LogsDirectory", "/var/log"),
        ("CacheDirectory", "/var/cache"),
        ("RuntimeDirectory", "/run"),
    ] {
        for v in service.get(key).into_iter().flatten() {
            dirs.extend(v.split_whitespace().map(|d| format!("{top}/{d}")));
        }
    }
    dirs
}

struct SandboxRun {
    output: String,
    binds: PathBuf,
}

/// Run `unit` (installed under `root`, with `dropin` settings appended to its `[Service]`)
/// in the sandbox; `ready` and `client` are bash.
fn run_sandboxed(root: &Path, unit: &str, dropin: &str, ready: &str, client: &str) -> SandboxRun {
    let unit_path = root.join(format!("etc/systemd/system/{unit}.service"));
    let unit_text = std::fs::read_to_string(&unit_path).expect("installed unit");
    let service = service_section(&format!("{unit_text}\n[Service]\n{dropin}"));
    let one = |k: &str| -> String {
        service
            .get(k)
            .and_then(|v| v.last())
            .cloned()
            .unwrap_or_else(|| panic!("{unit}.service has no {k}="))
    };
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    let exec = one("ExecStart");
    let stop_secs: u64 = one("TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .expect("secs");
    let rw_paths: Vec<String> = service
        .get("ReadWritePaths")
        .into_iter()
        .flatten()
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect();
    let binds = root.join("binds");
    let log = root.join(format!("{unit}.log"));
    let bool_of = |k: &str| {
        service
            .get(k)
            .and_then(|v| v.last())
            .cloned()
            .unwrap_or_else(|| "no".into())
    };
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--propagation",
            "private",
            "--",
            "bash",
            "-c",
            SANDBOX,
        ])
        .arg("sandbox")
        .args(exec.split_whitespace())
        .env("UNIT_DIRS", unit_dirs(&service).join(" "))
        .env("RW_PATHS", rw_paths.join(" "))
        .env("BINDS", &binds)
        .env("PRIVATE_TMP", bool_of("PrivateTmp"))
        .env("PROTECT_HOME", bool_of("ProtectHome"))
        .env("PROTECT_PROC", bool_of("ProtectProc"))
        .env("PROBE_RO", root)
        .env("NOFILE", one("LimitNOFILE"))
        .env("CAPS", setpriv_caps(&one("CapabilityBoundingSet")))
        .env("LOG", &log)
        .env("SANDBOX_SERVICE", SANDBOX_SERVICE)
        .env("READY", ready)
        .env("CLIENT", client)
        .env("STOP_SECS", stop_secs.to_string())
        .env_remove("DFDAEMON_CONFIG")
        .env_remove("SCHEDULER_CONFIG")
        .output()
        .expect("unshare (util-linux) runs");
    let output = format!(
        "{}\n--- {unit} log:\n{}",
        text(&out),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(out.status.success(), "sandboxed {unit} failed:\n{output}");
    SandboxRun { output, binds }
}

impl SandboxRun {
    /// What the sandbox printed, once the service ran with NoNewPrivileges and exited 0 on
    /// SIGTERM.
    fn stopped_cleanly(&self) -> &str {
        let out = &self.output;
        println!("{out}");
        assert_eq!(
            printed(out, "service-exit"),
            "0",
            "exit after SIGTERM:\n{out}"
        );
        assert_eq!(printed(out, "service-nonewprivs"), "1");
        out
    }
}

/// A value `key=` the sandbox printed.
fn printed<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in:\n{output}"))
}

/// Install with PREFIX and SYSCONFDIR under a temp dir, so each ExecStart line names the
/// installed binary and config as it is.
fn install_in_place() -> tempfile::TempDir {
    let root = install_root();
    let usr = root.path().join("usr");
    let etc = root.path().join("etc");
    make("install", &[("PREFIX", &usr), ("SYSCONFDIR", &etc)]);
    root
}

#[test]
fn dfdaemon_runs_its_exec_start_in_the_units_sandbox_and_stops_cleanly_on_sigterm() {
    let root = install_in_place();
    let r = root.path();
    let origin = r.join("origin");
    let outputs = r.join("downloads");
    std::fs::create_dir_all(&outputs).expect("mkdir");
    std::fs::create_dir_all(&origin).expect("mkdir");
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    std::fs::write(origin.join("file.bin"), &data).expect("origin file");
    let client = format!(
        r#"{dforigin} --listen 127.0.0.1:18080 --dir {origin} >{r}/origin.log 2>&1 &
        for _ in $(seq 100); do curl -fsS http://127.0.0.1:18080/_stats >/dev/null 2>&1 && break; sleep 0.05; done
        {dfget} -q http://127.0.0.1:18080/file.bin -O {outputs}/file.bin && echo allowed=ok || echo allowed=failed
        {dfget} -q http://127.0.0.1:18080/file.bin -O {r}/denied.bin >{r}/denied.log 2>&1 && echo denied=ok || echo denied=failed
        echo "origin-bytes=$(curl -fsS http://127.0.0.1:18080/_stats)"
        kill %1"#,
        dforigin = bin("dforigin").display(),
        dfget = bin("dfget").display(),
        origin = origin.display(),
        outputs = outputs.display(),
        r = r.display(),
    );
    let run = run_sandboxed(
        r,
        "dfdaemon",
        &format!("ReadWritePaths={}\n", outputs.display()),
        "[ -S /var/run/dragonfly/dfdaemon.sock ] && curl -fsS http://127.0.0.1:65001/healthy",
        &client,
    );
    let out = run.stopped_cleanly();
    let nofile = printed(out, "limit-nofile");
    assert_eq!(printed(out, "service-nofile"), format!("{nofile}:{nofile}"));
    // CAP_DAC_OVERRIDE (1) and CAP_FOWNER (3) only.
    assert_eq!(printed(out, "service-capbnd"), "000000000000000a");
    // Through the daemon into a ReadWritePaths= directory: the bytes arrive.
    assert_eq!(printed(out, "allowed"), "ok", "{out}");
    assert!(std::fs::read(outputs.join("file.bin")).expect("output") == data);
    // Anywhere else the daemon cannot write, and dfget says so.
    assert_eq!(printed(out, "denied"), "failed", "{out}");
    let denied = std::fs::read_to_string(r.join("denied.log")).expect("dfget's error");
    println!("dfget -O into a path the unit does not allow: {denied}");
    assert!(
        denied.contains("Read-only file system") && denied.contains("denied.bin"),
        "dfget's error names the path and the cause: {denied}"
    );
    // The default config's directories are the unit's: the log and the stored task are there.
    let core_log = run.binds.join("_var_log_dragonfly/daemon/core.log");
    let log = std::fs::read_to_string(&core_log).expect("core.log under LogsDirectory");
    assert!(log.contains("file.bin"), "{log}");
    assert!(
        std::fs::read_dir(run.binds.join("_var_lib_dragonfly"))
            .expect("StateDirectory")
            .count()
            > 0,
        "nothing stored under StateDirectory"
    );
}

#[test]
fn the_scheduler_runs_its_exec_start_in_the_units_sandbox_and_stops_cleanly_on_sigterm() {
    let root = install_in_place();
    let run = run_sandboxed(
        root.path(),
        "scheduler",
        "",
        "(exec 3<>/dev/tcp/127.0.0.1/8002)",
        "",
    );
    let out = run.stopped_cleanly();
    assert_eq!(printed(out, "service-capbnd"), "0000000000000000");
    let core_log = run.binds.join("_var_log_dragonfly_scheduler/core.log");
    assert!(core_log.is_file(), "{} missing:\n{out}", core_log.display());
}
