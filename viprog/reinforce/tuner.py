"""MLE pretraining then REINFORCE reward tuning (Pinto et al. 2023, Algorithms 1 and 2).

Why one file: the algorithm should be readable top to bottom, as in cleanrl. Given a
model that can `sample(x, n)` outputs and score `log_prob(x, y)`:

  Algorithm 1 (MLE step):    loss = −log p(y* | x)                    for labelled y*
  Algorithm 2 (reward step): y_1..y_n ~ p(·|x);  A_i = r(x, y_i) − b_i
                             loss = −Σ_i A_i · log p(y_i | x)  (+ λ · MLE anchor)

with the baseline b_i the mean reward of the *other* n−1 samples (leave-one-out, which
keeps the estimator unbiased), none, or group normalisation (A = (r − mean) / std).
Everything else is plumbing users expect: namespaced metrics appended to
`metrics.jsonl`, a checkpoint per phase (model, optimiser, step, RNG) that `resume`
continues from, and a progress bar. Data come from a function `batch(step) -> Batch`,
so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

Batch = dict[str, Any]
"""A batch: `x` (model input tensor), `y` (labelled outputs for MLE, shaped like one
sample), and whatever else the reward needs (ground-truth boxes, masks, …)."""
RewardFn = Callable[[Batch, Tensor], "np.ndarray | Tensor"]
"""reward(batch, samples (B, n, …)) → rewards (B, n)."""
Baseline = Literal["loo", "none", "group"]


@runtime_checkable
class Policy(Protocol):
    """What the tuner needs of a model (an `nn.Module`)."""

    def sample(self, x: Tensor, n: int, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """`n` outputs per input, (B, n, …), without gradient."""
        ...

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """log p(y | x) of whole outputs, y (B, n, …) → (B, n), differentiable."""
        ...


def advantages(rewards: Tensor, baseline: Baseline = "loo") -> Tensor:
    """Rewards (B, n) minus the per-input baseline. "loo": mean of the other samples."""
    if baseline == "none":
        return rewards
    n = rewards.shape[1]
    if baseline == "loo":
        if n < 2:
            raise ValueError("the leave-one-out baseline needs at least 2 samples per input")
        return rewards - (rewards.sum(1, keepdim=True) - rewards) / (n - 1)
    if baseline == "group":
        return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)
    raise ValueError(f"unknown baseline {baseline!r}; choose loo, none or group")


def reinforce_loss(log_probs: Tensor, rewards: Tensor, baseline: Baseline = "loo") -> Tensor:
    """Algorithm 2's surrogate: its gradient is the REINFORCE estimate of −∇ E[r]."""
    return -(advantages(rewards, baseline).detach() * log_probs).mean()


def mle_loss(policy: Policy, batch: Batch) -> Tensor:
    """Algorithm 1's loss: negative log-likelihood of the labelled outputs."""
    return -policy.log_prob(batch["x"], batch["y"].unsqueeze(1)).mean()


@dataclass
class PhaseConfig:
    """One training phase (MLE or reward)."""

    steps: int = 1000
    lr: float = 1e-3
    warmup: int = 50
    """linear learning-rate warm-up steps"""
    schedule: Literal["constant", "cosine"] = "constant"
    """after warm-up: constant, or cosine decay to a tenth of `lr` at `steps`"""
    grad_clip: float = 1.0
    num_samples: int = 8
    """reward phase: samples per input (n)"""
    baseline: Baseline = "loo"
    temperature: float = 1.0
    top_k: int | None = None
    mle_weight: float = 0.0
    """reward phase: weight λ of the MLE anchor term on the labelled outputs"""
    log_every: int = 25
    checkpoint_every: int = 200


def _lr_factor(cfg: PhaseConfig, step: int) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1))
    return 0.1 + 0.45 * (1 + np.cos(np.pi * progress))


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train(policy: nn.Module, phase: Literal["mle", "reward"], batch_fn: Callable[[int], Batch],
          cfg: PhaseConfig, out_dir: str | Path, reward_fn: RewardFn | None = None,
          resume: bool = False, progress: bool = True) -> Path:
    """Run one phase for `cfg.steps` steps; return the path of its final checkpoint.

    With `resume`, a checkpoint `<out_dir>/<phase>.pt` is loaded and training continues at
    its step (a finished phase returns at once). Metrics go to `<out_dir>/metrics.jsonl`.
    """
    if phase == "reward" and reward_fn is None:
        raise ValueError("the reward phase needs a reward_fn")
    if not isinstance(policy, Policy):
        raise TypeError(f"{type(policy).__name__} lacks sample(x, n) / log_prob(x, y)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / f"{phase}.pt"
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(cfg, s))
    start = 0
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        policy.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
    policy.train()
    log = (out / "metrics.jsonl").open("a")
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"{phase} → {ckpt}",
               disable=not progress, leave=False, dynamic_ncols=True)
    tick, acc = time.perf_counter(), {}
    for step in bar:
        batch = batch_fn(step)
        metrics: dict[str, float] = {}
        if phase == "mle":
            loss = mle_loss(policy, batch)
            metrics["loss/mle"] = loss.item()
        else:
            samples = policy.sample(batch["x"], cfg.num_samples, cfg.temperature, cfg.top_k)
            rewards = torch.as_tensor(np.asarray(reward_fn(batch, samples)), dtype=torch.float32)
            loss = reinforce_loss(policy.log_prob(batch["x"], samples), rewards, cfg.baseline)
            metrics |= {"loss/reinforce": loss.item(), "reward/mean": rewards.mean().item(),
                        "reward/std_within": rewards.std(1).mean().item(), "reward/max": rewards.max().item()}
            if cfg.mle_weight > 0:
                anchor = mle_loss(policy, batch)
                loss = loss + cfg.mle_weight * anchor
                metrics["loss/mle_anchor"] = anchor.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        metrics["train/grad_norm"] = float(nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip))
        opt.step()
        sched.step()
        for k, v in metrics.items():
            acc.setdefault(k, []).append(v)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            seconds = (time.perf_counter() - tick) / len(acc["train/grad_norm"])
            row = {"phase": phase, "step": done, **{k: float(np.mean(v)) for k, v in acc.items()},
                   "train/lr": sched.get_last_lr()[0], "time/step_s": seconds}
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.set_postfix({k.split("/")[-1]: f"{row[k]:.3f}" for k in ("loss/mle", "reward/mean") if k in row})
            tick, acc = time.perf_counter(), {}
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            _save(ckpt, {"model": policy.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "torch_rng": torch.get_rng_state(), "step": done, "config": asdict(cfg)})
    log.close()
    policy.eval()
    return ckpt
