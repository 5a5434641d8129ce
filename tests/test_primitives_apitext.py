"""The API text the LLM reads: our own words, examples that are valid programs, no test leak.

The docstrings of `primitives/api.py` and `primitives/patch.py` are the prompt's API
section. Their examples are programs the model imitates, so each must pass the sandbox's
static check, and none may be a question of the shapes task's val or test split (the
Prompter leaves out few-shot examples for the asked question, but the API text is shown
to every question).
"""

from __future__ import annotations

import ast
import re
import textwrap

import pytest

from viprog.executor import check_program
from viprog.policy.prompts import normalize_query
from viprog.primitives.apidoc import api_section

API = api_section()
#: "# Query: ..." then an indented execute_command, inside a docstring
EXAMPLE = re.compile(r"^(?P<indent> *)# Query: (?P<query>.+)\n(?P<body>(?:(?P=indent)def execute_command.*\n)"
                     r"(?:(?P=indent) {4}.*\n)+)", re.MULTILINE)


def _examples() -> list[tuple[str, str]]:
    docs = [ast.get_docstring(n) or "" for n in ast.walk(ast.parse(API))
            if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    return [(m["query"], textwrap.dedent(m["body"])) for doc in docs for m in EXAMPLE.finditer(doc + "\n")]


EXAMPLES = _examples()


def test_the_api_text_has_an_example_for_every_model_backed_primitive_it_shows() -> None:
    assert len(EXAMPLES) >= 8
    for name in ("find", "exists", "verify_property", "best_text_match", "simple_query", "compute_depth",
                 "best_image_match", "llm_query", "distance"):
        assert any(f"{name}(" in body for _, body in EXAMPLES), name


@pytest.mark.parametrize(("query", "body"), EXAMPLES, ids=[q for q, _ in EXAMPLES])
def test_every_example_is_a_program_the_sandbox_accepts(query: str, body: str) -> None:
    assert check_program(body) is None


@pytest.mark.parametrize("split", ["val", "test"])
def test_no_example_query_is_a_question_the_shapes_task_evaluates(split: str) -> None:
    from viprog.tasks import TASKS

    asked = {normalize_query(ex.query) for ex in TASKS.get("shapes")(progress=False).examples(split)}
    assert [q for q, _ in EXAMPLES if normalize_query(q) in asked] == []


@pytest.mark.parametrize("phrase", ["foo", "garply", "baz", "fredding", "quux", "letters",
                                    "contained in the crop", "best matches the image",
                                    "presupposes the existence", "basic question asked about the image",
                                    "median depth of the image crop", "cropped from the current ImagePatch",
                                    "centered around a particular object", "formatted string with a variable"])
def test_the_api_text_does_not_carry_vipergpt_prompt_wording(phrase: str) -> None:
    assert phrase.lower() not in API.lower()


def test_docs_replace_a_members_docstring_and_leave_the_rest() -> None:
    swapped = api_section(docs={"find": "Finds things.", "ImagePatch": "A region."})
    tree = ast.parse(swapped)
    docs = {n.name: ast.get_docstring(n) for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert docs["find"] == "Finds things." and docs["ImagePatch"] == "A region."
    assert docs["exists"] == {n.name: ast.get_docstring(n) for n in ast.walk(ast.parse(API))
                              if isinstance(n, ast.FunctionDef)}["exists"]
