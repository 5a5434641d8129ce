"""MLE to a plateau: it stops when the validation score stops improving and not before,
keeps the best weights, resumes, and the control gets exactly as many extra steps as tuning."""

from __future__ import annotations

import json

import pytest
import torch
from test_reinforce_tuner import ToyPolicy, batch_fn

from viprog.errors import UsageError
from viprog.reinforce import demos
from viprog.reinforce.cli import ReinforceConfig, main
from viprog.reinforce.converge import Plateau, train_to_plateau
from viprog.reinforce.tuner import PhaseConfig

MLE = PhaseConfig(lr=0.1, warmup=1, schedule="constant", log_every=5)


class Scripted:
    """A validation score read from a list, one per call; the weights it saw are kept."""

    def __init__(self, scores: list[float]) -> None:
        self.scores, self.seen = list(scores), []

    def __call__(self, policy: ToyPolicy) -> float:
        self.seen.append(policy.theta.detach().clone())
        return self.scores[len(self.seen) - 1]


def test_stops_after_patience_scores_without_improvement_and_keeps_the_best(tmp_path) -> None:
    validate = Scripted([1.0, 2.0, 3.0, 3.0, 2.5, 2.9, 3.0, 9.0])
    policy = ToyPolicy()
    best, record = train_to_plateau(policy, batch_fn, MLE, tmp_path, validate, Plateau(every=10, patience=4),
                                    progress=False)
    assert [step for step, _ in record["curve"]] == [10, 20, 30, 40, 50, 60, 70]  # the 9.0 is never asked for
    assert record["stopped"] == "plateau" and record["best_step"] == 30 and record["steps_trained"] == 70
    assert "4 evaluations" in record["reason"]
    torch.testing.assert_close(policy.theta.detach(), validate.seen[2])  # the weights of step 30 are back
    assert not torch.equal(validate.seen[2], validate.seen[-1])
    assert torch.load(best, weights_only=False)["step"] == 30
    assert json.loads((tmp_path / "plateau.json").read_text())["curve"] == record["curve"]


def test_an_improvement_before_patience_runs_out_resets_the_count(tmp_path) -> None:
    validate = Scripted([1.0, 1.0, 1.0, 1.5, 1.5, 1.5, 1.5])
    _, record = train_to_plateau(ToyPolicy(), batch_fn, MLE, tmp_path, validate, Plateau(every=5, patience=3),
                                 progress=False)
    assert record["best_step"] == 20 and record["steps_trained"] == 35 and record["stopped"] == "plateau"


def test_a_gain_within_min_delta_is_no_improvement(tmp_path) -> None:
    validate = Scripted([1.0, 1.05, 1.1, 1.5, 1.5])
    _, record = train_to_plateau(ToyPolicy(), batch_fn, MLE, tmp_path, validate,
                                 Plateau(every=5, patience=2, min_delta=0.2), progress=False)
    assert record["best_step"] == 5 and record["steps_trained"] == 15 and record["best"] == 1.0


def test_a_rising_score_stops_at_the_cap_with_a_short_last_chunk(tmp_path) -> None:
    validate = Scripted([1.0, 2.0, 3.0, 4.0])
    _, record = train_to_plateau(ToyPolicy(), batch_fn, MLE, tmp_path, validate,
                                 Plateau(every=10, patience=2, max_steps=25), progress=False)
    assert [step for step, _ in record["curve"]] == [10, 20, 25]
    assert record["stopped"] == "cap" and record["best_step"] == 25
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 25 and [r["step"] for r in rows] == sorted({r["step"] for r in rows})


def test_an_interrupted_run_resumes_into_the_uninterrupted_one(tmp_path) -> None:
    scores = [1.0, 2.0, 2.0, 2.0]
    whole = ToyPolicy()
    _, expected = train_to_plateau(whole, batch_fn, MLE, tmp_path / "a", Scripted(scores), Plateau(every=5, patience=2),
                                   progress=False)

    class Crash(Scripted):
        def __call__(self, policy: ToyPolicy) -> float:
            if len(self.seen) == 2:
                raise KeyboardInterrupt
            return super().__call__(policy)

    with pytest.raises(KeyboardInterrupt):
        train_to_plateau(ToyPolicy(), batch_fn, MLE, tmp_path / "b", Crash(scores), Plateau(every=5, patience=2),
                         progress=False)
    resumed = ToyPolicy(seed=5)  # a fresh process: other weights until the checkpoint is loaded
    _, record = train_to_plateau(resumed, batch_fn, MLE, tmp_path / "b", Scripted(scores[2:]),
                                 Plateau(every=5, patience=2), resume=True, progress=False)
    assert record == expected
    torch.testing.assert_close(resumed.theta, whole.theta)


def test_a_cosine_schedule_is_refused(tmp_path) -> None:
    with pytest.raises(UsageError, match="constant learning rate"):
        train_to_plateau(ToyPolicy(), batch_fn, PhaseConfig(schedule="cosine"), tmp_path, Scripted([1.0]),
                         Plateau(), progress=False)


def tiny_converged(seed: int, device: str = "cpu") -> demos.Demo:
    demo = demos.detection(seed, train_size=120, test_size=20, val_size=20, device=device, converged=True)
    demo.plateau = Plateau(every=4, patience=2, max_steps=40)
    return demo


def test_tuning_and_the_control_start_from_the_best_step_and_train_as_long(tmp_path, monkeypatch, capsys) -> None:
    """An untrained detector scores 0 mAP at every validation, so the best step is the
    first (4) and training stops two evaluations later (12): both arms continue step 4."""
    monkeypatch.setitem(demos.BUILDERS, "detection-converged", tiny_converged)
    cfg = ReinforceConfig(demo="detection", converged=True, control=True, reward_steps=3, out=tmp_path,
                          progress=False, threads=1)
    assert main(cfg) == 0
    printed = capsys.readouterr().out
    assert "MLE stopped at step 12 (plateau" in printed and "start from step 4" in printed
    assert "R small" in printed and "MLE as long" in printed
    result = json.loads((tmp_path / "results.json").read_text())[0]
    record = result["mle_record"]
    assert result["demo"] == "detection-converged" and record["best_step"] == 4 and record["steps_trained"] == 12
    assert record["tuning_steps"] == record["control_extra_steps"] == 3
    assert record["tuning_images"] == 3 * 16 and record["control_images"] == 3 * 48
    for model in ("after_mle", "after_reward", "after_mle_control"):
        assert {"duplicates", "recall50_small", "precision50", "boxes_per_image"} <= result[model].keys()
    seed_dir = tmp_path / "seed_0"
    control = [json.loads(line) for line in (seed_dir / "control" / "metrics.jsonl").read_text().splitlines()]
    tuning = [json.loads(line) for line in (seed_dir / "metrics.jsonl").read_text().splitlines()]
    assert control[-1]["phase"] == "mle" and control[-1]["step"] == 4 + 3
    assert max(r["step"] for r in tuning if r["phase"] == "reward") == 3
    assert torch.load(seed_dir / "control" / "mle.pt", weights_only=False)["step"] == 7


def test_converged_is_only_for_detection(tmp_path) -> None:
    with pytest.raises(UsageError, match="only detection"):
        main(ReinforceConfig(demo="segmentation", converged=True, out=tmp_path, progress=False))
