"""The shapes data, the colorization reward's fidelity terms, and `viprog reinforce`."""

from __future__ import annotations

import json
import runpy

import numpy as np
import pytest

from viprog.errors import UsageError
from viprog.reinforce.cli import ReinforceConfig, main
from viprog.reinforce.data import GROUP_OF_COLOUR, PALETTE, generate
from viprog.reinforce.demos import colorization_reward


def test_shapes_are_seeded_and_annotations_are_exact() -> None:
    a, b = generate(20, 7, noise=20.0), generate(20, 7, noise=20.0)
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, generate(20, 8).images)
    for i in range(len(a)):
        assert len(a.boxes[i]) == len(a.labels[i]) == a.instances[i].max() >= 1
        for k, (box, label) in enumerate(zip(a.boxes[i], a.labels[i])):
            ys, xs = np.nonzero(a.instances[i] == k + 1)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert (a.semantic[i][ys, xs] == label + 1).all()
        assert ((a.semantic[i] > 0) == (a.instances[i] > 0)).all()


def test_colorization_world_hides_colour_in_grey() -> None:
    s = generate(30, 0, colorization=True)
    luma = PALETTE.astype(float) @ [0.299, 0.587, 0.114]
    for g in range(3):  # members of a group are indistinguishable in grey (±1 of 255)
        assert np.ptp(luma[GROUP_OF_COLOUR == g]) < 1.0
    np.testing.assert_array_equal(PALETTE[s.colours], s.images)


def test_colorization_reward_prefers_colour_over_grey_and_grey_over_noise() -> None:
    s = generate(16, 3, colorization=True)
    grey = s.grey()
    truth = colorization_reward(s.colours, grey)
    dull = colorization_reward(4 * GROUP_OF_COLOUR[s.colours], grey)  # the grey member of each group
    rng = np.random.default_rng(0)
    noise = colorization_reward(4 * GROUP_OF_COLOUR[s.colours] + rng.integers(0, 4, s.colours.shape), grey)
    wrong_luma = colorization_reward((s.colours + 4) % 12, grey)
    assert (truth >= dull).all() and truth.mean() > dull.mean() + 0.05
    assert (noise < dull).all() and (wrong_luma < dull).all()


def test_cli_runs_a_tiny_demo_and_resumes(tmp_path, capsys) -> None:
    cfg = ReinforceConfig(demo="segmentation", mle_steps=4, reward_steps=2, out=tmp_path, progress=False, threads=2)
    assert main(cfg) == 0
    printed = capsys.readouterr().out
    assert "segmentation" in printed and " pq " in printed
    first = json.loads((tmp_path / "results.json").read_text())[0]
    assert (tmp_path / "seed_0" / "mle.pt").exists() and (tmp_path / "seed_0" / "reward.pt").exists()
    rows = [json.loads(line) for line in (tmp_path / "seed_0" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["phase"] == "reward" and "reward/mean" in rows[-1]
    cfg.resume = True
    assert main(cfg) == 0
    again = json.loads((tmp_path / "results.json").read_text())[0]
    assert again["after_reward"] == pytest.approx(first["after_reward"])


@pytest.mark.parametrize("change", [{"mle_steps": 0}, {"seeds": ()}, {"resume": True}])
def test_cli_rejects_bad_input(tmp_path, change) -> None:
    cfg = ReinforceConfig(out=tmp_path / "absent", progress=False, **change)
    with pytest.raises(UsageError):
        main(cfg)


def test_a_negative_seed_is_one_line_not_a_traceback(tmp_path) -> None:
    with pytest.raises(UsageError, match="--seeds must be ≥ 0 .*, got -1"):
        main(ReinforceConfig(out=tmp_path / "absent", progress=False, seeds=(0, -1)))


def test_reward_steps_may_be_zero_and_says_so_when_negative(tmp_path) -> None:
    with pytest.raises(UsageError, match="--reward-steps must be ≥ 0, got -1"):
        main(ReinforceConfig(out=tmp_path / "absent", progress=False, reward_steps=-1))


def test_viprog_reinforce_bad_input_is_one_line_and_status_2(capsys) -> None:
    from viprog.cli import main as viprog_main

    assert viprog_main(["reinforce", "--mle-steps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mle-steps" in err


@pytest.mark.slow
def test_colorization_tuning_adds_colour_without_losing_fidelity(tmp_path) -> None:
    from viprog.reinforce.demos import run

    result = run("colorization", 0, tmp_path, progress=False)
    before, after = result.after_mle, result.after_reward
    assert after["colorfulness"] > before["colorfulness"] + 20
    assert after["luma_err"] < 0.02 and after["colour_edges"] < 0.05  # right brightness, no painted noise


@pytest.mark.slow
def test_segmentation_tuning_raises_panoptic_quality(tmp_path) -> None:
    """Seed 0 measured +2.1 PQ (95.0 → 97.1); the region policy's greedy map before tuning
    is the MLE argmax, so the gain is the reward's."""
    from viprog.reinforce.demos import run

    result = run("segmentation", 0, tmp_path, progress=False)
    assert result.after_reward["pq"] > result.after_mle["pq"] + 1.0
    assert result.after_reward["miou"] >= result.after_mle["miou"] - 0.5


def test_plug_in_example_of_the_docs_runs(tmp_path, monkeypatch) -> None:
    from test_docs_examples import example

    code = example("plug-in-your-own-model")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "example.py").write_text(code)
    runpy.run_path(str(tmp_path / "example.py"))
    rows = [json.loads(line) for line in (tmp_path / "runs/my_model/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["phase"] == "reward" and rows[-1]["reward/mean"] > 0.3
    assert (tmp_path / "runs/my_model/reward.pt").exists()


def test_segmentation_reward_counts_segments_not_pixels() -> None:
    """A blob painted on the background and a shape split between two classes each cost
    a few pixels of cross-entropy but whole segments of panoptic quality."""
    from viprog.reinforce.demos import _components, _pq

    s = generate(20, 3, max_shapes=3)
    i = next(k for k in range(20) if len(s.labels[k]) >= 2)
    gt = s.semantic[i]
    assert _pq([_components(gt)], [_components(gt)]) == pytest.approx(1.0)
    blob = gt.copy()
    ys, xs = np.nonzero(gt == 0)
    blob[ys[0], xs[0]] = 1
    split = gt.copy()
    ys, xs = np.nonzero(s.instances[i] == 1)
    split[ys[: len(ys) // 2], xs[: len(xs) // 2]] = gt[ys[0], xs[0]] % 3 + 1  # half of shape 1 → another class
    pixels_wrong = (split != gt).sum()
    assert _pq([_components(blob)], [_components(gt)]) < 0.9
    assert _pq([_components(split)], [_components(gt)]) < 0.9 and pixels_wrong < gt.size * 0.05
