"""The docs' "add your own primitive" example works as written: registered, documented,
answered by a profile, and callable inside the sandbox."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import test_docs_examples as docs
from PIL import Image

from viprog.primitives import ImagePatch, all_specs
from viprog.primitives.apidoc import api_section
from viprog.primitives.local import run_unsandboxed
from viprog.primitives.spec import SPECS

PROGRAM = "def execute_command(image):\n    return ImagePatch(image).crop(0, 0, 10, 10).brightness()"


def example_source() -> str:
    return docs.example("add-a-primitive")


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    path = tmp_path_factory.mktemp("example") / "my_primitives.py"
    path.write_text(example_source())
    spec = importlib.util.spec_from_file_location("my_primitives", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["my_primitives"] = module
    spec.loader.exec_module(module)
    yield module
    SPECS.pop("brightness", None)
    delattr(ImagePatch, "brightness")
    sys.modules.pop("my_primitives", None)


PIXELS = np.full((32, 32, 3), 51, np.uint8)
PIXELS[22:, :10] = 255  # the bottom-left 10 x 10 corner is white


def test_the_example_is_about_twenty_lines() -> None:
    assert len(example_source().strip().splitlines()) <= 25


def test_the_example_registers_a_listed_primitive(example: ModuleType) -> None:
    assert "brightness" in {s.name for s in all_specs()}


def test_the_example_appears_in_the_generated_api(example: ModuleType) -> None:
    assert "def brightness(self) -> float:" in api_section()


@pytest.mark.parametrize("profile", ["shapes", "scene-graph"])
def test_the_example_is_answered_by_every_profile_from_pixels(example: ModuleType, profile: str) -> None:
    assert run_unsandboxed(PROGRAM, PIXELS, profile, meta={"scene_graph": {"objects": {}}}) == pytest.approx(1.0)


def test_the_example_runs_inside_the_sandbox(example: ModuleType) -> None:
    from viprog.executor import Executor, Job

    with Executor("shapes", workers=1) as executor:
        result = executor.run(Job(PROGRAM, image_id="img", image=PIXELS))
    assert result.ok, result.error
    assert result.answer == pytest.approx(1.0)


def test_the_usage_example_runs_on_a_photo(example: ModuleType, tmp_path: Path) -> None:
    Image.fromarray(PIXELS).save(tmp_path / "photo.png")
    _, printed = docs.run_block("use-a-primitive", tmp_path)
    assert float(printed) == pytest.approx(PIXELS.mean() / 255.0)
