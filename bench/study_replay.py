"""Rebuilding a study's run on a new machine from its archive, so that later rounds can follow.

Why: the archive (`study_summary.write_archive`) keeps every round's kept programs, metrics
and evaluated rows, never the adapters. A study that stopped at round 2 could not be taken
to round 3 elsewhere without redoing rounds 1–2 (sampling, training and a 300-question
evaluation each, ~20 min a round on 2 cores) — and a new run of the same seed would mix two
runs' rounds. A replay writes the archived rounds back as a run folder whose sample, filter
and eval steps are done (the archive's files, their metrics marked `replay/from_archive`),
so `viprog.selftrain` only retrains each round's adapter from the very programs the
original run kept, with its seed. Training repeats across processes and machines (arm e's
round 1 equals the continuing runs' for every seed), and `check` makes sure of it: the
rebuilt adapter of the last archived round must write the archived programs, greedy, for
the first questions of the held-out set, or the seed is not continued.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from heldout import ARCHIVED_RUNS

from viprog.errors import UsageError

#: which archived round metrics belong to which step's metrics file (train is redone)
STEP_PREFIXES: dict[str, tuple[str, ...]] = {
    "sample": ("sample/", "reward/", "exec/", "time/sample_s"),
    "filter": ("filter/", "time/filter_s"),
    "eval": ("eval/", "eval_exec/", "eval_sample/", "time/eval_s"),
}
MARK = "replay/from_archive"


def rebuild(root: Path, run_root: Path, rows: dict[int, Path]) -> None:
    """Write the archived rounds of the run named like `run_root` back into `run_root`: the
    rounds are the keys of `rows` (1..R), each with its evaluated rows at `rows[k]`; every step
    but train marked done, and round 0 finished. A `UsageError` (before anything is written)
    when the archive lacks a file."""
    from viprog.runs import read_json, read_jsonl, write_json_atomic, write_jsonl_atomic

    rounds = sorted(rows)
    last = max(rounds)
    if rounds != list(range(1, last + 1)):
        raise UsageError(f"{run_root.name}: the archive has rounds {rounds}, not 1..{last}: a replay needs "
                         "every round up to the last")
    source = root / ARCHIVED_RUNS / run_root.name
    need = [source / "round_0" / "metrics.json"] + [source / f"round_{k}" / name for k in rounds
                                                     for name in ("metrics.json", "kept.jsonl")]
    missing = [p for p in need if not p.exists()]
    if missing:
        raise UsageError(f"--replay needs {missing[0]} (and {len(missing) - 1} more) from the archive; without them "
                         f"{run_root.name} can only be redone in a new --out-dir with its own --results")
    (run_root / "round_0").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "round_0" / "metrics.json", run_root / "round_0" / "metrics.json")
    for k in rounds:
        into = run_root / f"round_{k}"
        into.mkdir(parents=True, exist_ok=True)
        metrics = read_json(source / f"round_{k}" / "metrics.json")
        write_jsonl_atomic(into / "kept.jsonl", read_jsonl(source / f"round_{k}" / "kept.jsonl"))
        write_jsonl_atomic(into / "eval.jsonl", read_jsonl(rows[k]))  # the cell's keys of the original eval.jsonl
        for step, prefixes in STEP_PREFIXES.items():
            write_json_atomic(into / f"{step}.metrics.json",
                              {MARK: True, **{key: v for key, v in metrics.items() if key.startswith(prefixes)}})


def compare(rows: Sequence[dict[str, Any]], archived: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How many of `rows` (a re-evaluation) wrote the archived program for their question."""
    want = {r["question_id"]: r.get("program") for r in archived}
    differ = [r["question_id"] for r in rows if want.get(r["question_id"]) != r.get("program")]
    return {"questions": len(rows), "same_programs": len(rows) - len(differ), "differ": differ}


def check_message(name: str, k: int, result: dict[str, Any]) -> str:
    return (f"replay of {name} round {k}: {len(result['differ'])} of the first {result['questions']} held-out "
            f"questions got another program than in the archive (first: {result['differ'][0]}); its later rounds "
            "would not continue the archived run — redo this seed in a new --out-dir with its own --results")
