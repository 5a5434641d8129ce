"""viprog: visual program synthesis with reinforced self-training.

An LLM policy writes Python programs over vision primitives (`viprog.primitives`); a
sandboxed executor runs them on annotated tasks (`viprog.tasks`); programs the task
rewards are kept and the policy is LoRA fine-tuned on them, round after round
(`viprog.selftrain`). `viprog.reinforce` tunes pixel-output vision models with task
rewards. Importing this package imports no torch and loads no model.
"""

from __future__ import annotations

import os
from typing import Any

__version__ = "0.1.0"

# OpenMP threads wait for each other by sleeping, not spinning. libgomp (one runtime, shared
# by torch and the llama.cpp engine) reads this once, when it is first loaded, so it is set
# here, before either is imported. Spinning wins only on an idle machine: on our 2 cores
# shared with other jobs, a llama.cpp decoding step (16 sequences, 2 threads, ~700 barriers)
# took 7.9 s spinning and 1.0 s sleeping (1.2 s with one thread). A user's setting is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load(run_dir: str, *, profile_options: str | dict[str, Any] | None = None, executor: str | None = None,
         ray_address: str | None = None) -> Any:
    """The program library of a self-training run (see `viprog.library.Library`);
    `profile_options` replace the primitive profile's options the run was made with, and
    `executor` / `ray_address` where its programs run (`"ray"`: on a Ray cluster)."""
    from viprog.library import Library

    return Library.load(run_dir, profile_options=profile_options, executor=executor, ray_address=ray_address)


__all__ = ["__version__", "load"]
