"""helm lint and helm template of the chart with the defaults and every ci/*-values.yaml."""
import subprocess
from pathlib import Path

import yaml

RELEASE = "df"
NAMESPACE = "dragonfly-system"


def value_sets(chart: Path) -> dict[str, Path | None]:
    sets: dict[str, Path | None] = {"default": None}
    for f in sorted((chart / "ci").glob("*-values.yaml")):
        sets[f.name.removesuffix("-values.yaml")] = f
    return sets


def lint(helm: Path, chart: Path, values: Path | None) -> str:
    args = [str(helm), "lint", "--strict", str(chart)]
    if values:
        args += ["-f", str(values)]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"helm lint {values or '(defaults)'} failed:\n{r.stdout}{r.stderr}")
    return r.stdout


def template(helm: Path, chart: Path, values: Path | None, out: Path) -> list[dict]:
    args = [str(helm), "template", RELEASE, str(chart), "--namespace", NAMESPACE]
    if values:
        args += ["-f", str(values)]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"helm template {values or '(defaults)'} failed:\n{r.stderr}")
    out.write_text(r.stdout)
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def find(objs: list[dict], kind: str, name_suffix: str) -> dict:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    if len(hits) != 1:
        raise AssertionError(f"expected one {kind} named *{name_suffix}, found {[o['metadata']['name'] for o in hits]}")
    return hits[0]
