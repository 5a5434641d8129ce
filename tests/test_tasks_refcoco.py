"""RefCOCO: the refer toolkit's files (refs(unc).p + instances.json) and a saved HF dataset."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from PIL import Image

from viprog.executor.result import ExecutionResult
from viprog.tasks import TASKS, DataError

REFS = [
    {"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "testA", "category_id": 1, "file_name": "x_10.jpg",
     "sentences": [{"sent": "man on the left", "raw": "Man on the left", "sent_id": 100, "tokens": []},
                   {"sent": "left guy", "raw": "left guy", "sent_id": 101, "tokens": []}]},
    {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "testB", "category_id": 2, "file_name": "x_11.jpg",
     "sentences": [{"sent": "red car", "raw": "red car", "sent_id": 102, "tokens": []}]},
    {"ref_id": 2, "ann_id": 11, "image_id": 1, "split": "train", "category_id": 2, "file_name": "x_11.jpg",
     "sentences": [{"sent": "the car", "raw": "the car", "sent_id": 103, "tokens": []}]},
]
INSTANCES = {
    "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 40, "height": 30}],
    "annotations": [{"id": 10, "image_id": 1, "bbox": [2, 3, 10, 20], "category_id": 1, "area": 200, "iscrowd": 0},
                    {"id": 11, "image_id": 1, "bbox": [20, 5, 15, 10], "category_id": 2, "area": 150, "iscrowd": 0}],
    "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                   {"id": 2, "name": "car", "supercategory": "vehicle"}],
}


def write_refcoco(root: Path) -> Path:
    folder = root / "refcoco"
    folder.mkdir(parents=True)
    with open(folder / "refs(unc).p", "wb") as fh:
        pickle.dump(REFS, fh, protocol=2)
    (folder / "instances.json").write_text(json.dumps(INSTANCES))
    images = root / "images" / "mscoco" / "images" / "train2014"
    images.mkdir(parents=True)
    Image.new("RGB", (40, 30), (90, 90, 90)).save(images / "COCO_train2014_000000000001.jpg")
    return root


def test_one_example_per_sentence_with_xyxy_boxes_and_category_types(tmp_path):
    examples = TASKS.get("refcoco")(data_dir=write_refcoco(tmp_path)).examples("testA")
    assert [(ex.id, ex.query) for ex in examples] == [("0_100", "man on the left"), ("0_101", "left guy")]
    assert examples[0].box == (2.0, 3.0, 12.0, 23.0)
    assert examples[0].question_type == "person"


def test_test_split_joins_testA_and_testB(tmp_path):
    examples = TASKS.get("refcoco")(data_dir=write_refcoco(tmp_path)).examples("test")
    assert {ex.query for ex in examples} == {"man on the left", "left guy", "red car"}


def test_dataset_folder_itself_works_as_data_dir(tmp_path):
    root = write_refcoco(tmp_path)
    assert len(TASKS.get("refcoco")(data_dir=root / "refcoco").examples("train")) == 1


def test_reward_is_iou_at_least_half_of_the_returned_patch(tmp_path):
    task = TASKS.get("refcoco")(data_dir=write_refcoco(tmp_path))
    ex = task.examples("testA")[0]
    near = {"type": "ImagePatch", "box": [2, 3, 12, 21]}
    far = {"type": "ImagePatch", "box": [20, 5, 35, 15]}
    assert task.reward(ex, ExecutionResult(answer=near)) == 1.0
    assert task.reward(ex, ExecutionResult(answer=far)) == 0.0
    iou_task = TASKS.get("refcoco")(data_dir=tmp_path, box_reward="iou")
    assert iou_task.reward(ex, ExecutionResult(answer=near)) == pytest.approx(0.9)


def test_metrics_add_accuracy_at_half_and_mean_iou(tmp_path):
    task = TASKS.get("refcoco")(data_dir=write_refcoco(tmp_path))
    examples = task.examples("testA")
    results = [ExecutionResult(answer={"type": "ImagePatch", "box": list(examples[0].box)}),
               ExecutionResult.failure("primitive", "detector failed")]
    metrics = task.metrics(examples, results, [task.reward(e, r) for e, r in zip(examples, results)])
    assert metrics["acc@0.5"] == 0.5 and metrics["mean_iou"] == 0.5 and metrics["errors"] == {"primitive": 1}


def test_a_pickle_that_names_a_class_is_refused(tmp_path):
    root = write_refcoco(tmp_path)
    with open(root / "refcoco" / "refs(unc).p", "wb") as fh:
        pickle.dump([{"ref": Path("x")}], fh)
    with pytest.raises(DataError, match="refusing to load"):
        TASKS.get("refcoco")(data_dir=root).examples("testA")


def test_a_split_with_no_references_says_which_splits_exist(tmp_path):
    with pytest.raises(DataError, match="testA, testB, train"):
        TASKS.get("refcoco")(data_dir=write_refcoco(tmp_path)).examples("val")


def test_a_saved_hf_dataset_loads(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({
        "question_id": ["r1"], "image": [Image.new("RGB", (6, 6), (0, 255, 0))],
        "answer": [["green thing", "the square"]], "bbox": [[1.0, 1.0, 2.0, 3.0]],
    }).cast_column("image", datasets.Image())
    datasets.DatasetDict({"val": data}).save_to_disk(str(tmp_path / "saved"))
    task = TASKS.get("refcoco")(data_dir=tmp_path / "saved")
    examples = task.examples("val")
    assert [(ex.query, ex.box) for ex in examples] == [("green thing", (1.0, 1.0, 3.0, 4.0)),
                                                       ("the square", (1.0, 1.0, 3.0, 4.0))]
    assert task.load_image(examples[0])[0, 0].tolist() == [0, 255, 0]
