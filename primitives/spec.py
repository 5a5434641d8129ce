"""Primitive specs: what a primitive is called, its signature and docstring, what it returns.

A primitive is declared once, with one decorator, on a function whose signature and
docstring are what the LLM sees in the prompt's API section:

    @primitive
    def find(self, object_name: str) -> list[ImagePatch]:
        '''The patches of the objects called object_name ...'''

The body, if any, is the profile-agnostic implementation; it runs in the parent (the
PrimitiveServer, next to the pixels) and receives a `Call` per request. Declaring a
primitive without a body (`...`) means profiles must implement it (a method of the same
name on the `Profile` class). `PrimitiveSpec` is plain data so the sandbox workers can
build `ImagePatch` methods from it without running any user code.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal

from viprog.registry import DuplicateNameError, UnknownNameError

Returns = Literal["patches", "patch", "value"]
Owner = Literal["patch", "function"]


class _Shown(str):
    """An annotation kept as text (postponed annotations), shown unquoted."""

    def __repr__(self) -> str:
        return str(self)


def signature_text(fn: Callable[..., object]) -> str:
    """The signature as a program would write it: annotations unquoted, defaults as
    literals (`question: str = 'What is this?'`)."""
    sig = inspect.signature(fn)

    def shown(annotation: object) -> object:
        return _Shown(annotation) if isinstance(annotation, str) else annotation

    params = [p.replace(annotation=shown(p.annotation)) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=shown(sig.return_annotation)))


@dataclass(frozen=True)
class PrimitiveSpec:
    """Plain-data description of one primitive (picklable, JSON-able)."""

    name: str
    signature: str  # e.g. "(self, object_name: str) -> list[ImagePatch]"
    params: tuple[tuple[str, Any], ...]  # (name, default or REQUIRED) after self / patches
    doc: str
    returns: Returns = "value"
    owner: Owner = "patch"  # an ImagePatch method, or a module-level function over patches
    batched: bool = False  # the generic implementation takes a list of Calls
    api: bool = True  # shown in the prompt's API section
    has_impl: bool = False  # a profile-agnostic implementation exists

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "signature": self.signature,
            "params": [[n, None if d is REQUIRED else d] for n, d in self.params],
            "required": [n for n, d in self.params if d is REQUIRED],
            "doc": self.doc,
            "returns": self.returns,
            "owner": self.owner,
        }


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"

    def __reduce__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

#: name -> (spec, generic implementation or None); filled by @primitive at import time.
SPECS: dict[str, tuple[PrimitiveSpec, Callable[..., Any] | None]] = {}


def _returns_of(annotation: Any) -> Returns:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = str(text).replace(" ", "")
    if text in ("list[ImagePatch]", "List[ImagePatch]"):
        return "patches"
    if text == "ImagePatch":
        return "patch"
    return "value"


def _stub() -> None:
    """A body-less function: its bytecode is what "no implementation" looks like."""


def _has_body(fn: Callable[..., Any]) -> bool:
    """False when the function body is only a docstring and/or `...`."""
    return fn.__code__.co_code not in (_stub.__code__.co_code, (lambda: None).__code__.co_code)


def primitive(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    owner: Owner = "patch",
    batched: bool = False,
    api: bool = True,
) -> Any:
    """Declare a primitive. Use bare (`@primitive`) or with options (`@primitive(batched=True)`).

    - `owner="patch"`: the first parameter is the patch (`self`); the primitive becomes an
      `ImagePatch` method. `owner="function"`: the first parameter is a list of patches;
      it becomes a module-level helper such as `best_image_match(list_patches, content)`.
    - `batched=True`: the generic implementation receives `list[Call]` and returns one
      result per call; otherwise it receives one `Call` and returns one result.
    - `api=False`: callable from programs but left out of the prompt's API section.
    """

    def declare(f: Callable[..., Any]) -> Callable[..., Any]:
        key = name or f.__name__
        if key in SPECS:
            raise DuplicateNameError(f"primitive {key!r} is already registered")
        sig = inspect.signature(f)
        params = list(sig.parameters.values())[1:]
        spec = PrimitiveSpec(
            name=key,
            signature=signature_text(f),
            params=tuple(
                (p.name, REQUIRED if p.default is inspect.Parameter.empty else p.default) for p in params
            ),
            doc=inspect.cleandoc(f.__doc__ or ""),
            returns=_returns_of(sig.return_annotation),
            owner=owner,
            batched=batched,
            api=api,
            has_impl=_has_body(f),
        )
        if not spec.doc:
            raise ValueError(f"primitive {key!r} needs a docstring: it is the LLM's documentation")
        SPECS[key] = (spec, f if spec.has_impl else None)
        _on_register(spec)
        return f

    return declare(fn) if fn is not None else declare


_listeners: list[Callable[[PrimitiveSpec], None]] = []


def _on_register(spec: PrimitiveSpec) -> None:
    for listener in _listeners:
        listener(spec)


def on_register(listener: Callable[[PrimitiveSpec], None]) -> None:
    """Call `listener(spec)` for every primitive registered now and later."""
    _listeners.append(listener)
    for spec, _ in list(SPECS.values()):
        listener(spec)


_plugins_loaded = False


def load_plugins() -> None:
    """Import the modules that third-party distributions list in the `viprog.primitives`
    entry-point group (their `@primitive` declarations register on import). Runs once, on
    the first enumeration or the first lookup of an unknown name."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True

    for ep in metadata.entry_points(group="viprog.primitives"):
        ep.load()


def get_spec(name: str) -> PrimitiveSpec:
    if name not in SPECS:
        load_plugins()
    try:
        return SPECS[name][0]
    except KeyError:
        close = difflib.get_close_matches(name, SPECS, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownNameError(f"unknown primitive {name!r}{hint}") from None


def all_specs() -> list[PrimitiveSpec]:
    load_plugins()
    return [spec for spec, _ in SPECS.values()]


def generic_impl(name: str) -> Callable[..., Any] | None:
    return SPECS[name][1] if name in SPECS else None
