"""Which sampled programs become training data: ViReP's filter, with its knobs.

Why its own module: the filter is where self-training is won or lost. ViReP keeps only the
programs the task rewards (reward ≥ τ); on its own that collapses onto a few programs
repeated many times and plateaus after one to three rounds. Two knobs keep the data
diverse: drop programs identical to one already kept for the same question (identical up
to formatting and comments: compared by their syntax tree), and keep at most `cap`
programs per question so that easy questions do not drown the hard ones.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Sequence
from typing import Any


def normalize_program(source: str) -> str:
    """A canonical text for `source`: the same for programs that differ only in layout,
    comments or quoting; the stripped text when it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return "\n".join(line.rstrip() for line in source.strip().splitlines())
    for node in ast.walk(tree):  # docstrings are comments too
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return ast.unparse(tree)


def filter_samples(samples: Sequence[dict[str, Any]], *, tau: float = 1.0, dedup: bool = True,
                   cap_per_question: int | None = None) -> list[dict[str, Any]]:
    """Keep the samples whose `reward` ≥ `tau` and that ran without error.

    Each sample is a dict with at least `question_id`, `program`, `reward` and
    `error_kind`. With `dedup`, a program identical (see `normalize_program`) to one kept
    earlier for the same question is dropped. With `cap_per_question`, at most that many
    are kept per question: the highest rewards first, then the earliest samples. Order of
    the result: the order of `samples`.
    """
    if cap_per_question is not None and cap_per_question < 1:
        raise ValueError("cap_per_question must be ≥ 1 (or None for no cap)")
    by_question: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        if s.get("error_kind") is None and float(s["reward"]) >= tau:
            by_question[s["question_id"]].append(i)
    keep: list[int] = []
    for indices in by_question.values():
        seen: set[str] = set()
        chosen = []
        for i in sorted(indices, key=lambda i: (-float(samples[i]["reward"]), i)):
            if dedup:
                key = normalize_program(samples[i]["program"])
                if key in seen:
                    continue
                seen.add(key)
            chosen.append(i)
            if cap_per_question is not None and len(chosen) == cap_per_question:
                break
        keep += chosen
    return [samples[i] for i in sorted(keep)]


def filter_stats(samples: Sequence[dict[str, Any]], kept: Sequence[dict[str, Any]]) -> dict[str, float]:
    """`filter/*` metrics: kept fraction, distinct programs, questions with a kept program."""
    n = max(len(samples), 1)
    questions = {s["question_id"] for s in samples}
    return {
        "filter/samples": len(samples),
        "filter/kept": len(kept),
        "filter/kept_frac": len(kept) / n,
        "filter/unique_programs": len({normalize_program(s["program"]) for s in samples}),
        "filter/unique_kept_programs": len({normalize_program(s["program"]) for s in kept}),
        "filter/questions_solved_frac": len({s["question_id"] for s in kept}) / max(len(questions), 1),
    }
