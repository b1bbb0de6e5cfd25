"""The rendered topology run as processes.

From the rendered objects: each pod's command, args, env, volume mounts and ConfigMap files. The
pods run as processes, each on its own 127.0.15.x: the scheduler replicas, seed peer 0 and three
"nodes" of the dfdaemon DaemonSet. Paths under the pods' mount points move to a temp dir; the
listen addresses in the configs move to the process's own address (and host.advertiseIP /
host.hostname become what the pod would have: its IP and name). The schedulers' Service names in
the daemons' scheduler.netAddrs resolve through /etc/hosts lines added here and removed at the
end. A local origin serves one file with Range support and counts the bytes it sent; dfget pulls
it through each node daemon's socket. The origin must have served it exactly once, the seed peer
must have taken every piece from the origin and each node daemon every piece from peers.
"""
import hashlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import yaml

from render import NAMESPACE, find

NET = "127.0.15."
HOSTS = Path("/etc/hosts")
MARK = "# dragonfly chart-test"
SIZE = 32 << 20


class Origin:
    """One file at /file, Range requests honoured, body bytes counted."""

    def __init__(self, ip: str, data: bytes):
        self.data, self.sent, self.lock = data, 0, threading.Lock()
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                self.respond(body=False)

            def do_GET(self):
                self.respond(body=True)

            def respond(self, body: bool):
                if self.path.split("?")[0] != "/file":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                n = len(origin.data)
                start, end, status = 0, n - 1, 200
                m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
                if m and (m.group(1) or m.group(2)):
                    if m.group(1):
                        start = int(m.group(1))
                        end = min(int(m.group(2)), n - 1) if m.group(2) else n - 1
                    else:
                        start = max(0, n - int(m.group(2)))
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{n}")
                self.end_headers()
                if body:
                    chunk = origin.data[start:end + 1]
                    self.wfile.write(chunk)
                    with origin.lock:
                        origin.sent += len(chunk)

        self.server = http.server.ThreadingHTTPServer((ip, 0), Handler)
        self.url = f"http://{ip}:{self.server.server_address[1]}/file"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


class Pod:
    def __init__(self, name: str, role: str, ip: str):
        self.name, self.role, self.ip = name, role, ip
        self.proc: subprocess.Popen | None = None
        self.config: dict = {}
        self.log_dir: Path | None = None

    def core_log(self) -> str:
        p = self.log_dir / "core.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def fed(self) -> dict[str, int]:
        """Pieces per source of the last finished task (the daemon's 'peer task done' line)."""
        log = self.core_log()
        for _ in range(200):
            ended = log.count("peer task done, cost: ") + log.count('"peer task failed"')
            if ended >= log.count('"peer task started"') and ended:
                break
            time.sleep(0.05)
            log = self.core_log()
        lines = [line for line in log.splitlines() if "peer task done, cost: " in line]
        if not lines:
            raise AssertionError(f"{self.name}: no finished task in {self.log_dir}/core.log:\n{log[-3000:]}")
        frm = json.loads(lines[-1]).get("from", "")
        return {k: int(v) for k, v in (kv.rsplit("=", 1) for kv in frm.split(",") if kv)}


def _volume(spec: dict, workload: dict, name: str) -> dict:
    for v in spec.get("volumes", []):
        if v["name"] == name:
            return v
    for t in workload["spec"].get("volumeClaimTemplates", []):
        if t["metadata"]["name"] == name:
            return {"name": name, "persistentVolumeClaim": {}}
    raise AssertionError(f"{workload['kind']}/{workload['metadata']['name']}: volume {name} is mounted but not defined")


def _field(path: str, pod: Pod) -> str:
    return {"status.podIP": pod.ip, "status.hostIP": pod.ip, "metadata.name": pod.name,
            "spec.nodeName": pod.name, "metadata.namespace": NAMESPACE}[path]


def materialize(objs: list[dict], workload: dict, pod: Pod, work: Path, bin_dir: Path) -> tuple[list[str], dict]:
    """The pod's main container as a command line and environment on this machine."""
    spec = workload["spec"]["template"]["spec"]
    c = spec["containers"][0]
    root = work / pod.name
    mounts: dict[str, Path] = {}
    for vm in c.get("volumeMounts", []):
        vol = _volume(spec, workload, vm["name"])
        d = root / vm["name"]
        d.mkdir(parents=True, exist_ok=True)
        if "configMap" in vol:
            cm = find(objs, "ConfigMap", vol["configMap"]["name"])
            for k, text in cm["data"].items():
                (d / k).write_text(text)
        mounts[vm["mountPath"].rstrip("/")] = d

    def moved(s: str) -> str:
        for mp in sorted(mounts, key=len, reverse=True):
            if s == mp or s.startswith(mp + "/"):
                return str(mounts[mp]) + s[len(mp):]
        return s

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            env[e["name"]] = _field(e["valueFrom"]["fieldRef"]["fieldPath"], pod)

    def expand(s: str) -> str:
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), s)

    command = [expand(moved(a)) for a in c["command"]]
    if not command[0].startswith("/usr/bin/"):
        raise AssertionError(f"{pod.name}: command {command[0]} is not one of the image's /usr/bin binaries")
    command[0] = str(bin_dir / Path(command[0]).name)
    args = [expand(moved(a)) for a in c.get("args", [])]
    cfg_path = Path(args[args.index("--config") + 1])

    def walk(x):
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return moved(x) if isinstance(x, str) else x

    cfg = walk(yaml.safe_load(cfg_path.read_text()))
    if pod.role == "scheduler":
        for key in ("listenIP",):
            assert key in cfg["server"], f"{pod.name}: rendered config has no server.{key}"
        cfg["server"]["listenIP"] = pod.ip
        cfg["server"]["advertiseIP"] = pod.ip
        port = cfg["metrics"]["addr"].rsplit(":", 1)[1]
        cfg["metrics"]["addr"] = f"{pod.ip}:{port}"
        pod.log_dir = Path(cfg["server"]["logDir"])
    else:
        for section in ("upload", "metrics", "proxy"):
            if section in cfg:
                assert "listen" in cfg[section]["tcpListen"], f"{pod.name}: rendered config has no {section}.tcpListen.listen"
                cfg[section]["tcpListen"]["listen"] = pod.ip
        cfg.setdefault("host", {})
        cfg["host"]["advertiseIP"] = pod.ip
        cfg["host"]["hostname"] = pod.name
        pod.log_dir = Path(cfg["logDir"])
    # The ConfigMap volume is a copy here; the process reads the moved config from it.
    cfg_path.write_text(yaml.safe_dump(cfg))
    pod.config = cfg
    return [*command, *args], env


def wait_port(ip: str, port: int, pod: Pod, what: str) -> None:
    for _ in range(600):
        if pod.proc.poll() is not None:
            raise AssertionError(f"{pod.name} exited with {pod.proc.returncode} before {what} listened")
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{pod.name}: {what} {ip}:{port} did not listen within 60 s")


def wait_daemon(pod: Pod) -> None:
    sock = Path(pod.config["download"]["unixListen"]["socket"])
    for _ in range(600):
        if pod.proc.poll() is not None:
            raise AssertionError(f"{pod.name} exited with {pod.proc.returncode}:\n{pod.core_log()[-3000:]}")
        if sock.exists():
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"{pod.name}: socket {sock} did not appear within 60 s")
    wait_port(pod.ip, int(pod.config["upload"]["tcpListen"]["port"]), pod, "upload port")


def hosts_add(lines: list[str]) -> None:
    hosts_remove()
    with HOSTS.open("a") as f:
        for line in lines:
            f.write(f"{line} {MARK}\n")


def hosts_remove() -> None:
    text = HOSTS.read_text()
    kept = [line for line in text.splitlines(keepends=True) if MARK not in line]
    if len(kept) != len(text.splitlines(keepends=True)):
        HOSTS.write_text("".join(kept))


def metrics_addr(pod: Pod) -> str:
    m = pod.config["metrics"]
    if pod.role == "scheduler":
        return m["addr"]
    return f"{m['tcpListen']['listen']}:{m['tcpListen']['port']}"


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)')


def scrape(pod: Pod) -> list[tuple[str, dict, float]]:
    """The pod's /metrics as (name, labels, value) samples."""
    import urllib.request
    url = f"http://{metrics_addr(pod)}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200, f"{pod.name}: GET {url} answered {r.status}"
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"{pod.name}: unparsable line in {url}: {line!r}"
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def used_metrics(objs: list[dict]) -> dict[str, set[tuple[str, str]]]:
    """Every dragonfly_* name the rendered PrometheusRule and Grafana dashboard query, with the
    label="value" matchers they put on it (namespace aside: Prometheus adds it)."""
    texts = []
    for o in objs:
        if o["kind"] == "PrometheusRule":
            texts += [r["expr"] for g in o["spec"]["groups"] for r in g["rules"]]
        if o["kind"] == "ConfigMap":
            texts += [v for k, v in o.get("data", {}).items() if k.endswith(".json")]
    used: dict[str, set[tuple[str, str]]] = {}
    for t in texts:
        t = t.replace('\\"', '"')
        for m in re.finditer(r'(dragonfly_[a-z_]+)(\{([^}]*)\})?', t):
            name = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
            # Exact matchers with a literal value (`source="origin"`); `$namespace` and `=~` aside.
            # `namespace`, `job` and `pod` are target labels Prometheus adds when it scrapes.
            matchers = {(k, v) for k, v in re.findall(r'(\w+)="([^"$]*)"', m.group(3) or "")
                        if k not in ("namespace", "job", "pod")}
            used.setdefault(name, set()).update(matchers)
    return used


def check_metrics(pods, monitoring: list[dict], report) -> None:
    """Scrape every process: the origin bytes the daemons count agree with the origin's own count,
    the bytes the nodes took from peers agree with what peers sent, and every metric the chart's
    alerts and dashboard query exists, with the label values they select."""
    samples = {pod.name: scrape(pod) for pod, _ in pods}
    def total(name, **want):
        return sum(v for p in samples.values() for n, l, v in p if n == name and all(l.get(k) == x for k, x in want.items()))
    origin = total("dragonfly_dfdaemon_download_bytes_total", source="origin")
    parent = total("dragonfly_dfdaemon_download_bytes_total", source="parent")
    sent = total("dragonfly_dfdaemon_upload_bytes_total")
    report(f"  scraped {len(samples)} processes: bytes in from the origin {int(origin)}, from parents {int(parent)}, out to peers {int(sent)}")
    assert origin == SIZE, f"the daemons count {origin} bytes from the origin, the origin sent the file once ({SIZE})"
    assert parent == 3 * SIZE, f"the 3 nodes count {parent} bytes from parents, not 3 x {SIZE}"
    assert sent == parent, f"peers count {sent} bytes sent, the nodes {parent} received"
    regs = total("dragonfly_scheduler_register_peer_total")
    assert regs == 4, f"the schedulers count {regs} registrations, 4 daemons downloaded"
    used = used_metrics(monitoring)
    assert used, "no dragonfly_* metric found in the rendered PrometheusRule and dashboard"
    present: dict[str, set[tuple[str, str]]] = {}
    for p in samples.values():
        for n, l, _ in p:
            base = re.sub(r"_(bucket|sum|count|created)$", "", n)
            for key in (n, base):
                present.setdefault(key, set()).update(l.items())
    for name, matchers in sorted(used.items()):
        assert name in present, f"the chart's alerts or dashboard query {name}, which no process exports"
        for k, v in sorted(matchers):
            assert (k, v) in present[name], f"the chart selects {name}{{{k}=\"{v}\"}}, which no process exports"
    report(f"  the chart's alerts and dashboard query {len(used)} metrics; every one is exported: {', '.join(sorted(used))}")


def run(objs: list[dict], work: Path, bin_dir: Path, report, monitoring: list[dict] | None = None) -> None:
    sched = find(objs, "StatefulSet", "-scheduler")
    seed = find(objs, "StatefulSet", "-seed-peer")
    ds = find(objs, "DaemonSet", "-dfdaemon")
    svc = find(objs, "Service", "-scheduler")
    assert svc["spec"].get("clusterIP") == "None", "the scheduler Service is not headless"
    assert sched["spec"]["serviceName"] == svc["metadata"]["name"]

    pods: list[tuple[Pod, dict]] = []
    fqdns = []
    for i in range(sched["spec"]["replicas"]):
        pod = Pod(f"{sched['metadata']['name']}-{i}", "scheduler", f"{NET}{11 + i}")
        port = sched["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
        fqdn = f"{pod.name}.{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
        fqdns.append((pod.ip, fqdn, f"{fqdn}:{port}"))
        pods.append((pod, sched))
    pods.append((Pod(f"{seed['metadata']['name']}-0", "seed-peer", f"{NET}21"), seed))
    for n in range(3):
        pods.append((Pod(f"node-{n + 1}", "dfdaemon", f"{NET}{31 + n}"), ds))

    data = os.urandom(SIZE)
    origin = Origin(f"{NET}40", data)
    started: list[Pod] = []
    hosts_add([f"{ip} {fqdn}" for ip, fqdn, _ in fqdns])
    try:
        for pod, workload in pods:
            argv, env = materialize(objs, workload, pod, work, bin_dir)
            if pod.role != "scheduler":
                want = [addr for _, _, addr in fqdns]
                got = pod.config["scheduler"]["netAddrs"]
                assert got == want, f"{pod.name}: scheduler.netAddrs {got} is not every replica {want}"
            report(f"  start {pod.name} on {pod.ip}: {' '.join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv))}")
            out = (work / f"{pod.name}.stderr").open("w")
            pod.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
            started.append(pod)
            if pod.role == "scheduler":
                wait_port(pod.ip, int(pod.config["server"]["port"]), pod, "gRPC port")
            else:
                wait_daemon(pod)
        nodes = [p for p, _ in pods if p.role == "dfdaemon"]
        seed_pod = next(p for p, _ in pods if p.role == "seed-peer")
        pulls = []
        for p in nodes:
            out = work / f"{p.name}.out"
            sock = p.config["download"]["unixListen"]["socket"]
            pulls.append((p, out, subprocess.Popen(
                [bin_dir / "dfget", origin.url, "-O", str(out), "--daemon-sock", sock],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        digest = hashlib.sha256(data).hexdigest()
        for p, out, proc in pulls:
            text, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, f"dfget through {p.name} failed ({proc.returncode}):\n{text}"
            assert hashlib.sha256(out.read_bytes()).hexdigest() == digest, f"{out} differs from the origin's file"
        names = {f"{p.ip}:{p.config['upload']['tcpListen']['port']}": p.name for p, _ in pods if p.role != "scheduler"}
        seed_fed = seed_pod.fed()
        pieces = seed_fed.get("source", 0)
        report(f"  {seed_pod.name} <- {seed_fed}")
        assert pieces > 0 and set(seed_fed) == {"source"}, f"the seed peer did not take the file from the origin: {seed_fed}"
        for p in nodes:
            fed = p.fed()
            report(f"  {p.name} <- " + ", ".join(f"{names.get(k, k)}: {v}" for k, v in sorted(fed.items())))
            assert "source" not in fed, f"{p.name} went to the origin: {fed}"
            assert sum(fed.values()) == pieces, f"{p.name} took {sum(fed.values())} pieces, the file has {pieces}: {fed}"
        report(f"  origin served {origin.sent} bytes for a {SIZE}-byte file ({origin.sent / SIZE:.2f}x) to {len(nodes) + 1} daemons")
        assert origin.sent == SIZE, f"the origin served {origin.sent} bytes, not the file once ({SIZE})"
        probe(pods, report)
        check_metrics(pods, monitoring or [], report)
    finally:
        for pod in started:
            if pod.proc.poll() is None:
                pod.proc.send_signal(signal.SIGTERM)
        for pod in started:
            try:
                pod.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pod.proc.kill()
                pod.proc.wait()
        hosts_remove()
        origin.close()


def probe(pods, report) -> None:
    """The rendered probes point at declared ports; where they are HTTP or TCP, what they get now."""
    seen = set()
    for pod, workload in pods:
        c = workload["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            pr = c[kind]
            if "httpGet" in pr:
                port = pr["httpGet"]["port"]
                port = ports[port] if isinstance(port, str) else port
                assert port in ports.values(), f"{pod.name} {kind}: port {port} is not declared"
                if (pod.role, kind) in seen:
                    continue
                try:
                    s = socket.create_connection((pod.ip, port), timeout=2)
                    s.sendall(f"GET {pr['httpGet']['path']} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                    status = s.recv(64).split(b"\r\n")[0].decode(errors="replace")
                    s.close()
                except OSError as e:
                    raise AssertionError(f"{pod.name} {kind}: GET {pr['httpGet']['path']} on {pod.ip}:{port}: {e}")
                assert status.split(" ")[1:2] == ["200"], f"{pod.name} {kind}: GET {pr['httpGet']['path']} on :{port} answered {status!r}"
                report(f"  {pod.role} {kind} GET {pr['httpGet']['path']} on :{port}: {status}")
            else:
                port = pr["grpc"]["port"]
                assert port in ports.values(), f"{pod.name} {kind}: gRPC port {port} is not declared"
                if (pod.role, kind) not in seen:
                    report(f"  {pod.role} {kind}: gRPC health on :{port} (a declared port)")
            seen.add((pod.role, kind))
