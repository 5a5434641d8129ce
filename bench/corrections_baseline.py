"""Is a correction pool worth writing? The base policy on the pool's own questions, beside the
pool's programs, in one run.

Why: a correction is only worth a person's time where the policy fails. This writes, for each
correction's train question, the base policy's greedy few-shot program (the prompt of round
0) and runs it and the hand-written one in the sandbox under the task's profile, against the
question's gold answer: the policy's accuracy there, per question type, against the pool's
(which must be 100 %).

    python bench/corrections_baseline.py                                   # the shapes-hard pool, the 0.5B
    python bench/corrections_baseline.py --selftrain.policy-options '{"engine":"llamacpp"}'
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heldout import machine_load

from viprog.selftrain_config import SelfTrainConfig, embedded

log = logging.getLogger("viprog.corrections_baseline")


@dataclass
class BaselineConfig:
    """The base policy against a correction pool, on the pool's questions."""

    corrections: str = "bench/data/shapes_hard_corrections.jsonl"
    """The correction pool (JSONL; each line names its train question_id)."""
    task: str = "shapes-hard"
    """The task the pool is for."""
    results: str | None = "bench/results/corrections_baseline.json"
    """Write the results JSON here (None: print only)."""
    selftrain: SelfTrainConfig = field(default_factory=embedded)
    """The policy and its settings (the embedded preset's by default)."""


def by_type(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Accuracy and count per question type."""
    groups: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        groups[row["question_type"]].append(float(row["reward"]))
    return {t: {"accuracy": sum(v) / len(v), "n": len(v)} for t, v in sorted(groups.items())}


def run_baseline(cfg: BaselineConfig) -> dict[str, Any]:
    from viprog.corrections import load_corrections
    from viprog.rollout import build, execute_programs, greedy_params, load_images, prompt_fn, rollout
    from viprog.runs import write_json_atomic

    load_before, start = machine_load(), time.perf_counter()
    run = dataclasses.replace(cfg.selftrain, task=cfg.task)
    corrections = load_corrections(cfg.corrections, cfg.task)
    parts = build(run)
    try:
        train = {ex.id: ex for ex in parts.task.examples(parts.task.default_splits[0])}
        examples = [train[c.question_id] for c in corrections if c.question_id in train]
        written = {c.question_id: [(c.program, c.program)] for c in corrections if c.question_id in train}
        pool = execute_programs(parts.task, examples, written, profile=parts.profile,
                                images=load_images(parts.task, examples), workers=run.workers, desc="corrections")
        with tempfile.TemporaryDirectory() as tmp:
            base, _ = rollout(parts, examples, prompt_fn(parts.prompter, "few-shot"),
                              greedy_params(parts.prompter, run.max_new_tokens, seed=run.seed),
                              partial=Path(tmp) / "base.partial.jsonl", style=run.prompt_style,
                              workers=run.workers, desc="base policy")
    finally:
        parts.close()
    result = {
        "task": cfg.task, "corrections": cfg.corrections, "policy": run.policy, "n": len(examples),
        "base_accuracy": sum(r["reward"] for r in base) / max(len(base), 1),
        "corrections_accuracy": sum(r["reward"] for r in pool) / max(len(pool), 1),
        "base_by_type": by_type(base),
        "base_rows": [{k: r.get(k) for k in ("question_id", "question_type", "reward", "error_kind", "program")}
                      for r in base],
        "meta": {"load_before": load_before, "load_after": machine_load(),
                 "wall_s": round(time.perf_counter() - start, 1), "policy_options": run.policy_options},
    }
    if cfg.results:
        log.info("results written to %s", write_json_atomic(cfg.results, result))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    import tyro

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    result = run_baseline(tyro.cli(BaselineConfig, args=list(sys.argv[1:] if argv is None else argv)))
    print(f"{result['n']} questions: base policy {result['base_accuracy']:.1%}, "
          f"corrections {result['corrections_accuracy']:.1%}")
    for t, entry in result["base_by_type"].items():
        print(f"  {t:16s} base {entry['accuracy']:.0%} of {entry['n']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
