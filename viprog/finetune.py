"""LoRA fine-tuning of the policy on kept programs: TRL's `SFTTrainer` + a PEFT `LoraConfig`.

Why its own module and why this shape: the trainer is TRL's (it is what users know, and it
runs unchanged under `accelerate launch` with DDP / FSDP / DeepSpeed on many GPUs); this
module only turns kept (prompt, program) pairs into a prompt-completion dataset — so the
loss falls on the program tokens only (`completion_only_loss`) — and publishes the
adapter atomically. Training uses its own copy of the base weights, loaded from the
folder the policy was loaded from, so the policy's sampling model is never modified in
place and can switch to the new adapter with `Policy.load_adapter` afterwards.

On a GPU that copy shares the device with the policy's engine (put to sleep by
`Policy.release_caches` first) and the neural primitives, so training checkpoints its
activations (every layer's activations of a 7B model at the GPU preset's batch would not fit
beside its weights; docs/gpu.md's memory plan has the numbers) and hands its cached blocks
back to the driver when done, so the engine can wake up into them.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viprog.errors import UsageError
from viprog.runs import publish_dir, tmp_dir_for, write_json_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraSettings:
    """PEFT LoRA hyper-parameters (ViReP: r=16, alpha=32 on q/k/v/o projections)."""

    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA alpha (scale = alpha / r)."""
    dropout: float = 0.05
    """LoRA dropout."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Modules that get LoRA adapters."""


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings for one round of supervised fine-tuning."""

    learning_rate: float = 2e-4
    """Learning rate (constant)."""
    epochs: float = 1.0
    """Epochs over the round's training pairs."""
    batch_size: int = 2
    """Batch size per device."""
    grad_accum: int = 1
    """Gradient accumulation steps."""
    max_length: int = 512
    """Longest training sequence (prompt + program), in tokens."""
    report_to: tuple[str, ...] = ()
    """Trainer loggers (tensorboard, wandb): TRL's report_to."""
    checkpointing: bool = True
    """Recompute each layer's activations in the backward pass instead of keeping them."""


def completion_for(prompt: str, program: str) -> str:
    """The text the model must write after `prompt` to produce `program`.

    A completion-style prompt already ends with the program's first line(s) (e.g.
    `def execute_command(image):`); those are not repeated in the completion.
    """
    lines = program.splitlines(keepends=True)
    tail = prompt.splitlines(keepends=True)
    for k in range(min(len(lines), len(tail)), 0, -1):
        if [line.rstrip() for line in tail[-k:]] == [line.rstrip() for line in lines[:k]]:
            rest = "".join(lines[k:])
            return rest if prompt.endswith("\n") else "\n" + rest
    return program


def training_pairs(prompter: Any, style: str, rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(prompt, program) pairs of `rows` (each with its `query` and `program`) under the
    prompt `style` they are trained with: `short` (the query alone) or the few-shot prompt."""
    prompt = style_prompt(prompter, style)
    return [(prompt(row["query"]), row["program"]) for row in rows]


def style_prompt(prompter: Any, style: str) -> Callable[[str], str]:
    """The prompt of a training style as a function of the query: `short` or few-shot."""
    return prompter.short if style == "short" else prompter.few_shot


def base_model_path(policy: Any) -> str:
    """Where the policy's base weights live (a local folder or a hub name)."""
    for attr in ("model_path", "model_name"):
        value = getattr(policy, attr, None)
        if isinstance(value, (str, Path)) and str(value):
            return str(value)
    model = getattr(policy, "model", None)
    path = getattr(model, "name_or_path", None)
    if not path:
        raise UsageError(f"policy {getattr(policy, 'name', policy)!r} exposes no model weights to fine-tune; "
                         "self-training needs a transformers policy (hf, vllm or the embedded default)")
    return str(path)


def sft_options(train: TrainSettings, output_dir: str | Path, *, cuda: bool, bf16: bool, seed: int = 0
                ) -> dict[str, Any]:
    """The keyword arguments of TRL's `SFTConfig` for one round of training.

    Activation checkpointing is set explicitly rather than left to TRL's default; with a PEFT
    model TRL then also makes the input embeddings require gradients, which checkpointing
    needs for the LoRA weights to get any. transformers renamed the option from
    `gradient_checkpointing` to `activation_checkpointing`; the name it has is used.
    """
    from trl import SFTConfig

    return {
        "output_dir": str(output_dir),
        "completion_only_loss": True,
        "max_length": train.max_length,
        "learning_rate": train.learning_rate,
        "num_train_epochs": train.epochs,
        "per_device_train_batch_size": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": list(train.report_to) or "none",
        "seed": seed,
        "bf16": bf16,
        "use_cpu": not cuda,
        "dataloader_num_workers": 0,
        "shuffle_dataset": True,
        checkpointing_option(SFTConfig): train.checkpointing,
    }


def checkpointing_option(config_cls: type) -> str:
    """The name a TRL config gives activation checkpointing (transformers renamed
    `gradient_checkpointing` to `activation_checkpointing`)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def trainable_model(model_path: str, lora: LoraSettings, init_adapter: str | Path | None,
                    device: str) -> tuple[Any, Any, bool, bool]:
    """The base weights to train (a copy of their own) as `(model, peft_config, cuda, bf16)`:
    with `init_adapter`, that adapter loaded trainable and no config; else the bare model and
    a fresh `LoraConfig` for the trainer to wrap it with."""
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    cuda = device.startswith("cuda") and torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if bf16 else torch.float32)
    if cuda and int(os.environ.get("WORLD_SIZE", "1")) == 1:  # launched: the trainer places each rank's copy
        model = model.to(device)
    if init_adapter is not None:
        return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True), None, cuda, bf16
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return model, config, cuda, bf16


def publish_adapter(model: Any, work: Path, out_dir: Path, stats: dict[str, Any]) -> None:
    """Save the trained adapter with its `train_stats.json` under `work` and move it to
    `out_dir` whole (then `work` goes)."""
    adapter = work / "adapter"
    model.save_pretrained(str(adapter))
    write_json_atomic(adapter / "train_stats.json", stats)
    publish_dir(adapter, out_dir)
    shutil.rmtree(work, ignore_errors=True)


def free_memory(cuda: bool) -> None:
    """Collect the trainer's garbage; on a GPU hand the cached blocks back to the driver, so
    the sleeping engine can wake up into them."""
    import torch

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def check_continued_lora(init_adapter: str | Path, lora: LoraSettings) -> None:
    """A `UsageError` when the adapter to continue was made with other LoRA settings than
    `lora`: a continued adapter keeps its own rank, alpha, dropout and target modules, so
    the configured ones would otherwise be silently ignored."""
    from peft import PeftConfig

    saved = PeftConfig.from_pretrained(str(init_adapter))
    wanted = {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "target_modules": sorted(lora.target_modules)}
    found = {"r": saved.r, "alpha": saved.lora_alpha, "dropout": saved.lora_dropout,
             "target_modules": sorted(saved.target_modules or ())}
    diff = [f"{key} {wanted[key]} (adapter: {found[key]})" for key in wanted if wanted[key] != found[key]]
    if diff:
        raise UsageError(f"the adapter continued from {init_adapter} was trained with other LoRA settings: "
                         f"{'; '.join(diff)}; configure the adapter's settings or use --restart-from-base")


def count_over_length(tokenizer: Any, rows: Sequence[dict[str, str]], max_length: int) -> int:
    """How many (prompt, completion) rows are longer than `max_length` tokens (with the
    end-of-text token the trainer appends): the trainer cuts their end, the program's tokens,
    so such a row teaches less, or nothing at all."""
    over = 0
    for row in rows:
        n = len(tokenizer(row["prompt"])["input_ids"]) + len(tokenizer(row["completion"])["input_ids"]) + 1
        over += n > max_length
    return over


def finetune(model_path: str, tokenizer: Any, pairs: Sequence[tuple[str, str]], out_dir: str | Path, *,
             lora: LoraSettings = LoraSettings(), train: TrainSettings = TrainSettings(),
             init_adapter: str | Path | None = None, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Train a LoRA adapter on (prompt, completion) `pairs` and publish it at `out_dir`.

    init_adapter: continue training this adapter (rounds that continue from the last
        adapter) instead of starting a fresh one on the base model. seed: the trainer's seed.
    A continued adapter must have `lora`'s settings (`check_continued_lora`); pairs longer
    than `train.max_length` are counted (`train/over_max_length`) and logged.
    Returns `train/*` metrics (loss, steps, examples, tokens, seconds, whether activations
    were checkpointed, and on a GPU the peak memory training allocated); they are also saved
    beside the adapter as `train_stats.json`. Nothing exists at `out_dir` until the adapter
    is complete.
    """
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from viprog.trainlog import route_logs

    if not pairs:
        raise ValueError("no training pairs")
    out_dir = Path(out_dir)
    work = tmp_dir_for(out_dir)
    if init_adapter is not None:
        check_continued_lora(init_adapter, lora)
    model, peft_config, cuda, bf16 = trainable_model(model_path, lora, init_adapter, device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = [{"prompt": p, "completion": completion_for(p, c)} for p, c in pairs]
    over = count_over_length(tokenizer, rows, train.max_length)
    if over:
        log.warning("%d of %d training pairs are longer than max_length=%d tokens and lose their end (the program) "
                    "to truncation; raise --train.max-length or train under the short prompt", over, len(rows),
                    train.max_length)
    dataset = Dataset.from_list(rows)
    args = SFTConfig(**sft_options(train, work / "trainer", cuda=cuda, bf16=bf16, seed=seed))
    trainer = route_logs(SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                    peft_config=peft_config))  # its log entries to the logger and the bar
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with torch.enable_grad():  # a policy in this process may have turned gradients off globally
        output = trainer.train()
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = int(sum(len(ids) for ids in trainer.train_dataset["input_ids"]))
    stats = {
        "train/examples": len(pairs),
        "train/over_max_length": over,
        "train/steps": int(output.global_step),
        "train/loss_first": float(losses[0]) if losses else None,
        "train/loss_last": float(losses[-1]) if losses else None,
        "train/loss_mean": float(output.training_loss),
        "train/tokens": tokens,
        "train/seconds": round(seconds, 3),
        "train/tokens_per_s": tokens * float(train.epochs) / max(seconds, 1e-9),
        # what `is_activation_checkpointing` reads (older transformers: `is_gradient_checkpointing`)
        "train/checkpointing": int(any(getattr(m, "gradient_checkpointing", False) is True
                                       for m in trainer.model.modules())),
        "train/processes": int(trainer.args.world_size),  # > 1 under `accelerate launch` (viprog.launch)
    }
    if cuda:
        stats["train/peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    if not trainer.is_world_process_zero():  # under accelerate launch, rank 0 alone publishes
        del trainer, model
        shutil.rmtree(work, ignore_errors=True)
        return stats
    publish_adapter(trainer.model, work, out_dir, stats)
    del trainer, model
    free_memory(cuda)
    log.info("adapter written to %s (%d steps, loss %.3f → %.3f)", out_dir, stats["train/steps"],
             stats["train/loss_first"] or float("nan"), stats["train/loss_last"] or float("nan"))
    return stats
