"""bench/reinforce.py keeps its runs with --out and, with --resume, reads finished runs back
instead of running them again (a multi-hour bench can be stopped and continued)."""

import importlib
import json
import sys
from pathlib import Path

import pytest

from viprog.reinforce.demos import DemoResult

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
bench = importlib.import_module("reinforce")


def fake_result(demo: str, seed: int) -> DemoResult:
    return DemoResult(demo=demo, seed=seed, metric="map", after_mle={"map": 40.0 + seed},
                      after_reward={"map": 45.0 + 2 * seed}, after_mle_control={"map": 41.0 + seed},
                      mle_seconds=1.0, reward_seconds=2.0, control_seconds=0.5)


def test_out_keeps_finished_runs_and_resume_reads_them_back(tmp_path, monkeypatch, capsys):
    calls: list[tuple[str, int, bool]] = []

    def fake_run(demo, seed, out, resume=False, progress=True, control=False):
        calls.append((demo, seed, resume))
        if seed == 1 and not resume:
            raise KeyboardInterrupt  # the bench is stopped during seed 1
        return fake_result(demo, seed)

    monkeypatch.setattr(bench, "run", fake_run)
    out, results = tmp_path / "runs", tmp_path / "r.json"
    argv = ["reinforce.py", "--demos", "detection", "--seeds", "0", "1", "--out", str(out), "--json", str(results)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(KeyboardInterrupt):
        bench.main()
    assert (out / "detection" / "0" / "result.json").exists()
    assert not (out / "detection" / "1" / "result.json").exists()
    assert not results.exists()

    calls.clear()
    monkeypatch.setattr(sys, "argv", [*argv, "--resume"])
    bench.main()
    assert calls == [("detection", 1, True)]  # seed 0 is read back, seed 1 continues
    summary = json.loads(results.read_text())
    assert [r["seed"] for r in summary["runs"]] == [0, 1]
    row = summary["summary"]["detection"]
    assert row["reward_minus_longer"] == [4.0, 5.0]
    assert "finished earlier" in capsys.readouterr().out


def test_resume_without_out_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["reinforce.py", "--demos", "detection", "--resume"])
    with pytest.raises(SystemExit) as stop:
        bench.main()
    assert stop.value.code == 2
    assert "--resume needs --out" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--jobs", "--threads"])
def test_zero_jobs_or_threads_is_refused(flag, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["reinforce.py", "--demos", "detection", flag, "0"])
    with pytest.raises(SystemExit) as stop:
        bench.main()
    assert stop.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_a_negative_seed_is_refused_before_any_run(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["reinforce.py", "--demos", "detection", "--seeds", "0", "-3"])
    with pytest.raises(SystemExit) as stop:
        bench.main()
    assert stop.value.code == 2
    assert "--seeds must be ≥ 0, got -3" in capsys.readouterr().err
