"""GRPO's groups sampled by the run's own policy engine (`--grpo.rollout policy`).

Why: without vLLM, TRL samples each group with transformers' `generate` over the fp32
training weights, without the run's stop strings (every completion runs to
`--max-new-tokens`). The run's own engine (llama.cpp on the CPU: Q4_K_M, one prefill of the
prompt shared by the group) samples with them, and it is what lets the loss see another
prompt than the one sampled under (`--grpo.loss-prompt train`, below), which is where a CPU
step's time goes; docs/selftrain.md has the measured step times. TRL's `rollout_func` hook
lets the engine take over: before the first generation of each optimiser step the
trainer's current LoRA is saved and loaded into the policy (llama.cpp converts it to a
GGUF LoRA and applies it on top of the loaded base), the group is sampled there, and the
completions go back to TRL as token ids under the trainer's tokenizer, so the loss is
computed on exactly the tokens the reward was given for.

What it costs in exactness: the programs come from a quantised copy of the weights being
trained, so the group is slightly off-policy. TRL corrects for that only with vLLM
(importance sampling on the sampler's log-probabilities); our engines return none, so the
policy ratio is taken against the trainer's own log-probabilities of the sampled tokens, as
TRL does whenever generation and optimisation are aligned (one iteration per generation).

`--grpo.loss-prompt train` goes one step further, as ReST does: the groups are sampled under
the few-shot prompt but the loss sees each program after the run's `--train-prompt` (the
short prompt, the query alone). On the CPU that is what makes a step affordable: the
forward and backward passes over ~2,060 prompt tokens per program, not the sampling, are
most of a step. The gradient is then that of the training prompt's policy, the one the
self-trained model is used with, weighted by advantages the few-shot policy earned.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from viprog.errors import UsageError
from viprog.finetune import style_prompt
from viprog.policy.base import Policy, SamplingParams

log = logging.getLogger(__name__)

ROLLOUTS = ("auto", "trl", "policy")


def resolve_rollout(choice: str, policy: Policy, use_vllm: bool) -> str:
    """`trl` or `policy`: what `--grpo.rollout` means for this run. `auto` takes the policy
    engine when it is llama.cpp (the fast CPU engine) and vLLM is not colocated, else TRL
    (`viprog.grpo.check_options` has refused any other value)."""
    if choice != "auto":
        return choice
    return "policy" if not use_vllm and policy.info().get("engine") == "llama.cpp" else "trl"


class PolicyRollout:
    """A TRL `rollout_func`: each generation batch sampled by `policy` under the trainer's
    current adapter.

    TRL hands over the batch's prompts with each one repeated `num_generations` times in a
    row (one group per question) and expects one completion per row, in that order. The
    adapter is synced once per optimiser step (the weights change only there), and TRL
    generates once per step (one iteration, no accumulation), so the seed is drawn from
    `params.seed` and the step: a resumed round samples its remaining steps as an unbroken
    one would.

    With `sample_prompts` (`--grpo.loss-prompt train`), TRL's prompts are the ones the loss
    is computed under, and each group is sampled under `sample_prompts[prompt]` instead.
    """

    def __init__(self, policy: Policy, params: SamplingParams, workdir: Path,
                 sample_prompts: dict[str, str] | None = None) -> None:
        self.policy, self.params, self.workdir = policy, params, Path(workdir)
        self.sample_prompts = sample_prompts
        self.synced_step: int | None = None

    def sync(self, trainer: Any) -> None:
        """Load the trainer's LoRA of this step into the policy (a no-op within a step)."""
        step = int(trainer.state.global_step)
        if step == self.synced_step:
            return
        folder = self.workdir / f"step{step}"
        shutil.rmtree(folder, ignore_errors=True)
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(folder))  # the adapter only
        self.policy.load_adapter(folder)
        if self.synced_step is not None:
            shutil.rmtree(self.workdir / f"step{self.synced_step}", ignore_errors=True)
        self.synced_step = step

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        n = int(trainer.num_generations if trainer.model.training else trainer.num_generations_eval)
        if not prompts or len(prompts) % n:
            raise RuntimeError(f"rollout: {len(prompts)} prompts are not whole groups of {n}")
        groups = [prompts[i:i + n] for i in range(0, len(prompts), n)]
        if any(p != g[0] for g in groups for p in g) or not all(isinstance(g[0], str) for g in groups):
            raise RuntimeError("rollout: TRL's prompts are not groups of one text prompt repeated "
                               f"{n} times (its sampler changed?); use --grpo.rollout trl")
        self.sync(trainer)
        step = self.synced_step or 0
        seed = None if self.params.seed is None else (self.params.seed * 1_000_003 + step) % 2 ** 31
        asked = [g[0] if self.sample_prompts is None else self.sample_prompts[g[0]] for g in groups]
        texts = self.policy.sample(asked, replace(self.params, n=n, seed=seed))
        self.policy.release_caches()  # its KV cache, for the loss's forward and backward
        tok = trainer.processing_class
        limit = self.params.max_new_tokens
        prompt_ids, completion_ids = [], []
        for group, outs in zip(groups, texts):
            ids = list(tok(text=group[0])["input_ids"])
            if len(outs) != n:
                raise RuntimeError(f"rollout: the policy returned {len(outs)} completions for a group of {n}")
            for text in outs:
                tokens = list(tok(text=text, add_special_tokens=False)["input_ids"])[:limit]
                # shorter than the limit: the program ended at a stop string (the engines return text, not
                # why they stopped, so a program that ends on exactly the last token counts as cut)
                if len(tokens) < limit:
                    tokens.append(tok.eos_token_id)  # as TRL's generate ends one
                prompt_ids.append(ids)
                completion_ids.append(tokens)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def check_rollout(cfg: Any, policy: Policy) -> None:
    """A `UsageError`, before round 0, when `--grpo.loss-prompt train` meets a rollout that
    resolves to TRL's sampler for this policy."""
    if cfg.algo == "grpo" and cfg.grpo.loss_prompt == "train" \
            and resolve_rollout(cfg.grpo.rollout, policy, cfg.grpo.use_vllm) != "policy":
        raise UsageError(f"--grpo.loss-prompt train needs --grpo.rollout policy; {cfg.grpo.rollout} chooses trl "
                         f"for the {policy.name} policy")


def group_sampler(ctx: Any, k: int, examples: Sequence[Any], prompt: Callable[[Any], str]
                  ) -> tuple[str, Callable[[Any], str], PolicyRollout | None]:
    """Round k's choice of sampler as `(rollout, loss_prompt, rollout_func)`: `trl` or
    `policy`, the prompt function of TRL's dataset (what the loss sees), and the
    `rollout_func` to hand the trainer (None: TRL samples). `prompt` is the sampling prompt."""
    cfg = ctx.cfg  # `check_rollout` ran before round 0: `train` has the policy rollout here
    rollout = resolve_rollout(cfg.grpo.rollout, ctx.policy, cfg.grpo.use_vllm)
    if rollout == "trl":
        return rollout, prompt, None
    loss_prompt = prompt
    if cfg.grpo.loss_prompt == "train":
        style = style_prompt(ctx.prompter, cfg.train_prompt)

        def loss_prompt(ex: Any) -> str:
            return style(ex.query)
    params = SamplingParams(n=cfg.sampling.n, temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                            max_new_tokens=cfg.max_new_tokens, stop=tuple(ctx.prompter.stop()),
                            seed=cfg.seed + 1000 * k)
    sample_prompts = None if loss_prompt is prompt else sampling_prompts(examples, loss_prompt, prompt)
    return rollout, loss_prompt, PolicyRollout(ctx.policy, params, ctx.run.artifact(k, "rollout_adapters"),
                                               sample_prompts)


def sampling_prompts(examples: Sequence[Any], loss_prompt: Callable[[Any], str], prompt: Callable[[Any], str]
                     ) -> dict[str, str]:
    """Each loss prompt's sampling prompt. Two questions with the same query share a short
    prompt, and their few-shot prompts can differ by a library example (each leaves its own
    question out); the first question's is used for both, and how many differed is logged."""
    mapping: dict[str, str] = {}
    differed = 0
    for ex in examples:
        key, value = loss_prompt(ex), prompt(ex)
        differed += key in mapping and mapping[key] != value
        mapping.setdefault(key, value)
    if differed:
        log.info("%d questions share their training prompt with an earlier one but not its few-shot prompt; "
                 "they are sampled under the earlier one's", differed)
    return mapping
