"""The policy contract: prompts in, program completions out; LoRA adapters swapped in.

A policy backend is a class registered in `POLICIES` (`hf`, `vllm`, `scripted`, or a
user's). Constructing one loads nothing heavy until the first `sample`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viprog.registry import Registry

POLICIES: Registry[type[Policy]] = Registry("policy", group="viprog.policies")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: n completions per prompt, temperature (0 = greedy), nucleus top-p."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None


class Policy:
    """Base class of policy backends."""

    name: str = "base"

    def sample(self, prompts: Sequence[str], params: SamplingParams) -> list[list[str]]:
        """`params.n` completions (text after the prompt) for each prompt."""
        raise NotImplementedError

    def load_adapter(self, path: str | Path | None) -> None:
        """Use the LoRA adapter at `path` from now on (None: the base model)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release models and memory."""

    def release_caches(self) -> None:
        """Drop what sampling can rebuild (quantised copies, prefix KV caches), to make room
        for fine-tuning; the next `sample` rebuilds them."""

    def info(self) -> dict[str, Any]:
        return {"policy": self.name}
