"""`--algo grpo`: TRL's GRPOTrainer rewarded by the sandbox, on the toy counting task with
the tiny Qwen2 of test_selftrain_loop (right for circles 80% of the time, for the other
shapes 20%): the reward function agrees with the executor, a short run raises the
held-out accuracy, and a run killed mid-round resumes from TRL's checkpoint."""

import contextlib
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import selftrain_fixtures as F
from test_selftrain_loop import cli_args, tiny_config, tiny_model  # noqa: F401  (session fixture)

from viprog.executor import Executor, Job
from viprog.grpo import ExecutorReward, GrpoOptions
from viprog.policy import extract_program
from viprog.rollout import load_images
from viprog.runs import read_jsonl, read_partial
from viprog.selftrain import main as selftrain

TESTS = str(Path(__file__).parent)
GRPO = {"algo": "grpo", "rounds": 2, "eval_size": 24,
        "grpo": GrpoOptions(questions_per_step=2, learning_rate=5e-3, save_steps=2)}


def grpo_config(model, root, **overrides):
    return tiny_config(model, root / "data", root, **(GRPO | overrides))


def test_reward_function_equals_the_executor(tmp_path):
    """For the same completions, the reward function returns what running their programs
    through an Executor and scoring them with the task gives (right, wrong, broken, hostile)."""
    task = F.ToyCountTask(data_dir=tmp_path)
    examples = task.examples("train")[:4]
    images = load_images(task, examples)
    completions, ids = [], []
    for ex in examples:
        shape = ex.question_type
        completions += [F.right_program(shape), F.wrong_program(shape), "    return len(ImagePatch(image).find(",
                        "    import os\n    return os.getcwd()\n"]
        ids += [ex.id] * 4
    by_id = {ex.id: ex for ex in examples}
    with Executor("toy", workers=1) as executor:
        reward = ExecutorReward(task, examples, images, executor)
        got = reward(prompts=[""] * len(ids), completions=completions, question_id=ids)
        jobs = [Job(extract_program(c), by_id[q].image_key, images[by_id[q].image_key], query=by_id[q].query,
                    meta=dict(by_id[q].meta)) for c, q in zip(completions, ids)]
        results = executor.run_many(jobs)
    expected = [float(task.reward(by_id[q], r)) for q, r in zip(ids, results)]
    assert got == expected
    assert got.count(1.0) == 4 and got[0::4] == [1.0] * 4  # the right programs, and only they
    assert {r.error_kind for r in results[2::4]} == {"syntax"} and {r.error_kind for r in results[3::4]} == {"policy"}


@pytest.fixture(scope="module")
def grpo_run(tiny_model, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("grpo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert selftrain(grpo_config(tiny_model, root)) == 0
    (root / "stdout.txt").write_text(printed.getvalue())
    return root / "tiny"


def test_the_trainers_logs_stay_off_stdout(grpo_run):
    """TRL's per-step dicts go to the logger and the bar (viprog.trainlog), not stdout."""
    printed = (grpo_run.parent / "stdout.txt").read_text()
    assert "{'loss'" not in printed and "'reward'" not in printed


def test_grpo_raises_the_held_out_accuracy(grpo_run):
    """Greedy, the base policy is right only for circles (25%); GRPO, sampling 4 programs per
    question and rewarding each through the sandbox, makes it right for more shapes."""
    metrics = read_jsonl(grpo_run / "metrics.jsonl")
    acc = [m["eval/accuracy"] for m in metrics]
    assert 0 < acc[0] <= 0.5
    assert max(acc[1:]) >= acc[0] + 0.25, acc
    # round 2 samples 64 programs from round 1's adapter; the base policy's expected reward is
    # (0.8 + 3 x 0.2) / 4 = 0.35, with a standard error of 0.06 over 64: it reaches 0.5 by chance < 1 % of the time
    assert metrics[2]["reward/mean"] > 0.5, metrics[2]["reward/mean"]


def test_a_grpo_round_writes_the_run_folder(grpo_run):
    for k in (1, 2):
        names = {p.name for p in (grpo_run / f"round_{k}").iterdir()}
        assert {"samples.jsonl", "kept.jsonl", "adapter", "eval.jsonl", "metrics.json", "grpo_log.jsonl"} <= names
        assert "grpo" not in names and not [n for n in names if ".tmp-" in n or ".partial." in n]
    samples = read_jsonl(grpo_run / "round_1" / "samples.jsonl")
    assert len(samples) == 16 * 4 and len({(s["question_id"], s["sample"]) for s in samples}) == 64
    assert sorted({s["step"] for s in samples}) == list(range(8))  # 2 questions x 4 programs per step
    assert any(s["trace"] for s in samples)  # the programs called the primitive in the sandbox
    kept = read_jsonl(grpo_run / "round_1" / "kept.jsonl")
    assert kept and all(k["reward"] >= 1.0 for k in kept)
    assert {k["question_id"] for k in kept} == {s["question_id"] for s in samples if s["reward"] >= 1.0}
    m = json.loads((grpo_run / "round_1" / "metrics.json").read_text())
    for key in ("reward/mean", "exec/error_rate", "exec/error_rate/syntax", "eval/accuracy", "train/steps",
                "grpo/entropy", "grpo/reward_std", "filter/kept_frac", "time/train_s"):
        assert key in m, key
    assert m["train/steps"] == 8 and m["reward/mean"] == pytest.approx(sum(s["reward"] for s in samples) / 64)
    assert (grpo_run / "report.html").exists()
    import viprog

    library = viprog.load(grpo_run)
    assert set(library.question_ids()) >= {k["question_id"] for k in kept}


def launch(cfg, *extra):
    code = (f"import sys; sys.path.insert(0, {TESTS!r}); import selftrain_fixtures; from viprog.cli import main; "
            f"sys.exit(main({cli_args(cfg) + list(extra)!r}))")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # a second GRPO run in a subprocess, killed and resumed (~5 min on 2 loaded cores)
def test_a_killed_grpo_round_resumes_from_its_checkpoint(tiny_model, tmp_path):  # noqa: F811
    """SIGKILL after the step-2 checkpoint, in the middle of the round; `--resume` goes on
    from that checkpoint (rows sampled after it are sampled again, none twice), with the
    KL term on, and ends with a complete round."""
    cfg = grpo_config(tiny_model, tmp_path, rounds=1, grpo=GrpoOptions(questions_per_step=2, learning_rate=5e-3,
                                                                       save_steps=2, beta=0.04))
    args = ["--algo", "grpo", "--grpo.questions-per-step", "2", "--grpo.learning-rate", "5e-3",
            "--grpo.save-steps", "2", "--grpo.beta", "0.04"]
    run = tmp_path / "tiny"
    partial = run / "round_1" / "samples.partial.jsonl"
    proc = launch(cfg, *args)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if partial.exists() and any(r["step"] >= 3 for r in read_partial(partial)):  # past checkpoint-2
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert (run / "round_1" / "grpo" / "checkpoint-2" / "trainer_state.json").exists()
    assert not (run / "round_1" / "train.metrics.json").exists()
    before = {(r["question_id"], r["sample"]): r["completion"] for r in read_partial(partial) if r["step"] < 2}

    resumed = launch(cfg, *args, "--resume")
    _, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err
    assert "GRPO resumes from" in err and "checkpoint-2" in err
    samples = read_jsonl(run / "round_1" / "samples.jsonl")
    assert len(samples) == 64 and len({(s["question_id"], s["sample"]) for s in samples}) == 64
    assert [sum(s["step"] == i for s in samples) for i in range(8)] == [8] * 8
    kept = {(s["question_id"], s["sample"]): s["completion"] for s in samples if s["step"] < 2}
    assert kept == before  # steps 1-2 came from the checkpoint, not sampled again
    log = read_jsonl(run / "round_1" / "grpo_log.jsonl")
    assert [h["step"] for h in log if "loss" in h] == list(range(1, 9))
    m = json.loads((run / "round_1" / "metrics.json").read_text())
    assert m["train/steps"] == 8 and "grpo/kl" in m


@pytest.mark.parametrize("given", [{"executor": "ray"}, {"train_launcher": "accelerate launch"}, {"sampling": None}])
def test_settings_grpo_cannot_honour_are_refused(given, tmp_path):
    """Not silently ignored: the Ray executor and a train launcher (GRPO trains in this process),
    and groups of one program (no advantage)."""
    from viprog.config import SamplingSettings
    from viprog.errors import UsageError
    from viprog.grpo import check_options

    given = {k: (SamplingSettings(n=1) if v is None else v) for k, v in given.items()}
    cfg = dataclasses.replace(grpo_config("unused", tmp_path), **given)
    with pytest.raises(UsageError, match="--"):
        check_options(cfg)
    check_options(grpo_config("unused", tmp_path))  # the defaults are fine
