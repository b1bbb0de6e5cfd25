#!/usr/bin/env bash
# `make chart-test`: the Helm chart charts/dragonfly linted, rendered with the defaults and every
# charts/dragonfly/ci/*-values.yaml, validated offline, its configs loaded by our binaries, and
# its topology run as processes on 127.0.15.x. See scripts/chart_test/main.py.
# Needs root (it adds and removes /etc/hosts lines), python3-venv, promtool (Debian prometheus)
# and PyPI. Anything missing fails the test, naming it.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
WORK="$TARGET/chart-test"
mkdir -p "$WORK"

${CARGO:-cargo} build -p dfdaemon -p scheduler --bins

command -v python3 >/dev/null || { echo "chart-test: python3 is missing (apt-get install python3-venv)" >&2; exit 1; }
VENV="$WORK/venv"
REQ=scripts/chart_test/requirements.txt
STAMP="$VENV/.requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" || { echo "chart-test: python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ" \
    || { echo "chart-test: pip install -r $REQ failed (PyPI must be reachable)" >&2; exit 1; }
  echo "$want" > "$STAMP"
fi
exec "$VENV/bin/python" scripts/chart_test/main.py --work "$WORK" --bin "$TARGET/debug" "$@"
