"""The run folder: atomic artifacts, torn partial files, refusing to clobber a run."""

import json
import signal
import subprocess
import sys

import pytest

from viprog.errors import UsageError
from viprog.runs import Appender, Run, read_partial, write_json_atomic


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    path = write_json_atomic(tmp_path / "a" / "m.json", {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]


def test_a_writer_killed_mid_write_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"v": "old"})
    code = ("import os, viprog.runs as r\n"
            "os.fsync = lambda fd: os.kill(os.getpid(), 9)  # die after writing, before the rename\n"
            f"r.write_json_atomic({str(path)!r}, {{'v': 'new'}})\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads(path.read_text()) == {"v": "old"}


def test_appender_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"question_id": "a"}\n{"question_id": "b", "compl')
    assert [r["question_id"] for r in read_partial(path)] == ["a"]
    with Appender(path) as out:
        out.write({"question_id": "c"})
    assert [r["question_id"] for r in read_partial(path)] == ["a", "c"]


def test_a_second_run_with_the_same_name_is_refused(tmp_path):
    run = Run.open(tmp_path / "r", resume=False, overwrite=False)
    write_json_atomic(run.config_path, {})
    with pytest.raises(UsageError, match="--resume"):
        Run.open(tmp_path / "r", resume=False, overwrite=False)


def test_overwrite_starts_from_an_empty_folder(tmp_path):
    run = Run.open(tmp_path / "r", resume=False, overwrite=False)
    write_json_atomic(run.config_path, {})
    write_json_atomic(run.artifact(0, "metrics.json"), {"round": 0})
    run = Run.open(tmp_path / "r", resume=False, overwrite=True)
    assert run.rounds_done() == []


def test_resume_of_a_missing_run_is_refused(tmp_path):
    with pytest.raises(UsageError, match="no run to resume"):
        Run.open(tmp_path / "nothing", resume=True, overwrite=False)


def test_reopening_removes_leftover_temporaries(tmp_path):
    run = Run.open(tmp_path / "r", resume=False, overwrite=False)
    write_json_atomic(run.config_path, {})
    (run.round_dir(1) / "adapter.tmp-123").mkdir(parents=True)
    (run.round_dir(1) / "kept.jsonl.tmp-123").write_text("half")
    Run.open(tmp_path / "r", resume=True, overwrite=False)
    assert list(run.round_dir(1).iterdir()) == []


def test_latest_adapter_skips_rounds_without_one(tmp_path):
    run = Run(tmp_path)
    for k in (1, 3):
        write_json_atomic(run.artifact(k, "adapter") / "adapter_config.json", {})
    (run.round_dir(2)).mkdir()
    assert run.latest_adapter() == run.artifact(3, "adapter")
    assert run.latest_adapter(before=3) == run.artifact(1, "adapter")
    assert run.latest_adapter(before=1) is None


def test_metrics_log_has_one_line_per_finished_round(tmp_path):
    run = Run(tmp_path)
    for k in (0, 1):
        write_json_atomic(run.artifact(k, "metrics.json"), {"round": k})
    run.rebuild_metrics_log()
    run.rebuild_metrics_log()
    assert [json.loads(line)["round"] for line in run.metrics_path.read_text().splitlines()] == [0, 1]


def test_an_atomic_jsonl_appears_whole_on_close_and_not_at_all_on_error(tmp_path):
    from viprog.runs import AtomicJsonl, iter_jsonl

    with AtomicJsonl(tmp_path / "rows.jsonl") as sink:
        sink.write({"a": 1})
        assert not (tmp_path / "rows.jsonl").exists()  # nothing under the final name until it is whole
        sink.write({"a": 2})
    assert [r["a"] for r in iter_jsonl(tmp_path / "rows.jsonl")] == [1, 2]
    with pytest.raises(RuntimeError), AtomicJsonl(tmp_path / "broken.jsonl") as sink:
        sink.write({"a": 1})
        raise RuntimeError("killed half-way")
    assert list(tmp_path.iterdir()) == [tmp_path / "rows.jsonl"]
