"""Answer normalisation and the rewards shared by tasks (pure functions).

Why one module: GQA, the shapes world and bring-your-own JSONL all score an answer by
exact match after the same normalisation, and RefCOCO and JSONL-with-boxes score a
returned `ImagePatch` by the same IoU. Programs return many spellings of one answer
(`True`, `"Yes."`, `2`, `2.0`, `"two"`, `"the cube"`), so answers are normalised the way
the GQA/VQA evaluation scripts do: lower case, punctuation and articles dropped, number
words to digits, integral floats to ints, booleans to yes/no.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = re.compile(r"[^\w\s.\-]")  # keep '.' inside numbers and hyphenated words
_CONTRACTIONS = {"isnt": "is not", "arent": "are not", "dont": "do not", "doesnt": "does not"}


def normalize_answer(answer: Any) -> str:
    """The comparable form of an answer: `True` → "yes", `2.0` → "2", "Two." → "2",
    "The Red Cube" → "red cube"; an `ImagePatch` (or any dict/list) → its JSON text."""
    if isinstance(answer, bool):
        return "yes" if answer else "no"
    if isinstance(answer, int):
        return str(answer)
    if isinstance(answer, float):
        if math.isfinite(answer) and answer == int(answer):
            return str(int(answer))
        return f"{answer:g}"
    if answer is None:
        return ""
    if not isinstance(answer, str):
        return str(answer)
    text = answer.strip().lower().replace("\n", " ").replace("'", "")
    text = _PUNCT.sub(" ", text)
    words = []
    for word in text.split():
        word = word.strip(".-")
        if not word:
            continue
        word = _CONTRACTIONS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_NUMBER_WORDS.get(word, word))
    text = " ".join(words)
    try:  # "2.0" → "2", "3.50" → "3.5"
        value = float(text)
    except ValueError:
        return text
    return normalize_answer(value) if math.isfinite(value) else text


def exact_match(prediction: Any, target: Any) -> float:
    """1.0 when the normalised answers are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(target))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes (0 for degenerate boxes)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def answer_box(answer: Any) -> tuple[float, float, float, float] | None:
    """The [x0, y0, x1, y1] box (origin top-left) a program returned, or None.

    Accepts a returned ImagePatch (its JSON form, with `box`), a list of them (the first
    counts, as a grounding program that forgot `[0]` would return), or four numbers.
    """
    if isinstance(answer, dict) and answer.get("type") == "ImagePatch" and "box" in answer:
        return answer_box(answer["box"])
    if isinstance(answer, (list, tuple)):
        if len(answer) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in answer):
            x0, y0, x1, y1 = (float(v) for v in answer)
            return (x0, y0, x1, y1) if x1 >= x0 and y1 >= y0 else None
        if answer and isinstance(answer[0], dict):
            return answer_box(answer[0])
    return None


def box_reward(answer: Any, target: Sequence[float], mode: str = "threshold", threshold: float = 0.5) -> float:
    """Grounding reward: 1.0 when IoU ≥ threshold (`mode="threshold"`) or the IoU itself
    (`mode="iou"`); 0.0 when the answer holds no box."""
    box = answer_box(answer)
    if box is None:
        return 0.0
    iou = box_iou(box, target)
    if mode == "iou":
        return iou
    if mode != "threshold":
        raise ValueError(f"unknown box reward mode {mode!r}; use 'threshold' or 'iou'")
    return float(iou >= threshold)


def example_reward(example: Any, result: Any, box_mode: str = "threshold") -> float:
    """The reward of an `ExecutionResult` on an `Example`: 0 for a failed run; the box
    reward when the example has a target box; else exact match of normalised answers."""
    if not result.ok:
        return 0.0
    if example.box is not None:
        return box_reward(result.answer, example.box, box_mode)
    if example.answer is None:
        return 0.0
    return exact_match(result.answer, example.answer)


def grounding_metrics(examples: Sequence[Any], results: Sequence[Any]) -> dict[str, float]:
    """`acc@0.5` and `mean_iou` over the examples that have a target box."""
    ious = []
    for example, result in zip(examples, results):
        if example.box is None:
            continue
        box = answer_box(result.answer) if result.ok else None
        ious.append(box_iou(box, example.box) if box is not None else 0.0)
    if not ious:
        return {}
    return {"acc@0.5": sum(i >= 0.5 for i in ious) / len(ious), "mean_iou": sum(ious) / len(ious)}


class AnswerOrBoxReward:
    """Task mixin: the reward of `example_reward` (exact match, or the box IoU rule of the
    task's `box_reward` option for examples with a target box) and the grounding metrics
    (`acc@0.5`, `mean_iou`) beside the base metrics."""

    options: dict[str, Any]

    def reward(self, example: Any, result: Any) -> float:
        return example_reward(example, result, self.options.get("box_reward", "threshold"))

    def metrics(self, examples: Sequence[Any], results: Sequence[Any], rewards: Sequence[float]) -> dict[str, Any]:
        return super().metrics(examples, results, rewards) | grounding_metrics(examples, results)  # type: ignore[misc]
