"""Every registered task: a real default profile, default splits it has, ≤ 8 seed programs that
compile, a docstring."""

from __future__ import annotations

import ast

import pytest

from viprog.primitives import PROFILES
from viprog.tasks import TASKS

BUILTIN = ["gqa", "jsonl", "refcoco", "shapes", "shapes-captions", "shapes-hard", "shapes-refer", "sugarcrepe"]


def test_the_built_in_tasks_are_registered():
    assert set(BUILTIN) <= set(TASKS.names())


@pytest.mark.parametrize("name", BUILTIN)
def test_default_profile_is_registered(name):
    assert TASKS.get(name).default_profile in PROFILES


@pytest.mark.parametrize("name", BUILTIN)
def test_seed_programs_are_few_and_define_execute_command(name):
    seeds = TASKS.get(name)().seed_programs()
    assert 1 <= len(seeds) <= 8
    for query, program in seeds:
        tree = ast.parse(program)
        assert query and [f.name for f in tree.body if isinstance(f, ast.FunctionDef)] == ["execute_command"]


@pytest.mark.parametrize("name", BUILTIN)
def test_a_one_line_description_exists(name):
    assert (TASKS.get(name).__doc__ or "").strip().splitlines()[0]


def test_shapes_seed_queries_are_not_test_questions(tmp_path):
    task = TASKS.get("shapes")(data_dir=tmp_path / "w", questions={"train": 10, "val": 5, "test": 300}, progress=False)
    test_queries = {ex.query for ex in task.examples("test")}
    assert not test_queries & {q for q, _ in task.seed_programs()}


@pytest.mark.parametrize("name", [n for n in BUILTIN if n != "jsonl"])  # jsonl's splits are its folder's files
def test_default_splits_are_splits_of_the_task(name):
    task = TASKS.get(name)()
    assert len(task.default_splits) == 2 and set(task.default_splits) <= set(task.splits())


def test_gqa_holds_out_val_and_shapes_test():
    assert TASKS.get("gqa").default_splits == ("train", "val")  # testdev: the final viprog eval
    assert TASKS.get("shapes").default_splits == TASKS.get("shapes-hard").default_splits == ("train", "test")
