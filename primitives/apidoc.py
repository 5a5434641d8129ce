"""The prompt's API section, generated from the `ImagePatch` class and the primitive specs.

Why generated: the text the LLM reads must be exactly the API the sandbox runs. A
hand-copied API (ViperGPT's habit) drifts from the code; here every signature and
docstring comes from the objects themselves, so registering a primitive adds it to the
prompt, and a task that names its primitives (`Task.primitives`) gets an API section
that lists only those. The output is a ViperGPT-style Python stub: the `ImagePatch` class
with its attributes, geometry and model-backed methods, then the module-level helpers.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence

from viprog.errors import UsageError
from viprog.primitives import patch as _patch
from viprog.primitives.profile import get_profile
from viprog.primitives.spec import PrimitiveSpec, all_specs, signature_text
from viprog.tasks import TASKS

#: ImagePatch members that need no model: shown in every API section (every profile has them)
GEOMETRY: tuple[str, ...] = ("area", "crop", "overlaps_with", "crop_left_of_bbox", "crop_right_of_bbox",
                             "crop_above_bbox", "crop_below_bbox", "from_bounding_box")
#: module-level helpers that need no model
HELPERS: tuple[str, ...] = ("distance", "bool_to_yesno", "coerce_to_numeric")


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line.strip() else "" for line in text.splitlines())


def _docstring(doc: str, prefix: str) -> str:
    return _indent(f'"""{doc.strip()}\n"""' if "\n" in doc.strip() else f'"""{doc.strip()}"""', prefix)


def _method_stub(name: str, signature: str, doc: str, decorator: str | None = None) -> str:
    head = f"    @{decorator}\n" if decorator else ""
    return f"{head}    def {name}{signature}:\n{_docstring(doc, '        ')}\n"


def _function_stub(name: str, signature: str, doc: str) -> str:
    return f"def {name}{signature}:\n{_docstring(doc, '    ')}\n"


def selected_specs(names: Sequence[str] | None) -> list[PrimitiveSpec]:
    """The API-visible specs, restricted to `names` (geometry and helper names are accepted
    and always shown); an unknown name is a `UsageError` naming the known ones."""
    specs = [s for s in all_specs() if s.api]
    if names is None:
        return specs
    known = {s.name for s in specs} | set(GEOMETRY) | set(HELPERS)
    unknown = [n for n in names if n not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UsageError(f"unknown primitive {unknown[0]!r} in the API selection{hint}; "
                         f"see `viprog primitives` for the registered ones")
    wanted = set(names)
    return [s for s in specs if s.name in wanted]


def api_section(task: str | None = None, names: Sequence[str] | None = None,
                docs: Mapping[str, str] | None = None) -> str:
    """The prompt's API section as Python source: the `ImagePatch` class stub and the helpers.

    task: a registered task; its `primitives` restrict the model-backed primitives shown,
        and when it names none, those its default profile lacks are left out.
    names: an explicit restriction (wins over the task's). Geometry (crop, area, ...) and
    helpers (distance, bool_to_yesno, coerce_to_numeric) are always shown.
    docs: docstrings to show instead of the objects' own, by member name ("ImagePatch" for
        the class): how `bench/policy_accuracy.py` puts another API text beside this one.
    """
    if names is None and task is not None:
        cls = TASKS.get(task)
        names = cls.primitives
        if names is None:
            profile = get_profile(cls.default_profile)  # constructing a profile loads no model
            names = [s.name for s in all_specs() if s.api and profile.supports(s.name)]
    specs = selected_specs(names)
    shown = dict(docs or {})

    def doc(name: str, obj: object) -> str:
        return shown[name] if name in shown else inspect.getdoc(obj) or ""

    cls = _patch.ImagePatch
    parts = [f"class ImagePatch:\n{_docstring(doc('ImagePatch', cls), '    ')}\n",
             _method_stub("__init__", signature_text(cls.__init__), doc("__init__", cls.__init__))]
    for name in GEOMETRY:
        member = inspect.getattr_static(cls, name)
        if isinstance(member, property):
            parts.append(_method_stub(name, signature_text(member.fget), doc(name, member), "property"))
        elif isinstance(member, classmethod):
            parts.append(_method_stub(name, signature_text(member.__func__), doc(name, member.__func__), "classmethod"))
        else:
            parts.append(_method_stub(name, signature_text(member), doc(name, member)))
    parts += [_method_stub(s.name, s.signature, shown.get(s.name, s.doc)) for s in specs if s.owner == "patch"]
    functions = [_function_stub(s.name, s.signature, shown.get(s.name, s.doc)) for s in specs if s.owner == "function"]
    functions += [_function_stub(n, signature_text(getattr(_patch, n)), doc(n, getattr(_patch, n))) for n in HELPERS]
    return "\n".join(parts) + "\n\n" + "\n\n".join(functions)
