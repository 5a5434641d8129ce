"""Policy backends: the LLM that writes programs (`hf`, `vllm`, `llamacpp`, `scripted`, and the embedded
default `qwen2.5-coder-0.5b`), the prompts it reads and the extraction of its programs.

Registering a backend imports nothing: `load_policy` resolves the name when asked.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
from typing import Any

from viprog.errors import UsageError
from viprog.policy.base import POLICIES, Policy, SamplingParams
from viprog.policy.extract import HEADER, extract_program
from viprog.policy.prompts import Prompter
from viprog.policy.scripted import ScriptedPolicy

#: the policy used when none is named: Qwen2.5-Coder-0.5B-Instruct, shipped on PyPI
DEFAULT_POLICY = "qwen2.5-coder-0.5b"
#: the models shipped as PyPI parts (viprog.policy.embedded.MODELS), as policy names
EMBEDDED_POLICIES = (DEFAULT_POLICY, "qwen2.5-coder-1.5b")

POLICIES.add("hf", "viprog.policy.hf:HFPolicy", help="transformers on CPU/GPU, shared-prefix KV reuse, PEFT LoRA")
POLICIES.add("vllm", "viprog.policy.vllm:VLLMPolicy", help="vLLM on GPUs, prefix caching, LoRARequest per round")
POLICIES.add("scripted", "viprog.policy.scripted:ScriptedPolicy", help="returns given programs (tests, released programs)")
POLICIES.add("llamacpp", "viprog.policy.llamacpp:LlamaCppPolicy",
             help="llama.cpp on the CPU: GGUF models, sequences batched over a shared prefix, GGUF LoRA per round")
POLICIES.add(DEFAULT_POLICY, "viprog.policy.embedded:embedded_policy",
             help="the embedded default: Qwen2.5-Coder-0.5B-Instruct from PyPI parts, via llama.cpp or hf")
POLICIES.add(EMBEDDED_POLICIES[1], "viprog.policy.embedded:embedded_policy_1_5b",
             help="Qwen2.5-Coder-1.5B-Instruct from PyPI parts (viprog[embedded-1.5b]), the 3x larger frozen model")

#: backends that cannot run without a model name or folder
NEEDS_MODEL = ("hf", "vllm", "llamacpp")


def load_policy(name: str = DEFAULT_POLICY, *, model: str | None = None, device: str = "cpu", dtype: str = "auto",
                **options: Any) -> Policy:
    """A policy by registered name. model: a hub name or local folder (hf, vllm; for the
    embedded default it replaces the embedded model); options go to the backend
    (hf: batch_size, prefix_cache, quantize, adapter; llamacpp: gguf, batch_size, threads, adapter;
    the embedded default: engine; scripted: programs, path, default)."""
    cls = POLICIES.get(name)
    if model is None and name in NEEDS_MODEL:
        raise UsageError(f"the {name} policy needs a model: a hub name or a local folder (e.g. --model Qwen/…); "
                         f"or use the embedded default {DEFAULT_POLICY!r}")

    try:
        if isinstance(cls, type) and issubclass(cls, ScriptedPolicy):
            return cls(**options)
        return cls(model=model, device=device, dtype=dtype, **options)
    except TypeError as exc:
        raise UsageError(f"policy {name!r}: {_unknown_option(exc, cls)}") from None


#: parameters every backend takes from load_policy itself, not from the options
_NOT_OPTIONS = {"self", "model", "device", "dtype", "which"}


def _unknown_option(exc: TypeError, factory: Any) -> str:
    """A misspelt option named with what was meant and what the backend takes, or the
    error itself when it is not about an unexpected keyword."""
    found = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", str(exc))
    if found is None:
        return str(exc)
    owner, bad = found.groups()
    # the class that refused the keyword (for the embedded default, the engine's backend) and the factory
    classes = [getattr(mod, owner) for key, mod in list(sys.modules.items())
               if key.startswith("viprog.policy") and isinstance(getattr(mod, owner, None), type)]
    functions = [c.__init__ for cls in classes[:1] for c in cls.__mro__ if c.__module__.startswith("viprog")]
    functions += [factory.__init__ if isinstance(factory, type) else factory]
    known = sorted({p.name for fn in functions for p in inspect.signature(fn).parameters.values()
                    if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in _NOT_OPTIONS})
    close = difflib.get_close_matches(bad, known, n=2)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    return f"unknown option {bad!r}{hint}; its options: {', '.join(known)}"


__all__ = ["DEFAULT_POLICY", "EMBEDDED_POLICIES", "HEADER", "POLICIES", "Policy", "Prompter", "SamplingParams", "extract_program",
           "load_policy"]
