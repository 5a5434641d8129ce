"""One contract, every registered primitive × every registered profile (tiny models).

A profile that supports a primitive answers it with the declared kind of result (boxes
inside the image, JSON-able values); one that does not raises a `primitive` error naming
itself. Arguments are made up from the spec's parameter names and annotations, so a newly
registered primitive (built-in, user's or a plugin's) is covered without new test code.
"""

from __future__ import annotations

import ast
import json
from typing import Any

import numpy as np
import pytest

from viprog.primitives import PROFILES, ImagePatch, PrimitiveError, all_specs, get_profile
from viprog.primitives.local import LocalServer
from viprog.primitives.patch import FUNCTIONS
from viprog.tasks.shapes_world import WorldConfig, render, sample_scene, scene_graph

BY_NAME = {"object_name": "circle", "attribute": "red", "option_list": ["red circle", "blue square"],
           "question": "What color is this?", "content": ["red circle"], "return_index": False,
           "long_answer": False}
BY_TYPE = {"str": "circle", "list[str]": ["circle", "square"], "bool": False, "int": 1, "float": 0.5}


def sample_args(spec: Any) -> list[Any]:
    """Arguments for every parameter after the patch(es): by name, else by annotation, else the default."""
    fn = ast.parse(f"def f{spec.signature}: pass").body[0]
    assert isinstance(fn, ast.FunctionDef)
    out = []
    for arg, (name, default) in zip(fn.args.args[1:], spec.params):
        annotation = ast.unparse(arg.annotation).replace(" ", "") if arg.annotation else ""
        out.append(BY_NAME.get(name, BY_TYPE.get(annotation, default)))
    return out


@pytest.fixture(scope="module")
def tiny_options(tiny_models_dir) -> dict[str, Any]:
    from viprog.primitives.backends.tiny import build_tiny_models

    return dict(build_tiny_models(tiny_models_dir))


@pytest.fixture(scope="module")
def profiles() -> dict[str, Any]:
    """One instance per profile for the module, so models load once."""
    return {}


@pytest.fixture(scope="module")
def image() -> tuple[np.ndarray, dict[str, Any]]:
    scene = sample_scene(WorldConfig(), "test", 0)
    return np.asarray(render(scene)), {"scene_graph": scene_graph(scene, margin=6)}


def _check_box(patch: Any, width: int, height: int) -> None:
    assert isinstance(patch, ImagePatch)
    assert 0 <= patch.left <= patch.right <= width and 0 <= patch.lower <= patch.upper <= height


@pytest.mark.parametrize("profile_name", PROFILES.names())
@pytest.mark.parametrize("spec", all_specs(), ids=lambda s: s.name)
def test_primitive_contract(spec: Any, profile_name: str, image: tuple[np.ndarray, dict[str, Any]],
                            profiles: dict[str, Any], request: pytest.FixtureRequest) -> None:
    if profile_name not in profiles:
        options = request.getfixturevalue("tiny_options") if profile_name == "neural" else {}
        profiles[profile_name] = get_profile(profile_name, **options)
    profile = profiles[profile_name]
    pixels, meta = image
    with LocalServer(profile) as server:
        ref = server.add_image("img", pixels, meta)
        whole, half = ImagePatch(ref), ImagePatch(ref, 0, 0, ref.width // 2, ref.height)
        args = sample_args(spec)
        call = (lambda: getattr(whole, spec.name)(*args)) if spec.owner == "patch" else (
            lambda: FUNCTIONS[spec.name]([whole, half], *args))
        if not profile.supports(spec.name):
            with pytest.raises(PrimitiveError, match=repr(profile_name)):
                call()
            return
        result = call()
    if spec.returns == "patches":
        assert isinstance(result, list)
        for patch in result:
            _check_box(patch, ref.width, ref.height)
    elif spec.returns == "patch":
        _check_box(result, ref.width, ref.height)
    else:
        json.dumps(result)
        assert result is not None
