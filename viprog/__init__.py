"""viprog: visual program synthesis with reinforced self-training.

An LLM policy writes Python programs over vision primitives (`viprog.primitives`); a
sandboxed executor runs them on annotated tasks (`viprog.tasks`); programs the task
rewards are kept and the policy is LoRA fine-tuned on them, round after round
(`viprog.selftrain`). `viprog.reinforce` tunes pixel-output vision models with task
rewards. Importing this package imports no torch and loads no model.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(run_dir: str, *, profile_options: str | dict[str, Any] | None = None, executor: str | None = None,
         ray_address: str | None = None) -> Any:
    """The program library of a self-training run (see `viprog.library.Library`);
    `profile_options` replace the primitive profile's options the run was made with, and
    `executor` / `ray_address` where its programs run (`"ray"`: on a Ray cluster)."""
    from viprog.library import Library

    return Library.load(run_dir, profile_options=profile_options, executor=executor, ray_address=ray_address)


__all__ = ["__version__", "load"]
