"""Bootstrap confidence intervals for accuracies measured on questions × seeds.

Why its own module: a self-training claim ("round 2 beats round 0") rests on a few hundred
questions and a few seeds, and both are samples — other questions, other seeds would give
other numbers. The percentile bootstrap here resamples both at once (seeds with
replacement, and questions with replacement, the same questions for every drawn seed, as
the arms are crossed: every seed answers every question), so the interval covers the
spread a new draw of either would bring. Differences between two arms are bootstrapped on
their paired per-question, per-seed differences, which is what makes a small gain
detectable when both arms get the same easy questions right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95 % (or other) percentile-bootstrap interval."""

    mean: float
    lo: float
    hi: float

    def to_json(self) -> dict[str, float | list[float]]:
        return {"mean": round(self.mean, 6), "ci95": [round(self.lo, 6), round(self.hi, 6)]}


def as_matrix(scores: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """`scores` as a float (seeds, questions) matrix; a flat list is one seed."""
    matrix = np.asarray(scores, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"scores must be a non-empty (seeds, questions) matrix, got shape {matrix.shape}")
    return matrix


def bootstrap_ci(scores: Sequence[Sequence[float]] | np.ndarray, *, draws: int = 10_000, level: float = 0.95,
                 seed: int = 0) -> Estimate:
    """The mean of `scores` (seeds × questions) and its percentile-bootstrap interval at
    `level`, resampling seeds and questions with replacement (`draws` times, seeded)."""
    matrix = as_matrix(scores)
    n_seeds, n_questions = matrix.shape
    rng = np.random.default_rng(seed)
    # how often each seed / question is drawn in each resample: the resampled mean is then
    # (seed counts) @ scores @ (question counts) / (n_seeds * n_questions), without copying rows
    seed_counts = np.stack([np.bincount(rng.integers(0, n_seeds, n_seeds), minlength=n_seeds) for _ in range(draws)])
    question_counts = rng.multinomial(n_questions, np.full(n_questions, 1.0 / n_questions), size=draws)
    means = np.einsum("bs,sq,bq->b", seed_counts, matrix, question_counts) / (n_seeds * n_questions)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(matrix.mean()), float(lo), float(hi))


def paired_difference(treated: Sequence[Sequence[float]] | np.ndarray, control: Sequence[Sequence[float]] | np.ndarray,
                      *, draws: int = 10_000, level: float = 0.95, seed: int = 0) -> Estimate:
    """`treated - control` on the same seeds and questions, bootstrapped on the pairs."""
    a, b = as_matrix(treated), as_matrix(control)
    if b.shape[0] == 1 and a.shape[0] > 1:  # a seed-independent control (e.g. the frozen base) for every seed
        b = np.repeat(b, a.shape[0], axis=0)
    if a.shape != b.shape:
        raise ValueError(f"paired arms must have the same (seeds, questions) shape: {a.shape} vs {b.shape}")
    return bootstrap_ci(a - b, draws=draws, level=level, seed=seed)
