"""Bring-your-own JSONL: folders of split files, one file, boxes, bad lines, bad images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from viprog.executor.result import ExecutionResult
from viprog.tasks import TASKS, DataError


def write_jsonl(path: Path, records: list, image_names=("a.png",)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "imgs").mkdir(exist_ok=True)
    for name in image_names:
        Image.new("RGB", (6, 5), (1, 2, 3)).save(path.parent / "imgs" / name)
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_a_folder_of_split_files_loads_with_paths_relative_to_the_file(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", [{"id": "x", "image": "imgs/a.png", "question": "Q?", "answer": "Yes"}])
    task = TASKS.get("jsonl")(data_dir=tmp_path)
    (ex,) = task.examples("test")
    assert (ex.id, ex.query, ex.answer) == ("x", "Q?", "Yes")
    assert task.load_image(ex).shape == (5, 6, 3)
    assert task.splits() == ["test"]


def test_a_single_file_works_and_ids_default_to_the_line_number(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"image": "imgs/a.png", "question": "Q?", "answer": "1"}] * 2)
    assert [ex.id for ex in TASKS.get("jsonl")(data_dir=path).examples("test")] == ["0", "1"]


def test_a_box_line_is_a_grounding_example_scored_by_iou(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [{"image": "imgs/a.png", "question": "the cat", "box": [0, 0, 4, 4],
                                                  "question_type": "refer"}])
    task = TASKS.get("jsonl")(data_dir=path)
    (ex,) = task.examples("test")
    assert ex.box == (0, 0, 4, 4) and ex.question_type == "refer"
    result = ExecutionResult(answer={"type": "ImagePatch", "box": [0, 0, 4, 4]})
    assert task.reward(ex, result) == 1.0
    assert task.metrics([ex], [result], [1.0])["acc@0.5"] == 1.0


def test_a_line_that_does_not_parse_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [{"image": "imgs/a.png", "question": "Q", "answer": "a"}, "{bad"])
    with pytest.raises(DataError, match=r"test.jsonl:2: not valid JSON"):
        TASKS.get("jsonl")(data_dir=path).examples("test")


def test_a_line_without_answer_or_box_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [{"image": "imgs/a.png", "question": "Q"}])
    with pytest.raises(DataError, match="no 'answer' field"):
        TASKS.get("jsonl")(data_dir=path).examples("test")


def test_a_missing_image_is_skipped_unless_strict(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [{"image": "imgs/a.png", "question": "Q", "answer": "a"},
                                                 {"image": "imgs/gone.png", "question": "Q", "answer": "a"}])
    task = TASKS.get("jsonl")(data_dir=path)
    assert len(task.examples("test")) == 1 and task.skipped["missing_image"] == 1
    with pytest.raises(DataError, match="gone.png"):
        TASKS.get("jsonl")(data_dir=path, strict=True).examples("test")


def test_a_missing_split_file_lists_the_folder(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"image": "imgs/a.png", "question": "Q", "answer": "a"}])
    with pytest.raises(DataError, match="train.jsonl"):
        TASKS.get("jsonl")(data_dir=tmp_path).examples("test")


def test_a_binary_file_is_reported_as_not_jsonl(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="not UTF-8"):
        TASKS.get("jsonl")(data_dir=path).examples("test")
