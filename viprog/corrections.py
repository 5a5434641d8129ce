"""The correction pool: what self-training never gets right, and the programs a person
writes for it.

Why: ReST learns only from programs it sampled and the task rewarded, so a question type
the policy never once solves stays unsolved however many rounds run — ViReP reports the
plateau after one to three rounds, and that fewer than 50 hand-written corrections for the
persistent error types carry it on. This module closes that loop in two commands:

    viprog corrections suggest runs/NAME      the persistent failures of a run: question
                                              types no train sample was ever rewarded for,
                                              each with its error kinds, an example
                                              question and a failing program
    viprog selftrain --corrections FILE ...   every round trains on FILE's programs too
                                              (ReST: in its SFT data; GRPO: a supervised
                                              step on them before the round) and the
                                              library holds them (few-shot prompts)

Only train samples (`round_<k>/samples.jsonl`) are read: corrections written for held-out
questions would leak the evaluation, so a correction naming a held-out question is refused
(`check_held_out`).

The file is JSONL, one correction per line:
    {"query": "How many red circles are there?", "program": "def execute_command(image):\\n    ..."}
with optional "task" (lines for another task are skipped), "question_type", "question_id"
(a train question it answers) and "note". `program` must be a whole `execute_command`
function that the sandbox's restricted compile accepts. A bad line is a `DataError` naming
the file, the line and what is wrong.
"""

from __future__ import annotations

import ast
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tyro

from viprog.errors import DataError, UsageError
from viprog.executor import check_program
from viprog.runs import Run, iter_jsonl, json_lines, read_json

log = logging.getLogger(__name__)
FIELDS = {"query", "program", "task", "question_type", "question_id", "note"}
WRONG = "wrong-answer"  # what a program that ran without error but was not rewarded counts as


@dataclass(frozen=True)
class Correction:
    """One hand-written program for a query."""

    query: str
    program: str
    task: str | None = None
    question_type: str | None = None
    question_id: str | None = None
    note: str | None = None

    def library_row(self, n: int) -> dict[str, Any]:
        """The correction as a library row (round 0, full reward, marked as a correction)."""
        return {"question_id": self.question_id or f"correction-{n}", "query": self.query, "program": self.program,
                "reward": 1.0, "round": 0, "question_type": self.question_type, "source": "correction"}


def _check_line(value: Any, where: str) -> Correction:
    if not isinstance(value, dict):
        raise DataError(f"{where}: a correction is a JSON object with 'query' and 'program', not {type(value).__name__}")
    unknown = sorted(set(value) - FIELDS)
    if unknown:
        raise DataError(f"{where}: unknown field {unknown[0]!r}; a correction's fields: {', '.join(sorted(FIELDS))}")
    for key in ("query", "program"):
        if not isinstance(value.get(key), str) or not value[key].strip():
            raise DataError(f"{where}: {key!r} must be a non-empty string")
    for key in FIELDS - {"query", "program"}:
        if value.get(key) is not None and not isinstance(value[key], str):
            raise DataError(f"{where}: {key!r} must be a string")
    program = value["program"].strip("\n") + "\n"
    try:
        tree = ast.parse(program)
    except SyntaxError as exc:
        raise DataError(f"{where}: the program does not parse (line {exc.lineno}: {exc.msg})") from None
    if not any(isinstance(node, ast.FunctionDef) and node.name == "execute_command" for node in tree.body):
        raise DataError(f"{where}: the program must define `def execute_command(image):` (write the whole function)")
    refused = check_program(program)
    if refused is not None:
        raise DataError(f"{where}: the sandbox refuses the program ({refused.error_kind}: {refused.error})")
    return Correction(**{**value, "program": program})


def load_corrections(path: str | Path, task: str | None = None, option: str = "--corrections") -> list[Correction]:
    """The corrections in the JSONL file `path` (those for `task`, when lines name a task);
    `option` is the flag that named the file, for the message when there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{option} {path}: no such file (a JSONL file of query/program lines)")
    out = []
    for n, value in json_lines(path, '{"query": ..., "program": ...}'):
        correction = _check_line(value, f"{path}:{n}")
        if task is None or correction.task in (None, task):
            out.append(correction)
    if not out:
        raise DataError(f"{path}: no correction" + (f" for task {task!r}" if task else ""))
    return out


def check_held_out(corrections: Sequence[Correction], held_out_ids: Iterable[str], path: str | Path) -> None:
    """A `DataError` for a correction that names a held-out question (it would leak the evaluation)."""
    held = set(held_out_ids)
    for c in corrections:
        if c.question_id in held:
            raise DataError(f"{path}: the correction for {c.question_id!r} names a held-out question; "
                            "write corrections for train questions only")


def library_rows(path: str | Path | None, task: str, held_out: Sequence[Any]) -> list[dict[str, Any]]:
    """The library rows of `--corrections path` for `task` (none without a path); a
    correction for one of the `held_out` examples is refused."""
    if path is None:
        return []
    corrections = load_corrections(path, task)
    check_held_out(corrections, [ex.id for ex in held_out], path)
    log.info("%d corrections from %s", len(corrections), path)
    return as_rows(corrections)


# -- suggest: the persistent failures of a run ------------------------------------------------
def persistent_failures(run_dir: str | Path) -> list[dict[str, Any]]:
    """Question types of `run_dir` for which no train sample of any round was rewarded, most
    sampled first: counts, error kinds (`wrong-answer` for programs that ran but were
    wrong), and an example question with its most common failing program."""
    run = Run(run_dir)
    if not run.config_path.exists():
        raise UsageError(f"{run_dir}: not a self-training run (no config.json); pass the folder runs/<name>")
    tau = float(read_json(run.config_path).get("tau", 1.0))
    paths = sorted(run.root.glob("round_*/samples.jsonl"), key=lambda p: int(p.parent.name.removeprefix("round_")))
    if not paths:
        raise UsageError(f"{run_dir}: no round has sampled yet (no round_*/samples.jsonl)")
    solved: set[str] = set()
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    questions: dict[str, set[str]] = defaultdict(set)
    failing: dict[str, Counter[tuple[str, str, str]]] = defaultdict(Counter)  # (qid, program, error) per type
    examples: dict[str, dict[str, Any]] = {}
    for path in paths:
        for row in iter_jsonl(path):
            qtype = row.get("question_type") or "(no type)"
            questions[qtype].add(row["question_id"])
            if row.get("error_kind") is None and float(row["reward"]) >= tau:
                solved.add(qtype)
                continue
            kinds[qtype][row.get("error_kind") or WRONG] += 1
            error = row.get("error") or f"answered {row.get('answer')!r}, expected {row.get('gold')!r}"
            failing[qtype][(row["question_id"], row["program"], str(error)[:300])] += 1
            examples.setdefault(row["question_id"], {key: row.get(key) for key in ("query", "image", "gold")})
    out = []
    for qtype in sorted(set(kinds) - solved, key=lambda t: (-sum(kinds[t].values()), t)):
        (qid, program, error), _ = failing[qtype].most_common(1)[0]
        out.append({"question_type": qtype, "samples": sum(kinds[qtype].values()), "questions": len(questions[qtype]),
                    "error_kinds": dict(kinds[qtype].most_common()), "question_id": qid, **examples[qid],
                    "failing_program": program, "error": error})
    return out


def render(failures: Sequence[dict[str, Any]], run_dir: str | Path) -> str:
    """`suggest`'s text: one block per persistent failure."""
    if not failures:
        return f"{run_dir}: every question type had a rewarded sample; nothing to correct"
    lines = [(f"{run_dir}: {len(failures)} question type(s) never rewarded in any round (train samples). "
              "Write a corrected program for each into a JSONL file and pass it as --corrections FILE:")]
    for f in failures:
        kinds = ", ".join(f"{k} {v}" for k, v in f["error_kinds"].items())
        lines += ["", f"## {f['question_type']}: {f['samples']} samples over {f['questions']} questions ({kinds})",
                  f"   e.g. {f['question_id']}: {f['query']!r} (gold {f['gold']!r}, image {f['image']})",
                  f"   failing ({f['error']}):"]
        lines += [f"      {line}" for line in f["failing_program"].splitlines()]
        template = {"query": f["query"], "program": f["failing_program"], "question_type": f["question_type"],
                    "question_id": f["question_id"]}
        lines.append(f"   line to fix: {json.dumps(template)}")
    return "\n".join(lines)


@dataclass
class CorrectionsConfig:
    """`viprog corrections suggest RUN`: list a run's persistent failures, the question types
    to write corrections for."""

    action: tyro.conf.Positional[Literal["suggest"]]
    """What to do: suggest (list the persistent failures)."""
    run: tyro.conf.Positional[str]
    """The run folder (runs/<name>)."""
    json: bool = False
    """Print one JSON object per failure instead of text."""


def main(cfg: CorrectionsConfig) -> int:
    failures = persistent_failures(cfg.run)
    if cfg.json:
        print("\n".join(json.dumps(f, default=str) for f in failures))
    else:
        print(render(failures, cfg.run))
    return 0


def as_rows(corrections: Sequence[Correction]) -> list[dict[str, Any]]:
    """Library rows of `corrections`, numbered in file order."""
    return [c.library_row(n) for n, c in enumerate(corrections)]

