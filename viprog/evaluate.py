"""`viprog eval`: score programs on a task split and print a JSON metrics report.

Why: the number every self-training claim rests on, computed the same way for programs
written by our policy, by another system (a released JSONL of `{"question_id",
"program"}`, e.g. ViperGPT's or ViReP's GQA programs) or by a user. Programs run in the
sandbox under the task's primitive profile; the report has `accuracy` in [0, 1], the
accuracy per question type, the error kinds, what was skipped (corrupt images, questions
without a program), and the program-free majority-answer baseline beside it.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from viprog.config import TaskPolicyConfig
from viprog.errors import DataError, UsageError
from viprog.executor.result import ExecutionResult
from viprog.rollout import (
    Components,
    build,
    check_primitives_answered,
    execute_programs,
    greedy_params,
    load_images,
    prompt_fn,
    rows_to_results,
    sample_programs,
)
from viprog.runs import read_programs, write_jsonl_atomic
from viprog.tasks import TASKS
from viprog.tasks.base import Task

log = logging.getLogger("viprog.eval")


@dataclass
class EvalConfig(TaskPolicyConfig):
    """Score programs (a JSONL file, or a policy's greedy programs) on a task split."""

    split: str | None = None
    """Split to evaluate (None: the task's evaluation split, e.g. test for shapes, val for GQA)."""
    limit: int | None = None
    """Evaluate only the first N questions of the split."""
    programs: str | None = None
    """JSONL file, one {"question_id": str, "program": str} per line; or pass --policy."""
    adapter: str | None = None
    """LoRA adapter for the policy (e.g. runs/<name>/round_2/adapter)."""
    prompt: Literal["few-shot", "short"] = "few-shot"
    """Prompt for the policy: few-shot (API + examples) or short (query only, tuned policies)."""
    only_covered: bool = False
    """With --programs: score only the questions that have a program (default: a missing one counts as wrong)."""
    baseline_split: str | None = None
    """Split the majority answer is taken from (None: the task's train split when its data is there, else
    the report says the baseline is missing)."""
    strict: bool = False
    """Make a corrupt image inside the dataset fatal instead of skipping it."""
    output: str | None = None
    """Also write one JSON line per evaluated question (program, answer, reward, trace) here."""


def policy_programs(cfg: EvalConfig, parts: Components, examples: list[Any]) -> dict[str, str]:
    """Greedy programs from the built policy, one per example."""
    policy, prompter = parts.policy, parts.prompter
    assert policy is not None and prompter is not None
    if cfg.adapter:
        if not Path(cfg.adapter, "adapter_config.json").exists():
            raise UsageError(f"{cfg.adapter}: not a LoRA adapter folder (no adapter_config.json)")
        policy.load_adapter(cfg.adapter)
    with tempfile.TemporaryDirectory() as tmp:
        programs, _ = sample_programs(policy, examples, prompt_fn(prompter, cfg.prompt),
                                      greedy_params(prompter, cfg.max_new_tokens),
                                      partial=Path(tmp) / "eval.partial.jsonl", style=cfg.prompt_style,
                                      batch_questions=cfg.batch_questions, desc="eval sample")
    return {qid: pairs[0][1] for qid, pairs in programs.items()}


def baseline_prior(cfg: EvalConfig, task: Task, split: str, examples: list[Any]) -> tuple[str, list[Any] | None, str]:
    """(split, its examples, why missing) for the majority-answer baseline. A baseline split
    the user did not name and whose data is not there is reported missing, not fatal."""
    name = cfg.baseline_split or task.default_splits[0]
    if name == split:
        return name, examples, ""
    if name not in task.splits():
        if cfg.baseline_split is not None:
            raise UsageError(f"task {cfg.task!r} has no split {name!r} for --baseline-split; "
                             f"splits: {', '.join(task.splits())}")
        return split, examples, ""
    try:
        return name, task.examples(name), ""
    except DataError as exc:
        if cfg.baseline_split is not None:
            raise
        log.warning("no majority baseline: the %s split cannot be read (%s)", name, exc)
        return name, None, str(exc)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """The metrics report (what `viprog eval` prints)."""
    if (cfg.programs is None) == (cfg.policy is None):
        raise UsageError("pass exactly one of --programs FILE.jsonl or --policy NAME")
    task = TASKS.get(cfg.task)(data_dir=cfg.data_dir, strict=cfg.strict)
    split = cfg.split or task.default_splits[1]
    if split not in task.splits():
        raise UsageError(f"task {cfg.task!r} has no split {split!r}; splits: {', '.join(task.splits())}")
    examples = task.examples(split, limit=cfg.limit)
    if not examples:
        raise DataError(f"task {cfg.task!r}: the {split} split has no questions")
    programs = dict(read_programs(cfg.programs, "question_id")) if cfg.programs is not None else None
    baseline_split, prior, baseline_missing = baseline_prior(cfg, task, split, examples)
    parts = build(cfg, task=task, with_policy=programs is None)
    report: dict[str, Any] = {"task": cfg.task, "split": split, "profile": parts.profile_name}
    try:
        if programs is not None:
            ids = {ex.id for ex in examples}
            unknown = [qid for qid in programs if qid not in ids]
            if len(unknown) == len(programs) and cfg.limit is None:
                raise DataError(f"{cfg.programs}: none of its {len(programs)} question ids is in the {cfg.task} "
                                f"{split} split (file has e.g. {unknown[0]!r}; the split has e.g. {examples[0].id!r})")
            missing = [ex.id for ex in examples if ex.id not in programs]
            if missing and not cfg.only_covered:
                print(f"viprog eval: {len(missing)} of {len(examples)} questions have no program and count as wrong "
                      "(--only-covered scores only those with one)", file=sys.stderr)
            if cfg.only_covered:
                examples = [ex for ex in examples if ex.id in programs]
            report |= {"source": str(cfg.programs), "missing_programs": len(missing),
                       "programs_not_in_split": len(unknown)}
        else:
            programs = policy_programs(cfg, parts, examples)
            report |= {"source": f"policy {cfg.policy}" + (f" + {cfg.adapter}" if cfg.adapter else "")}
        images = load_images(task, examples)
        rows = execute_programs(task, examples, {qid: [("", p)] for qid, p in programs.items()},
                                profile=parts.profile, images=images, workers=cfg.workers, timeout=cfg.timeout,
                                executor=parts.executor)
        check_primitives_answered(rows, f"the {split} split")
    finally:
        parts.close()
    by_id = {row["question_id"]: row for row in rows}
    scored, results, rewards = [], [], []
    for ex in examples:
        if ex.image_key not in images:
            continue  # skipped (counted by the task)
        row = by_id.get(ex.id)
        scored.append(ex)
        if row is None:
            results.append(ExecutionResult(answer=None))  # no program: wrong, counted in missing_programs
            rewards.append(0.0)
        else:
            results.append(rows_to_results([row])[0])
            rewards.append(row["reward"])
    report |= task.metrics(scored, results, rewards)
    if prior is None:
        report["baseline"] = {"split": baseline_split, "missing": baseline_missing}
    else:
        report["baseline"] = {"split": baseline_split, **task.majority_baseline(prior, scored)}
    if cfg.output:
        write_jsonl_atomic(cfg.output, rows)
        log.info("per-question results written to %s", cfg.output)
    return report


def main(cfg: EvalConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    print(json.dumps(evaluate(cfg), indent=2, sort_keys=True, default=str))
    return 0
