"""The tuner: REINFORCE's estimate is the gradient of the expected reward; training,
checkpoints and resume behave."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from viprog.errors import UsageError
from viprog.reinforce.models import tempered
from viprog.reinforce.tuner import PhaseConfig, advantages, phase_loss, reinforce_loss, train


class ToyPolicy(nn.Module):
    """Two independent K-way categorical "pixels", input ignored: the smallest per-pixel model."""

    def __init__(self, k: int = 4, seed: int = 0) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.randn(2, k, generator=torch.Generator().manual_seed(seed)))

    def sample(self, x: Tensor, n: int, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        probs = tempered(self.theta.detach(), temperature, top_k).softmax(-1)
        return torch.multinomial(probs.repeat(len(x) * n, 1), 1).view(len(x), n, 2).to(x.device)

    def log_prob(self, x: Tensor, y: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        logp = tempered(self.theta, temperature, top_k).log_softmax(-1)
        return logp[0][y[..., 0]] + logp[1][y[..., 1]]


REWARD = torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.5, 3.0, 0.0, 1.0], [0.0, 0.0, 1.0, 4.0], [2.0, 1.0, 0.0, 0.0]])


def exact_gradient(policy: ToyPolicy, temperature: float = 1.0) -> Tensor:
    """∇ E_y[r(y)] for y ~ softmax(θ / T) per pixel, by enumerating all 16 outputs."""
    p = (policy.theta / temperature).softmax(-1)
    expected = (p[0][:, None] * p[1][None, :] * REWARD).sum()
    return torch.autograd.grad(expected, policy.theta)[0]


@pytest.mark.parametrize("baseline", ["loo", "none"])
def test_reinforce_estimator_is_unbiased(baseline: str) -> None:
    torch.manual_seed(0)
    policy = ToyPolicy()
    x = torch.zeros(20_000)
    y = policy.sample(x, 4)
    r = REWARD[y[..., 0], y[..., 1]]
    estimate = -torch.autograd.grad(reinforce_loss(policy.log_prob(x, y), r, baseline), policy.theta)[0]
    exact = exact_gradient(policy)
    assert exact.abs().max() > 0.1
    # 80k samples: the standard error is a few hundredths of the gradient's scale
    torch.testing.assert_close(estimate, exact, atol=0.04, rtol=0.0)


def test_estimator_scores_samples_at_the_temperature_they_were_drawn_at() -> None:
    """At T = 0.5 the tuner's loss is an unbiased estimate of −∇ E_{softmax(θ/T)}[r]; the
    same samples scored at T = 1 (what the tuner did before) are far off."""
    torch.manual_seed(0)
    policy = ToyPolicy()
    cfg = PhaseConfig(num_samples=4, temperature=0.5)
    batch = {"x": torch.zeros(20_000)}
    loss, _ = phase_loss(policy, "reward", batch, cfg, reward_fn)
    estimate = -torch.autograd.grad(loss, policy.theta)[0]
    exact = exact_gradient(policy, temperature=0.5)
    assert exact.abs().max() > 0.1
    torch.testing.assert_close(estimate, exact, atol=0.04, rtol=0.0)
    torch.manual_seed(0)
    y = policy.sample(batch["x"], 4, temperature=0.5)
    torch.testing.assert_close(policy.log_prob(batch["x"], y, temperature=0.5),
                               (policy.theta / 0.5).log_softmax(-1)[[0, 1], y].sum(-1))
    untempered = -torch.autograd.grad(reinforce_loss(policy.log_prob(batch["x"], y), torch.as_tensor(
        reward_fn(batch, y)), "loo"), policy.theta)[0]
    assert (untempered - exact).abs().max() > 0.3


def test_reward_phase_refuses_what_it_cannot_score(tmp_path) -> None:
    class Untempered(ToyPolicy):
        def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
            return super().log_prob(x, y)

    for cfg in (PhaseConfig(steps=1, temperature=0.7), PhaseConfig(steps=1, top_k=2)):
        with pytest.raises(UsageError, match="takes no temperature"):
            train(Untempered(), "reward", batch_fn, cfg, tmp_path, reward_fn=reward_fn, progress=False)
    with pytest.raises(UsageError, match="temperature > 0"):
        train(ToyPolicy(), "reward", batch_fn, PhaseConfig(steps=1, temperature=0.0), tmp_path, reward_fn=reward_fn)
    # at temperature 1 without top-k a plain log_prob(x, y) is all the tuner needs
    train(Untempered(), "reward", batch_fn, PhaseConfig(steps=2, num_samples=2), tmp_path, reward_fn=reward_fn,
          progress=False)


def test_group_normalised_baseline_points_uphill() -> None:
    torch.manual_seed(1)
    policy = ToyPolicy()
    x = torch.zeros(20_000)
    y = policy.sample(x, 4)
    r = REWARD[y[..., 0], y[..., 1]]
    estimate = -torch.autograd.grad(reinforce_loss(policy.log_prob(x, y), r, "group"), policy.theta)[0]
    cosine = torch.nn.functional.cosine_similarity(estimate.flatten(), exact_gradient(policy).flatten(), dim=0)
    assert cosine > 0.9


def test_advantages() -> None:
    r = torch.tensor([[1.0, 2.0, 6.0]])
    torch.testing.assert_close(advantages(r, "loo"), torch.tensor([[1 - 4.0, 2 - 3.5, 6 - 1.5]]))
    torch.testing.assert_close(advantages(r, "none"), r)
    g = advantages(r, "group")
    assert abs(g.mean().item()) < 1e-6 and g.std().item() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError):
        advantages(torch.ones(3, 1), "loo")
    with pytest.raises(ValueError):
        advantages(r, "median")  # type: ignore[arg-type]


def batch_fn(step: int) -> dict:
    return {"x": torch.zeros(16), "y": torch.tensor([[0, 0]]).repeat(16, 1)}


def reward_fn(batch: dict, samples: Tensor) -> np.ndarray:
    return REWARD[samples[..., 0], samples[..., 1]].numpy()


def expected_reward(policy: ToyPolicy) -> float:
    p = policy.theta.detach().softmax(-1)
    return float((p[0][:, None] * p[1][None, :] * REWARD).sum())


def test_mle_then_reward_phases(tmp_path) -> None:
    torch.manual_seed(0)
    policy = ToyPolicy()
    train(policy, "mle", batch_fn, PhaseConfig(steps=60, lr=0.1, warmup=1, log_every=10), tmp_path, progress=False)
    p = policy.theta.detach().softmax(-1)
    assert p[0, 0] > 0.9 and p[1, 0] > 0.9  # the labelled output (0, 0) is learned
    before = expected_reward(policy)  # ≈ REWARD[0, 0] = 1
    cfg = PhaseConfig(steps=80, lr=0.1, warmup=1, num_samples=4, log_every=10)
    train(policy, "reward", batch_fn, cfg, tmp_path, reward_fn=reward_fn, progress=False)
    assert expected_reward(policy) > before + 0.75  # uphill, towards REWARD[0, 1] = 3 or REWARD[2, 3] = 4
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows} == {"mle", "reward"}
    assert all("reward/mean" in r for r in rows if r["phase"] == "reward")
    assert (tmp_path / "mle.pt").exists() and (tmp_path / "reward.pt").exists()


def test_mle_anchor_holds_the_policy_near_the_labels(tmp_path) -> None:
    results = {}
    for weight in (0.0, 5.0):
        torch.manual_seed(0)
        policy = ToyPolicy()
        cfg = PhaseConfig(steps=60, lr=0.1, warmup=1, num_samples=4, mle_weight=weight)
        train(policy, "reward", batch_fn, cfg, tmp_path / str(weight), reward_fn=reward_fn, progress=False)
        results[weight] = policy.log_prob(torch.zeros(1), torch.tensor([[[0, 0]]])).item()
    assert results[5.0] > results[0.0] + 1.0


def test_resume_reproduces_an_uninterrupted_run(tmp_path) -> None:
    def run(out, steps, resume):
        torch.manual_seed(0)
        policy = ToyPolicy()
        cfg = PhaseConfig(steps=steps, lr=0.05, warmup=3, num_samples=3, checkpoint_every=100)
        train(policy, "reward", batch_fn, cfg, out, reward_fn=reward_fn, resume=resume, progress=False)
        return policy.theta.detach().clone()

    whole = run(tmp_path / "a", 12, False)
    run(tmp_path / "b", 5, False)  # "killed" after 5 steps
    resumed = run(tmp_path / "b", 12, True)
    torch.testing.assert_close(resumed, whole)
    assert not torch.equal(run(tmp_path / "c", 5, False), whole)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 12


def test_reward_phase_needs_a_reward_and_a_policy(tmp_path) -> None:
    with pytest.raises(ValueError):
        train(ToyPolicy(), "reward", batch_fn, PhaseConfig(steps=1), tmp_path)
    with pytest.raises(TypeError):
        train(nn.Linear(2, 2), "mle", batch_fn, PhaseConfig(steps=1), tmp_path)


class Stop(Exception):
    """The run is "killed" while it builds a batch."""


def test_a_resumed_run_logs_each_step_once_as_an_uninterrupted_run_does(tmp_path) -> None:
    """Logged every 3 steps, checkpointed every 4, stopped in step 10: the row of step 9
    was written after the last checkpoint (step 8) and is logged again by the resumed run."""
    def run(out, resume, stop_at=None):
        torch.manual_seed(0)
        policy = ToyPolicy()

        def batches(step):
            if step == stop_at:
                raise Stop
            return batch_fn(step)

        cfg = PhaseConfig(steps=12, lr=0.05, warmup=3, num_samples=3, log_every=3, checkpoint_every=4)
        train(policy, "mle", batch_fn, PhaseConfig(steps=2, log_every=1), out, resume=resume, progress=False)
        train(policy, "reward", batches, cfg, out, reward_fn=reward_fn, resume=resume, progress=False)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "time/step_s"} for r in rows]

    whole = run(tmp_path / "a", False)
    with pytest.raises(Stop):
        run(tmp_path / "b", False, stop_at=10)
    stopped = (tmp_path / "b" / "metrics.jsonl").read_text()
    assert [json.loads(line)["step"] for line in stopped.splitlines()] == [1, 2, 3, 6, 9]
    (tmp_path / "b" / "metrics.jsonl").write_text(stopped + '{"phase": "reward", "st')  # a write cut off
    resumed = run(tmp_path / "b", True)
    assert [(r["phase"], r["step"]) for r in resumed] == [("mle", 1), ("mle", 2)] + [("reward", s) for s in (3, 6, 9, 12)]
    # the row of step 9 averages steps 7-9 as in the uninterrupted run (7 and 8 came from the checkpoint)
    assert resumed == whole


def test_a_fresh_run_replaces_its_phase_rows(tmp_path) -> None:
    cfg = PhaseConfig(steps=4, log_every=2, num_samples=2)
    for _ in range(2):
        train(ToyPolicy(), "mle", batch_fn, cfg, tmp_path, progress=False)
        train(ToyPolicy(), "reward", batch_fn, cfg, tmp_path, reward_fn=reward_fn, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in rows] == [("mle", 2), ("mle", 4), ("reward", 2), ("reward", 4)]
