"""GQA: official-format fixtures (questions, scene graphs, images), a saved HF dataset, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from viprog.executor.result import ExecutionResult
from viprog.tasks import TASKS, DataError

QUESTIONS = {
    "201": {"imageId": "n1", "question": "Is the cat black?", "answer": "yes", "fullAnswer": "Yes, it is.",
            "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"}, "isBalanced": True},
    "202": {"imageId": "n1", "question": "How many dogs are there?", "answer": "two",
            "types": {"structural": "query", "semantic": "obj", "detailed": "count"}},
    "203": {"imageId": "n2", "question": "What is on the table?", "answer": "cup",
            "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}},
}
GRAPHS = {"n1": {"width": 8, "height": 6, "objects": {"7": {"name": "cat", "x": 1, "y": 1, "w": 3, "h": 2,
                                                           "attributes": ["black"], "relations": []}}}}


def write_gqa(root: Path, split: str = "val", questions: dict | None = None, images=("n1", "n2")) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / f"{split}_balanced_questions.json").write_text(json.dumps(questions or QUESTIONS))
    (root / f"{split}_sceneGraphs.json").write_text(json.dumps(GRAPHS))
    for k, image_id in enumerate(images):
        Image.new("RGB", (8, 6), (k * 40, 10, 10)).save(root / "images" / f"{image_id}.jpg")
    return root


def test_official_layout_loads_questions_with_types_and_graphs(tmp_path):
    examples = TASKS.get("gqa")(data_dir=write_gqa(tmp_path)).examples("val")
    assert [ex.id for ex in examples] == ["201", "202", "203"]
    assert examples[0].question_type == "verify" and examples[0].image_id == "n1"
    assert examples[0].meta["scene_graph"]["objects"]["7"]["name"] == "cat"
    assert examples[2].meta == {}


def test_images_load_as_rgb_arrays(tmp_path):
    task = TASKS.get("gqa")(data_dir=write_gqa(tmp_path))
    pixels = task.load_image(task.examples("val")[0])
    assert pixels.shape == (6, 8, 3) and pixels.dtype == np.uint8


def test_reward_is_exact_match_after_normalisation(tmp_path):
    task = TASKS.get("gqa")(data_dir=write_gqa(tmp_path))
    cat, dogs, _ = task.examples("val")
    assert task.reward(cat, ExecutionResult(answer=True)) == 1.0
    assert task.reward(dogs, ExecutionResult(answer=2)) == 1.0
    assert task.reward(dogs, ExecutionResult(answer=3)) == 0.0


def test_metrics_report_accuracy_per_question_type(tmp_path):
    task = TASKS.get("gqa")(data_dir=write_gqa(tmp_path))
    examples = task.examples("val")
    results = [ExecutionResult(answer="yes"), ExecutionResult(answer="1"),
               ExecutionResult.failure("runtime", "IndexError")]
    metrics = task.metrics(examples, results, [task.reward(e, r) for e, r in zip(examples, results)])
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["accuracy_by_type"] == {"query": 0.0, "verify": 1.0}
    assert metrics["errors"] == {"runtime": 1}


def test_test_split_reads_testdev(tmp_path):
    assert len(TASKS.get("gqa")(data_dir=write_gqa(tmp_path, "testdev")).examples("test")) == 3


def test_a_missing_image_is_skipped_and_counted(tmp_path):
    task = TASKS.get("gqa")(data_dir=write_gqa(tmp_path, images=("n1",)))
    assert [ex.id for ex in task.examples("val")] == ["201", "202"]
    assert task.skipped["missing_image"] == 1


def test_a_missing_image_is_fatal_when_strict(tmp_path):
    with pytest.raises(DataError, match="n2"):
        TASKS.get("gqa")(data_dir=write_gqa(tmp_path, images=("n1",)), strict=True).examples("val")


def test_a_corrupt_image_is_skipped_by_try_load_image(tmp_path):
    root = write_gqa(tmp_path)
    (root / "images" / "n2.jpg").write_bytes(b"not a jpeg")
    task = TASKS.get("gqa")(data_dir=root)
    assert task.try_load_image(task.examples("val")[2]) is None
    assert task.skipped["corrupt_image"] == 1
    with pytest.raises(DataError, match="n2.jpg"):
        TASKS.get("gqa")(data_dir=root, strict=True).try_load_image(task.examples("val")[2])


def test_json_that_does_not_parse_names_the_file(tmp_path):
    root = write_gqa(tmp_path)
    (root / "val_balanced_questions.json").write_text("{oops")
    with pytest.raises(DataError, match="val_balanced_questions.json: not valid JSON"):
        TASKS.get("gqa")(data_dir=root).examples("val")


def test_an_absent_answer_field_is_an_error(tmp_path):
    questions = {"1": {"imageId": "n1", "question": "Why?"}}
    with pytest.raises(DataError, match="no 'answer' field"):
        TASKS.get("gqa")(data_dir=write_gqa(tmp_path, questions=questions)).examples("val")


def test_a_missing_split_file_lists_what_the_folder_has(tmp_path):
    with pytest.raises(DataError, match="val_balanced_questions.json"):
        TASKS.get("gqa")(data_dir=write_gqa(tmp_path)).examples("train")


def test_a_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        TASKS.get("gqa")(data_dir=tmp_path / "nowhere").examples("val")


def test_a_saved_hf_dataset_loads_with_embedded_images(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.new("RGB", (5, 4), (200, 0, 0)), Image.new("RGB", (5, 4), (0, 0, 200))]
    data = datasets.Dataset.from_dict({"id": ["a1", "a2"], "imageId": ["i1", "i2"],
                                       "question": ["Is it red?", "Is it red?"], "answer": ["yes", "no"],
                                       "image": images}).cast_column("image", datasets.Image())
    datasets.DatasetDict({"val": data}).save_to_disk(str(tmp_path / "saved"))
    task = TASKS.get("gqa")(data_dir=tmp_path / "saved")
    first, second = task.examples("val")
    assert (first.id, first.answer, second.answer) == ("a1", "yes", "no")
    assert task.load_image(second)[0, 0].tolist() == [0, 0, 200]


def test_cli_stats_bad_folder_exits_2_with_one_line(tmp_path, capsys):
    from viprog.cli import main

    assert main(["tasks", "gqa", "--stats", "--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such folder" in err and "\n" not in err


def test_without_data_dir_an_unreachable_hub_is_a_one_line_error(monkeypatch):
    from viprog.tasks import hfdata

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hfdata, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(DataError, match="unreachable; download it and pass --data-dir"):
        TASKS.get("gqa")().examples("val")
