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

from viprog.errors import DataError, UsageError

log = logging.getLogger("viprog.eval")


@dataclass
class TaskPolicyConfig:
    """The options `viprog eval` and `viprog selftrain` share: the task and its data, the
    primitive profile, the policy that writes programs and the sandbox that runs them."""

    task: str = "shapes"
    """Task (`viprog tasks` lists them)."""
    data_dir: str | None = None
    """The task's data folder (None: the task's default; the shapes world is generated)."""
    profile: str | None = None
    """Primitive profile (None: the task's default)."""
    policy: str | None = None
    """Policy backend or the embedded default's name (hf, vllm, qwen2.5-coder-0.5b)."""
    model: str | None = None
    """Model for the policy: a hub name or a local folder."""
    device: str = "cpu"
    """Device for the policy, and for the fine-tuning in selftrain (cpu, cuda, cuda:1)."""
    prompt_style: str = "completion"
    """Prompt format of the Prompter: completion (ViperGPT-style code) or chat."""
    max_new_tokens: int = 256
    """Longest program the policy may write, in tokens."""
    batch_questions: int = 4
    """Questions per call to the policy (each with all its samples)."""
    workers: int = 2
    """Sandbox worker processes."""
    timeout: float = 10.0
    """Seconds per program before it is killed."""


@dataclass
class EvalConfig(TaskPolicyConfig):
    """Score programs (a JSONL file, or a policy's greedy programs) on a task split."""

    split: str = "test"
    """Split to evaluate."""
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
    baseline_split: str = "train"
    """Split the majority answer is taken from (the evaluated split when the task has no such split)."""
    strict: bool = False
    """Make a corrupt image inside the dataset fatal instead of skipping it."""
    output: str | None = None
    """Also write one JSON line per evaluated question (program, answer, reward, trace) here."""


def read_programs(path: str | Path) -> dict[str, str]:
    """question id → program from a JSONL file; DataError naming the file and line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (--programs expects a JSONL file of question_id/program lines)")
    programs: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file; --programs expects JSONL") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not valid JSON ({exc.msg}); each line must be "
                            '{"question_id": ..., "program": ...}') from None
        if not isinstance(row, dict) or not isinstance(row.get("program"), str) or "question_id" not in row:
            raise DataError(f'{path}:{n}: each line needs "question_id" and a string "program"')
        programs[str(row["question_id"])] = row["program"]
    if not programs:
        raise DataError(f"{path}: no programs in the file")
    return programs


def policy_programs(cfg: EvalConfig, task: Any, examples: list[Any]) -> dict[str, str]:
    """Greedy programs from a policy, one per example."""
    from viprog.policy import Prompter, SamplingParams, extract_program
    from viprog.primitives.apidoc import api_section
    from viprog.rollout import sample_completions
    from viprog.selftrain import load_scripted_or

    policy = load_scripted_or(cfg.policy, cfg.model, cfg.device)
    try:
        if cfg.adapter:
            if not Path(cfg.adapter, "adapter_config.json").exists():
                raise UsageError(f"{cfg.adapter}: not a LoRA adapter folder (no adapter_config.json)")
            policy.load_adapter(cfg.adapter)
        prompter = Prompter(api_section(task=cfg.task), task.seed_programs(), style=cfg.prompt_style,
                            tokenizer=getattr(policy, "tokenizer", None))
        prompt = prompter.short if cfg.prompt == "short" else prompter.few_shot
        params = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=cfg.max_new_tokens,
                                stop=tuple(prompter.stop()))
        with tempfile.TemporaryDirectory() as tmp:
            completions, _ = sample_completions(policy, examples, lambda ex: prompt(ex.query), params,
                                                partial=Path(tmp) / "eval.partial.jsonl",
                                                batch_questions=cfg.batch_questions, desc="eval sample")
    finally:
        policy.close()
    return {qid: extract_program(outs[0], cfg.prompt_style) for qid, outs in completions.items()}


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """The metrics report (what `viprog eval` prints)."""
    from viprog.rollout import execute_programs, load_images, rows_to_results
    from viprog.runs import write_jsonl_atomic
    from viprog.tasks import TASKS

    if (cfg.programs is None) == (cfg.policy is None):
        raise UsageError("pass exactly one of --programs FILE.jsonl or --policy NAME")
    task = TASKS.get(cfg.task)(data_dir=cfg.data_dir, strict=cfg.strict)
    if cfg.split not in task.splits():
        raise UsageError(f"task {cfg.task!r} has no split {cfg.split!r}; splits: {', '.join(task.splits())}")
    examples = task.examples(cfg.split, limit=cfg.limit)
    if not examples:
        raise DataError(f"task {cfg.task!r}: the {cfg.split} split has no questions")
    report: dict[str, Any] = {"task": cfg.task, "split": cfg.split, "profile": cfg.profile or task.default_profile}
    if cfg.programs is not None:
        programs = read_programs(cfg.programs)
        ids = {ex.id for ex in examples}
        unknown = [qid for qid in programs if qid not in ids]
        if len(unknown) == len(programs) and cfg.limit is None:
            raise DataError(f"{cfg.programs}: none of its {len(programs)} question ids is in the {cfg.task} {cfg.split} "
                            f"split (file has e.g. {unknown[0]!r}; the split has e.g. {examples[0].id!r})")
        missing = [ex.id for ex in examples if ex.id not in programs]
        if missing and not cfg.only_covered:
            print(f"viprog eval: {len(missing)} of {len(examples)} questions have no program and count as wrong "
                  "(--only-covered scores only those with one)", file=sys.stderr)
        if cfg.only_covered:
            examples = [ex for ex in examples if ex.id in programs]
        report |= {"source": str(cfg.programs), "missing_programs": len(missing),
                   "programs_not_in_split": len(unknown)}
    else:
        programs = policy_programs(cfg, task, examples)
        report |= {"source": f"policy {cfg.policy}" + (f" + {cfg.adapter}" if cfg.adapter else "")}
    images = load_images(task, examples)
    rows = execute_programs(task, examples, {qid: [("", p)] for qid, p in programs.items()},
                            profile=report["profile"], images=images, workers=cfg.workers, timeout=cfg.timeout)
    by_id = {row["question_id"]: row for row in rows}
    scored, results, rewards = [], [], []
    from viprog.executor.result import ExecutionResult

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
    baseline_split = cfg.baseline_split if cfg.baseline_split in task.splits() else cfg.split
    prior = examples if baseline_split == cfg.split else task.examples(baseline_split)
    report["baseline"] = {"split": baseline_split, **task.majority_baseline(prior, scored)}
    if cfg.output:
        write_jsonl_atomic(cfg.output, rows)
        log.info("per-question results written to %s", cfg.output)
    return report


def main(cfg: EvalConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    print(json.dumps(evaluate(cfg), indent=2, sort_keys=True, default=str))
    return 0
