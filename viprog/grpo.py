"""Online RL for the program-writing policy: TRL's `GRPOTrainer`, rewarded by the sandbox.

Why: ReST (`viprog.selftrain`) is filtered behaviour cloning — it learns only from the
programs that happened to be right, and never from how much better they were than the
others sampled for the same question. GRPO samples a group of programs per question,
runs each one through the sandboxed `Executor` against its example, and pushes the policy
towards the programs whose reward beats their group's mean (and away from the rest).

What is ours and what is TRL's: the trainer, its loss, sampling (transformers `generate`,
or vLLM colocated on a GPU), the KL term, the optimiser and the checkpoints are
TRL's. This module gives it a dataset (one prompt per train question, with its
`question_id`), optionally its own sampler (`viprog.grpo_rollout`: the run's policy engine
through TRL's `rollout_func`), a reward function (`ExecutorReward`: completion → program → sandbox →
the task's reward, one batched `Executor` call per generation batch), a LoRA config, and
folds a round into the run folder that ReST writes: `round_<k>/samples.jsonl` holds every
rewarded row the trainer sampled (with its `step`), `kept.jsonl` the rewarded programs (the
same filter as ReST), `adapter/` the LoRA after the round, `grpo_log.jsonl` TRL's per-step
log; the round's metrics add `grpo/*` (TRL's means over the round: KL when `beta` > 0,
entropy, reward std, clip ratios) to the usual `reward/*`, `exec/*` and `train/*`.

A round is `questions_per_round` questions × `sampling.n` programs, the same
budget of sampled programs as a ReST round; each question is one group, `questions_per_step`
groups per optimiser step. TRL checkpoints every `save_steps` steps under
`round_<k>/grpo/`; `--resume` continues from the last one (the rows that the killed
process sampled after it are dropped and sampled again), so a kill costs at most
`save_steps` steps.

Corrections (`--corrections FILE`) reach GRPO's weights through a supervised step: before
each round's GRPO, the adapter it continues is fine-tuned on the hand-written programs
(`viprog.finetune`, the pairs ReST would add, under the same `--train.*` settings) into
`round_<k>/corrections_adapter/`, and GRPO continues from that. TRL's GRPOTrainer has no
supervised term to mix them in with, and putting them into a group through `rollout_func`
(experimental in TRL) would score each one with the reward function, which needs a train
example with a gold answer; a correction (a query and a program) need not have one.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viprog.errors import UsageError
from viprog.executor import Executor
from viprog.finetune import (
    base_model_path,
    checkpointing_option,
    finetune,
    free_memory,
    publish_adapter,
    trainable_model,
    training_pairs,
)
from viprog.grpo_rollout import ROLLOUTS, group_sampler
from viprog.metrics import exec_metrics, reward_metrics
from viprog.policy import extract_program
from viprog.rollout import check_primitives_answered, execute_programs, load_images, summary
from viprog.runs import Appender, AtomicJsonl, iter_jsonl, read_json, read_partial, tmp_dir_for, write_jsonl_atomic

log = logging.getLogger(__name__)


@dataclass
class GrpoOptions:
    """Options of `--algo grpo` (TRL's GRPOConfig names in brackets)."""

    questions_per_step: int = 2
    """Questions (groups of --sampling.n programs) per optimiser step."""
    learning_rate: float = 5e-5
    """Learning rate of the LoRA weights (constant)."""
    beta: float = 0.0
    """KL coefficient against the base policy (0: no reference model, no `grpo/kl`)."""
    epsilon: float = 0.2
    """Clipping range of the policy ratio."""
    loss_type: str = "dapo"
    """TRL's loss aggregation: dapo, grpo, dr_grpo, bnpo, ..."""
    scale_rewards: str = "group"
    """Advantage scaling: group (divide by the group's std), batch, none."""
    save_steps: int = 2
    """A TRL checkpoint every this many steps (what a kill can cost)."""
    use_vllm: bool = False
    """Sample with vLLM colocated in the training process (GPU; vllm_mode="colocate")."""
    vllm_gpu_memory_utilization: float = 0.3
    """Share of the GPU vLLM may take (the rest: training and the neural primitives)."""
    rollout: str = "auto"
    """Who samples the groups: trl (transformers' generate, or vLLM with --grpo.use-vllm), policy
    (the run's policy engine under the trainer's current LoRA, `viprog.grpo_rollout`), auto
    (policy when that engine is llama.cpp and vLLM is off, else trl)."""
    loss_prompt: str = "sampled"
    """The prompt the loss sees each program after: sampled (the one it was sampled under),
    train (the run's --train-prompt, as ReST trains; needs the policy rollout; 6.5x faster a
    step than TRL's sampler on the 2-core CPU under the few-shot prompt, bench/grpo_step.py)."""


def check_options(cfg: Any) -> None:
    """A `UsageError` for settings GRPO cannot run with."""
    g: GrpoOptions = cfg.grpo
    if cfg.sampling.n < 2:
        raise UsageError("--algo grpo needs --sampling.n ≥ 2 (an advantage is relative to its group)")
    if g.questions_per_step < 1 or g.questions_per_step > cfg.questions_per_round:
        raise UsageError(f"--grpo.questions-per-step must be within 1..{cfg.questions_per_round} "
                         f"(--questions-per-round), got {g.questions_per_step}")
    if g.save_steps < 1:
        raise UsageError("--grpo.save-steps must be ≥ 1")
    if g.rollout not in ROLLOUTS:
        raise UsageError(f"--grpo.rollout must be one of {', '.join(ROLLOUTS)}, got {g.rollout!r}")
    if g.rollout == "policy" and g.use_vllm:
        raise UsageError("--grpo.rollout policy and --grpo.use-vllm both sample the groups; choose one")
    if g.loss_prompt not in ("sampled", "train"):
        raise UsageError(f"--grpo.loss-prompt must be sampled or train, got {g.loss_prompt!r}")
    if g.loss_prompt == "train" and (g.rollout == "trl" or g.use_vllm):
        raise UsageError("--grpo.loss-prompt train needs --grpo.rollout policy (TRL's own sampler uses the loss's "
                         "prompt)")
    if g.use_vllm and not cfg.device.startswith("cuda"):
        raise UsageError("--grpo.use-vllm needs --device cuda (vLLM samples on the GPU)")
    if cfg.executor != "local" or cfg.train_launcher:
        raise UsageError("--algo grpo runs its rewards and training in this process: drop --executor ray and "
                         "--train-launcher (they work with --algo rest)")


class ExecutorReward:
    """A TRL reward function: each completion's program run in the sandbox on its example.

    Called by the trainer with the generation batch (`prompts`, `completions`) and the
    dataset's `question_id` column; returns the task's reward per completion. The batch's
    programs go to the open `executor` in one call, so the primitive server batches the
    model calls of the whole group. Every row (as `viprog.rollout` writes them, plus the
    trainer's `step`) goes to `sink` when one is given, and the batch's `exec/*` rates to
    the trainer's log.
    """

    __name__ = "executor"  # how TRL names the reward in its log (`rewards/executor/mean`)

    def __init__(self, task: Any, examples: Sequence[Any], images: dict[str, Any], executor: Any, *,
                 prompt_style: str = "completion", sink: Appender | None = None) -> None:
        self.task, self.images, self.executor = task, images, executor
        self.by_id = {ex.id: ex for ex in examples}
        self.prompt_style, self.sink = prompt_style, sink

    def rows(self, completions: Sequence[Any], question_ids: Sequence[str]) -> list[dict[str, Any]]:
        """One rewarded row per completion, in the completions' order."""

        programs: dict[str, list[tuple[str, str]]] = defaultdict(list)
        slots = []
        for completion, qid in zip(completions, question_ids, strict=True):
            text = completion if isinstance(completion, str) else completion[-1]["content"]  # chat: the last message
            slots.append((qid, len(programs[qid])))
            programs[qid].append((text, extract_program(text, self.prompt_style)))
        rows = execute_programs(self.task, [self.by_id[qid] for qid in programs], programs, profile=self.executor.profile,
                                images=self.images, executor=self.executor, desc="")
        by_slot = {(row["question_id"], row["sample"]): row for row in rows}
        return [by_slot[slot] for slot in slots]

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], question_id: Sequence[str],
                 trainer_state: Any = None, log_metric: Callable[[str, float], None] | None = None,
                 **_: Any) -> list[float]:
        rows = self.rows(completions, question_id)
        step = int(getattr(trainer_state, "global_step", 0) or 0)
        if self.sink is not None:
            for row in rows:
                self.sink.write({**row, "step": step})
        if log_metric is not None:
            for key, value in exec_metrics(rows).items():
                log_metric(key, value)
        return [float(row["reward"]) for row in rows]


def grpo_settings(cfg: Any, out_dir: Path, *, steps: int, seed: int, cuda: bool, bf16: bool,
                  stop: Sequence[str] = ()) -> dict[str, Any]:
    """The keyword arguments of TRL's `GRPOConfig` for one round."""
    from trl import GRPOConfig

    g: GrpoOptions = cfg.grpo
    n = cfg.sampling.n
    options: dict[str, Any] = {
        "output_dir": str(out_dir),
        "num_generations": n,
        "per_device_train_batch_size": g.questions_per_step * n,  # completions per step: whole groups
        "gradient_accumulation_steps": 1,
        "max_steps": steps,
        "max_completion_length": cfg.max_new_tokens,
        "temperature": cfg.sampling.temperature,
        "top_p": cfg.sampling.top_p,
        "learning_rate": g.learning_rate,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "beta": g.beta,
        "epsilon": g.epsilon,
        "loss_type": g.loss_type,
        "scale_rewards": g.scale_rewards,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": g.save_steps,
        "save_total_limit": 2,
        "report_to": list(cfg.train.report_to) or "none",
        "seed": seed,
        "bf16": bf16,
        "use_cpu": not cuda,
        "dataloader_num_workers": 0,
        # on, as TRL defaults: without it the loss's forward over a group of ~2,060-token few-shot
        # prompts keeps the activations of every layer (~0.7 GB a layer of the 0.5B, estimated on
        # tiny models of its width; the 17 GB of the first CPU attempts)
        checkpointing_option(GRPOConfig): cfg.train.checkpointing,
    }
    if g.use_vllm:
        options |= {"use_vllm": True, "vllm_mode": "colocate", "vllm_enable_sleep_mode": True,
                    "vllm_gpu_memory_utilization": g.vllm_gpu_memory_utilization,
                    "generation_kwargs": {"stop": list(stop)}}  # transformers' generate takes no stop strings here
    return options


def drop_rows_after(partial: Path, step: int) -> None:
    """Keep only the rows sampled before `step` (what the checkpoint being resumed covers)."""
    rows = [row for row in read_partial(partial) if int(row.get("step", 0)) < step]
    write_jsonl_atomic(partial, rows)


def last_checkpoint(out_dir: Path) -> tuple[str | None, int]:
    """The last complete TRL checkpoint under `out_dir` and its step (None, 0: none). The
    trainer writes a checkpoint in place, its `trainer_state.json` last, so one without it
    was cut short by a kill: it is removed."""
    found = []
    for path in out_dir.glob("checkpoint-*") if out_dir.is_dir() else ():
        suffix = path.name.removeprefix("checkpoint-")
        if suffix.isdigit():
            found.append((int(suffix), path))
    for step, path in sorted(found, reverse=True):
        if (path / "trainer_state.json").exists():
            return str(path), step
        shutil.rmtree(path, ignore_errors=True)
    return None, 0


def round_means(history: Sequence[dict[str, Any]]) -> dict[str, float]:
    """TRL's per-step log as `grpo/<name>` means over the round (our own `exec/*` left out:
    the round's rows give them exactly)."""
    sums: dict[str, list[float]] = defaultdict(list)
    for entry in history:
        if "loss" not in entry:  # the closing summary line
            continue
        for key, value in entry.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch") and not key.startswith("exec/"):
                sums[key].append(float(value))
    return {f"grpo/{key}": sum(values) / len(values) for key, values in sums.items()}


def train_on_corrections(ctx: Any, k: int, adapter_in: Path | None) -> tuple[Path | None, dict[str, Any]]:
    """The adapter round k's GRPO starts from, and its `corrections/*` metrics: `adapter_in`
    fine-tuned on the run's corrections (a fresh LoRA when there is none yet) into
    `round_<k>/corrections_adapter/`; without corrections, `adapter_in` itself and no metrics.
    A finished adapter is there whole or not at all, so a resumed round reuses it."""
    if not ctx.corrections:
        return adapter_in, {}
    cfg, out = ctx.cfg, ctx.run.artifact(k, "corrections_adapter")
    if not out.exists():
        ctx.policy.release_caches()  # the sampling engine's memory, for the trainer
        finetune(base_model_path(ctx.policy), ctx.policy.tokenizer,
                 training_pairs(ctx.prompter, cfg.train_prompt, ctx.corrections), out, lora=cfg.lora,
                 train=cfg.train, init_adapter=adapter_in, device=cfg.device, seed=cfg.seed + k)
        log.info("round %d: %d corrections trained into %s before GRPO", k, len(ctx.corrections), out)
    stats = read_json(out / "train_stats.json")
    return out, {f"corrections/{key.removeprefix('train/')}": value for key, value in stats.items()}


def train_round(ctx: Any, k: int, examples: Sequence[Any], prompt: Callable[[Any], str],
                adapter_in: Path | None) -> dict[str, Any]:
    """One GRPO round (after `train_on_corrections`): train on `examples` (one group each),
    write samples.jsonl, the adapter and the per-step log under round k; returns the round's
    `train/`, `grpo/`, `reward/`, `exec/`, `sample/` (and `corrections/`) metrics."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from viprog.trainlog import route_logs

    cfg, run = ctx.cfg, ctx.run
    images = load_images(ctx.parts.task, examples)
    examples = [ex for ex in examples if ex.image_key in images]
    steps = len(examples) // cfg.grpo.questions_per_step
    if steps == 0:
        raise UsageError(f"round {k}: {len(examples)} questions with images, fewer than --grpo.questions-per-step")
    out_dir, partial = run.artifact(k, "grpo"), run.artifact(k, "samples.partial.jsonl")
    checkpoint, done = last_checkpoint(out_dir)
    drop_rows_after(partial, done)
    if checkpoint:
        log.info("round %d: GRPO resumes from %s (step %d of %d)", k, checkpoint, done, steps)
    rollout, loss_prompt, rollout_func = group_sampler(ctx, k, examples, prompt)
    adapter_in, corrected = train_on_corrections(ctx, k, adapter_in)
    model_path = base_model_path(ctx.policy)
    tokenizer = AutoTokenizer.from_pretrained(model_path)  # its own: left padding, whatever the policy uses
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model, peft_config, cuda, bf16 = trainable_model(model_path, cfg.lora, adapter_in, cfg.device)
    dataset = Dataset.from_list([{"prompt": loss_prompt(ex), "question_id": ex.id} for ex in examples])
    args = GRPOConfig(**grpo_settings(cfg, out_dir, steps=steps, seed=cfg.seed + k, cuda=cuda, bf16=bf16,
                                      stop=ctx.prompter.stop()))
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    ctx.policy.release_caches()  # the sampling engine's memory, for the trainer
    start = time.perf_counter()
    with Executor(ctx.parts.profile, workers=cfg.workers, timeout=cfg.timeout) as executor, Appender(partial) as sink:
        reward = ExecutorReward(ctx.parts.task, examples, images, executor, prompt_style=cfg.prompt_style, sink=sink)
        trainer = route_logs(GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                                         processing_class=tokenizer, peft_config=peft_config,
                                         rollout_func=rollout_func))  # logs off stdout
        with torch.enable_grad():  # a policy in this process may have turned gradients off globally
            output = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    history = list(trainer.state.log_history)
    write_jsonl_atomic(run.artifact(k, "grpo_log.jsonl"), history)
    rows = []
    with AtomicJsonl(run.artifact(k, "samples.jsonl")) as samples:  # the final artifact, from the partial file
        for row in iter_jsonl(partial):
            samples.write(row)
            rows.append(summary(row))
    check_primitives_answered(rows, f"round {k} GRPO")
    rewards = [h["reward"] for h in history if "reward" in h]
    stats = {"train/algo": "grpo", "train/rollout": rollout, "train/loss_prompt": cfg.grpo.loss_prompt,
             "train/steps": int(output.global_step), "train/questions": len(examples),
             "train/seconds": round(seconds, 3), "train/loss_mean": float(output.training_loss),
             "train/reward_first": rewards[0] if rewards else None, "train/reward_last": rewards[-1] if rewards else None,
             **round_means(history), **corrected}
    publish_adapter(trainer.model, tmp_dir_for(run.artifact(k, "adapter")), run.artifact(k, "adapter"), stats)
    del trainer, model
    free_memory(cuda)
    shutil.rmtree(out_dir, ignore_errors=True)  # the adapter holds what the checkpoints did
    shutil.rmtree(run.artifact(k, "rollout_adapters"), ignore_errors=True)  # the policy's copies, per step
    log.info("round %d: GRPO %d steps, reward %.2f → %.2f; adapter in %s", k, stats["train/steps"],
             rewards[0] if rewards else float("nan"), rewards[-1] if rewards else float("nan"),
             run.artifact(k, "adapter"))
    return {**stats, **reward_metrics(rows), **exec_metrics(rows), "sample/questions": len(examples),
            "sample/programs": len(rows)}
