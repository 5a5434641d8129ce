"""The shapes world's reference programs under the `scene-graph` and `shapes` profiles.

Why: the reference programs are right by construction, so under `scene-graph` (perfect
perception) they must score ~100 %, and the gap to `shapes` (classic vision on the
pixels) is the perception error of that profile, per question type. Printed beside the
program-free majority-answer baseline, this is docs/tasks.md's table and the acceptance
check (≥ 99 % scene-graph, ≥ 90 % shapes, majority < 40 % on the test split).

    .venv/bin/python bench/shapes_reference.py [--task shapes] [--split test] [--limit N] [--json]

Programs run unsandboxed in this process (`run_unsandboxed`: they are our own); the
failures of the perceiving profile are listed with `--show-failures`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from typing import Any

from viprog.executor.result import ExecutionResult
from viprog.primitives import get_profile
from viprog.primitives.local import run_unsandboxed
from viprog.tasks import TASKS

PROFILES = ("scene-graph", "shapes")


def score(task: Any, examples: list[Any], profile_name: str) -> tuple[list[float], list[tuple[Any, Any]], float]:
    """Rewards of the reference programs under one profile, the failures, and seconds."""
    rewards, failures = [], []
    start = time.perf_counter()
    for ex in examples:
        pixels = task.load_image(ex)
        try:  # a fresh profile per image: run_unsandboxed names every image "image", and profiles cache by id
            answer = run_unsandboxed(ex.reference_program, pixels, get_profile(profile_name), ex.meta)
            result = ExecutionResult(answer=answer)
        except Exception as exc:  # noqa: BLE001 — a failing primitive is a wrong answer here
            result = ExecutionResult.failure("runtime", f"{exc.__class__.__name__}: {exc}")
        reward = task.reward(ex, result)
        rewards.append(reward)
        if reward < 1:
            failures.append((ex, result.answer if result.ok else result.error))
    return rewards, failures, time.perf_counter() - start


def by_type(examples: list[Any], rewards: list[float]) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for ex, r in zip(examples, rewards):
        groups[ex.question_type].append(r)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="shapes")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")
    parser.add_argument("--show-failures", type=int, default=0, metavar="N",
                        help="print up to N failures of each profile")
    args = parser.parse_args(argv)

    task = TASKS.get(args.task)()
    examples = task.examples(args.split, args.limit)
    results = {name: score(task, examples, name) for name in PROFILES}
    baseline = task.majority_baseline(task.examples("train"), examples)
    table: dict[str, Any] = {
        "task": args.task, "split": args.split, "n": len(examples),
        "overall": {name: sum(r) / len(r) for name, (r, _, _) in results.items()},
        "by_type": {name: by_type(examples, r) for name, (r, _, _) in results.items()},
        "seconds": {name: round(s, 2) for name, (_, _, s) in results.items()},
        "majority_baseline": baseline,
    }
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        counts = defaultdict(int)
        for ex in examples:
            counts[ex.question_type] += 1
        majority = baseline.get("accuracy_by_type") or {}
        print(f"| question type | n | {' | '.join(PROFILES)} | majority answer |")
        print("|---|---:|" + "---:|" * (len(PROFILES) + 1))
        for qtype in sorted(counts):
            cells = [f"{table['by_type'][p][qtype]:.1%}" for p in PROFILES]
            prior = f"{majority[qtype]:.1%}" if qtype in majority else "n/a"
            print(f"| {qtype} | {counts[qtype]} | {' | '.join(cells)} | {prior} |")
        cells = [f"**{table['overall'][p]:.1%}**" for p in PROFILES]
        prior = f"**{baseline['accuracy']:.1%}**" if baseline.get("accuracy") is not None else "n/a"
        print(f"| **all** | {len(examples)} | {' | '.join(cells)} | {prior} |")
        print(f"\nseconds: {table['seconds']}; majority answer {baseline.get('answer')!r}; per-type prior "
              f"{baseline.get('per_type_prior_accuracy')}", file=sys.stderr)
    for name, (_, failures, _) in results.items():
        for ex, got in failures[:args.show_failures]:
            print(f"[{name}] {ex.id} {ex.question_type}: {ex.query!r} expected {ex.answer or ex.box} got {got!r}",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
