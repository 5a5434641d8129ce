"""Devices: rewards follow the log-probabilities, batches must be on the policy's device,
checkpoints carry the CUDA generators when CUDA is used, and the demos run where
`--device` says. The CPU tests use the `meta` device as the "other" device; the tests
marked `gpu` run the same on CUDA and are skipped without it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_reinforce_tuner import ToyPolicy, batch_fn, reward_fn

from viprog.errors import UsageError
from viprog.reinforce.cli import ReinforceConfig, main
from viprog.reinforce.demos import BUILDERS
from viprog.reinforce.models import PixelPolicy
from viprog.reinforce.tuner import PhaseConfig, as_rewards, rng_state, set_rng_state, train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_rewards_move_to_the_log_probs_device_and_are_one_per_sample() -> None:
    log_probs = torch.zeros(3, 4, device="meta")
    for value in (np.ones((3, 4)), torch.ones(3, 4, dtype=torch.float64), [[1.0] * 4] * 3):
        rewards = as_rewards(value, log_probs)
        assert rewards.device == log_probs.device and rewards.dtype == torch.float32 and rewards.shape == (3, 4)
    torch.testing.assert_close(as_rewards(np.arange(12.0).reshape(3, 4), torch.zeros(3, 4)),
                               torch.arange(12.0).view(3, 4))
    with pytest.raises(UsageError, match=r"one reward per sample"):
        as_rewards(np.ones(3), torch.zeros(3, 4))  # (3,) would broadcast against (3, 4) silently


def test_a_batch_on_another_device_than_the_policy_is_refused(tmp_path) -> None:
    def meta_batches(step):
        return {"x": torch.zeros(4, device="meta"), "y": torch.zeros(4, 2, dtype=torch.long)}

    with pytest.raises(UsageError, match=r"x is on meta but the policy on cpu"):
        train(ToyPolicy(), "reward", meta_batches, PhaseConfig(steps=1), tmp_path, reward_fn=reward_fn,
              progress=False)


def test_checkpoints_keep_the_cpu_rng_and_the_cuda_one_only_when_cuda_is_used(tmp_path) -> None:
    torch.manual_seed(3)
    train(ToyPolicy(), "reward", batch_fn, PhaseConfig(steps=2, num_samples=2), tmp_path, reward_fn=reward_fn,
          progress=False)
    after = torch.get_rng_state()
    state = torch.load(tmp_path / "reward.pt", weights_only=False)
    assert torch.equal(state["torch_rng"], after)
    assert ("cuda_rng" in state) == torch.cuda.is_initialized()
    torch.rand(5)
    set_rng_state(state)
    assert torch.equal(torch.get_rng_state(), after)


def test_cuda_generators_round_trip_through_the_checkpoint_state(monkeypatch) -> None:
    """Without a GPU, stand-in CUDA generator functions record what `rng_state` saves and
    what `set_rng_state` restores (two devices saved, resumed where there is one)."""
    saved = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
    restored: list[tuple[int, torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    state = rng_state()
    assert state["cuda_rng"] is saved and torch.equal(state["torch_rng"], torch.get_rng_state())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, index: restored.append((index, s)))
    set_rng_state(state)
    assert restored == [(0, saved[0])]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU run resumed on a CPU
    set_rng_state(state)
    assert len(restored) == 1


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_demos_build_their_model_and_batches_on_the_device_asked_for(name: str) -> None:
    demo = BUILDERS[name](0, train_size=60, test_size=10, device="meta")
    assert {p.device.type for p in demo.policy.parameters()} == {"meta"}
    for batches in (demo.mle_batches, demo.reward_batches):
        batch = batches(0)
        assert batch["x"].device.type == batch["y"].device.type == "meta"


@pytest.mark.parametrize("device", ["cuda:99", "nonsense"] + ([] if torch.cuda.is_available() else ["cuda"]))
def test_cli_refuses_a_device_it_cannot_use(tmp_path, device: str) -> None:
    with pytest.raises(UsageError, match="--device"):
        main(ReinforceConfig(device=device, out=tmp_path, progress=False))


@pytest.mark.gpu
@cuda
def test_one_tuning_step_on_cuda_with_numpy_rewards_and_a_resume(tmp_path) -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    policy = PixelPolicy(1, 3, width=8).to(device)
    x = torch.rand(4, 1, 8, 8, device=device)

    def reward(batch, samples):  # computed on the CPU, as the demos' rewards are
        return (samples == 2).float().flatten(2).mean(-1).cpu().numpy()

    cfg = PhaseConfig(steps=1, warmup=1, num_samples=4, temperature=0.7, top_k=2)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    train(policy, "reward", lambda step: {"x": x}, cfg, tmp_path, reward_fn=reward, progress=False)
    assert any(not torch.equal(v, policy.state_dict()[k]) for k, v in before.items())
    state = torch.load(tmp_path / "reward.pt", weights_only=False)
    assert len(state["cuda_rng"]) == torch.cuda.device_count()
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 1 and np.isfinite(row["loss/reinforce"])

    # resuming restores the CUDA generator: the next step samples as an uninterrupted run does
    def batches(step):
        return {"x": torch.zeros(8, device=device)}

    def rewards(batch, samples):
        return reward_fn(batch, samples.cpu())

    def two_steps(out, stop_after_one):
        torch.manual_seed(1)
        toy = ToyPolicy().to(device)
        if stop_after_one:
            train(toy, "reward", batches, PhaseConfig(steps=1, num_samples=3), out, reward_fn=rewards, progress=False)
            torch.cuda.manual_seed_all(123)  # a new process would start elsewhere
        train(toy, "reward", batches, PhaseConfig(steps=2, num_samples=3), out, reward_fn=rewards,
              resume=stop_after_one, progress=False)
        return toy.theta.detach().cpu()

    torch.testing.assert_close(two_steps(tmp_path / "b", True), two_steps(tmp_path / "a", False))


@pytest.mark.gpu
@cuda
def test_each_demo_runs_on_cuda_end_to_end(tmp_path) -> None:
    from viprog.reinforce.demos import run

    for name in sorted(BUILDERS):
        result = run(name, 0, tmp_path / name, progress=False, mle_steps=3, reward_steps=2, device="cuda")
        assert np.isfinite(result.after_reward[result.metric])
    assert main(ReinforceConfig(demo="colorization", mle_steps=2, reward_steps=1, out=tmp_path / "cli",
                                device="cuda", progress=False)) == 0
