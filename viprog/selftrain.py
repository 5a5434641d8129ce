"""Reinforced self-training (ViReP): sample programs, run them, keep the rewarded ones,
LoRA fine-tune the policy on them, evaluate — in rounds.

    round 0      evaluate the base policy with few-shot prompts (the baseline)
    round k ≥ 1  sample n programs for each of this round's train questions
                 → execute them in the sandbox → task reward
                 → keep reward ≥ τ (dedup, cap per question)
                 → LoRA fine-tune on (short prompt, program) pairs (TRL SFTTrainer + PEFT)
                 → evaluate greedily on the held-out split → update the library

Each step writes its artifact atomically under `runs/<name>/round_<k>/` and then its
metrics (`<step>.metrics.json`); a step is finished when its metrics file exists, so
`--resume` after any kill redoes only the unfinished step, and sampling resumes
question by question (`viprog.runs`). `python selftrain.py` with no argument runs the
embedded default: the shapes world, the packaged Qwen2.5-Coder-0.5B, sizes that fit two
rounds in about half an hour on a 2-core CPU.

`--algo grpo` replaces a round's sample / filter / train with online RL (`viprog.grpo`:
TRL's GRPOTrainer, the sandbox's reward per sampled program) and keeps the same folder,
filter, library and evaluation; `--corrections FILE` adds hand-written programs
(`viprog.corrections`) to every round's training data and to the library.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from viprog.corrections import library_rows
from viprog.errors import DataError, UsageError
from viprog.filtering import filter_stats, primitive_calls, select_programs
from viprog.finetune import base_model_path, finetune, training_pairs
from viprog.grpo import train_round
from viprog.grpo_rollout import check_rollout
from viprog.launch import launched
from viprog.library import Library
from viprog.metrics import (
    PhaseTimer,
    exec_metrics,
    peak_memory_mb,
    reward_metrics,
    sampling_metrics,
    summary_line,
    task_metrics,
)
from viprog.policy import SamplingParams
from viprog.registry import RegistryError
from viprog.report import write_report
from viprog.rollout import (
    Components,
    PromptFn,
    build,
    greedy_params,
    prompt_fn,
    rollout,
    round_questions,
    rows_to_results,
    summary,
)
from viprog.runs import AtomicJsonl, Run, iter_jsonl, read_json, read_jsonl, write_json_atomic, write_jsonl_atomic
from viprog.selftrain_config import SelfTrainConfig, resolve_config
from viprog.tasks import TASKS

log = logging.getLogger("viprog.selftrain")


# -- the pieces a round is made of ---------------------------------------------------------
def round_rollout(ctx: Context, k: int, examples: Sequence[Any], prompt: PromptFn, params: SamplingParams,
                  name: str, out: Any = None, check: bool = True, prefix: str = "eval_sample",
                  ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """`viprog.rollout.rollout` in round k's folder (resumable there); returns the rows and
    their `<prefix>/` metrics (`sample/` for the train rollouts). With `out`, the rows stream
    to that file and their summaries are returned."""
    cfg = ctx.cfg
    rows, stats = rollout(ctx.parts, examples, prompt, params, partial=ctx.run.artifact(k, f"{name}.partial.jsonl"),
                          style=cfg.prompt_style, batch_questions=cfg.batch_questions, workers=cfg.workers,
                          timeout=cfg.timeout, desc=f"round {k} {name}", out=out, check=check)
    return rows, {**sampling_metrics(stats.seconds, stats.programs, stats.tokens, prefix=prefix),
                  f"{prefix}/execute_seconds": round(stats.execute_seconds, 3),
                  f"{prefix}/execute_programs_per_s": len(rows) / max(stats.execute_seconds, 1e-9)}


@dataclass
class Context:
    """What every step of a round needs."""

    cfg: SelfTrainConfig
    run: Run
    parts: Components  # built once: the profile's models (and a Ray executor) serve every rollout of the run
    train_pool: list[Any]
    eval_set: list[Any]
    corrections: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # library rows of --corrections

    @property
    def policy(self) -> Any:
        return self.parts.policy

    @property
    def prompter(self) -> Any:
        return self.parts.prompter


def step(ctx: Context, k: int, name: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """`fn(ctx, k, *args)` unless its metrics file says step `name` of round k finished;
    timed, and its metrics recorded."""
    done = ctx.run.artifact(k, f"{name}.metrics.json")
    if done.exists():
        log.info("round %d: %s already done (resume)", k, name)
        return read_json(done)
    timer = PhaseTimer()
    with timer(name):
        metrics = fn(ctx, k, *args)
    metrics = {**metrics, **timer.metrics()}
    write_json_atomic(done, metrics)
    return metrics


#: the steps of a round, in order (round 0 has only the evaluation)
STEPS = ("sample", "filter", "train", "eval")


# -- the steps -----------------------------------------------------------------------------
def sample_step(ctx: Context, k: int, library: Library, tuned: bool) -> dict[str, Any]:
    """Sample `sampling.n` programs for each of round k's train questions (few-shot
    prompts show similar library programs), run them in the sandbox and reward them; the rows
    stream to `samples.jsonl`. With `sampling.retry`, the questions whose first programs
    left the filter nothing to keep get that many more, numbered on after the first ones."""
    cfg, path = ctx.cfg, ctx.run.artifact(k, "samples.jsonl")
    examples = round_questions(ctx.train_pool, k, cfg.questions_per_round, cfg.seed)
    params = SamplingParams(n=cfg.sampling.n, temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                            max_new_tokens=cfg.max_new_tokens, stop=tuple(ctx.prompter.stop()),
                            seed=cfg.seed + 1000 * k)
    prompt = prompt_fn(ctx.prompter, cfg.tuned_prompt if tuned else cfg.base_prompt, library, cfg.library_shots)
    rows, metrics = round_rollout(ctx, k, examples, prompt, params, "samples", out=path, prefix="sample")
    if cfg.sampling.retry:
        retried, retry = retry_unkept(ctx, k, examples, prompt, params, path)
        rows += retried
        tokens = metrics.get("sample/tokens")  # the round's totals: first draw and retries
        metrics |= {**sampling_metrics(metrics["sample/seconds"] + retry["sample/retry_seconds"],
                                       metrics["sample/programs"] + retry["sample/retry_programs"],
                                       None if tokens is None else tokens + retry["sample/retry_tokens"]),
                    **retry}
    return {**metrics, **reward_metrics(rows), **exec_metrics(rows), "sample/questions": len(examples)}


def retry_unkept(ctx: Context, k: int, examples: Sequence[Any], prompt: PromptFn, params: SamplingParams,
                 path: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`sampling.retry` more programs for each question of `path` (the first draw) that the
    filter keeps nothing of, appended to `path` numbered on after that question's last
    sample; returns their summaries and the `sample/retry_*` metrics. Questions whose image
    did not load have no rows and are not retried; a retry in which every program fails in a
    primitive is not an error here (those questions were chosen for failing). With
    --dedup-across-questions a retried program can win over another question's, so the
    metrics count questions that lost their kept programs as well as those that gained."""
    cfg = ctx.cfg
    samples = filter_inputs(path)
    kept = {s["question_id"] for s in select_kept(cfg, samples)[0]}
    following: dict[str, int] = {}  # question id → the next free sample number
    for s in samples:
        following[s["question_id"]] = max(following.get(s["question_id"], 0), int(s["sample"]) + 1)
    again = [ex for ex in examples if ex.id in following and ex.id not in kept]
    added: list[dict[str, Any]] = []
    out: dict[str, Any] = {"sample/retry_questions": len(again), "sample/retry_programs": 0,
                           "sample/retry_seconds": 0.0, "sample/retry_tokens": 0}
    if again:
        more = ctx.run.artifact(k, "retries.jsonl")
        # seeds after the first draw's (one per question position); the partial file is per M, so a resume
        # with another --sampling.retry draws anew instead of mixing two Ms in one round
        _, drawn = round_rollout(ctx, k, again, prompt, dataclasses.replace(
            params, n=cfg.sampling.retry, seed=params.seed + len(examples)), f"retries-m{cfg.sampling.retry}",
            out=more, check=False, prefix="sample")
        added = append_samples(path, more, following)
        out |= {"sample/retry_programs": len(added), "sample/retry_seconds": drawn["sample/seconds"],
                "sample/retry_tokens": drawn.get("sample/tokens", 0)}
    kept_now = {s["question_id"] for s in select_kept(cfg, [*samples, *added])[0]}
    return added, out | {"sample/retry_questions_kept": len(kept_now - kept),
                         "sample/retry_questions_lost": len(kept - kept_now)}


def append_samples(path: Any, more: Any, following: dict[str, int]) -> list[dict[str, Any]]:
    """Move the rows of `more` to the end of `path`, each numbered on from its question's
    `following` sample number (one rename: a kill leaves either file whole); returns them as
    the filter reads them (`filter_inputs`)."""
    added = []
    with AtomicJsonl(path) as sink:
        for row in iter_jsonl(path):
            sink.write(row)
        for row in iter_jsonl(more):
            row = {**row, "sample": following[row["question_id"]] + row["sample"]}
            sink.write(row)
            added.append(filter_input(row))
    more.unlink()
    return added


def filter_input(row: dict[str, Any]) -> dict[str, Any]:
    """What the filter reads of a rollout row: its summary and how many primitive calls it made."""
    return {**summary(row), "primitive_calls": primitive_calls(row)}


def filter_inputs(path: Any) -> list[dict[str, Any]]:
    return [filter_input(row) for row in iter_jsonl(path)]


def select_kept(cfg: SelfTrainConfig, samples: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The filter's choice among `samples` (`filter_inputs`): `select_programs` with this run's rules."""
    return select_programs(samples, tau=cfg.tau, dedup=cfg.dedup, cap_per_question=cfg.cap_per_question,
                           drop_lucky=cfg.drop_lucky, dedup_across_questions=cfg.dedup_across_questions)


def filter_step(ctx: Context, k: int) -> dict[str, Any]:
    """Keep the rewarded samples (reward ≥ tau, no lucky guesses, deduplicated, capped per
    question) in `kept.jsonl`: chosen from their summaries, then copied whole one row at a
    time, so no answers or traces of the whole rollout are held at once."""
    cfg, path = ctx.cfg, ctx.run.artifact(k, "samples.jsonl")
    samples = filter_inputs(path)
    chosen, removed = select_kept(cfg, samples)
    wanted = {(r["question_id"], r["sample"]) for r in chosen}
    with AtomicJsonl(ctx.run.artifact(k, "kept.jsonl")) as kept:
        for row in iter_jsonl(path):
            if (row["question_id"], row["sample"]) in wanted:
                kept.write(row)
    return filter_stats(samples, chosen, removed)


def train_step(ctx: Context, k: int, adapter_in: Any) -> dict[str, Any]:
    """LoRA fine-tune on (train prompt, program) pairs: this round's kept programs on top of
    `adapter_in` (the last round's adapter), or with `restart_from_base` the whole library
    on the base model. Nothing kept: the policy stays as it is."""
    cfg, run = ctx.cfg, ctx.run
    if cfg.restart_from_base:
        rows, init = Library.collect(run, range(1, k + 1)), None
    else:
        rows, init = read_jsonl(run.artifact(k, "kept.jsonl")), adapter_in
    rows = [*rows, *ctx.corrections]  # the hand-written programs, every round
    if not rows:
        log.warning("round %d: no program was kept; the policy stays as it is", k)
        return {"train/examples": 0, "train/skipped": 1}
    pairs = training_pairs(ctx.prompter, cfg.train_prompt, rows)
    ctx.policy.release_caches()  # the int8 copy and prefix caches are stale after training anyway
    tune = launched(cfg.train_launcher, finetune)  # in this process, or under `accelerate launch`
    return tune(base_model_path(ctx.policy), ctx.policy.tokenizer, pairs, run.artifact(k, "adapter"),
                lora=cfg.lora, train=cfg.train, init_adapter=init, device=cfg.device, seed=cfg.seed + k)


def eval_step(ctx: Context, k: int, library: Library, adapter: Any) -> dict[str, Any]:
    """Greedy programs for the held-out questions under the policy as it now is (`adapter`
    loaded), scored by the task; the rows go to `eval.jsonl`."""
    cfg = ctx.cfg
    prompt = prompt_fn(ctx.prompter, cfg.base_prompt if adapter is None else cfg.tuned_prompt,
                       library if cfg.eval_library else None, cfg.library_shots)
    rows, metrics = round_rollout(ctx, k, ctx.eval_set, prompt, greedy_params(ctx.prompter, cfg.max_new_tokens,
                                                                              seed=cfg.seed), "eval")
    write_jsonl_atomic(ctx.run.artifact(k, "eval.jsonl"), rows)
    by_id = {ex.id: ex for ex in ctx.eval_set}
    report = ctx.parts.task.metrics([by_id[r["question_id"]] for r in rows], rows_to_results(rows),
                                    [r["reward"] for r in rows])
    return {**task_metrics(report), **exec_metrics(rows, prefix="eval_exec"), **metrics,
            "eval/errors": report.get("errors", {}), "eval/adapter": str(adapter) if adapter else None,
            "eval/library": cfg.eval_library}


def finish_round(ctx: Context, k: int, metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Round k's `metrics.json` (the steps' metrics, their time, peak memory): written last,
    it marks the round finished; the partial files go and `metrics.jsonl` is rebuilt."""
    metrics = {**metrics, "time/round_s": round(sum(metrics.get(f"time/{name}_s", 0.0) for name in STEPS), 3),
               "time/this_process_s": round(seconds, 3), "policy/engine": ctx.policy.info().get("engine"), **peak_memory_mb()}
    write_json_atomic(ctx.run.artifact(k, "metrics.json"), metrics)
    for partial in ctx.run.round_dir(k).glob("*.partial.jsonl"):  # the final artifacts hold all they had
        partial.unlink()
    ctx.run.rebuild_metrics_log()
    log.info(summary_line(k, metrics))
    return metrics


def grpo_steps(ctx: Context, k: int, library: Library, adapter_in: Any) -> dict[str, Any]:
    """Round k of --algo grpo: GRPO training on this round's questions, sampling inside it
    (`viprog.grpo.train_round`), then the same filter as ReST for the library."""
    cfg = ctx.cfg
    examples = round_questions(ctx.train_pool, k, cfg.questions_per_round, cfg.seed)
    prompt = prompt_fn(ctx.prompter, cfg.base_prompt if adapter_in is None else cfg.tuned_prompt, library,
                       cfg.library_shots)
    metrics = step(ctx, k, "train", train_round, examples, prompt, adapter_in)
    return metrics | step(ctx, k, "filter", filter_step)


# -- one round, top to bottom --------------------------------------------------------------
def run_round(ctx: Context, k: int) -> dict[str, Any]:
    """Round k: sample → filter → train (from round 1), then evaluate; each step is skipped
    when a previous attempt finished it (`step`)."""
    run, start = ctx.run, time.perf_counter()
    run.round_dir(k).mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"round": k}
    library = Library.load(run.root)
    if k >= 1:
        adapter_in = run.latest_adapter(before=k)
        if ctx.cfg.algo == "grpo":
            metrics |= grpo_steps(ctx, k, library, adapter_in)
        else:
            ctx.policy.load_adapter(adapter_in)
            metrics |= step(ctx, k, "sample", sample_step, library, adapter_in is not None)
            metrics |= step(ctx, k, "filter", filter_step)
            metrics |= step(ctx, k, "train", train_step, adapter_in)
        library = Library.write(run, range(1, k + 1), extra=ctx.corrections)  # few-shot examples for the evaluation
    adapter = run.latest_adapter(before=k + 1)
    ctx.policy.load_adapter(adapter)
    metrics |= step(ctx, k, "eval", eval_step, library, adapter)
    return finish_round(ctx, k, metrics, time.perf_counter() - start)


def main(cfg: SelfTrainConfig) -> int:
    """Run (or resume) the rounds; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    task = TASKS.get(cfg.task)(data_dir=cfg.data_dir)
    cfg = resolve_config(cfg, task)
    if cfg.train_split not in task.splits() or cfg.eval_split not in task.splits():
        raise UsageError(f"task {cfg.task!r} has splits {', '.join(task.splits())}; "
                         f"got --train-split {cfg.train_split} --eval-split {cfg.eval_split}")
    if cfg.train_split == cfg.eval_split:
        raise UsageError("--train-split and --eval-split must differ (evaluation is on held-out questions)")
    train_pool = task.examples(cfg.train_split)
    eval_set = task.examples(cfg.eval_split, limit=cfg.eval_size)
    if not train_pool or not eval_set:
        raise UsageError(f"task {cfg.task!r}: the {cfg.train_split} or {cfg.eval_split} split is empty")
    corrections = library_rows(cfg.corrections, cfg.task, eval_set)  # checked before any work
    parts = build(cfg, task=task)  # the profile's models load (and are checked) here, before any round
    with parts.closed_on_error():  # a refused run folder must not leave the models loaded (a Ray cluster's)
        check_rollout(cfg, parts.policy)
        run = Run.open(f"{cfg.runs_dir}/{cfg.run_name}", resume=cfg.resume, overwrite=cfg.overwrite)
    write_json_atomic(run.config_path, dataclasses.asdict(cfg))
    log.info("run folder %s (task %s, profile %s, policy %s, %d rounds)", run.root, cfg.task, parts.profile_name,
             cfg.policy, cfg.rounds)
    ctx = Context(cfg, run, parts, train_pool, eval_set, corrections)
    done = set(run.rounds_done())
    durations: list[float] = []
    try:
        for k in range(cfg.rounds + 1):
            if k in done:
                log.info("round %d already finished (resume)", k)
                continue
            started = time.perf_counter()
            run_round(ctx, k)
            if k >= 1:
                durations.append(time.perf_counter() - started)
                left = cfg.rounds - k
                if left:
                    log.info("ETA: about %.0f min for the %d round(s) left", left * sum(durations) / len(durations) / 60,
                             left)
    except (UsageError, DataError, RegistryError):
        if not cfg.resume and not any(run.root.glob("round_*/*.metrics.json")):
            shutil.rmtree(run.root, ignore_errors=True)  # bad input found before any step finished: no half run
        raise
    finally:
        parts.close()
    if cfg.report:
        log.info("report written to %s", write_report(run.root))
    print(json.dumps({f"round_{m['round']}": m.get("eval/accuracy") for m in run.round_metrics()}))
    log.info("run written to %s (%s)", run.root, ", ".join(sorted(p.name for p in run.root.iterdir())))
    return 0
