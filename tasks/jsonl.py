"""`jsonl`: bring your own data, one JSON object per line.

Why: the quickest way to self-train on a new problem is a file of questions about local
images. Each line is

    {"id": "q1", "image": "imgs/cat.jpg", "question": "What colour is the cat?", "answer": "black"}

`id` is optional (the line number then); `image` is relative to the file; instead of
(or beside) `answer`, a `box` [x0, y0, x1, y1] (pixels, origin top-left) makes the line
a grounding example, and `choices` a list of candidate answers. Optional:
`question_type` (metrics per type), `image_id`, `program` (a known-good reference
program). `--data-dir` is a folder of `<split>.jsonl` files (default split `test`) or
one `.jsonl` file (every split name reads it). Reward: box IoU ≥ 0.5 (or the IoU, with
option `box_reward="iou"`) for box lines; exact match of normalised answers otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from viprog.tasks.answers import AnswerOrBoxReward
from viprog.tasks.base import TASKS, DataError, Example, Task
from viprog.tasks.seeds import JSONL_SEEDS


def _box(value: Any, where: str) -> tuple[float, float, float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise DataError(f"{where}: 'box' must be four numbers [x0, y0, x1, y1], got {value!r}")
    x0, y0, x1, y1 = (float(v) for v in value)
    if x1 < x0 or y1 < y0:
        raise DataError(f"{where}: 'box' {value!r} has x1 < x0 or y1 < y0 (expected [x0, y0, x1, y1])")
    return (x0, y0, x1, y1)


def parse_line(record: Any, index: int, base: Path, where: str) -> Example:
    """One line's object as an `Example` (DataError naming `where` when a field is wrong)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("image", "question"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise DataError(f"{where}: missing or empty {key!r} field (a string)")
    if record.get("answer") is None and record.get("box") is None:
        raise DataError(f"{where}: no 'answer' field (nor a 'box' for grounding)")
    choices = record.get("choices")
    if choices is not None and (not isinstance(choices, list) or not all(isinstance(c, str) for c in choices)):
        raise DataError(f"{where}: 'choices' must be a list of strings")
    image = (base / record["image"]).resolve()
    return Example(
        id=str(record.get("id", index)), image=str(image), query=record["question"],
        answer=None if record.get("answer") is None else str(record["answer"]),
        box=_box(record["box"], where) if record.get("box") is not None else None,
        choices=tuple(choices) if choices else None,
        question_type=str(record.get("question_type") or "all"),
        image_id=str(record.get("image_id") or image), reference_program=record.get("program"),
    )


def read_jsonl(task: Task, path: Path, limit: int | None = None) -> list[Example]:
    """Examples from a JSONL file; lines whose image is missing are skipped and counted
    on `task` (fatal when the task is strict)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    out: list[Example] = []
    seen: set[str] = set()
    try:
        with open(path, encoding="utf-8") as fh:
            for index, line in enumerate(fh):
                if limit is not None and len(out) >= limit:
                    break
                if not line.strip():
                    continue
                where = f"{path}:{index + 1}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
                example = parse_line(record, index, path.parent, where)
                if example.id in seen:
                    raise DataError(f"{where}: duplicate id {example.id!r}")
                seen.add(example.id)
                if not Path(example.image).is_file():
                    task.skip("missing_image", f"{where}: image {example.image} not found")
                    continue
                out.append(example)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text (is it a JSONL file?)") from None
    return out


@TASKS.register("jsonl")
class JSONLTask(AnswerOrBoxReward, Task):
    """Bring-your-own questions: one {"image", "question", "answer" | "box"} object per line."""

    name: ClassVar[str] = "jsonl"
    default_profile: ClassVar[str] = "neural"

    def splits(self) -> list[str]:
        if self.data_dir is not None and self.data_dir.is_dir():
            return sorted(p.stem for p in self.data_dir.glob("*.jsonl")) or ["test"]
        return ["test"]

    def path(self, split: str) -> Path:
        if self.data_dir is None:
            raise DataError("the jsonl task needs --data-dir: a folder of <split>.jsonl files or one .jsonl file")
        if self.data_dir.is_file():
            return self.data_dir
        if not self.data_dir.exists():
            raise DataError(f"{self.data_dir}: no such file or folder")
        path = self.data_dir / f"{split}.jsonl"
        if not path.exists():
            have = ", ".join(sorted(p.name for p in self.data_dir.glob("*.jsonl"))) or "no .jsonl files"
            raise DataError(f"{path}: file not found (this folder has: {have})")
        return path

    def examples(self, split: str = "test", limit: int | None = None) -> list[Example]:
        return read_jsonl(self, self.path(split), limit)

    def seed_programs(self) -> list[tuple[str, str]]:
        return list(JSONL_SEEDS)
