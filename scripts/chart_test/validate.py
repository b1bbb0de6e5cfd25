"""Offline validation of rendered objects.

Core kinds: the Kubernetes OpenAPI schemas shipped in PyPI kubernetes-validate, strict (unknown
fields are errors), for each version in KUBERNETES_VERSIONS.
prometheus-operator kinds (ServiceMonitor, PrometheusRule) are not in those schemas: they are
checked against the pydantic models that cloudcoil generates from the prometheus-operator
v0.80.1 CRDs (types and patterns), plus a round trip that reports every field the model does
not know (the models themselves ignore unknown fields); PrometheusRule groups also go through
`promtool check rules`, which parses every PromQL expression.
"""
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml

KUBERNETES_VERSIONS = ["1.30.0", "1.35.0"]
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def core(obj: dict, version: str) -> None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes {version}: {e.message} at {'.'.join(map(str, e.path))}") from None


def _unknown_fields(given, dumped, path="") -> list[str]:
    out = []
    if isinstance(given, dict) and isinstance(dumped, dict):
        for k, v in given.items():
            if k not in dumped:
                out.append(f"{path}.{k}".lstrip("."))
            else:
                out += _unknown_fields(v, dumped[k], f"{path}.{k}")
    elif isinstance(given, list) and isinstance(dumped, list):
        for i, (g, d) in enumerate(zip(given, dumped)):
            out += _unknown_fields(g, d, f"{path}[{i}]")
    return out


def operator(obj: dict) -> str:
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, obj["kind"])
    try:
        parsed = model.model_validate(obj)
    except Exception as e:  # pydantic.ValidationError
        raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} does not match the prometheus-operator v0.80.1 CRD: {e}") from None
    dumped = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    unknown = _unknown_fields(obj, dumped)
    if unknown:
        raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: fields the prometheus-operator v0.80.1 CRD does not have: {unknown}")
    if obj["kind"] == "PrometheusRule":
        promtool_rules({"groups": obj["spec"]["groups"]}, f"PrometheusRule/{obj['metadata']['name']}")
        return "CRD model + round trip + promtool check rules"
    return "CRD model + round trip"


def promtool_rules(rules: dict, what: str) -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        raise AssertionError("promtool is missing: apt-get install prometheus (see TEST_PACKAGES in the Makefile)")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"promtool check rules of {what} failed:\n{r.stdout}{r.stderr}")


def dashboard(text: str, what: str) -> int:
    """The dashboard is JSON and every panel query is valid PromQL (Grafana's variables replaced)."""
    dash = json.loads(text)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    if not exprs:
        raise AssertionError(f"{what}: no panel queries")
    rules = [{"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m").replace("$namespace", "ns")}
             for i, e in enumerate(exprs)]
    promtool_rules({"groups": [{"name": "dashboard", "rules": rules}]}, what)
    return len(exprs)


def kubectl_args(kubectl: Path, args: list[str], work: Path) -> None:
    """kubectl accepts the hook Job's command line: run against an address where nothing
    listens, it must fail connecting, not on a flag or a command."""
    cfg = work / "kubeconfig-nothing-listens"
    cfg.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {}}]}))
    r = subprocess.run([kubectl, "--kubeconfig", str(cfg), "--request-timeout=2s", *args], capture_output=True, text=True)
    if r.returncode == 0 or "connection refused" not in r.stderr:
        raise AssertionError(f"kubectl {' '.join(args)}: expected a connection failure, got rc={r.returncode}:\n{r.stderr}")
