"""MLE trained until a held-out validation metric stops improving (early stopping with patience).

Why: reward tuning is only credited with what MLE trained as long could not do if it
starts from an MLE model that has stopped learning. A fixed, short schedule leaves the
model still improving, so the control ("MLE trained as long") gains nearly as much as
the reward. Here MLE runs in chunks of `Plateau.every` steps at a constant learning rate;
after each chunk the policy is scored on a validation split (never the test split); the
run stops when `patience` evaluations in a row have not beaten the best by more than
`min_delta`, or at `max_steps`. The best checkpoint is restored, and it is the one both
reward tuning and the control continue from.

The learning rate is constant after warm-up because a cosine schedule depends on the
total number of steps, which early stopping does not know in advance; with a constant
rate the chunks resume into exactly the run an uninterrupted one would be, and the
control continues it for as many steps as tuning takes without a schedule jump.
`<out>/plateau.json` keeps the validation curve and why training stopped; a resumed run
continues the curve from it.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from viprog.errors import UsageError
from viprog.reinforce.tuner import Batch, PhaseConfig, train


@dataclass
class Plateau:
    """When MLE counts as converged."""

    every: int = 250
    """MLE steps between two validation scores"""
    patience: int = 4
    """stop after this many scores in a row that do not beat the best by more than `min_delta`"""
    max_steps: int = 15_000
    """the cap: stop here even if the score is still rising"""
    min_delta: float = 0.0
    """how much a score must beat the best by to count as an improvement (higher is better)"""


def _check(cfg: PhaseConfig, plateau: Plateau) -> None:
    if cfg.schedule != "constant":
        raise UsageError(f"training to a plateau needs a constant learning rate (got schedule {cfg.schedule!r}): "
                         "a cosine schedule depends on a total step count that early stopping does not know")
    for name in ("every", "patience", "max_steps"):
        if getattr(plateau, name) < 1:
            raise UsageError(f"Plateau.{name} must be at least 1, got {getattr(plateau, name)}")


def _write(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def train_to_plateau(policy: nn.Module, batch_fn: Callable[[int], Batch], cfg: PhaseConfig, out_dir: str | Path,
                     validate: Callable[[nn.Module], float], plateau: Plateau, resume: bool = False,
                     progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """MLE in chunks until `validate(policy)` (higher is better) plateaus; load the best weights.

    Returns the best checkpoint (`<out_dir>/mle_best.pt`, a full tuner checkpoint that
    `train(..., resume=True)` continues) and the record written to `<out_dir>/plateau.json`:
    `curve` ([step, score] after every chunk), `best_step`, `best`, `steps_trained`,
    `stopped` ("plateau" or "cap") and `reason` in words."""
    _check(cfg, plateau)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record_path, best_path = out / "plateau.json", out / "mle_best.pt"
    record: dict[str, Any] = {"plateau": asdict(plateau), "curve": [], "best": -math.inf, "best_step": 0, "since_best": 0}
    if resume and record_path.exists():
        record = json.loads(record_path.read_text())
    step = record["curve"][-1][0] if record["curve"] else 0
    while "stopped" not in record:
        if record["since_best"] >= plateau.patience or step >= plateau.max_steps:
            plateau_hit = record["since_best"] >= plateau.patience
            record["stopped"] = "plateau" if plateau_hit else "cap"
            record["reason"] = (f"no validation score beat {record['best']:.4g} (step {record['best_step']}) by more than "
                                f"{plateau.min_delta} in {record['since_best']} evaluations" if plateau_hit
                                else f"reached the cap of {plateau.max_steps} steps")
            break
        step = min(step + plateau.every, plateau.max_steps)
        ckpt = train(policy, "mle", batch_fn, replace(cfg, steps=step), out, resume=resume or bool(record["curve"]),
                     progress=progress)
        score = float(validate(policy))
        record["curve"].append([step, score])
        if score > record["best"] + plateau.min_delta:
            record |= {"best": score, "best_step": step, "since_best": 0}
            shutil.copy(ckpt, best_path)
        else:
            record["since_best"] += 1
        record["steps_trained"] = step
        _write(record_path, record)
        if progress:
            tqdm.write(f"MLE step {step}: validation {score:.4g}, best {record['best']:.4g} at step "
                       f"{record['best_step']} ({record['since_best']} of {plateau.patience} without gain) → {record_path}")
    _write(record_path, record)
    policy.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=False)["model"])
    policy.eval()
    return best_path, record
