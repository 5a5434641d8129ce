"""What the policy backends' tests share: prompts over one long prefix, greedy settings,
and random LoRA adapters for the tiny Qwen2 (imported by the test modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from viprog.policy import SamplingParams

PREFIX = "class ImagePatch:\n    def find(self, object_name: str) -> list[ImagePatch]:\n        pass\n" * 6
QUERIES = ["How many red circles are there?", "Is there a blue square?", "What color is the large triangle?"]
PROMPTS = [f"{PREFIX}# Query: {q}\ndef execute_command(image):" for q in QUERIES]
GREEDY = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)


def make_adapters(tiny: str, folder: Path) -> list[str]:
    """Two random LoRA adapters for the tiny model under `folder` (B initialised non-zero
    so they matter)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny)
        config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
        path = folder / f"adapter{seed}"
        get_peft_model(base, config).save_pretrained(path)
        paths.append(str(path))
    return paths


def check_stop_string_cuts(policy: Any) -> None:
    """A stop string taken from the middle of a greedy completion ends the completion
    just before it."""
    free = policy.sample(PROMPTS[:1], SamplingParams(n=1, temperature=0.0, max_new_tokens=24))[0][0]
    stop = free[len(free) // 2:len(free) // 2 + 3]
    assert stop.strip(), f"degenerate completion {free!r}"
    stopped = policy.sample(PROMPTS[:1], SamplingParams(n=1, temperature=0.0, max_new_tokens=24, stop=(stop,)))[0][0]
    assert stopped == free[:free.find(stop)]


def check_prefix_encoded_once(fresh: Any) -> None:
    """Two calls on a fresh policy: the second, sharing the prefix with the first, encodes
    far fewer tokens than the prefix has."""
    fresh.sample(PROMPTS[:2], GREEDY)
    first = fresh.stats["prefill_tokens"]
    fresh.sample(PROMPTS[1:], GREEDY)
    second = fresh.stats["prefill_tokens"] - first
    prefix_tokens = len(fresh.tokenizer(PREFIX)["input_ids"])
    assert first > prefix_tokens and second < prefix_tokens / 2
