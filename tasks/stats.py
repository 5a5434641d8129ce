"""`viprog tasks NAME --stats`: what a task's splits hold, and how far a constant answer gets.

Why: before self-training on a task a user should see its size, its question types and
answers, and the program-free baseline (the most frequent train answer) that any learned
program has to beat.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from viprog.tasks.answers import normalize_answer
from viprog.tasks.base import DataError, Example, Task


def split_stats(examples: list[Example], top: int = 8) -> dict[str, Any]:
    types = Counter(ex.question_type for ex in examples)
    answers = Counter(normalize_answer(ex.answer) for ex in examples if ex.answer is not None)
    by_type: dict[str, Counter[str]] = {}
    for ex in examples:
        if ex.answer is not None:
            by_type.setdefault(ex.question_type, Counter())[normalize_answer(ex.answer)] += 1
    return {
        "examples": len(examples),
        "images": len({ex.image_key for ex in examples}),
        "question_types": dict(types.most_common()),
        "answers": dict(answers.most_common(top)),
        "distinct_answers": len(answers),
        "top_answer_share_by_type": {k: round(c.most_common(1)[0][1] / sum(c.values()), 3)
                                     for k, c in sorted(by_type.items())},
    }


def task_stats(task: Task) -> dict[str, Any]:
    """Per split statistics and the majority baseline (train → the last split)."""
    out: dict[str, Any] = {"task": task.name, "splits": {}}
    loaded: dict[str, list[Example]] = {}
    for split in task.splits():
        try:
            loaded[split] = task.examples(split)
        except DataError as exc:
            out["splits"][split] = {"error": str(exc)}
            continue
        out["splits"][split] = split_stats(loaded[split])
    if not loaded:  # nothing readable: the first split's error says why
        raise DataError(next(iter(out["splits"].values()))["error"])
    names = list(loaded)
    train = "train" if "train" in loaded else names[0]
    test = next((s for s in ("test", "testdev") if s in loaded), names[-1])
    out["majority_baseline"] = {"train": train, "test": test} | task.majority_baseline(loaded[train], loaded[test])
    if task.skipped:
        out["skipped"] = dict(task.skipped)
    return out


def print_stats(task: Task) -> None:
    """Print `task_stats(task)` as indented JSON."""
    print(json.dumps(task_stats(task), indent=2))
