"""Restricted compile of an untrusted program, and the namespace it runs in.

Why: programs come from an LLM. Before anything runs, `check_program` parses the source
and applies a policy of RestrictedPython's strength (RestrictedPython's transformer
plus our own AST checks), so that a syntax or policy violation is reported with its
line number and never executes. What passes is compiled with RestrictedPython, which
routes every attribute read through `_getattr_`, every item read through `_getitem_`,
every attribute/item write through `_write_`, and `print` through `_print_`; the guards
here enforce the same policy at run time for what cannot be seen statically
(`getattr(x, "__cl" + "ass__")`, `"{0.__class__}".format(x)`).

The policy:
- imports: only the modules in `ALLOWED_IMPORTS` (`math`), checked statically and again
  by the `__import__` the program gets;
- no name or attribute that begins with `_`; no frame, generator, coroutine, traceback
  or code-object attributes (`gi_frame`, `f_back`, `tb_frame`, `co_code`, ...);
- no `open`, `exec`, `eval`, `compile`, `globals`, `locals`, `vars`, `type`, `object`,
  `setattr`, ... (they are absent from the builtins, and using one that the program did
  not define itself is a policy error before the run);
- `str.format` is allowed only with plain fields (`"{} {0} {name:>4}"`): a field that
  reads an attribute or an item (`{0.x}`, `{0[k]}`) is refused; `format_map` is refused;
- writes (`x.a = 1`, `x[k] = v`) only to lists, dicts, `ImagePatch` instances and
  instances of classes the program defined, never to modules, classes or functions, so
  one program cannot change what the next program in the same worker sees.

A violation caught at run time raises `PolicyViolation` and is recorded on the running
job, so a program that catches the exception is still reported as a policy error.
"""

from __future__ import annotations

import ast
import math
import operator
import string
import threading
from collections import OrderedDict
from collections.abc import Callable
from types import CodeType
from typing import Any

from RestrictedPython import compile_restricted_exec
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence, safe_builtins
from RestrictedPython.transformer import INSPECT_ATTRIBUTES, RestrictingNodeTransformer

from viprog.executor.result import ExecutionResult

ALLOWED_IMPORTS: dict[str, Any] = {"math": math}

#: builtins a program may not use unless it defines the name itself
FORBIDDEN_NAMES = frozenset({
    "open", "exec", "eval", "compile", "globals", "locals", "vars", "dir", "breakpoint", "input", "help",
    "exit", "quit", "memoryview", "type", "object", "super", "setattr", "delattr", "classmethod",
    "staticmethod", "property", "bytearray",
})

#: attributes that lead to frames, code objects or interpreter internals
FORBIDDEN_ATTRIBUTES = frozenset({
    "tb_frame", "tb_next", "f_back", "f_builtins", "f_code", "f_generator", "f_globals", "f_locals", "f_trace",
    "co_code", "gi_frame", "gi_code", "gi_yieldfrom", "cr_await", "cr_frame", "cr_code", "cr_origin",
    "ag_await", "ag_frame", "ag_code", "format_map", "mro",
})

ENTRY_POINT = "execute_command"
FILENAME = "<program>"
#: the decorator the compile puts on each generator function (the worker defines it)
TRACK_GENERATOR = "_track_generator_"


class PolicyViolation(Exception):
    """The program tried something the sandbox policy forbids (error kind `policy`)."""


#: per-thread record of the running job's violation: set by the guards, read by the worker
_violations = threading.local()


def _violate(message: str) -> PolicyViolation:
    if getattr(_violations, "first", None) is None:
        _violations.first = message
    return PolicyViolation(message)


def take_violation() -> str | None:
    """The first run-time policy violation of this thread's job since the last call."""
    message = getattr(_violations, "first", None)
    _violations.first = None
    return message


# -- static checks --------------------------------------------------------------------
#: attributes refused beyond those RestrictedPython already refuses
_EXTRA_ATTRIBUTES = FORBIDDEN_ATTRIBUTES - INSPECT_ATTRIBUTES
_ALLOWED = ", ".join(ALLOWED_IMPORTS)


class RestrictingTransformer(RestrictingNodeTransformer):
    """RestrictedPython's transformer plus our checks, in the same single pass over the AST:
    the import allow-list, the extra forbidden attributes, forbidden names a program does not
    bind itself, and the generator-tracking decorator."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bound: set[str] = set()
        self.loads: list[ast.Name] = []

    def visit_Import(self, node: ast.Import) -> Any:
        for alias in node.names:
            if alias.name not in ALLOWED_IMPORTS:
                self.error(node, f"import of {alias.name!r} is not allowed (allowed: {_ALLOWED})")
            self.bound.add((alias.asname or alias.name).split(".")[0])
        return super().visit_Import(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> Any:
        if node.module not in ALLOWED_IMPORTS or node.level:
            self.error(node, f"import from {node.module!r} is not allowed (allowed: {_ALLOWED})")
        self.bound.update(alias.asname or alias.name for alias in node.names)
        return super().visit_ImportFrom(node)

    def visit_Name(self, node: ast.Name) -> Any:
        if not isinstance(node.ctx, ast.Load):
            self.bound.add(node.id)
        elif node.id in FORBIDDEN_NAMES:
            self.loads.append(node)
        return super().visit_Name(node)

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        if node.attr in _EXTRA_ATTRIBUTES:
            self.error(node, f"attribute {node.attr!r} is not allowed")
        return super().visit_Attribute(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> Any:
        self.bound.add(node.name)
        node = super().visit_FunctionDef(node)
        if _yields(node.body):  # innermost decorator: the worker sees every generator it makes
            node.decorator_list.append(ast.copy_location(ast.Name(TRACK_GENERATOR, ast.Load()), node))
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> Any:
        self.bound.add(node.name)
        return super().visit_ClassDef(node)

    def visit_arg(self, node: ast.arg) -> Any:
        self.bound.add(node.arg)
        return super().visit_arg(node)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> Any:
        if node.name:
            self.bound.add(node.name)
        return super().visit_ExceptHandler(node)

    def visit_Module(self, node: ast.Module) -> Any:
        node = super().visit_Module(node)
        for name in self.loads:
            if name.id not in self.bound:
                self.error(name, f"{name.id!r} is not available to programs")
        return node


def _yields(body: list[ast.stmt]) -> bool:
    """Whether a function with this body is a generator function: a yield in its own scope
    (nested functions and classes are scopes of their own, their decorators and defaults not)."""
    todo: list[ast.AST] = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo += [*getattr(node, "decorator_list", ()), *node.args.defaults, *(d for d in node.args.kw_defaults if d)]
        elif isinstance(node, ast.ClassDef):
            todo += [*node.decorator_list, *node.bases, *node.keywords]
        else:
            todo += ast.iter_child_nodes(node)
    return False


def _line(error: str) -> int:
    head = error.split(":", 1)[0].split()
    return int(head[1]) if len(head) == 2 and head[1].isdigit() else 0


def _restricted(tree: ast.Module) -> tuple[CodeType | None, list[str]]:
    result = compile_restricted_exec(tree, filename=FILENAME, policy=RestrictingTransformer)
    errors = sorted({e[0].lower() + e[1:] if e.startswith("Line ") else e for e in result.errors}, key=_line)
    return result.code, errors


def compile_program(source: str) -> CodeType | ExecutionResult:
    """The restricted code object of `source`, or a `syntax` / `policy` failure."""
    if not isinstance(source, str):
        return ExecutionResult.failure("syntax", f"a program is a str of Python source, not {type(source).__name__}")
    try:
        tree = ast.parse(source, FILENAME)
    except SyntaxError as exc:
        return ExecutionResult.failure("syntax", f"line {exc.lineno}: SyntaxError: {exc.msg}")
    except ValueError as exc:  # e.g. null bytes in the source
        return ExecutionResult.failure("syntax", f"line 1: {exc}")
    has_entry = any(isinstance(n, ast.FunctionDef) and n.name == ENTRY_POINT for n in tree.body)
    code, errors = _restricted(tree)
    if code is not None and not errors:
        if not has_entry:
            return ExecutionResult.failure("syntax", f"line 1: the program must define {ENTRY_POINT}(image)")
        return code
    return ExecutionResult.failure("policy", "; ".join(errors[:3]))


def check_program(source: str) -> ExecutionResult | None:
    """A `syntax` or `policy` failure (with the line number) found before anything runs, else None."""
    compiled = compile_program(source)
    return compiled if isinstance(compiled, ExecutionResult) else None


class CodeCache:
    """Restricted code objects by source: programs repeat across examples, compiling is ~1 ms."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[str, CodeType | ExecutionResult] = OrderedDict()

    def get(self, source: str) -> CodeType | ExecutionResult:
        item = self._items.get(source)
        if item is None:
            item = self._items[source] = compile_program(source)
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(source)
        return item


# -- run-time guards ------------------------------------------------------------------
_RAISE = object()


def _check_format(fmt: str) -> None:
    for _, field, spec, _ in string.Formatter().parse(fmt):
        if field is not None and ("." in field or "[" in field):
            raise _violate(f"format field {{{field}}} reads an attribute or item: not allowed")
        if spec and "{" in spec:
            _check_format(spec)


def _safe_format(fmt: str) -> Callable[..., str]:
    def format(*args: Any, **kwargs: Any) -> str:
        _check_format(fmt)
        return str.format(fmt, *args, **kwargs)

    return format


def guarded_getattr(obj: Any, name: str, default: Any = _RAISE) -> Any:
    """`_getattr_` and the program's `getattr`: refuses private and introspection attributes."""
    if type(name) is not str:
        raise TypeError("attribute name must be a str")
    if name[:1] == "_" or name in FORBIDDEN_ATTRIBUTES:
        raise _violate(f"attribute {name!r} is not allowed")
    if name == "format":
        if isinstance(obj, str):
            return _safe_format(obj)
        if isinstance(obj, type) and issubclass(obj, str):
            raise _violate("str.format unbound is not allowed; use 'text'.format(...)")
    if default is _RAISE:
        return getattr(obj, name)
    return getattr(obj, name, default)


def guarded_hasattr(obj: Any, name: str) -> bool:
    try:
        guarded_getattr(obj, name)
    except AttributeError:
        return False
    return True


def _guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    if level or name not in ALLOWED_IMPORTS:
        raise _violate(f"import of {name!r} is not allowed")
    return ALLOWED_IMPORTS[name]


class _Discard:
    """`print` in programs: accepted and discarded (nothing leaves the worker but the answer)."""

    def __init__(self, _getattr_: Any = None) -> None:
        pass

    def _call_print(self, *objects: Any, **kwargs: Any) -> None:
        pass

    def __call__(self) -> str:
        return ""


def _write_guard(writable: tuple[type, ...]) -> Callable[[Any], Any]:
    def guard(ob: Any) -> Any:
        program_object = isinstance(ob, writable) or getattr(type(ob), "viprog_program_class", False) is True
        if program_object and not isinstance(ob, type):
            return ob
        raise _violate(f"cannot assign to attributes or items of {type(ob).__name__} objects")

    return guard


def _program_class(name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> type:
    cls = type(name, bases, namespace)
    cls.viprog_program_class = True  # type: ignore[attr-defined]
    return cls


_INPLACE: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow, "<<=": operator.ilshift,
    ">>=": operator.irshift, "&=": operator.iand, "|=": operator.ior, "^=": operator.ixor, "@=": operator.imatmul,
}


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    return _INPLACE[op](x, y)


def _apply(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return f(*args, **kwargs)


def base_namespace(extra: dict[str, Any], writable: tuple[type, ...]) -> dict[str, Any]:
    """The globals every program starts from (copy it per run): safe builtins, the guards,
    `math`, and `extra` (ImagePatch, helper functions, function primitives)."""
    builtins = {k: v for k, v in safe_builtins.items() if k not in FORBIDDEN_NAMES and not k.startswith("_")}
    builtins.update({
        "__build_class__": safe_builtins["__build_class__"], "__import__": _guarded_import,
        "getattr": guarded_getattr, "hasattr": guarded_hasattr,
        "list": list, "dict": dict, "set": set, "frozenset": frozenset, "tuple": tuple, "sorted": sorted,
        "reversed": reversed, "min": min, "max": max, "sum": sum, "any": any, "all": all, "enumerate": enumerate,
        "zip": zip, "map": map, "filter": filter, "iter": iter, "next": next,
    })
    return {
        "__builtins__": builtins, "__name__": "program", "__metaclass__": _program_class,
        "_getattr_": guarded_getattr, "_getitem_": lambda ob, index: ob[index], "_getiter_": iter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence, "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": _write_guard(writable), "_inplacevar_": _inplacevar, "_apply_": _apply, "_print_": _Discard,
        "math": math, **extra,
    }
