#!/usr/bin/env bash
# Create (or reuse) the project's one environment at .venv/ and install viprog into it.
#
#   bash scripts/env.sh [EXTRAS]      e.g. `dev,engine` (tests) or `embedded,engine,dev` (the demo)
#
# torch and torchvision are installed first, pinned to the builds that pip finds on this
# machine's disk (no 3 GB download). The install is skipped when pyproject.toml and the
# extras are unchanged since the last successful run, so a second run takes a second.
#
# The `engine` extra (llama-cpp-python) compiles llama.cpp: about ten minutes on two cores
# the first time, then pip's wheel cache makes it seconds. Unless CMAKE_ARGS says otherwise
# it is a portable x86-64 build (AVX2/FMA/F16C; the native build's AVX-512/AMX paths crashed
# on our CPUs). A failed build is one warning: the embedded policy then samples with hf.
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
others="$(tr ',' '\n' <<< "$extras" | grep -vx engine | paste -sd, - || true)"
.venv/bin/python -m pip install --quiet -e ".${others:+[$others]}"
if [[ ",$extras," == *,engine,* ]]; then
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF}"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
  echo "[env] installing the engine (llama-cpp-python; a build of ~10 minutes the first time)"
  if ! .venv/bin/python -m pip install --quiet -e ".[engine]" > .venv/engine-build.log 2>&1; then
    echo "[env] WARNING: llama-cpp-python did not build (see .venv/engine-build.log); the embedded policy will use hf"
    want=""  # no stamp: the next run tries the build again
  fi
fi
if [ -n "$want" ]; then echo "$want" >> "$stamp"; fi
echo "[env] done: $(.venv/bin/python -c 'import viprog, torch; print("viprog", viprog.__version__, "torch", torch.__version__)')"
