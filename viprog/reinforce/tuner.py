"""MLE pretraining then REINFORCE reward tuning (Pinto et al. 2023, Algorithms 1 and 2).

Why one file: the algorithm should be readable top to bottom, as in cleanrl. Given a
model that can `sample(x, n)` outputs and score `log_prob(x, y)`:

  Algorithm 1 (MLE step):    loss = −log p(y* | x)                    for labelled y*
  Algorithm 2 (reward step): y_1..y_n ~ p(·|x);  A_i = r(x, y_i) − b_i
                             loss = −Σ_i A_i · log p(y_i | x)  (+ λ · MLE anchor)

with the baseline b_i the mean reward of the *other* n−1 samples (leave-one-out, which
keeps the estimator unbiased), none, or group normalisation (A = (r − mean) / std).
The samples are drawn at the phase's temperature / top-k and `log_prob` scores them
under that same distribution, so the estimate is the gradient of the reward expected
under what was sampled. Everything else is plumbing users expect: namespaced metrics
appended to `metrics.jsonl` (one row per logged step, also across a resume), a
checkpoint per phase (model, optimiser, step, CPU and CUDA RNG, metrics not yet logged)
that `resume` continues from, and a progress bar. Data come from a function
`batch(step) -> Batch`, so a resumed run sees the same batches as an uninterrupted one;
the batches live on the policy's device and rewards are moved there.
"""

from __future__ import annotations

import inspect
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

from viprog.errors import UsageError

Batch = dict[str, Any]
"""A batch: `x` (model input tensor), `y` (labelled outputs for MLE, shaped like one
sample), and whatever else the reward needs (ground-truth boxes, masks, …)."""
RewardFn = Callable[[Batch, Tensor], "np.ndarray | Tensor"]
"""reward(batch, samples (B, n, …)) → rewards (B, n)."""
Baseline = Literal["loo", "none", "group"]


@runtime_checkable
class TunablePolicy(Protocol):
    """What the tuner needs of a model (an `nn.Module`)."""

    def sample(self, x: Tensor, n: int, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """`n` outputs per input, (B, n, …), without gradient."""
        ...

    def log_prob(self, x: Tensor, y: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """log p(y | x) of whole outputs under the distribution `sample` draws from at the
        same `temperature` and `top_k`, y (B, n, …) → (B, n), differentiable. A policy
        tuned only at (1, None) may take just `(x, y)`."""
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


def mle_loss(policy: TunablePolicy, batch: Batch) -> Tensor:
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


def rng_state() -> dict[str, Any]:
    """The random state a resumed run needs: torch's CPU generator, and every CUDA
    device's generator when CUDA has been used in this process."""
    state: dict[str, Any] = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned; CUDA generators only for the devices this machine has."""
    torch.set_rng_state(state["torch_rng"])
    cuda = state.get("cuda_rng")
    if cuda and torch.cuda.is_available():
        for index, generator_state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(generator_state, index)


def _keep_metrics_until(path: Path, phase: str, step: int) -> None:
    """Drop the rows of `phase` logged after `step`, the checkpoint a run starts from: a run
    stopped past its last checkpoint wrote them, and the resumed run logs those steps again
    (a fresh run, step 0, replaces the phase's rows). A last line cut off mid-write goes too."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)

    def keep(line: str) -> bool:
        if not line.endswith("\n"):
            return False
        row = json.loads(line)
        return row.get("phase") != phase or row.get("step", 0) <= step

    kept = [line for line in lines if keep(line)]
    if len(kept) < len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)


def _sampled_with(cfg: PhaseConfig) -> dict[str, Any]:
    """Keyword arguments that make `log_prob` score the distribution the reward phase
    sampled from; none at (1, None), so a plain `log_prob(x, y)` keeps working."""
    return {} if cfg.temperature == 1 and cfg.top_k is None else {"temperature": cfg.temperature, "top_k": cfg.top_k}


def _check_reward_phase(policy: nn.Module, cfg: PhaseConfig) -> None:
    if cfg.temperature <= 0:
        raise UsageError(f"the reward phase samples at temperature {cfg.temperature}; REINFORCE needs a "
                         "temperature > 0 (at 0 every sample is the greedy one)")
    params = inspect.signature(policy.log_prob).parameters
    takes = {"temperature", "top_k"} <= params.keys() or any(p.kind is p.VAR_KEYWORD for p in params.values())
    if _sampled_with(cfg) and not takes:
        raise UsageError(f"{type(policy).__name__}.log_prob takes no temperature / top_k, so it cannot score "
                         f"samples drawn at temperature {cfg.temperature}, top_k {cfg.top_k}: add those two "
                         "parameters (see tuner.TunablePolicy), or tune at temperature 1 without top_k")


def as_rewards(value: np.ndarray | Tensor, log_probs: Tensor) -> Tensor:
    """`reward_fn`'s result as float32 on the log-probabilities' device, one reward per sample."""
    rewards = torch.as_tensor(value, dtype=torch.float32, device=log_probs.device)
    if rewards.shape != log_probs.shape:
        raise UsageError(f"reward_fn returned shape {tuple(rewards.shape)} for {tuple(log_probs.shape)} samples; "
                         "it must return one reward per sample, (batch, num_samples)")
    return rewards


def phase_loss(policy: TunablePolicy, phase: Literal["mle", "reward"], batch: Batch, cfg: PhaseConfig,
               reward_fn: RewardFn | None = None) -> tuple[Tensor, dict[str, float]]:
    """One step's loss and its metrics: Algorithm 1 for "mle", Algorithm 2 for "reward"
    (samples at `cfg.temperature` / `cfg.top_k`, scored under that same distribution)."""
    if phase == "mle":
        loss = mle_loss(policy, batch)
        return loss, {"loss/mle": loss.item()}
    samples = policy.sample(batch["x"], cfg.num_samples, cfg.temperature, cfg.top_k)
    raw = reward_fn(batch, samples)
    log_probs = policy.log_prob(batch["x"], samples, **_sampled_with(cfg))
    rewards = as_rewards(raw, log_probs)
    loss = reinforce_loss(log_probs, rewards, cfg.baseline)
    metrics = {"loss/reinforce": loss.item(), "reward/mean": rewards.mean().item(),
               "reward/std_within": rewards.std(1).mean().item(), "reward/max": rewards.max().item()}
    if cfg.mle_weight > 0:
        anchor = mle_loss(policy, batch)
        loss = loss + cfg.mle_weight * anchor
        metrics["loss/mle_anchor"] = anchor.item()
    return loss, metrics


def train(policy: nn.Module, phase: Literal["mle", "reward"], batch_fn: Callable[[int], Batch],
          cfg: PhaseConfig, out_dir: str | Path, reward_fn: RewardFn | None = None,
          resume: bool = False, progress: bool = True) -> Path:
    """Run one phase for `cfg.steps` steps; return the path of its final checkpoint.

    With `resume`, a checkpoint `<out_dir>/<phase>.pt` is loaded and training continues at
    its step (a finished phase returns at once). Metrics go to `<out_dir>/metrics.jsonl`,
    one row per logged step: rows this phase logged after the checkpoint it starts from
    are dropped first. Batches must be on the policy's device (`x` is checked); rewards
    are moved to the log-probabilities' device.
    """
    if phase == "reward" and reward_fn is None:
        raise ValueError("the reward phase needs a reward_fn")
    if not isinstance(policy, TunablePolicy):
        raise TypeError(f"{type(policy).__name__} lacks sample(x, n) / log_prob(x, y)")
    if phase == "reward":
        _check_reward_phase(policy, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / f"{phase}.pt"
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(cfg, s))
    device = next(policy.parameters()).device
    start, pending = 0, {"metrics": {}, "seconds": 0.0}
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        policy.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state)
        start = state["step"]
        pending = state.get("pending", pending)  # the metrics of steps not yet logged
    metrics_path = out / "metrics.jsonl"
    _keep_metrics_until(metrics_path, phase, start)
    policy.train()
    acc: dict[str, list[float]] = pending["metrics"]
    tick = time.perf_counter() - pending["seconds"]
    with metrics_path.open("a") as log, tqdm(range(start, cfg.steps), initial=start, total=cfg.steps,
                                              desc=f"{phase} → {ckpt}", disable=not progress, leave=False,
                                              dynamic_ncols=True) as bar:
        for step in bar:
            batch = batch_fn(step)
            x = batch["x"]
            if isinstance(x, Tensor) and x.device != device:
                raise UsageError(f"batch {step}: x is on {x.device} but the policy on {device}; "
                                 "build the batches on the policy's device")
            loss, metrics = phase_loss(policy, phase, batch, cfg, reward_fn)
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
                _save(ckpt, {"model": policy.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), **rng_state(), "step": done, "config": asdict(cfg),
                             "pending": {"metrics": acc, "seconds": time.perf_counter() - tick}})
    policy.eval()
    return ckpt
