"""The study's archive (bench/study_summary.py): the rows and run metrics a summary reads,
committed beside the results JSON so that a new machine, whose runs/ is empty, can redo the
summary and skip the cells already done — without mixing two runs of one seed."""

import dataclasses
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


# -- --replay: a restored seed's run rebuilt from its archived kept programs ------------------------------------
def archived_one_round(tmp_path: Path) -> "study.StudyConfig":
    """A one-round study of seed 0 as the archive holds it, restored onto a 'new machine'
    whose study asks for round 2; returns that new study's config (with --replay)."""
    cfg = config(tmp_path)
    root = Path(cfg.out_dir) / cfg.task
    metrics = {"round": 1, "sample/programs": 8, "reward/mean": 0.5, "time/sample_s": 1.0, "filter/kept": 3,
               "time/filter_s": 0.1, "train/steps": 4, "time/train_s": 2.0, "eval/accuracy": 0.5, "time/eval_s": 3.0}
    files = {
        "rows/a_base_fewshot/seed0-round0.jsonl": '{"question_id": "q1", "program": "p0", "reward": 0.0}\n',
        "rows/c_lora_fewshot/seed0-round1.jsonl": ('{"question_id": "q1", "program": "p1", "reward": 1.0}\n'
                                                   '{"question_id": "q2", "program": "p2", "reward": 0.0}\n'),
        "runs/seed0-continue/round_0/metrics.json": '{"round": 0, "eval/accuracy": 0.0}\n',
        "runs/seed0-continue/round_1/metrics.json": json.dumps(metrics),
        "runs/seed0-continue/round_1/kept.jsonl": '{"question_id": "t1", "program": "kept"}\n',
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    summary.write_archive(root, cfg, study.archive_path(cfg.results))
    return config(tmp_path, out_dir=str(tmp_path / "new-machine"), rounds=2, replay=True, replay_check=2)


def test_a_replay_writes_the_archived_rounds_back_with_only_training_left_to_do(tmp_path):
    from study_replay import MARK, rebuild

    from viprog.runs import read_json, read_jsonl

    cfg = archived_one_round(tmp_path)
    s = study.Study(cfg)
    run_root = s.root / "runs/seed0-continue"
    cells = {1: study.rows_path(s.root, "c_lora_fewshot", 0, 1)}
    with pytest.raises(UsageError, match=r"rounds \[2\], not 1\.\.2"):
        rebuild(s.root, run_root, {2: cells[1]})
    rebuild(s.root, run_root, cells)
    r1 = run_root / "round_1"
    assert read_jsonl(r1 / "kept.jsonl") == [{"question_id": "t1", "program": "kept"}]
    assert read_jsonl(r1 / "eval.jsonl") == read_jsonl(cells[1])
    assert read_json(r1 / "sample.metrics.json") == {MARK: True, "sample/programs": 8, "reward/mean": 0.5,
                                                     "time/sample_s": 1.0}
    assert read_json(r1 / "filter.metrics.json") == {MARK: True, "filter/kept": 3, "time/filter_s": 0.1}
    assert read_json(r1 / "eval.metrics.json") == {MARK: True, "eval/accuracy": 0.5, "time/eval_s": 3.0}
    assert not (r1 / "train.metrics.json").exists() and not (r1 / "metrics.json").exists()  # the round is not done
    assert read_json(run_root / "round_0/metrics.json") == {"round": 0, "eval/accuracy": 0.0}  # round 0 is

    (s.root / "archived-runs/seed0-continue/round_1/kept.jsonl").unlink()
    elsewhere = tmp_path / "elsewhere/seed0-continue"
    with pytest.raises(UsageError, match=r"--replay needs .*seed0-continue/round_1/kept.jsonl \(and 0 more\)"):
        rebuild(s.root, elsewhere, cells)
    assert not elsewhere.exists()  # refused before anything is written


def stub_runs(monkeypatch, s, programs):
    """selftrain.main recorded (and round 2 'evaluated'), the check's evaluation answering `programs`."""
    import viprog.selftrain
    from viprog.runs import write_json_atomic, write_jsonl_atomic

    calls = []

    def fake_selftrain(c):
        calls.append((c.run_name, c.rounds, c.resume))
        root = Path(c.runs_dir) / c.run_name
        (root / "config.json").write_text(json.dumps({"eval_library": c.eval_library}))
        if c.rounds == 2:
            write_jsonl_atomic(root / "round_2/eval.jsonl", [{"question_id": "q1", "program": "p3", "reward": 1.0}])
            write_json_atomic(root / "round_2/eval.metrics.json", {"eval/library": False})
        return 0

    monkeypatch.setattr(viprog.selftrain, "main", fake_selftrain)
    monkeypatch.setattr(s, "_components", lambda c: None)
    monkeypatch.setattr(study, "evaluate_cell", lambda c, root, k, name, **kw: [
        {"question_id": q, "program": p} for q, p in programs.items()][:c.eval_size])
    return calls


def test_a_replayed_run_is_checked_then_continued(tmp_path, monkeypatch):
    from viprog.runs import read_json

    cfg = archived_one_round(tmp_path)
    refused = study.Study(dataclasses.replace(cfg, out_dir=str(tmp_path / "no-replay"), replay=False))
    with pytest.raises(UsageError, match="pass --replay to retrain them"):
        refused.selftrain_run(0, restart=False)

    s = study.Study(cfg)
    calls = stub_runs(monkeypatch, s, {"q1": "p1", "q2": "p2"})
    run_root = s.selftrain_run(0, restart=False)
    assert calls == [("seed0-continue", 1, False), ("seed0-continue", 2, True)]  # retrain round 1, then go on
    assert read_json(run_root / "replay.json") == {"rounds": [1], "questions": 2, "same_programs": 2, "differ": []}
    assert study.rows_path(s.root, "c_lora_fewshot", 0, 2).exists() and not s.failed


def test_a_replay_that_writes_other_programs_is_not_continued(tmp_path, monkeypatch):
    cfg = archived_one_round(tmp_path)
    s = study.Study(cfg)
    calls = stub_runs(monkeypatch, s, {"q1": "p1", "q2": "another"})
    assert s.selftrain_run(0, restart=False) is None
    assert calls == [("seed0-continue", 1, False)]  # round 2 was not run on an adapter the archive does not hold
    assert "1 of the first 2 held-out questions got another program than in the archive (first: q2)" in s.failed[0][
        "error"]
    assert s.selftrain_run(0, restart=False) is None and "failed its check" in s.failed[1]["error"]
    assert calls == [("seed0-continue", 1, False)] and not study.rows_path(s.root, "c_lora_fewshot", 0, 2).exists()


def test_one_more_round_is_the_paired_difference_on_the_seeds_with_both_rounds():
    questions = ["q1", "q2", "q3", "q4"]

    def cell(rewards):
        return {q: {"reward": r} for q, r in zip(questions, rewards)}

    cells = {("c_lora_fewshot", 0, 1): cell([0, 0, 1, 1]), ("c_lora_fewshot", 0, 2): cell([1, 0, 1, 1]),
             ("c_lora_fewshot", 1, 1): cell([1, 1, 1, 0]), ("c_lora_fewshot", 1, 2): cell([1, 1, 1, 1]),
             ("c_lora_fewshot", 2, 2): cell([0, 0, 0, 0]),  # no round 1: left out of the pair
             ("b_base_fewshot_library", 0, 2): cell([1, 1, 1, 1]),  # one round only: no entry
             ("a_base_fewshot", 0, 0): cell([1, 1, 1, 1])}
    out = summary.round_effects(cells, (0, 1, 2), 2, questions, {"draws": 200})
    assert list(out) == ["c_lora_fewshot"]
    entry = out["c_lora_fewshot"]["round_2"]
    assert entry["seeds"] == [0, 1] and entry["versus"] == "round_1"
    assert entry["mean"] == pytest.approx(2 / 8) and entry["ci95"][0] <= 0.25 <= entry["ci95"][1]


def test_the_lora_only_gain_is_the_best_arm_c_cell_at_round_2_or_3_and_names_what_it_chose_from():
    def g(mean):
        return {"mean": mean, "ci95": [mean - 0.05, mean + 0.05]}
    gains = {"c_lora_train_prompt": {"round_1": g(0.30), "round_2": g(0.07), "round_3": g(0.15), "round_4": g(0.17)},
             "c_lora_fewshot": {"round_2": g(0.05), "round_3": g(0.04), "round_4": g(0.20)},
             "d_lora_fewshot_library": {"round_2": g(0.50)}}  # has library programs: not LoRA only
    gain = summary.lora_only_gain(gains)
    assert (gain["arm"], gain["round"], gain["mean"]) == ("c_lora_train_prompt", 3, 0.15)
    assert sorted(gain["selected_from"]) == ["c_lora_fewshot round_2", "c_lora_fewshot round_3",
                                             "c_lora_train_prompt round_2", "c_lora_train_prompt round_3"]
    only_round_1 = summary.lora_only_gain({"c_lora_fewshot": {"round_1": g(0.02)}})
    assert (only_round_1["round"], only_round_1["mean"]) == (1, 0.02)  # a study with fewer rounds
    assert summary.lora_only_gain({"b_base_fewshot_library": {"round_2": g(0.1)}}) is None


def test_an_archive_from_before_a_setting_existed_matches_only_while_that_setting_is_at_its_default():
    import heldout

    cfg = config(Path("/unused"))
    ours = json.loads(json.dumps(summary.run_settings(cfg), default=str))
    old = json.loads(json.dumps(ours))
    del old["grpo"]["loss_prompt"], old["drop_lucky"]  # written before those settings existed
    assert heldout.settings_that_differ(ours, old) == []
    assert heldout.settings_that_differ({**ours, "drop_lucky": not ours["drop_lucky"]}, old) == ["drop_lucky"]
    assert heldout.settings_that_differ({**ours, "questions_per_round": 48}, old) == ["questions_per_round"]
    other_grpo = {**ours, "grpo": {**ours["grpo"], "learning_rate": 1.0}}
    assert heldout.settings_that_differ(other_grpo, old) == []  # ReST on both sides: GRPO's group is unread
    grpo = {**other_grpo, "algo": "grpo"}
    assert heldout.settings_that_differ(grpo, {**old, "algo": "grpo"}) == ["grpo"]
