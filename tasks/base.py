"""The task contract: examples from an annotated dataset, and the reward of a result.

A task is one class registered in `TASKS` with `@TASKS.register("name")`. It yields
`Example`s for a split, loads an example's pixels, turns an `ExecutionResult` into a
coarse reward in [0, 1], aggregates metrics, names its default primitive profile and its
default train / eval splits, and carries its few-shot seed programs (never taken from
its own test split). Datasets too big to load whole as Python objects (GQA's train split)
are read member by member with `iter_json_object`.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
from tqdm import tqdm

from viprog.errors import DataError
from viprog.executor.result import ExecutionResult
from viprog.images import read_rgb
from viprog.registry import Registry
from viprog.tasks.answers import normalize_answer

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
    #: (train, evaluation) splits used when the user names none
    default_splits: ClassVar[tuple[str, str]] = ("train", "test")
    #: primitive names shown in this task's API section (None: all)
    primitives: ClassVar[tuple[str, ...] | None] = None

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


_SPACE = re.compile(r"[ \t\n\r]*")
_CHUNK_CHARS = 1 << 22
_NUMBER = frozenset("-+.eE0123456789")


class _JSONChunks:
    """The text of a JSON file, read a chunk at a time, with the line and column of its
    first character kept for error messages (as `json.load` would report them)."""

    def __init__(self, path: Path, fh: IO[str], bar: Any) -> None:
        self.path, self.fh, self.bar = path, fh, bar
        self.text, self.pos, self.eof = "", 0, False
        self.offset, self.line, self.col = 0, 1, 1  # of text[0] in the whole file

    def read_more(self) -> None:
        """Drop the text before `pos` and append the next chunk (sets `eof` at the end)."""
        done = self.text[:self.pos]
        newline = done.rfind("\n")
        if newline < 0:
            self.col += len(done)
        else:
            self.line += done.count("\n")
            self.col = len(done) - newline
        self.offset += len(done)
        try:
            new = self.fh.read(max(_CHUNK_CHARS, len(self.text) - self.pos))  # a value larger than a chunk: doubling
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{self.path}: cannot read ({exc.__class__.__name__})") from None
        self.bar.update(len(new))
        self.eof = not new
        self.text, self.pos = self.text[self.pos:] + new, 0

    def error(self, message: str, pos: int) -> DataError:
        line = self.line + self.text.count("\n", 0, pos)
        newline = self.text.rfind("\n", 0, pos)
        col = pos - newline if newline >= 0 else self.col + pos
        return DataError(f"{self.path}: not valid JSON (line {line}, column {col}: {message})")

    def next_char(self) -> str:
        """The next character that is not white space ('' at the end of the file)."""
        while True:
            self.pos = _SPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text) or self.eof:
                return self.text[self.pos:self.pos + 1]
            self.read_more()

    def value(self, decode: Any) -> tuple[Any, int, int]:
        """The JSON value at `pos` with its start and end offsets in the file's text."""
        while True:
            try:
                value, end = decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                if self.eof:
                    raise self.error(exc.msg, exc.pos) from None
            else:  # a number cut at the chunk's end ("12" of "12.5") would look whole
                if self.eof or (end < len(self.text) and (self.text[self.pos] not in _NUMBER
                                                          or self.text[end] not in _NUMBER)):
                    start, self.pos = self.offset + self.pos, end
                    return value, start, self.offset + end
            self.read_more()


def iter_json_object(path: Path, expected: str = "an object", encoding: str = "utf-8",
                     progress: bool = False) -> Iterator[tuple[str, Any, int, int]]:
    """Each member of the JSON object in `path` as (key, value, start, end), in file order,
    holding one chunk of text (4 M characters) and one value in memory at a time, where
    `json.load` builds the whole file's objects first.

    start / end are offsets of the value's text; with `encoding="latin-1"` they are the
    file's byte offsets (`json.loads` of those bytes gives the value back), and keys are
    read back as UTF-8. Bad JSON: one-line `DataError` with `json.load`'s line, column and
    message; a file whose top level is not an object: "expected <expected>, got a list".
    A key given twice is yielded twice (`json.load` keeps the last value).
    """
    decode = json.JSONDecoder().raw_decode
    try:
        fh = open(path, encoding=encoding, newline="")  # noqa: SIM115  (closed by the `with` below)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    with fh, tqdm(total=os.fstat(fh.fileno()).st_size, unit="B", unit_scale=True, desc=f"reading {path.name}", delay=2.0,
                  disable=not progress) as bar:
        text = _JSONChunks(path, fh, bar)
        first = text.next_char()
        if first == "[":  # not read further: it may be large
            raise DataError(f"{path}: expected {expected}, got a list")
        if first != "{":
            scalar, _, _ = text.value(decode)  # or json.load's error
            raise DataError(f"{path}: expected {expected}, got a {type(scalar).__name__}")
        text.pos += 1
        after = text.next_char()
        while after != "}":
            if after != '"':
                raise text.error("Expecting property name enclosed in double quotes", text.pos)
            key, key_start, key_end = text.value(decode)
            if encoding == "latin-1" and not key.isascii():  # decode the key's bytes as the UTF-8 they are
                key = json.loads(text.text[key_start - text.offset:key_end - text.offset].encode("latin-1"))
            if text.next_char() != ":":
                raise text.error("Expecting ':' delimiter", text.pos)
            text.pos += 1
            text.next_char()
            value, start, end = text.value(decode)
            yield key, value, start, end
            after = text.next_char()
            if after == ",":
                text.pos += 1
                after = text.next_char()
                if after == "}":
                    raise text.error("Expecting property name enclosed in double quotes", text.pos)
            elif after != "}":
                raise text.error("Expecting ',' delimiter", text.pos)
        text.pos += 1
        if text.next_char():
            raise text.error("Extra data", text.pos)

