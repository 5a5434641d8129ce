"""Which sampled programs become training data: ViReP's filter, with its knobs.

Why its own module: the filter is where self-training is won or lost. ViReP keeps only the
programs the task rewards (reward ≥ τ); on its own that collapses onto a few programs
repeated many times and plateaus after one to three rounds. Two knobs keep the data
diverse: drop programs identical to one already kept for the same question (identical up
to formatting and comments: compared by their syntax tree), and keep at most `cap`
programs per question so that easy questions do not drown the hard ones.

Two more rules guard what a reward alone cannot see. A program that made no primitive call
(the executor's trace is empty) or that returns one constant whatever the image holds was
right by luck — the balanced answers of a question type make "yes" right half of the time —
and teaching it would teach guessing: `lucky_guess` finds both. And with
`dedup_across_questions`, a program already kept for an earlier question is not kept again
for another, so one generic program cannot fill the training set. `select_programs` says
how many rewarded programs each rule removed.
"""

from __future__ import annotations

import ast
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

#: the rules that remove rewarded programs, as counted in `filter/removed/<rule>`
RULES = ("lucky_no_primitive", "lucky_constant", "dup_question", "dup_across_questions", "cap")
#: helpers a program may wrap a constant in and still return a constant
CONSTANT_WRAPPERS = ("bool_to_yesno", "str", "int", "float", "bool")


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


def _returns(fn: ast.AST) -> Iterator[ast.Return]:
    """The return statements of `fn` itself (not of functions or lambdas nested in it)."""
    todo = list(ast.iter_child_nodes(fn))
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Return):
            yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))


def _constant(expr: ast.expr | None) -> tuple[bool, Any]:
    """(True, value) when `expr` is a literal, or a literal in one of `CONSTANT_WRAPPERS`."""
    if expr is None:
        return True, None
    if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in CONSTANT_WRAPPERS
            and len(expr.args) == 1 and not expr.keywords):
        found, value = _constant(expr.args[0])
        return found, (expr.func.id, value)
    try:
        return True, ast.literal_eval(expr)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def returns_constant(source: str) -> bool:
    """True when `execute_command` in `source` returns one literal value on every path (e.g.
    `return "yes"`, or `return bool_to_yesno(True)` in both branches of an `if`); False when
    it does not parse or has no such function."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "execute_command"]
    if not fns:
        return False
    values = []
    for ret in _returns(fns[0]):
        found, value = _constant(ret.value)
        if not found:
            return False
        values.append(repr(value))
    return len(set(values)) <= 1


def lucky_guess(sample: dict[str, Any]) -> str | None:
    """Why a rewarded program was right by luck — "lucky_no_primitive" (the executor saw no
    primitive call: `primitive_calls` is 0) or "lucky_constant" (see `returns_constant`) —
    or None. A sample without `primitive_calls` is judged on its source alone."""
    if sample.get("primitive_calls") == 0:
        return "lucky_no_primitive"
    if returns_constant(str(sample["program"])):
        return "lucky_constant"
    return None


def primitive_calls(row: dict[str, Any]) -> int:
    """How many primitive calls the executor recorded for a rollout row (its trace)."""
    return len(row.get("trace") or ())


def select_programs(samples: Sequence[dict[str, Any]], *, tau: float = 1.0, dedup: bool = True,
                    cap_per_question: int | None = None, drop_lucky: bool = False,
                    dedup_across_questions: bool = False) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The samples to train on, and how many rewarded programs each rule of `RULES` removed.

    Each sample is a dict with at least `question_id`, `program`, `reward` and
    `error_kind` (and `primitive_calls` for the lucky-guess rule's trace check). Kept:
    reward ≥ `tau` and no error. Then, per question, in order of reward (highest first) and
    sample: `drop_lucky` removes lucky guesses (`lucky_guess`); `dedup` removes a program
    identical (see `normalize_program`) to one kept for the same question;
    `dedup_across_questions` one kept for an earlier question (questions in order of first
    appearance); `cap_per_question` keeps at most that many. Result in the order of `samples`.
    """
    if cap_per_question is not None and cap_per_question < 1:
        raise ValueError("cap_per_question must be ≥ 1 (or None for no cap)")
    by_question: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        if s.get("error_kind") is None and float(s["reward"]) >= tau:
            by_question[s["question_id"]].append(i)
    removed: Counter[str] = Counter({rule: 0 for rule in RULES})
    kept_anywhere: set[str] = set()
    keep: list[int] = []
    for indices in by_question.values():
        seen: set[str] = set()
        chosen = []
        for i in sorted(indices, key=lambda i: (-float(samples[i]["reward"]), i)):
            why = lucky_guess(samples[i]) if drop_lucky else None
            key = normalize_program(samples[i]["program"]) if dedup or dedup_across_questions else ""
            if why is not None:
                removed[why] += 1
            elif dedup and key in seen:
                removed["dup_question"] += 1
            elif dedup_across_questions and key in kept_anywhere:
                removed["dup_across_questions"] += 1
            elif cap_per_question is not None and len(chosen) == cap_per_question:
                removed["cap"] += 1
            else:
                seen.add(key)
                chosen.append(i)
        kept_anywhere |= {normalize_program(samples[i]["program"]) for i in chosen} if dedup_across_questions else set()
        keep += chosen
    return [samples[i] for i in sorted(keep)], dict(removed)


def filter_samples(samples: Sequence[dict[str, Any]], *, tau: float = 1.0, dedup: bool = True,
                   cap_per_question: int | None = None, drop_lucky: bool = False,
                   dedup_across_questions: bool = False) -> list[dict[str, Any]]:
    """The kept samples of `select_programs` (without its counts)."""
    return select_programs(samples, tau=tau, dedup=dedup, cap_per_question=cap_per_question, drop_lucky=drop_lucky,
                           dedup_across_questions=dedup_across_questions)[0]


def filter_stats(samples: Sequence[dict[str, Any]], kept: Sequence[dict[str, Any]],
                 removed: dict[str, int] | None = None) -> dict[str, float]:
    """`filter/*` metrics: kept fraction, distinct programs, questions with a kept program,
    and (given `select_programs`' counts) `filter/removed/<rule>` per rule."""
    n = max(len(samples), 1)
    questions = {s["question_id"] for s in samples}
    return {**{f"filter/removed/{rule}": count for rule, count in (removed or {}).items()},
        "filter/samples": len(samples),
        "filter/kept": len(kept),
        "filter/kept_frac": len(kept) / n,
        "filter/unique_programs": len({normalize_program(s["program"]) for s in samples}),
        "filter/unique_kept_programs": len({normalize_program(s["program"]) for s in kept}),
        "filter/questions_solved_frac": len({s["question_id"] for s in kept}) / max(len(questions), 1),
    }
