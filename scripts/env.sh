#!/usr/bin/env bash
# Create (or reuse) the project's one environment at .venv/ and install viprog into it.
#
#   bash scripts/env.sh [EXTRAS]      e.g. `dev` (tests) or `embedded,dev` (the demo)
#
# torch and torchvision are installed first, pinned to the builds that pip finds on this
# machine's disk (no 3 GB download). The install is skipped when pyproject.toml and the
# extras are unchanged since the last successful run, so a second run takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
python="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  echo "[env] creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=".venv/.viprog-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) [$extras]"
if [ -f "$stamp" ] && grep -qxF "$want" "$stamp"; then
  echo "[env] .venv is up to date ($extras)"
  exit 0
fi
echo "[env] installing viprog[$extras] into .venv (a few minutes the first time)"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install --quiet -e ".[$extras]"
echo "$want" >> "$stamp"
echo "[env] done: $(.venv/bin/python -c 'import viprog, torch; print("viprog", viprog.__version__, "torch", torch.__version__)')"
