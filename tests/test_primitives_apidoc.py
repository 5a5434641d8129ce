"""The prompt's API section is generated from the ImagePatch class and the primitive specs."""

from __future__ import annotations

import ast
from collections.abc import Iterator

import pytest

from viprog.errors import UsageError
from viprog.primitives import ImagePatch, all_specs, primitive
from viprog.primitives.apidoc import GEOMETRY, HELPERS, api_section
from viprog.primitives.spec import SPECS

API_SPECS = [s for s in all_specs() if s.api]


def _defined(source: str) -> dict[str, str]:
    """name -> docstring of every function and method in a source text."""
    out = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
            out[node.name] = ast.get_docstring(node) or ""
    return out


def test_api_section_is_valid_python_with_an_imagepatch_class() -> None:
    tree = ast.parse(api_section())
    assert any(isinstance(n, ast.ClassDef) and n.name == "ImagePatch" for n in tree.body)


@pytest.mark.parametrize("spec", API_SPECS, ids=lambda s: s.name)
def test_every_api_primitive_appears_with_its_docstring(spec) -> None:
    assert _defined(api_section())[spec.name] == spec.doc


@pytest.mark.parametrize("name", GEOMETRY + HELPERS)
def test_geometry_and_helpers_appear_with_their_docstrings(name: str) -> None:
    assert _defined(api_section())[name]


def test_names_restrict_the_model_backed_primitives_shown() -> None:
    defined = _defined(api_section(names=["find", "simple_query"]))
    shown = {s.name for s in API_SPECS if s.name in defined}
    assert shown == {"find", "simple_query"}
    assert "crop" in defined  # geometry stays: every profile has it


def test_unknown_name_in_the_selection_is_a_usage_error_with_a_suggestion() -> None:
    with pytest.raises(UsageError, match="did you mean 'find'"):
        api_section(names=["fnd"])


def test_a_task_restricts_the_section_through_its_primitives() -> None:
    from viprog.tasks import TASKS, Task

    class OnlyExists(Task):
        primitives = ("exists",)

    TASKS.add("test-only-exists", OnlyExists)
    try:
        defined = _defined(api_section(task="test-only-exists"))
    finally:
        TASKS.remove("test-only-exists")
    assert "exists" in defined and "find" not in defined


def test_a_task_without_a_list_gets_what_its_default_profile_supports() -> None:
    from viprog.tasks import TASKS, Task

    class OnShapes(Task):
        default_profile = "shapes"

    TASKS.add("test-on-shapes", OnShapes)
    try:
        defined = _defined(api_section(task="test-on-shapes"))
    finally:
        TASKS.remove("test-on-shapes")
    assert "find" in defined and "compute_depth" not in defined


@pytest.fixture
def temporary_primitive() -> Iterator[str]:
    @primitive
    def count_corners(self, object_name: str) -> int:
        """Returns the number of corners of the object."""

    yield "count_corners"
    SPECS.pop("count_corners")
    delattr(ImagePatch, "count_corners")


def test_a_newly_registered_primitive_appears_in_the_section(temporary_primitive: str) -> None:
    assert _defined(api_section())[temporary_primitive] == "Returns the number of corners of the object."


def test_cli_prints_the_api_section(capsys) -> None:
    from viprog.cli import main

    assert main(["primitives", "--api"]) == 0
    assert capsys.readouterr().out.strip() == api_section().strip()
