"""Rollout: sample programs from the policy, run them in the sandbox, score them.

Why its own module: the training round and the evaluation (and `viprog eval`, and the
library's `solve`) all do the same three things — prompts → completions, completions →
programs → `ExecutionResult`s through the sandboxed `Executor`, results → task rewards —
and differ only in sampling parameters and in which split they read. Sampling is the
expensive part (minutes on a CPU), so it records each finished question on disk as it
goes (`viprog.runs.Appender`) and a resumed rollout samples only what is missing.

Rows are plain dicts (one JSON line each in `samples.jsonl` / `eval.jsonl`): the
question (`question_id`, `query`, `image`, `question_type`, `gold`), the `sample` index,
the `completion`, the extracted `program`, and the result (`answer`, `error`,
`error_kind`, `trace`, `seconds`) with its `reward`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from viprog.executor.result import ExecutionResult
from viprog.policy.base import Policy, SamplingParams
from viprog.runs import Appender, read_partial
from viprog.tasks.base import Example, Task

log = logging.getLogger(__name__)

#: (example) -> prompt text
PromptFn = Callable[[Example], str]


@dataclass
class SampleStats:
    """Throughput of one sampling phase (what was sampled now, not what a resume skipped)."""

    seconds: float = 0.0
    programs: int = 0
    tokens: int | None = None


def sample_completions(policy: Policy, examples: Sequence[Example], prompt: PromptFn, params: SamplingParams, *,
                       partial: str | Path, batch_questions: int = 4, desc: str = "sample",
                       ) -> tuple[dict[str, list[str]], SampleStats]:
    """`params.n` completions per example, keyed by question id.

    Questions already recorded in `partial` (a previous, killed attempt) are not sampled
    again. Questions are sampled `batch_questions` at a time, each batch with its own
    seed derived from `params.seed` and its position, so a run is reproducible.
    """
    from tqdm.auto import tqdm

    done = {row["question_id"]: row["completions"] for row in read_partial(partial)}
    tokenizer = getattr(policy, "tokenizer", None)
    stats = SampleStats(tokens=0 if tokenizer is not None else None)
    todo = [i for i, ex in enumerate(examples) if ex.id not in done]
    bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc=desc, unit="q", dynamic_ncols=True)
    with Appender(partial) as out:
        for start in range(0, len(todo), batch_questions):
            batch = [examples[i] for i in todo[start:start + batch_questions]]
            seed = None if params.seed is None else params.seed + todo[start]
            t0 = time.perf_counter()
            completions = policy.sample([prompt(ex) for ex in batch], replace(params, seed=seed))
            stats.seconds += time.perf_counter() - t0
            for ex, outs in zip(batch, completions):
                outs = [str(c) for c in outs]
                out.write({"question_id": ex.id, "completions": outs})
                done[ex.id] = outs
                stats.programs += len(outs)
                if tokenizer is not None and stats.tokens is not None:
                    stats.tokens += sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in outs)
            bar.update(len(batch))
            bar.set_postfix(programs_per_s=f"{stats.programs / max(stats.seconds, 1e-9):.2f}")
    bar.close()
    return {ex.id: done[ex.id] for ex in examples}, stats


def load_images(task: Task, examples: Sequence[Example]) -> dict[str, np.ndarray]:
    """Pixels per image key. An unreadable image is left out and counted in `task.skipped`
    (fatal when the task is strict: `Task.try_load_image`)."""
    images: dict[str, np.ndarray] = {}
    tried: set[str] = set()
    for ex in examples:
        if ex.image_key in tried:
            continue
        tried.add(ex.image_key)
        pixels = task.try_load_image(ex)
        if pixels is not None:
            images[ex.image_key] = pixels
    return images


def question_row(ex: Example) -> dict[str, Any]:
    return {"question_id": ex.id, "query": ex.query, "image": str(ex.image), "image_id": ex.image_key,
            "question_type": ex.question_type, "gold": ex.answer if ex.answer is not None else ex.box}


def execute_programs(task: Task, examples: Sequence[Example], programs: dict[str, list[tuple[str, str]]], *,
                     profile: str, images: dict[str, np.ndarray], workers: int = 2, timeout: float = 10.0,
                     desc: str = "execute") -> list[dict[str, Any]]:
    """Run every (completion, program) of every example in the sandbox and reward it.

    `programs` maps a question id to its (completion, program) pairs; examples whose
    image is missing from `images` are left out. Returns one row per program, in order.
    """
    from viprog.executor import Executor, Job

    jobs, owners = [], []
    for ex in examples:
        if ex.image_key not in images:
            continue
        for i, (completion, program) in enumerate(programs.get(ex.id, ())):
            jobs.append(Job(program, ex.image_key, images[ex.image_key], query=ex.query, meta=dict(ex.meta)))
            owners.append((ex, i, completion, program))
    if not jobs:
        return []
    with Executor(profile, workers=workers, timeout=timeout) as executor:
        results = executor.run_many(jobs, progress=desc)
    rows = []
    for (ex, i, completion, program), result in zip(owners, results):
        rows.append({**question_row(ex), "sample": i, "completion": completion, "program": program,
                     **result.to_json(), "reward": float(task.reward(ex, result))})
    return rows


def rows_to_results(rows: Sequence[dict[str, Any]]) -> list[ExecutionResult]:
    return [ExecutionResult.from_json(r) for r in rows]
