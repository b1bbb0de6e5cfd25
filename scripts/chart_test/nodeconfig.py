"""The chart's containerd node configuration, run as the pods would run it, on a fake node root.

The dfdaemon DaemonSet's init container and the post-delete restore hook's init container are
taken from the rendered objects (command and args), their host paths moved under a temp dir, and
`--on-change` replaced by a command that counts the restarts it would have done. Checked: the
first run sets containerd's config_path, writes a hosts.toml per registry and restarts once; a
second run (a pod restart, dragonflyoss/helm-charts#294) changes nothing and does not restart; the
restore hook puts config.toml back byte for byte, removes what the install wrote, and restarts
once more; a second restore is a no-op.
"""
import subprocess
from pathlib import Path

from render import find

# A containerd 2.x config as a node would have it: CRI registry without config_path.
CONFIG_TOML = """version = 3
root = "/var/lib/containerd"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"

[plugins."io.containerd.cri.v1.images".registry]
"""


def _container(obj: dict, name: str) -> dict:
    for c in obj["spec"]["template"]["spec"].get("initContainers", []):
        if c["name"] == name:
            return c
    raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} has no init container {name!r}")


def _argv(c: dict, root: Path, bin_dir: Path, config: Path, marker: Path) -> list[str]:
    assert c["command"][0].startswith("/usr/bin/"), f"init container {c['name']}: command {c['command']}"
    argv = [str(bin_dir / Path(c["command"][0]).name)] + c["command"][1:]
    args = list(c["args"])
    if "--on-change" in args:
        i = args.index("--on-change")
        assert "systemctl restart containerd" in args[i + 1], f"--on-change {args[i + 1]!r} does not restart containerd"
        args[i + 1] = f"echo restart >> {marker}"
    else:
        raise AssertionError(f"init container {c['name']} has no --on-change (the default restarts containerd)")
    mounts = [m["mountPath"] for m in c.get("volumeMounts", []) if m["mountPath"] != "/etc/dragonfly"]
    out = []
    for a in args:
        if a == "/etc/dragonfly/dfdaemon.yaml":
            a = str(config)
        for m in mounts:
            if a == m or a.startswith(m + "/"):
                a = str(root) + a
        out.append(a)
    return argv + out


def _run(argv: list[str], what: str) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"{what}: {' '.join(argv)} exited {p.returncode}:\n{p.stdout}{p.stderr}"
    return p.stdout + p.stderr


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run(objs: list[dict], work: Path, bin_dir: Path, report) -> None:
    ds = find(objs, "DaemonSet", "-dfdaemon")
    restore = find(objs, "DaemonSet", "-containerd-restore")
    cm = find(objs, "ConfigMap", "-dfdaemon")
    root = work / "node"
    etc = root / "etc" / "containerd"
    etc.mkdir(parents=True)
    (etc / "config.toml").write_text(CONFIG_TOML)
    config = work / "dfdaemon.yaml"
    config.write_text(cm["data"]["dfdaemon.yaml"])
    marker = work / "restarts"
    before = _snapshot(root)
    restarts = lambda: len(marker.read_text().splitlines()) if marker.exists() else 0  # noqa: E731

    install = _argv(_container(ds, "containerd-hosts"), root, bin_dir, config, marker)
    out = _run(install, "install")
    toml = (etc / "config.toml").read_text()
    assert f'config_path = "{etc / "certs.d"}"' in toml, f"config_path not set in config.toml:\n{toml}"
    hosts = sorted(str(p.relative_to(etc)) for p in (etc / "certs.d").rglob("hosts.toml"))
    assert restarts() == 1, f"the first run restarted containerd {restarts()} times, not once:\n{out}"
    report(f"  install: config_path set, {len(hosts)} hosts.toml ({', '.join(hosts)}), containerd restarted once")
    for h in hosts:
        text = (etc / h).read_text()
        assert text.startswith("server = "), f"{h} has no upstream server (pulls would fail with the daemon down):\n{text}"
    after = _snapshot(root)
    out = _run(install, "second install (a pod restart)")
    assert restarts() == 1, f"a second run restarted containerd again:\n{out}"
    assert _snapshot(root) == after, "a second run changed files on the node"
    report("  pod restart: nothing changed, no restart")

    undo = _argv(_container(restore, "restore"), root, bin_dir, config, marker)
    out = _run(undo, "restore")
    now = _snapshot(root)
    left = {k for k in now if not k.startswith("var/lib/dragonfly/")}
    assert {k: now[k] for k in left} == before, f"restore left the node different: {sorted(set(now) ^ set(before))}\n{out}"
    assert not (etc / "certs.d").exists() or not any((etc / "certs.d").rglob("*.toml")), "restore left hosts.toml files"
    assert restarts() == 2, f"restore restarted containerd {restarts() - 1} times, not once:\n{out}"
    report("  restore hook: config.toml back byte for byte, the hosts.toml files gone, containerd restarted once")
    out = _run(undo, "second restore")
    assert restarts() == 2, f"a second restore restarted containerd:\n{out}"
    report("  second restore: a no-op")
