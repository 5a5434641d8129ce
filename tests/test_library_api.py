"""The program library as an API: viprog.load(run_dir), lib.program(id)(image), lib.solve."""

import json

import pytest
import selftrain_fixtures as F

import viprog
from viprog.errors import UsageError
from viprog.library import Library
from viprog.runs import Run, write_json_atomic, write_jsonl_atomic
from viprog.tasks import TASKS


@pytest.fixture
def lib(tmp_path):
    task = TASKS.get("toy-count")(data_dir=tmp_path / "data")
    examples = task.examples("train")
    scripted = tmp_path / "policy.jsonl"  # what the "tuned policy" writes for new queries
    scripted.write_text(json.dumps({"query": F.query_for("star"), "program": F.right_program("star")}) + "\n")
    run = Run(tmp_path / "run")
    write_json_atomic(run.config_path, {"task": "toy-count", "data_dir": str(tmp_path / "data"), "policy": "scripted",
                                        "model": str(scripted), "profile": None, "library_shots": 1})
    circle = next(ex for ex in examples if ex.question_type == "circle")
    write_jsonl_atomic(run.artifact(1, "kept.jsonl"), [{"question_id": circle.id, "query": circle.query,
                                                        "program": F.right_program("circle"), "reward": 1.0}])
    Library.write(run, [1])
    with viprog.load(run.root) as library:
        yield library, examples, circle


def test_load_returns_the_kept_programs(lib):
    library, _, circle = lib
    assert len(library) == 1 and library.question_ids() == [circle.id]
    assert library.program(circle.id).program == F.right_program("circle")


def test_a_stored_program_is_a_callable_that_runs_in_the_sandbox(lib):
    library, examples, circle = lib
    other = next(ex for ex in examples if ex.question_type == "circle" and ex.id != circle.id)
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(other.image).convert("RGB"))
    out = library.program(circle.id)(pixels)
    # the toy profile counts from annotations, so without them the answer is 0 — but it ran
    assert out.ok and out.answer == 0 and out.trace[0]["primitive"] == "find" and out.source == "library"


def test_solve_reuses_the_stored_program_of_a_known_query(lib):
    library, _, circle = lib
    out = library.solve(circle.image, "how many CIRCLES are there")
    assert out.source == "library" and out.question_id == circle.id and out.program == F.right_program("circle")


def test_solve_asks_the_policy_for_a_new_query(lib):
    library, _, circle = lib
    out = library.solve(circle.image, F.query_for("star"))
    assert out.source == "policy" and out.ok and 'find("star")' in out.program


def test_an_unknown_question_id_names_close_ones(lib):
    library, _, circle = lib
    with pytest.raises(KeyError, match="did you mean"):
        library.program(circle.id + "x")


def test_loading_a_folder_that_is_not_a_run_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not a self-training run"):
        viprog.load(tmp_path)


def test_few_shot_examples_come_from_similar_queries(lib):
    library, _, circle = lib
    assert library.examples("How many circles are there?", 2) == [(circle.query, F.right_program("circle"))]
    assert library.examples("How many circles are there?", 2, exclude=[circle.id]) == []


def test_solve_prompts_the_policy_as_the_runs_evaluation_does(lib, monkeypatch):
    """No adapter in this run, so the base prompt style: short when the run's evaluation used
    the short prompt, else few-shot with the library's similar programs (a new query has
    no stored program of its own to leave out)."""
    import viprog.library

    library, _, circle = lib
    seen = []
    monkeypatch.setattr(viprog.library, "write_program",
                        lambda policy, prompt, params, style: seen.append(prompt) or F.right_program("star"))
    asked = F.query_for("star")
    library.config["base_prompt"] = "short"
    library.solve(circle.image, asked)
    prompter = library._get_policy()[1]
    assert seen[-1] == prompter.short(asked)
    library.config["base_prompt"] = "few-shot"
    library.solve(circle.image, asked)
    assert seen[-1] == prompter.few_shot(asked, extra=library.examples(asked, 1)) and circle.query in seen[-1]
    shown, prompt_fn = [], viprog.library.prompt_fn
    monkeypatch.setattr(viprog.library, "prompt_fn", lambda p, style, shots, n: shown.append(shots) or prompt_fn(
        p, style, shots, n))
    library.solve(circle.image, asked)
    library.config["eval_library"] = False  # a run that evaluated few-shot alone: so does solve
    library.solve(circle.image, asked)
    assert shown == [library, None] and seen[-1] == prompter.few_shot(asked)
