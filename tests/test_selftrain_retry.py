"""--sampling.retry: a round's train questions whose first programs gave the filter nothing
to keep are sampled again, and only those; the new programs are numbered on after the first
ones in samples.jsonl, counted in the step's metrics, and kept by the filter like any other.
A scripted policy writes a wrong program for most questions in the first draw and the right
one in the retry, so which question is retried and what that adds is known."""

import json
from collections import Counter

import pytest

# registers the toy-count task and its profile
import selftrain_fixtures as F

from viprog.config import SamplingSettings
from viprog.errors import UsageError
from viprog.library import Library
from viprog.primitives.profile import PROFILES
from viprog.rollout import build
from viprog.runs import Run, read_json, read_jsonl
from viprog.selftrain import Context, filter_step, sample_step, step
from viprog.selftrain_config import SelfTrainConfig, resolve_config


def wrong_first(policy, retry_program=None):
    """Programs for a query: the right one for circles always; for the other shapes the wrong
    one in the first draw and the right one (or `retry_program`) in the retry (n=3)."""
    def programs(query):
        shape = next(s for s in F.SHAPES if f"{s}s" in query)
        if shape != "circle" and policy.calls[-1][1].n == 3:
            return [retry_program or F.right_program(shape)]
        return [F.right_program(shape) if shape == "circle" else F.wrong_program(shape)]
    return programs


class FragileProfile(F.ToyProfile):
    """The toy profile, except that finding a unicorn fails inside the primitive."""

    name = "toy-fragile"

    def find(self, calls):
        if any(str(call.args[0]) == "unicorn" for call in calls):
            raise RuntimeError("no unicorn detector")
        return super().find(calls)


if "toy-fragile" not in PROFILES:
    PROFILES.add("toy-fragile", FragileProfile)
UNICORN = 'def execute_command(image):\n    return len(ImagePatch(image).find("unicorn"))\n'


def round_one(tmp_path, retry, n=2, profile=None, retry_program=None):
    programs = tmp_path / "programs.jsonl"
    programs.write_text(json.dumps({"query": F.query_for("circle"), "program": F.right_program("circle")}) + "\n")
    task = F.ToyCountTask(tmp_path / "data")
    cfg = resolve_config(SelfTrainConfig(task="toy-count", data_dir=str(tmp_path / "data"), policy="scripted",
                                         model=str(programs), questions_per_round=8,
                                         sampling=SamplingSettings(n=n, retry=retry), base_prompt="short",
                                         profile=profile,
                                         library_shots=0, workers=1, runs_dir=str(tmp_path), run_name="r"), task)
    parts = build(cfg, task=task)
    parts.policy.programs = wrong_first(parts.policy, retry_program)
    run = Run(tmp_path / "r")
    run.round_dir(1).mkdir(parents=True, exist_ok=True)
    ctx = Context(cfg, run, parts, task.examples("train"), task.examples("test", limit=4))
    try:
        metrics = step(ctx, 1, "sample", sample_step, Library([]), False)
        metrics |= step(ctx, 1, "filter", filter_step)
    finally:
        parts.close()
    return run, metrics


def test_only_questions_with_nothing_kept_are_sampled_again(tmp_path):
    run, metrics = round_one(tmp_path, retry=3)
    samples = read_jsonl(run.artifact(1, "samples.jsonl"))
    by_question = Counter(r["question_id"] for r in samples)
    circles = {r["question_id"] for r in samples if r["question_type"] == "circle"}
    assert len(by_question) == 8 and 0 < len(circles) < 8
    for qid, count in by_question.items():
        assert count == (2 if qid in circles else 2 + 3), qid  # right at once: no retry
    retried = [r for r in samples if r["sample"] >= 2]
    assert {r["sample"] for r in retried} == {2, 3, 4}  # numbered on after the first two
    assert all(r["reward"] == 1.0 for r in retried) and all(
        r["reward"] == 0.0 for r in samples if r["sample"] < 2 and r["question_id"] not in circles)
    assert not run.has(1, "retries.jsonl")  # moved into samples.jsonl
    assert metrics["sample/retry_questions"] == 8 - len(circles) == metrics["sample/retry_questions_kept"]
    assert metrics["sample/retry_programs"] == 3 * (8 - len(circles)) and metrics["sample/retry_questions_lost"] == 0
    assert metrics["sample/programs"] == len(samples)  # the round's total: first draw and retries
    kept = read_jsonl(run.artifact(1, "kept.jsonl"))
    assert {r["question_id"] for r in kept} == set(by_question)  # every question now has training data
    assert read_json(run.artifact(1, "filter.metrics.json"))["filter/samples"] == len(samples)


def test_without_retry_the_round_samples_n_per_question(tmp_path):
    run, metrics = round_one(tmp_path, retry=0)
    samples = read_jsonl(run.artifact(1, "samples.jsonl"))
    assert len(samples) == 2 * 8 and max(r["sample"] for r in samples) == 1
    assert "sample/retry_questions" not in metrics
    assert {r["question_type"] for r in read_jsonl(run.artifact(1, "kept.jsonl"))} == {"circle"}


def test_retry_is_refused_when_negative_or_with_grpo():
    with pytest.raises(UsageError, match="--sampling.retry must be ≥ 0"):
        resolve_config(SelfTrainConfig(sampling=SamplingSettings(retry=-1)))
    with pytest.raises(UsageError, match="is for --algo rest"):
        resolve_config(SelfTrainConfig(algo="grpo", sampling=SamplingSettings(retry=2)))


def test_a_retry_in_which_every_program_fails_in_a_primitive_is_not_fatal(tmp_path):
    """The retried questions were chosen for failing; when all their new programs fail inside
    a primitive the round goes on with what the first draw kept (a whole rollout failing so
    is still an error: `check_primitives_answered`)."""
    run, metrics = round_one(tmp_path, retry=3, profile="toy-fragile", retry_program=UNICORN)
    retried = [r for r in read_jsonl(run.artifact(1, "samples.jsonl")) if r["sample"] >= 2]
    assert retried and {r["error_kind"] for r in retried} == {"primitive"}
    assert metrics["sample/retry_questions_kept"] == 0
    assert {r["question_type"] for r in read_jsonl(run.artifact(1, "kept.jsonl"))} == {"circle"}


def test_retries_are_numbered_after_the_first_draw_that_is_there(tmp_path):
    """A step redone with a smaller --sampling.n finds the first draw's partial file with the
    old number of programs a question: the retries are numbered after those, so no two rows of
    a question share a sample number and the filter copies exactly the rows it chose."""
    run, _ = round_one(tmp_path, retry=3, n=2)
    for name in ("sample.metrics.json", "filter.metrics.json", "samples.jsonl", "kept.jsonl"):
        run.artifact(1, name).unlink()
    run, _ = round_one(tmp_path, retry=3, n=1)  # the same run folder: samples.partial.jsonl is reused
    samples = read_jsonl(run.artifact(1, "samples.jsonl"))
    slots = [(r["question_id"], r["sample"]) for r in samples]
    assert len(slots) == len(set(slots))
    assert read_json(run.artifact(1, "filter.metrics.json"))["filter/kept"] == len(read_jsonl(run.artifact(1, "kept.jsonl")))
