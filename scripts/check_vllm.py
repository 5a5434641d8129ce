"""Check every vLLM name and keyword the `vllm` policy uses against an installed vLLM.

Why: nothing in the test suite runs vLLM (it needs a CUDA GPU), so a keyword vLLM renamed or
dropped would only show on a GPU machine, at the first sample. This script reads the calls
viprog/policy/vllm.py makes (by parsing it: no viprog import, so it runs in a bare vLLM
environment) and checks each one against the package: with `inspect` when `import vllm`
works here, else, or with --ast, by parsing the installed package's source, which needs no
GPU and imports nothing. `make check-vllm` installs the supported vLLM into .venv-vllm and
runs both.

    python scripts/check_vllm.py [--ast] [--source DIR] [--backend FILE]

Exit status: 0 every name found, 1 something missing, 2 vLLM not found.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

BACKEND = Path(__file__).resolve().parent.parent / "viprog" / "policy" / "vllm.py"
ENGINE_ATTRS = ("llm", "_llm")  # where VLLMPolicy keeps its `vllm.LLM`: calls on these are LLM methods
FORWARDS = {"LLM": "EngineArgs"}  # LLM(**kwargs) hands unknown keywords on to EngineArgs (vllm/entrypoints/llm.py)
# Keywords the README tells users to pass through --policy-options (vLLM across GPUs and nodes, over Ray):
# VLLMPolicy hands them to LLM(**engine_options), so they are in no call of the backend's source.
PASSED_THROUGH = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "distributed_executor_backend")
# Fields read from results rather than passed in a call: generate's outputs, one per prompt, and their completions.
READS = (("RequestOutput", ("outputs",)), ("CompletionOutput", ("text",)))


@dataclasses.dataclass(frozen=True)
class Use:
    """One call into vLLM: its target relative to the package ("LLM", "LLM.sleep",
    "lora.request.LoRARequest"), the keywords given and how many positional arguments."""

    target: str
    keywords: tuple[str, ...]
    positional: int = 0
    line: int = 0


@dataclasses.dataclass(frozen=True)
class Params:
    """What a callable accepts: parameter names in order (self dropped), and whether it takes **kwargs / *args."""

    names: tuple[str, ...]
    var_keyword: bool = False
    var_positional: bool = False


def backend_uses(path: Path = BACKEND) -> list[Use]:
    """The vLLM calls in the backend: `vllm.X(...)` (the module is bound to the name `vllm`), names
    imported from vllm modules, and methods called on the engine attributes; plus the result fields."""
    tree = ast.parse(path.read_text(), filename=str(path))
    imported: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vllm":
            prefix = node.module.partition(".")[2]
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{prefix}.{alias.name}" if prefix else alias.name
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (target := _target(node.func, imported)):
            keywords = tuple(k.arg for k in node.keywords if k.arg is not None)  # **options cannot be checked
            positional = sum(not isinstance(a, ast.Starred) for a in node.args)
            uses.append(Use(target, keywords, positional, node.lineno))
    return sorted(uses, key=lambda u: u.line) + [Use(name, fields) for name, fields in READS]


def _target(func: ast.expr, imported: dict[str, str]) -> str | None:
    if isinstance(func, ast.Name):
        return imported.get(func.id)
    if not isinstance(func, ast.Attribute):
        return None
    owner = func.value
    if isinstance(owner, ast.Name) and owner.id == "vllm":
        return func.attr
    engine = (isinstance(owner, ast.Attribute) and owner.attr in ENGINE_ATTRS) or (
        isinstance(owner, ast.Name) and owner.id in ENGINE_ATTRS)
    return f"LLM.{func.attr}" if engine else None


# -- what the installed package accepts: by inspect --------------------------------------------
def _params_of_object(obj: object) -> Params:
    fields = getattr(obj, "__struct_fields__", None)  # msgspec.Struct (SamplingParams, LoRARequest)
    if fields is not None:
        return Params(tuple(fields))
    if isinstance(obj, type) and dataclasses.is_dataclass(obj):
        return Params(tuple(f.name for f in dataclasses.fields(obj) if f.init))
    signature = inspect.signature(obj)  # type: ignore[arg-type]
    kinds = [p.kind for p in signature.parameters.values()]
    names = tuple(n for n, p in signature.parameters.items()
                  if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self")
    return Params(names, inspect.Parameter.VAR_KEYWORD in kinds, inspect.Parameter.VAR_POSITIONAL in kinds)


def inspect_resolver(package: str = "vllm") -> Callable[[str], Params]:
    root = importlib.import_module(package)

    def resolve(target: str) -> Params:
        parts = target.split(".")
        obj: object = root
        for split in range(len(parts) - 1, 0, -1):  # the longest prefix that is a submodule: vllm.lora.request
            try:
                obj = importlib.import_module(f"{package}.{'.'.join(parts[:split])}")
            except ModuleNotFoundError:
                continue
            parts = parts[split:]
            break
        for part in parts:
            obj = getattr(obj, part)
        return _params_of_object(obj)

    return resolve


# -- what the installed package accepts: by reading its source ---------------------------------
def _exports(package_dir: Path) -> dict[str, str]:
    """Top-level name -> module (relative to the package) from the package's __init__: lazy
    'name': '.module:Name' tables and `from .module import Name` lines."""
    tree = ast.parse((package_dir / "__init__.py").read_text())
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant) and isinstance(value.value, str) \
                        and ":" in value.value:
                    module, _, attr = value.value.partition(":")
                    if attr == key.value:
                        found[attr] = module.removeprefix(".").removeprefix(f"{package_dir.name}.")
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module if node.level else node.module.partition(".")[2]
            if node.level or node.module.split(".")[0] == package_dir.name:
                for alias in node.names:
                    found.setdefault(alias.asname or alias.name, module)
    return found


def _class_in(module_file: Path, name: str) -> ast.ClassDef:
    for node in ast.parse(module_file.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise LookupError(f"no class {name} in {module_file}")


def _function_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> Params:
    args = fn.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    return Params(tuple(n for n in names if n not in ("self", "cls")), args.kwarg is not None, args.vararg is not None)


def _class_params(cls: ast.ClassDef) -> Params:
    """__init__'s parameters; without one (a dataclass or msgspec.Struct) the annotated class fields."""
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            return _function_params(node)
    return Params(tuple(node.target.id for node in cls.body
                        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                        and "ClassVar" not in ast.unparse(node.annotation)))


def source_resolver(package_dir: Path) -> Callable[[str], Params]:
    exports = _exports(package_dir)

    def resolve(target: str) -> Params:
        parts = target.split(".")
        if parts[0] in exports:  # LLM, LLM.generate, SamplingParams
            module, names = exports[parts[0]], parts
        else:  # lora.request.LoRARequest
            split = next(i for i in range(len(parts), 0, -1)
                         if _module_file(package_dir, ".".join(parts[:i])) is not None)
            module, names = ".".join(parts[:split]), parts[split:]
        file = _module_file(package_dir, module)
        if file is None:
            raise LookupError(f"no module {module} in {package_dir}")
        cls = _class_in(file, names[0])
        if len(names) == 1:
            return _class_params(cls)
        for node in cls.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == names[1]:
                return _function_params(node)
        raise LookupError(f"no method {names[1]} in class {names[0]} ({file})")

    return resolve


def _module_file(package_dir: Path, module: str) -> Path | None:
    base = package_dir.joinpath(*module.split(".")) if module else package_dir
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def source_version(package_dir: Path) -> str:
    for name in ("_version.py", "version.py"):
        file = package_dir / name
        if file.is_file():
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                        and any(isinstance(t, ast.Name) and t.id in ("__version__", "version") for t in node.targets):
                    return str(node.value.value)
    return "unknown"


# -- the check ---------------------------------------------------------------------------------
def check(uses: Iterable[Use], resolve: Callable[[str], Params], source: str = BACKEND.name) -> list[str]:
    """One line per use, "ok ..." or "MISSING ... (source:line)"."""
    lines = []
    for use in uses:
        where = f"{source}:{use.line}" if use.line > 0 else ("result field" if use.line == 0 else "--policy-options")
        try:
            params = resolve(use.target)
        except (LookupError, AttributeError, ImportError) as exc:
            lines.append(f"MISSING {use.target}: {exc} ({where})")
            continue
        accepted = set(params.names)
        unknown = [k for k in use.keywords if k not in accepted]
        forward = FORWARDS.get(use.target)
        if unknown and params.var_keyword and forward:
            accepted |= set(resolve(forward).names)
            unknown = [k for k in unknown if k not in accepted]
        problems = [f"no keyword {k!r}" for k in unknown]
        if use.positional > len(params.names) and not params.var_positional:
            problems.append(f"{use.positional} positional arguments, it takes {len(params.names)}")
        shown = f"{use.target}({', '.join(use.keywords)})"
        lines.append(f"MISSING {shown}: {'; '.join(problems)} ({where})" if problems else f"ok      {shown}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ast", action="store_true", help="read the package source instead of importing it")
    parser.add_argument("--source", type=Path, help="a vllm package folder to read (implies --ast)")
    parser.add_argument("--backend", type=Path, default=BACKEND, help="the backend module to read the calls from")
    args = parser.parse_args(argv)
    uses = [*backend_uses(args.backend), Use("LLM", PASSED_THROUGH, line=-1)]
    package_dir = args.source
    mode = "source" if args.ast or package_dir else "inspect"
    if package_dir is None:
        spec = importlib.util.find_spec("vllm")
        if spec is None or not spec.submodule_search_locations:
            print("check_vllm: vLLM is not installed in this environment; run `make check-vllm` "
                  "(or pass --source DIR)", file=sys.stderr)
            return 2
        package_dir = Path(next(iter(spec.submodule_search_locations)))
    version = source_version(package_dir)
    resolve = source_resolver(package_dir)
    if mode == "inspect":
        try:
            resolve = inspect_resolver()
            version = importlib.metadata.version("vllm")
        except Exception as exc:  # noqa: BLE001 - any import failure (no GPU, no driver) means: read the source
            print(f"check_vllm: `import vllm` failed here ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                  "reading its source instead")
            mode = "source"
    lines = check(uses, resolve, args.backend.name)
    print("\n".join(lines))
    missing = sum(line.startswith("MISSING") for line in lines)
    names = sum(len(u.keywords) + 1 for u in uses)
    print(f"check_vllm: vllm {version} ({mode}, {package_dir}): {len(uses)} uses, {names} names, "
          f"{missing} missing")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
