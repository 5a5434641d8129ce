"""The self-training loop end to end with a tiny Qwen2 policy on the toy counting task:
a full 2-round run, what it writes, that held-out accuracy rises, and the refusal to
clobber a run. (Resume after kills: test_selftrain_resume.py.)"""

import json

import pytest

# not slow: builds and pre-trains a tiny model, then one 2-round run shared by the tests (~1-2 min)
import selftrain_fixtures as F

from viprog.cli import main
from viprog.config import SamplingSettings
from viprog.finetune import LoraSettings, TrainSettings
from viprog.runs import read_jsonl
from viprog.selftrain import main as selftrain
from viprog.selftrain_config import SelfTrainConfig


def tiny_config(model, data_dir, runs_dir, **overrides):
    base = {"task": "toy-count", "data_dir": str(data_dir), "policy": "hf", "model": str(model), "rounds": 2,
            "questions_per_round": 16, "sampling": SamplingSettings(n=4), "max_new_tokens": 40, "base_prompt": "short",
            "tuned_prompt": "short", "library_shots": 0, "eval_size": 24,
            "train": TrainSettings(epochs=8.0, batch_size=4, learning_rate=1e-2),
            "lora": LoraSettings(r=8, alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                "up_proj", "down_proj")),
            "workers": 1, "seed": 0, "runs_dir": str(runs_dir), "run_name": "tiny"}
    return SelfTrainConfig(**(base | overrides))


def cli_args(cfg):
    return ["selftrain", "--task", cfg.task, "--data-dir", cfg.data_dir, "--policy", cfg.policy, "--model", cfg.model,
            "--rounds", str(cfg.rounds), "--questions-per-round", str(cfg.questions_per_round),
            "--sampling.n", str(cfg.sampling.n), "--max-new-tokens", str(cfg.max_new_tokens),
            "--base-prompt", "short", "--tuned-prompt", "short", "--library-shots", "0", "--eval-size",
            str(cfg.eval_size), "--lora.r", str(cfg.lora.r), "--lora.alpha", str(cfg.lora.alpha),
            "--lora.target-modules", *cfg.lora.target_modules, "--train.learning-rate", str(cfg.train.learning_rate),
            "--train.epochs", str(cfg.train.epochs), "--train.batch-size", str(cfg.train.batch_size),
            "--workers", "1", "--runs-dir", cfg.runs_dir, "--run-name", cfg.run_name]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Right for circles (greedy), right 30% of the time for the other shapes."""
    from viprog.policy import Prompter

    out = tmp_path_factory.getbasetemp() / "tiny-policy"  # built once per session, shared by modules
    if not (out / "model.safetensors").exists():
        F.build_tiny_policy(out, Prompter("", []).short, {"circle": 0.8, "square": 0.2, "triangle": 0.2, "star": 0.2})
    return out


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = tiny_config(tiny_model, root / "data", root)
    assert selftrain(cfg) == 0
    return root / "tiny"


def test_a_round_writes_every_artifact(finished_run):
    assert sorted(p.name for p in (finished_run / "round_0").iterdir()) == ["eval.jsonl", "eval.metrics.json",
                                                                           "metrics.json"]
    for k in (1, 2):
        names = {p.name for p in (finished_run / f"round_{k}").iterdir()}
        assert {"samples.jsonl", "kept.jsonl", "adapter", "eval.jsonl", "metrics.json"} <= names
        assert not [n for n in names if ".tmp-" in n]
    assert [m["round"] for m in read_jsonl(finished_run / "metrics.jsonl")] == [0, 1, 2]
    assert (finished_run / "report.html").exists() and (finished_run / "library.jsonl").exists()


def test_samples_are_executed_and_rewarded(finished_run):
    samples = read_jsonl(finished_run / "round_1" / "samples.jsonl")
    assert len(samples) == 16 * 4
    assert all(s["reward"] in (0.0, 1.0) for s in samples)
    assert any(s["trace"] for s in samples)  # programs called the primitive through the sandbox


def test_kept_programs_are_the_rewarded_ones_without_duplicates(finished_run):
    samples = read_jsonl(finished_run / "round_1" / "samples.jsonl")
    kept = read_jsonl(finished_run / "round_1" / "kept.jsonl")
    assert kept and all(k["reward"] >= 1.0 for k in kept)
    assert len({(k["question_id"], k["program"]) for k in kept}) == len(kept)
    solved = {s["question_id"] for s in samples if s["reward"] >= 1.0}
    assert {k["question_id"] for k in kept} == solved
    assert all(sum(k["question_id"] == q for k in kept) <= 2 for q in solved)  # cap per question


def test_metrics_are_namespaced(finished_run):
    metrics = json.loads((finished_run / "round_1" / "metrics.json").read_text())
    for key in ("reward/mean", "eval/accuracy", "eval/accuracy/circle", "exec/error_rate", "exec/error_rate/syntax",
                "filter/kept_frac", "filter/unique_programs", "sample/tokens_per_s", "sample/programs_per_s",
                "time/sample_s", "time/train_s", "time/eval_s", "memory/peak_rss_mb", "train/loss_last"):
        assert key in metrics, key
    assert metrics["policy/engine"] == "transformers"  # which engine sampled is part of the record


def test_held_out_accuracy_rises_after_a_round_of_self_training(finished_run):
    """The base policy is right only for circles (greedy: 25%); after one round of keeping
    its rewarded samples and fine-tuning on them, it answers more held-out questions."""
    acc = [m["eval/accuracy"] for m in read_jsonl(finished_run / "metrics.jsonl")]
    assert 0 < acc[0] <= 0.5
    assert acc[1] >= acc[0] + 0.25, acc


def test_the_library_holds_the_kept_programs(finished_run):
    import viprog

    lib = viprog.load(finished_run)
    kept = read_jsonl(finished_run / "round_1" / "kept.jsonl") + read_jsonl(finished_run / "round_2" / "kept.jsonl")
    assert set(lib.question_ids()) == {k["question_id"] for k in kept}


def test_a_second_run_with_the_same_name_is_refused(finished_run, capsys):
    cfg = json.loads((finished_run / "config.json").read_text())
    code = main(["selftrain", "--task", "toy-count", "--policy", "hf", "--model", cfg["model"], "--runs-dir",
                 str(finished_run.parent), "--run-name", "tiny"])
    assert code == 2 and "--resume" in capsys.readouterr().err
