"""bench/data/shapes_hard_corrections.jsonl, the hand-written correction pool of the
shapes-hard comparison: at most 20 programs, each for a train question (none held out), for
the question types the base policy fails (relation chains, existence, either-or, verify,
choose), each accepted by `--corrections` and right in the sandbox on its own question."""

from pathlib import Path

import pytest

from viprog.corrections import check_held_out, load_corrections
from viprog.rollout import execute_programs, load_images
from viprog.tasks import TASKS

PATH = Path(__file__).resolve().parents[1] / "bench" / "data" / "shapes_hard_corrections.jsonl"


@pytest.fixture(scope="module")
def pool():
    task = TASKS.get("shapes-hard")(progress=False)
    return task, load_corrections(PATH, "shapes-hard"), {ex.id: ex for ex in task.examples("train")}


def test_a_small_pool_of_train_questions_over_the_hard_types(pool):
    task, corrections, train = pool
    assert 1 <= len(corrections) <= 20
    for c in corrections:
        ex = train[c.question_id]
        assert (c.task, c.query, c.question_type) == ("shapes-hard", ex.query, ex.question_type)
        assert c.note
    check_held_out(corrections, [ex.id for ex in task.examples("test")], PATH)  # raises for a held-out question
    assert {"relate_query", "count_relation", "exist_relation", "logic_or", "exist", "verify_attr"} <= {
        c.question_type for c in corrections}
    assert len({c.question_id for c in corrections}) == len(corrections)


@pytest.mark.parametrize("profile", ["shapes", "scene-graph"])
def test_every_program_runs_and_is_right(pool, profile):
    """Under the pixels' perception (`shapes`, what self-training runs with) and under the
    annotations (`scene-graph`, the program's logic alone)."""
    task, corrections, train = pool
    examples = [train[c.question_id] for c in corrections]
    rows = execute_programs(task, examples, {c.question_id: [(c.program, c.program)] for c in corrections},
                            profile=profile, images=load_images(task, examples), workers=1, desc="")
    assert len(rows) == len(corrections)
    wrong = [(r["question_id"], r["error"] or r["answer"], r["gold"]) for r in rows if r["reward"] < 1.0]
    assert not wrong
