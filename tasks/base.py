"""The task contract: examples from an annotated dataset, and the reward of a result.

A task is one class registered in `TASKS` with `@TASKS.register("name")`. It yields
`Example`s for a split, loads an example's pixels, turns an `ExecutionResult` into a
coarse reward in [0, 1], aggregates metrics, names its default primitive profile and its
default train / eval splits, and carries its few-shot seed programs (never taken from
its own test split).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from viprog.errors import DataError
from viprog.images import read_rgb
from viprog.registry import Registry

if TYPE_CHECKING:  # for annotations only: tasks do not need the executor at run time
    from viprog.executor.result import ExecutionResult

TASKS: Registry[type[Task]] = Registry("task", group="viprog.tasks")


@dataclass(frozen=True)
class Example:
    """One annotated question about one image.

    box: target box as [x0, y0, x1, y1] pixels, origin top-left (grounding tasks).
    choices: candidate answers/captions (retrieval tasks).
    meta: annotations the `scene-graph` profile may read (e.g. the image's scene graph).
    reference_program: a known-good program (generated worlds), never shown to a policy
        unless a user asks for it.
    """

    id: str
    image: str  # path to the image file (or an id the task's `load_image` understands)
    query: str
    answer: str | None = None
    box: tuple[float, float, float, float] | None = None
    choices: tuple[str, ...] | None = None
    question_type: str = "all"
    image_id: str | None = None  # shared by examples on the same image (cache key)
    meta: Mapping[str, Any] = field(default_factory=dict)
    reference_program: str | None = None

    @property
    def image_key(self) -> str:
        return self.image_id or str(self.image)


class Task:
    """Base class of tasks. Subclasses set the class variables and implement `examples`."""

    name: ClassVar[str] = "base"
    #: the primitive profile used when the user names none
    default_profile: ClassVar[str] = "neural"
    #: primitive names shown in this task's API section (None: all)
    primitives: ClassVar[tuple[str, ...] | None] = None
    #: (train split, eval split) used when the user names none
    default_splits: ClassVar[tuple[str, str]] = ("train", "test")

    def __init__(self, data_dir: str | Path | None = None, **options: Any) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.options = options
        #: a bad item inside a dataset (a missing or corrupt image) is fatal when strict
        self.strict = bool(options.get("strict", False))
        #: what was skipped and how often (reported beside the metrics)
        self.skipped: Counter[str] = Counter()

    def skip(self, kind: str, message: str) -> None:
        """One bad item inside a dataset: raise `DataError(message)` when strict, else count
        it under `kind` (e.g. "corrupt_image") and go on."""
        if self.strict:
            raise DataError(message)
        self.skipped[kind] += 1

    def try_load_image(self, example: Example) -> np.ndarray | None:
        """`load_image`, except that an unreadable image is skipped and counted (None)
        unless the task is strict."""
        try:
            return self.load_image(example)
        except DataError as exc:
            self.skip("corrupt_image", str(exc))
            return None

    def splits(self) -> list[str]:
        return ["train", "val", "test"]

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        raise NotImplementedError

    def load_image(self, example: Example) -> np.ndarray:
        """The example's pixels as H x W x 3 uint8 RGB; DataError when unreadable."""
        return read_rgb(example.image)

    def reward(self, example: Example, result: ExecutionResult) -> float:
        """Coarse reward in [0, 1] for `result` on `example` (0 for any failure)."""
        raise NotImplementedError

    def metrics(self, examples: Sequence[Example], results: Sequence[ExecutionResult],
                rewards: Sequence[float]) -> dict[str, Any]:
        """Aggregate metrics: `accuracy` overall and per question type, error counts."""
        from collections import defaultdict

        per_type: dict[str, list[float]] = defaultdict(list)
        for ex, r in zip(examples, rewards):
            per_type[ex.question_type].append(float(r))
        errors = Counter(res.error_kind for res in results if res.error_kind)
        n = max(len(rewards), 1)
        return {
            "accuracy": sum(map(float, rewards)) / n,
            "n": len(rewards),
            "accuracy_by_type": {k: sum(v) / len(v) for k, v in sorted(per_type.items())},
            "errors": dict(sorted(errors.items())),
            "skipped": dict(sorted(self.skipped.items())),
        }

    def majority_baseline(self, train: Sequence[Example], test: Sequence[Example]) -> dict[str, Any]:
        """The program-free baseline: answer every test question with the most frequent
        train answer (for choice tasks: always pick the first choice). Scored with this
        task's own `reward`; `accuracy_by_type` also gives each type's own majority answer
        (a stronger, per-type prior). Box-only tasks have no answer prior: accuracy None."""
        from collections import defaultdict

        from viprog.executor.result import ExecutionResult
        from viprog.tasks.answers import normalize_answer

        if test and all(ex.answer is None for ex in test):
            return {"answer": None, "accuracy": None, "n": len(test)}
        if test and all(ex.choices for ex in test):
            rewards = [self.reward(ex, ExecutionResult(answer=ex.choices[0])) for ex in test]  # type: ignore[index]
            return {"answer": "<first choice>", "accuracy": sum(rewards) / len(rewards), "n": len(test)}
        overall = Counter(normalize_answer(ex.answer) for ex in train if ex.answer is not None)
        by_type: dict[str, Counter[str]] = defaultdict(Counter)
        for ex in train:
            if ex.answer is not None:
                by_type[ex.question_type][normalize_answer(ex.answer)] += 1
        majority = overall.most_common(1)[0][0] if overall else ""
        scores: dict[str, list[float]] = defaultdict(list)
        own: dict[str, list[float]] = defaultdict(list)
        for ex in test:
            scores[ex.question_type].append(self.reward(ex, ExecutionResult(answer=majority)))
            typed = by_type[ex.question_type].most_common(1)
            own[ex.question_type].append(self.reward(ex, ExecutionResult(answer=typed[0][0] if typed else majority)))
        n = max(len(test), 1)
        return {
            "answer": majority,
            "accuracy": sum(sum(v) for v in scores.values()) / n,
            "per_type_prior_accuracy": sum(sum(v) for v in own.values()) / n,
            "n": len(test),
            "accuracy_by_type": {k: sum(v) / len(v) for k, v in sorted(scores.items())},
            "per_type_prior_by_type": {k: sum(v) / len(v) for k, v in sorted(own.items())},
        }

    def seed_programs(self) -> list[tuple[str, str]]:
        """Few-shot (query, program) pairs, written for this task (≤ 8)."""
        return []
