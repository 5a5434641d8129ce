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
    """A study folder as round 1 of seed 0 leaves it, plus files the archive leaves out."""
    files = {
        "rows/a_base_fewshot/seed0-round0.jsonl": '{"question_id": "q1", "reward": 0.0}\n',
        "rows/c_lora_fewshot/seed0-round1.jsonl": '{"question_id": "q1", "reward": 1.0}\n',
        "runs/seed0-continue/round_1/metrics.json": '{"filter/kept": 3}\n',
        "runs/seed0-continue/round_1/kept.jsonl": '{"question_type": "count"}\n',
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "runs/seed0-continue/round_0").mkdir()
    (root / "runs/seed0-continue/round_0/eval.jsonl").write_text('{"question_id": "q1"}\n')  # not archived
    (root / "runs/seed0-continue/round_1/adapter").mkdir()
    (root / "runs/seed0-continue/round_1/adapter/weights.bin").write_bytes(b"\0" * 64)  # not archived
    (root / "runs/seed0-continue/config.json").write_text("{}")  # not archived: marks a live run
    return files


def config(tmp_path: Path, **overrides) -> "study.StudyConfig":
    base = {"task": "shapes", "n_questions": 300, "seeds": (0,), "rounds": 1, "out_dir": str(tmp_path / "study"),
            "results": str(tmp_path / "results" / "s.json"), "arms": ("a_base_fewshot", "c_lora_fewshot"),
            "run_eval_library": False, "large_policy": None}
    return study.StudyConfig(**(base | overrides))


def test_the_archive_holds_what_the_summary_reads_and_a_new_machine_gets_it_back(tmp_path):
    cfg = config(tmp_path)
    root = Path(cfg.out_dir) / cfg.task
    files = fake_study(root)
    path = study.archive_path(cfg.results)
    assert path == tmp_path / "results" / "s.rows.json.gz"
    summary.write_archive(root, cfg, path)
    first = path.read_bytes()
    summary.write_archive(root, cfg, path)
    assert path.read_bytes() == first  # no timestamp: an unchanged study writes the same bytes
    saved = json.loads(gzip.decompress(first))
    assert saved["files"] == files and (saved["task"], saved["n_questions"]) == ("shapes", 300)

    fresh = tmp_path / "fresh"
    assert summary.restore_archive(fresh, cfg, path) == len(files)
    assert (fresh / "rows/c_lora_fewshot/seed0-round1.jsonl").read_text() == files["rows/c_lora_fewshot/seed0-round1.jsonl"]
    assert not (fresh / "runs").exists()  # run files go where selftrain does not take their rounds for done
    assert (fresh / "archived-runs/seed0-continue/round_1/metrics.json").read_text() == '{"filter/kept": 3}\n'
    assert summary.run_metrics(fresh) == {"seed0-continue": {"round_1": {"filter/kept": 3}}}
    again = tmp_path / "again.rows.json.gz"  # an archive of the restored folder holds everything once more
    summary.write_archive(fresh, cfg, again)
    assert json.loads(gzip.decompress(again.read_bytes()))["files"] == files

    (fresh / "rows/c_lora_fewshot/seed0-round1.jsonl").write_text("this machine's\n")
    assert summary.restore_archive(fresh, cfg, path) == 0  # a folder with rows is this machine's work: untouched
    assert (fresh / "rows/c_lora_fewshot/seed0-round1.jsonl").read_text() == "this machine's\n"


@pytest.mark.parametrize(("change", "named"), [({"n_questions": 40}, "n_questions"),
                                               ({"run_eval_library": True}, "run_eval_library")])
def test_an_archive_of_another_study_is_refused(tmp_path, change, named):
    cfg = config(tmp_path)
    root = Path(cfg.out_dir) / cfg.task
    fake_study(root)
    path = summary.write_archive(root, cfg, study.archive_path(cfg.results))
    with pytest.raises(UsageError, match=f"another {named} "):
        summary.restore_archive(tmp_path / "other", config(tmp_path, **change), path)
    assert not (tmp_path / "other").exists()


def test_an_archive_of_runs_with_other_selftrain_settings_is_refused(tmp_path):
    cfg = config(tmp_path)
    root = Path(cfg.out_dir) / cfg.task
    fake_study(root)
    path = summary.write_archive(root, cfg, study.archive_path(cfg.results))
    other = config(tmp_path)
    other.selftrain.questions_per_round = 48
    with pytest.raises(UsageError, match="another --selftrain.questions-per-round"):
        summary.restore_archive(tmp_path / "other", other, path)


def test_an_archive_path_outside_the_study_folder_is_refused(tmp_path):
    cfg = config(tmp_path)
    path = study.archive_path(cfg.results)
    path.parent.mkdir(parents=True)
    blob = {**summary.archive_key(cfg), "files": {"rows/../../escape.txt": "x"}}
    path.write_bytes(gzip.compress(json.dumps(blob).encode()))
    with pytest.raises(UsageError, match="not a rows or runs file"):
        summary.restore_archive(tmp_path / "study", cfg, path)
    assert not (tmp_path / "escape.txt").exists()


def test_a_new_machine_restores_the_cells_and_refuses_to_continue_a_run_it_does_not_have(tmp_path, monkeypatch):
    import viprog.selftrain

    cfg = config(tmp_path)
    fake_study(Path(cfg.out_dir) / cfg.task)
    summary.write_archive(Path(cfg.out_dir) / cfg.task, cfg, study.archive_path(cfg.results))
    runs = []
    monkeypatch.setattr(viprog.selftrain, "main", lambda c: runs.append(c.run_name))

    moved = config(tmp_path, out_dir=str(tmp_path / "new-machine"), rounds=2, seeds=(0, 1))
    s = study.Study(moved)  # restores on construction
    new_root = Path(moved.out_dir) / moved.task
    assert study.rows_path(new_root, "c_lora_fewshot", 0, 1).exists()
    assert s.bars["c_lora_fewshot"].n == 1 and s.bars["a_base_fewshot"].n == 1
    with pytest.raises(UsageError, match=r"round\(s\) \[1\] \(restored from the archive\) but no run folder"):
        s.selftrain_run(0, restart=False)  # round 2 is missing: a new run would mix two runs' rounds
    with pytest.raises(FileNotFoundError):  # the stub ran nothing, so there are no rows to save
        s.selftrain_run(1, restart=False)
    assert runs == ["seed1-continue"]  # seed 1 runs whole: no half round 0 was copied in from the archive
    assert not (new_root / "runs/seed1-continue/round_0").exists()

    none = study.Study(config(tmp_path, out_dir=str(tmp_path / "no-restore"), restore=False))
    assert none.bars["c_lora_fewshot"].n == 0


def test_the_default_results_file_is_per_task():
    assert study.StudyConfig().results_path() == "bench/results/selftrain_study.json"
    assert study.StudyConfig(task="shapes-hard").results_path() == "bench/results/selftrain_study_shapes-hard.json"
    assert study.StudyConfig(task="shapes-hard", results="x.json").results_path() == "x.json"
    assert study.StudyConfig(results=None).results_path() is None
