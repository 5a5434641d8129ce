"""`--resume` after SIGKILL at each phase of a round: nothing finished is redone, nothing
written is lost or half-written, and the resumed run ends where an uninterrupted one does."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_selftrain_loop import cli_args, tiny_config, tiny_model  # noqa: F401  (session fixture)

from viprog.runs import read_jsonl, read_partial
from viprog.selftrain import main as selftrain

pytestmark = pytest.mark.slow

TESTS = str(Path(__file__).parent)


def launch(cfg, *extra):
    code = (f"import sys; sys.path.insert(0, {TESTS!r}); import selftrain_fixtures; from viprog.cli import main; "
            f"sys.exit(main({cli_args(cfg) + list(extra)!r}))")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def has_lines(path):
    return path.exists() and len(read_partial(path)) >= 1


PHASES = {
    "sampling": lambda r: has_lines(r / "round_1" / "samples.partial.jsonl") and not (r / "round_1" / "samples.jsonl").exists(),
    "training": lambda r: (r / "round_1" / "filter.metrics.json").exists(),
    "evaluation": lambda r: has_lines(r / "round_1" / "eval.partial.jsonl"),
}


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("reference")
    assert selftrain(tiny_config(tiny_model, root / "data", root, rounds=1)) == 0
    return root / "tiny"


def kill_when(proc, ready, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("phase", list(PHASES))
def test_resume_after_sigkill(phase, tiny_model, reference, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_model, reference.parent / "data", tmp_path, rounds=1, batch_questions=2)
    run = tmp_path / "tiny"
    proc = launch(cfg)
    assert kill_when(proc, lambda: PHASES[phase](run)), f"the run ended before reaching {phase}: {proc.stderr.read()}"
    assert proc.returncode == -signal.SIGKILL
    before = {r["question_id"]: r["completions"] for r in read_partial(run / "round_1" / "samples.partial.jsonl")}
    for path in run.rglob("*.json*"):  # nothing half-written under a final name
        if ".partial." not in path.name and ".tmp-" not in path.name:
            (read_jsonl(path) if path.suffix == ".jsonl" else json.loads(path.read_text()))

    resumed = launch(cfg, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "already finished (resume)" in err  # round 0 was not redone
    samples = read_jsonl(run / "round_1" / "samples.jsonl")
    for row in samples:  # completions sampled before the kill were kept, not sampled again
        if row["question_id"] in before:
            assert row["completion"] == before[row["question_id"]][row["sample"]]
    expected = [m["eval/accuracy"] for m in read_jsonl(reference / "metrics.jsonl")]
    assert [m["eval/accuracy"] for m in read_jsonl(run / "metrics.jsonl")] == expected
    assert [r["program"] for r in read_jsonl(run / "round_1" / "kept.jsonl")] == \
        [r["program"] for r in read_jsonl(reference / "round_1" / "kept.jsonl")]
    assert not list(run.rglob("*.tmp-*"))
