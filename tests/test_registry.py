"""The registry's contract: duplicates, did-you-mean, laziness, entry points."""

from __future__ import annotations

import sys
import textwrap

import pytest

from viprog.registry import DuplicateNameError, Registry, RegistryError, UnknownNameError


def test_decorator_registers_under_its_name() -> None:
    reg: Registry[type] = Registry("widget")

    @reg.register("spinner")
    class Spinner:
        pass

    assert reg.get("spinner") is Spinner
    assert reg.names() == ["spinner"]


def test_duplicate_name_is_an_error() -> None:
    reg: Registry[object] = Registry("widget")
    reg.add("a", object())
    with pytest.raises(DuplicateNameError, match="'a' is already registered"):
        reg.add("a", object())


def test_unknown_name_suggests_the_closest() -> None:
    reg: Registry[object] = Registry("task")
    for name in ("shapes", "gqa", "refcoco", "sugarcrepe"):
        reg.add(name, object())
    with pytest.raises(UnknownNameError) as info:
        reg.get("shapse")
    message = str(info.value)
    assert "unknown task 'shapse'" in message and "did you mean 'shapes'" in message
    assert "\n" not in message


def test_lazy_target_imports_nothing_until_asked(tmp_path, monkeypatch) -> None:
    (tmp_path / "lazy_mod_for_registry_test.py").write_text("LOADED = True\nclass Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[type] = Registry("thing")
    reg.add("thing", "lazy_mod_for_registry_test:Thing")
    assert "lazy_mod_for_registry_test" not in sys.modules
    assert reg.names() == ["thing"] and not reg.entry("thing").loaded
    cls = reg.get("thing")
    assert cls.__name__ == "Thing" and "lazy_mod_for_registry_test" in sys.modules


def test_malformed_lazy_target_is_a_clear_error() -> None:
    reg: Registry[object] = Registry("thing")
    reg.add("x", "no_colon_here")
    with pytest.raises(RegistryError, match="must look like 'package.module:object'"):
        reg.get("x")


def _fake_distribution(root, name: str, group: str, entries: dict[str, str], module: str, source: str) -> None:
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (dist / "entry_points.txt").write_text(f"[{group}]\n{lines}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


def test_entry_point_group_registers_lazily(tmp_path, monkeypatch) -> None:
    _fake_distribution(tmp_path, "viprog_fake_tasks", "viprog.tests.fake", {"mytask": "fake_task_mod:MyTask"},
                       "fake_task_mod", "class MyTask:\n    name = 'mytask'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[type] = Registry("task", group="viprog.tests.fake")
    assert "mytask" in reg.names()
    assert "fake_task_mod" not in sys.modules
    assert reg.get("mytask").__name__ == "MyTask"
    assert reg.meta("mytask")["dist"] == "viprog_fake_tasks"


def test_third_party_primitive_through_entry_point(tmp_path, monkeypatch) -> None:
    """A distribution that lists a module in `viprog.primitives` adds a primitive to the API."""
    from viprog.primitives import ImagePatch, spec

    _fake_distribution(tmp_path, "viprog_fake_prims", "viprog.primitives", {"glow": "fake_prim_mod"}, "fake_prim_mod",
                       '''
                       from viprog.primitives import primitive

                       @primitive
                       def glow_level(self) -> float:
                           """Returns how bright the patch is, from 0 to 1."""
                           return float(self.pixels.mean()) / 255
                       ''')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(spec, "_plugins_loaded", False)
    try:
        names = [s.name for s in spec.all_specs()]
        assert "glow_level" in names
        assert callable(ImagePatch.glow_level)
        assert spec.get_spec("glow_level").has_impl
    finally:
        spec.SPECS.pop("glow_level", None)
        if hasattr(ImagePatch, "glow_level"):
            delattr(ImagePatch, "glow_level")
