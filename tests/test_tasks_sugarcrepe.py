"""SugarCrepe: official JSON files per negative type + images; choice and yes/no modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from viprog.executor.result import ExecutionResult
from viprog.tasks import TASKS, DataError


def write_sugarcrepe(root: Path, n: int = 40) -> Path:
    (root / "val2017").mkdir(parents=True)
    for name in ("replace_att", "swap_obj"):
        items = {str(k): {"filename": f"{k:012d}.jpg", "caption": f"a red bus {k}",
                          "negative_caption": f"a blue bus {k}"} for k in range(n)}
        (root / f"{name}.json").write_text(json.dumps(items))
    for k in range(n):
        Image.new("RGB", (4, 4)).save(root / "val2017" / f"{k:012d}.jpg")
    return root


def test_choice_mode_offers_both_captions_and_expects_the_positive(tmp_path):
    examples = TASKS.get("sugarcrepe")(data_dir=write_sugarcrepe(tmp_path)).examples("all")
    assert len(examples) == 80
    assert {ex.question_type for ex in examples} == {"replace_att", "swap_obj"}
    for ex in examples:
        assert ex.answer.startswith("a red bus") and set(ex.choices) == {ex.answer, ex.answer.replace("red", "blue")}
    assert {ex.choices[0] == ex.answer for ex in examples} == {True, False}  # both orders occur


def test_reward_is_picking_the_true_caption(tmp_path):
    task = TASKS.get("sugarcrepe")(data_dir=write_sugarcrepe(tmp_path))
    ex = task.examples("all", limit=1)[0]
    assert task.reward(ex, ExecutionResult(answer="A red bus 0.")) == 1.0
    assert task.reward(ex, ExecutionResult(answer="a blue bus 0")) == 0.0


def test_hash_splits_are_disjoint_and_cover_the_set(tmp_path):
    task = TASKS.get("sugarcrepe")(data_dir=write_sugarcrepe(tmp_path))
    ids = {split: {ex.id for ex in task.examples(split)} for split in ("train", "val", "test", "all")}
    assert ids["train"] | ids["val"] | ids["test"] == ids["all"]
    assert not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert ids["train"] and ids["test"]


def test_yesno_mode_asks_per_caption_and_reports_pair_accuracy(tmp_path):
    task = TASKS.get("sugarcrepe")(data_dir=write_sugarcrepe(tmp_path, n=2), mode="yesno")
    examples = task.examples("all")
    assert [ex.answer for ex in examples[:2]] == ["yes", "no"]
    results = [ExecutionResult(answer="yes")] * len(examples)
    rewards = [task.reward(e, r) for e, r in zip(examples, results)]
    metrics = task.metrics(examples, results, rewards)
    assert metrics["accuracy"] == 0.5 and metrics["pair_accuracy"] == 0.0


def test_a_record_without_negative_caption_names_the_file(tmp_path):
    root = write_sugarcrepe(tmp_path, n=1)
    (root / "swap_obj.json").write_text(json.dumps({"0": {"filename": "000000000000.jpg", "caption": "x"}}))
    with pytest.raises(DataError, match="swap_obj.json"):
        TASKS.get("sugarcrepe")(data_dir=root).examples("all")


def test_no_data_dir_says_what_to_pass():
    with pytest.raises(DataError, match="--data-dir"):
        TASKS.get("sugarcrepe")().examples("test")
