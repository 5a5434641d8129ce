"""Test helpers for self-training, eval and the library: a toy counting task with its own
primitive profile, and a tiny Qwen2 policy pre-trained (in seconds, on this CPU) to write
that task's programs — right for some questions, wrong for others — so that a round of
self-training has something real to learn.

Importing this module registers the task `toy-count` and the profile `toy`.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from viprog.executor.result import ExecutionResult
from viprog.finetune import completion_for
from viprog.primitives.profile import PROFILES, Call, Profile
from viprog.tasks.answers import normalize_answer
from viprog.tasks.base import TASKS, Example, Task

SHAPES = ("circle", "square", "triangle", "star")


def right_program(shape: str) -> str:
    return f'def execute_command(image):\n    return len(ImagePatch(image).find("{shape}"))\n'


def wrong_program(shape: str) -> str:
    other = SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)]
    return right_program(other)


def query_for(shape: str) -> str:
    return f"How many {shape}s are there?"


class ToyProfile(Profile):
    """`find(name)` answers from the example's annotations: one box per object of that shape."""

    name = "toy"

    def find(self, calls: list[Call]) -> list[Any]:
        out = []
        for call in calls:
            counts = call.patch.meta.get("counts", {})
            name = str(call.args[0]).rstrip("s")
            out.append([[1 + 8 * i, 2, 7 + 8 * i, 8] for i in range(int(counts.get(name, 0)))])
        return out


class ToyCountTask(Task):
    """"How many <shape>s are there?" over 32x32 images whose shape counts are 1..4, all
    different (so a program that counts the wrong shape is always wrong)."""

    name = "toy-count"
    default_profile = "toy"

    def __init__(self, data_dir: str | Path | None = None, **options: Any) -> None:
        super().__init__(data_dir, **options)
        self.root = Path(data_dir) if data_dir is not None else Path(tempfile.gettempdir()) / "viprog-toy-count"

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        rng = random.Random({"train": 0, "val": 1, "test": 2}[split])
        n = {"train": 48, "val": 16, "test": 24}[split]
        out = []
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            counts = dict(zip(SHAPES, rng.sample(range(1, 5), 4)))
            image = self.root / "images" / f"{split}-{i}.png"
            if not image.exists():
                from PIL import Image

                Image.fromarray(np.full((32, 32, 3), 200 + i % 40, np.uint8)).save(image)
            shape = SHAPES[i % 4]
            out.append(Example(id=f"{split}-{i}", image=str(image), query=query_for(shape), answer=str(counts[shape]),
                               question_type=shape, image_id=f"{split}-{i}", meta={"counts": counts},
                               reference_program=right_program(shape)))
        return out[:limit] if limit is not None else out

    def reward(self, example: Example, result: ExecutionResult) -> float:
        if not result.ok:
            return 0.0
        return float(normalize_answer(result.answer) == normalize_answer(example.answer))

    def seed_programs(self) -> list[tuple[str, str]]:
        return [(query_for("circle"), right_program("circle"))]


if "toy" not in PROFILES:
    PROFILES.add("toy", ToyProfile)
if "toy-count" not in TASKS:
    TASKS.add("toy-count", ToyCountTask)


def train_tokenizer(texts: Sequence[str]) -> Any:
    """A byte-level BPE tokenizer trained on `texts` (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def build_tiny_policy(out: Path, prompt_of: Any, right_frac: dict[str, float], *, steps: int = 400,
                      seed: int = 0) -> Path:
    """Save a tiny Qwen2 at `out` pre-trained so that, for the question about `shape`, it
    writes the right program with probability about `right_frac[shape]` and the wrong one
    otherwise. `prompt_of(query)` is the prompt it is trained under."""
    prompts = {s: prompt_of(query_for(s)) for s in SHAPES}
    rows = [(prompts[s], program, weight) for s in SHAPES
            for program, weight in ((right_program(s), right_frac[s]), (wrong_program(s), 1 - right_frac[s]))]
    corpus = [prompts[s] + completion_for(prompts[s], right_program(s)) for s in SHAPES] * 4
    return train_tiny_qwen2(out, rows, corpus=corpus, steps=steps, seed=seed)


def train_tiny_qwen2(out: Path, rows: Sequence[tuple[str, str, float]], *, corpus: Sequence[str] | None = None,
                     steps: int = 400, seed: int = 0) -> Path:
    """Save at `out` a tiny Qwen2 (with a BPE tokenizer trained on `corpus`, default: the
    rows' texts) trained on weighted (prompt, program) rows: every row once per step, its
    loss weighted by its weight, so a prompt's programs are written in those proportions."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    texts = list(corpus) if corpus is not None else [p + completion_for(p, c) for p, c, _ in rows] * 4
    train_tokenizer(texts).save_pretrained(out)
    config = Qwen2Config(vocab_size=len(AutoTokenizer.from_pretrained(out)), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True)
    config.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)  # as every user of the folder sees it (a Qwen2 tokenizer)
    config.eos_token_id = config.bos_token_id = config.pad_token_id = tokenizer.eos_token_id
    model = Qwen2ForCausalLM(config)
    # the minimum of this weighted likelihood is exactly the wanted mixture
    encoded = []
    for prompt, program, weight in rows:
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = prompt_ids + tokenizer(completion_for(prompt, program))["input_ids"] + [tokenizer.eos_token_id]
        encoded.append((ids, len(prompt_ids), weight))
    width = max(len(ids) for ids, _, _ in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(encoded), width))
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (ids, n_prompt, weight) in enumerate(encoded):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention[i, :len(ids)] = 1
        mask[i, n_prompt:len(ids)] = weight
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with torch.enable_grad():  # a policy loaded in this process may have turned gradients off
        train_steps(model, optimizer, input_ids, attention, mask, steps)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    return out


def train_steps(model: Any, optimizer: Any, input_ids: Any, attention: Any, mask: Any, steps: int) -> None:
    import torch

    for _ in range(steps):
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
        loss = (nll * mask[:, 1:]).sum() / mask[:, 1:].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
