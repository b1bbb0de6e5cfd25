"""Every rendered ConfigMap config loads in our binaries with no warning."""
import subprocess
import tempfile
from pathlib import Path

BINARIES = {"dfdaemon.yaml": "dfdaemon", "scheduler.yaml": "scheduler"}


def check(cm: dict, bin_dir: Path) -> list[str]:
    checked = []
    for key, text in cm.get("data", {}).items():
        binary = BINARIES.get(key)
        if binary is None:
            continue
        with tempfile.NamedTemporaryFile("w", suffix=f"-{key}") as f:
            f.write(text)
            f.flush()
            r = subprocess.run([bin_dir / binary, "--config", f.name, "--print-config"], capture_output=True, text=True)
        where = f"ConfigMap/{cm['metadata']['name']} {key}"
        if r.returncode != 0:
            raise AssertionError(f"{binary} --print-config rejects {where}:\n{r.stderr}")
        warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
        if warnings:
            raise AssertionError(f"{binary} --print-config warns about {where}:\n" + "\n".join(warnings))
        checked.append(f"{where} ({binary})")
    return checked
