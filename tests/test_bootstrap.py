"""The study's statistics (viprog.bootstrap) on data whose answer is known."""

import math

import numpy as np
import pytest

from viprog.bootstrap import bootstrap_ci, paired_difference


def test_constant_scores_have_a_zero_width_interval():
    est = bootstrap_ci(np.ones((3, 50)), draws=500)
    assert (est.mean, est.lo, est.hi) == (1.0, 1.0, 1.0)


def test_one_seed_interval_matches_the_normal_approximation():
    """400 questions, half right: the 95 % interval is about 0.5 ± 1.96 * sqrt(0.25 / 400)."""
    scores = np.array([1.0, 0.0] * 200)
    est = bootstrap_ci(scores, draws=4000, seed=1)
    half = 1.96 * math.sqrt(0.25 / 400)
    assert est.mean == 0.5
    assert est.lo == pytest.approx(0.5 - half, abs=0.01) and est.hi == pytest.approx(0.5 + half, abs=0.01)


def test_seeds_that_disagree_widen_the_interval():
    """Seed 0 right everywhere, seed 1 wrong everywhere: a new seed could give 0 or 1, and
    the seed resampling says so (questions alone would give a zero-width interval)."""
    scores = np.stack([np.ones(100), np.zeros(100)])
    est = bootstrap_ci(scores, draws=2000)
    assert est.mean == 0.5 and est.lo == 0.0 and est.hi == 1.0


def test_the_interval_is_seeded_and_nests_by_level():
    scores = np.random.default_rng(0).integers(0, 2, (3, 120))
    assert bootstrap_ci(scores, seed=3, draws=1000) == bootstrap_ci(scores, seed=3, draws=1000)
    wide, narrow = bootstrap_ci(scores, level=0.99, draws=2000), bootstrap_ci(scores, level=0.5, draws=2000)
    assert wide.lo < narrow.lo < narrow.hi < wide.hi


def test_pairing_finds_a_small_gain_the_two_intervals_cannot():
    """Both arms get the same 150 of 300 questions right; the treated arm also 12 more. The
    marginal intervals overlap, the paired difference (+4 points) excludes 0."""
    control = np.zeros(300)
    control[:150] = 1
    treated = control.copy()
    treated[150:162] = 1
    a, b = bootstrap_ci(treated, draws=3000), bootstrap_ci(control, draws=3000)
    assert a.lo < b.hi
    gain = paired_difference(treated, control, draws=3000)
    assert gain.mean == pytest.approx(0.04) and gain.lo > 0


def test_a_seed_independent_control_is_paired_with_every_seed():
    control = np.array([1.0, 0.0, 1.0, 0.0])
    treated = np.array([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0]])
    assert paired_difference(treated, control, draws=200).mean == pytest.approx(0.25)
    with pytest.raises(ValueError, match="same"):
        paired_difference(treated, np.ones(3))
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
