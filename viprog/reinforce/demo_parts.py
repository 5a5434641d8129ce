"""What every REINFORCE demo is made of: the `Demo` record handed to the tuner, and the
batch helpers the demos share (images as tensors, a reproducible batch per step).

Why its own module: the demos live in two modules (`demos`, `captioning`) and both need
these, while `demos` lists every demo; keeping the parts here leaves no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from viprog.reinforce.converge import Plateau
from viprog.reinforce.data import Shapes
from viprog.reinforce.tuner import Batch, PhaseConfig, RewardFn


@dataclass
class Demo:
    """Everything one demo hands to the tuner, and how it is scored."""

    name: str
    policy: nn.Module
    mle_batches: Callable[[int], Batch]
    reward_batches: Callable[[int], Batch]
    reward_fn: RewardFn
    evaluate: Callable[[nn.Module], dict[str, float]]
    metric: str
    """the key of `evaluate`'s result that the before/after table reports"""
    mle: PhaseConfig = field(default_factory=PhaseConfig)
    reward: PhaseConfig = field(default_factory=PhaseConfig)
    tuned_as: Callable[[nn.Module], nn.Module] | None = None
    """wraps the MLE-trained `policy` into the policy the reward phase tunes (and that is
    evaluated after it); None tunes `policy` itself"""
    setup_seconds: float = 0.0
    """what building the demo took before MLE began (a model trained inside it, such as
    the VQ-VAE whose decoder the VQ-token demo writes codes for)"""
    plateau: Plateau | None = None
    """set: MLE runs until `validate` stops improving (`converge.train_to_plateau`), and
    `mle.steps` is ignored"""
    validate: Callable[[nn.Module], float] | None = None
    """the score early stopping watches (higher is better), on a split that is not the test split"""


def images_tensor(s: Shapes, idx: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(s.images[idx]).to(device).permute(0, 3, 1, 2).float().div(255.0)


def step_batches(n: int, batch_size: int, seed: int, make: Callable[[np.ndarray, np.random.Generator], Batch]
             ) -> Callable[[int], Batch]:
    """batch(step): a reproducible random subset of the training pool for every step."""
    def batch(step: int) -> Batch:
        rng = np.random.default_rng([seed, step])
        return make(rng.choice(n, batch_size, replace=False), rng)
    return batch
