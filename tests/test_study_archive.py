"""The study's archive (bench/study_summary.py): the rows and run metrics a summary reads,
committed beside the results JSON so that a new machine, whose runs/ is empty, can redo the
summary and skip the cells already done — without mixing two runs of one seed."""

import gzip
import importlib
import json
import sys
from pathlib import Path

import pytest

from viprog.errors import UsageError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
study = importlib.import_module("selftrain_study")
summary = importlib.import_module("study_summary")


def fake_study(root: Path) -> dict[str, str]:
    """A study folder as two rounds of seed 0 leave it, plus files the summary does not read."""
    files = {
        "rows/a_base_fewshot/seed0-round0.jsonl": '{"question_id": "q1", "reward": 0.0}\n',
        "rows/c_lora_fewshot/seed0-round1.jsonl": '{"question_id": "q1", "reward": 1.0}\n',
        "runs/seed0-continue/round_1/metrics.json": '{"filter/kept": 3}\n',
        "runs/seed0-continue/round_1/kept.jsonl": '{"question_type": "count"}\n',
        "runs/seed0-continue/round_1/eval.metrics.json": '{"eval/library": false}\n',
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "runs/seed0-continue/round_1/adapter").mkdir()
    (root / "runs/seed0-continue/round_1/adapter/weights.bin").write_bytes(b"\0" * 64)  # not archived
    (root / "runs/seed0-continue/config.json").write_text("{}")  # not archived: marks a live run
    return files


def config(tmp_path: Path, **overrides) -> "study.StudyConfig":
    base = {"task": "shapes", "n_questions": 300, "seeds": (0,), "rounds": 2, "out_dir": str(tmp_path / "study"),
            "results": str(tmp_path / "results" / "s.json"), "arms": ("a_base_fewshot", "c_lora_fewshot"),
            "run_eval_library": False, "large_policy": None}
    return study.StudyConfig(**(base | overrides))


def test_the_archive_holds_what_the_summary_reads_and_restores_only_what_is_missing(tmp_path):
    cfg = config(tmp_path)
    root = Path(cfg.out_dir) / cfg.task
    files = fake_study(root)
    path = summary.archive_path(cfg.results)
    assert path == tmp_path / "results" / "s.rows.json.gz"
    summary.write_archive(root, cfg, path)
    first = path.read_bytes()
    summary.write_archive(root, cfg, path)
    assert path.read_bytes() == first  # reproducible: an unchanged study changes no committed byte
    saved = json.loads(gzip.decompress(first))
    assert saved["files"] == files and (saved["task"], saved["n_questions"]) == ("shapes", 300)

    fresh = tmp_path / "fresh"
    (fresh / "rows/c_lora_fewshot").mkdir(parents=True)
    (fresh / "rows/c_lora_fewshot/seed0-round1.jsonl").write_text("newer\n")
    assert summary.restore_archive(fresh, cfg, path) == len(files) - 1
    assert (fresh / "rows/c_lora_fewshot/seed0-round1.jsonl").read_text() == "newer\n"  # this machine's file wins
    for rel in set(files) - {"rows/c_lora_fewshot/seed0-round1.jsonl"}:
        assert (fresh / rel).read_text() == files[rel]
    assert not (fresh / "runs/seed0-continue/config.json").exists()


def test_an_archive_of_another_held_out_set_is_refused(tmp_path):
    cfg = config(tmp_path)
    root = Path(cfg.out_dir) / cfg.task
    fake_study(root)
    path = summary.write_archive(root, cfg, summary.archive_path(cfg.results))
    with pytest.raises(UsageError, match="shapes on 300 questions, not shapes on 40"):
        summary.restore_archive(tmp_path / "other", config(tmp_path, n_questions=40), path)


def test_an_archive_path_outside_the_study_folder_is_refused(tmp_path):
    cfg = config(tmp_path)
    path = summary.archive_path(cfg.results)
    path.parent.mkdir(parents=True)
    blob = {"task": "shapes", "n_questions": 300, "files": {"../escape.txt": "x"}}
    path.write_bytes(gzip.compress(json.dumps(blob).encode()))
    with pytest.raises(UsageError, match="not a path inside the study folder"):
        summary.restore_archive(tmp_path / "study", cfg, path)
    assert not (tmp_path / "escape.txt").exists()


def test_a_new_machine_restores_the_cells_and_refuses_to_continue_a_run_it_does_not_have(tmp_path):
    cfg = config(tmp_path)
    root = Path(cfg.out_dir) / cfg.task
    fake_study(root)
    summary.write_archive(root, cfg, summary.archive_path(cfg.results))
    moved = config(tmp_path, out_dir=str(tmp_path / "new-machine"))
    s = study.Study(moved)  # restores on construction
    new_root = Path(moved.out_dir) / moved.task
    assert study.rows_path(new_root, "c_lora_fewshot", 0, 1).exists()
    assert s.bars["c_lora_fewshot"].n == 1 and s.bars["a_base_fewshot"].n == 1
    with pytest.raises(UsageError, match=r"round\(s\) \[1\] but its run folder .* is gone"):
        s.selftrain_run(0, restart=False)  # round 2 is missing: a new run would mix two runs' rounds
    none = study.Study(config(tmp_path, out_dir=str(tmp_path / "no-restore"), restore=False))
    assert none.bars["c_lora_fewshot"].n == 0
