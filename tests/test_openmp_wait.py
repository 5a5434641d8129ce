"""Importing viprog makes OpenMP threads sleep while they wait (the llama.cpp engine's
decoding steps were 8x slower spinning on a shared machine), unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

SHOW = "import viprog, os; print(os.environ['OMP_WAIT_POLICY'])"


def _policy_seen(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", SHOW], check=True, capture_output=True, text=True, env=env)
    return done.stdout.strip()


def test_import_sets_a_passive_wait_policy():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy_seen(env) == "PASSIVE"


def test_a_users_wait_policy_is_kept():
    assert _policy_seen({**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
