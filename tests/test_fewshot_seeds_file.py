"""bench/data/shapes_seeds_guarded.jsonl, the guarded variant of the shapes few-shot examples
that `bench/policy_accuracy.py --seeds FILE` measures against the task's own: the same
queries, no `find(...)[0]` without an emptiness check first, and programs that run without an
error on scenes where the examples in tasks/seeds.py crash."""

import ast
import importlib
import sys
from pathlib import Path

import pytest

from viprog.rollout import execute_programs, load_images
from viprog.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
PATH = ROOT / "bench" / "data" / "shapes_seeds_guarded.jsonl"
sys.path.insert(0, str(ROOT / "bench"))


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("policy_accuracy")


@pytest.fixture(scope="module")
def task():
    return TASKS.get("shapes")(progress=False)


def unguarded_index(program: str) -> list[int]:
    """Lines that index a `find(...)` call's result directly."""
    return [node.lineno for node in ast.walk(ast.parse(program)) if isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Call) and getattr(node.value.func, "attr", None) == "find"]


def test_the_file_is_the_task_examples_guarded(bench, task):
    guarded = bench.seed_programs(task, str(PATH), "shapes")
    own = bench.seed_programs(task, "task", "shapes")
    assert [q for q, _ in guarded] == [q for q, _ in own]
    assert sum(bool(unguarded_index(p)) for _, p in own) >= 5  # what the variant is about
    assert all(not unguarded_index(p) for _, p in guarded)


def test_a_missing_file_is_one_clear_line(bench, task):
    with pytest.raises(SystemExit, match="--seeds nope.jsonl: no such file"):
        bench.seed_programs(task, "nope.jsonl", "shapes")


def crashes(task, programs, examples):
    """(query, question id) pairs whose program ends in an error on that example's image."""
    images = load_images(task, examples)
    out = set()
    for query, program in programs:
        rows = execute_programs(task, examples, {ex.id: [(program, program)] for ex in examples}, profile="shapes",
                                images=images, workers=1, desc="")
        out |= {(query, r["question_id"]) for r in rows if r["error_kind"]}
    return out


def test_guarded_examples_run_where_the_task_examples_crash(bench, task):
    examples = task.examples("train", limit=12)
    own = crashes(task, bench.seed_programs(task, "task", "shapes"), examples)
    guarded = crashes(task, bench.seed_programs(task, str(PATH), "shapes"), examples)
    assert own, "no scene without a seed's object: the check below would prove nothing"
    assert not guarded


def test_each_arm_is_paired_with_the_first_question_by_question(bench, tmp_path):
    rewards = {"first": [1, 0, 0, 1], "other": [0, 1, 1, 1]}  # other: +1 -1 +1 0 on the same questions
    rows = [{"arm": arm, "question_id": f"q{i}", "reward": r} for arm, rs in rewards.items() for i, r in enumerate(rs)]
    rows.append({"arm": "other", "question_id": "q9", "reward": 1.0})  # no partner in the first arm: left out
    out = bench.paired(rows)
    assert list(out) == ["other"] and out["other"]["versus"] == "first" and out["other"]["n"] == 4
    assert out["other"]["mean"] == pytest.approx(0.25) and (out["other"]["wins"], out["other"]["losses"]) == (2, 1)
    lo, hi = out["other"]["ci95"]
    assert lo < 0.25 < hi


def test_paired_from_a_missing_file_is_one_clear_line(bench, tmp_path, monkeypatch):
    report = tmp_path / "r.json"
    report.write_text('{"runs": [], "arms": {}}')
    monkeypatch.setattr(sys, "argv", ["policy_accuracy.py", "--paired-from", "nope.jsonl", "--json", str(report)])
    with pytest.raises(SystemExit, match="--paired-from nope.jsonl: no such file"):
        bench.main()


def rows_of(rewards):
    return [{"arm": arm, "question_id": f"q{i}", "reward": r} for arm, rs in rewards.items() for i, r in enumerate(rs)]


def test_merge_pairs_the_new_arms_with_the_earlier_report_first_arm(bench, tmp_path):
    import json

    earlier_out = tmp_path / "earlier.jsonl"
    earlier_out.write_text("".join(json.dumps(r) + "\n" for r in rows_of({"first": [1, 0, 0, 1], "second": [1, 1, 0, 1]})))
    earlier = {"runs": [{"out": str(earlier_out)}], "arms": {"first": {}, "second": {}},
               "paired": bench.paired(bench.read_rows(str(earlier_out)))}
    rows = rows_of({"third": [0, 1, 1, 1]})
    new = {"runs": [{"out": str(tmp_path / "new.jsonl")}], "arms": {"third": {}}}
    merged = bench.merge_report(earlier, new, rows)
    assert list(merged["arms"]) == ["first", "second", "third"] and len(merged["runs"]) == 2
    assert merged["paired"]["third"]["versus"] == "first" and merged["paired"]["third"]["mean"] == pytest.approx(0.25)
    assert merged["paired"]["second"]["mean"] == pytest.approx(0.25)


def test_merge_keeps_the_earlier_pairs_when_its_rows_are_gone(bench, tmp_path, capsys):
    earlier = {"runs": [{"out": str(tmp_path / "overwritten.jsonl")}], "arms": {"first": {}, "second": {}},
               "paired": {"second": {"versus": "first", "mean": 0.5}}}
    rows = rows_of({"third": [0, 1], "fourth": [1, 1]})
    new = {"runs": [{"out": str(tmp_path / "new.jsonl")}], "arms": {"third": {}, "fourth": {}},
           "paired": bench.paired(rows)}
    merged = bench.merge_report(earlier, new, rows)
    assert merged["paired"]["second"] == {"versus": "first", "mean": 0.5}
    assert merged["paired"]["fourth"]["versus"] == "third"
    assert "not paired" in capsys.readouterr().out and "third" not in merged["paired"]
