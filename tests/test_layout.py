"""The code's layout, checked from its source: no first-party import cycle, imports at
module level except for the heavy third-party packages, modules of a readable size.

Why a test: a cycle between our own modules can be hidden by moving one of its imports
into a function, and it then stays, unnoticed, until someone moves it back. These checks
read the AST of every first-party module (nothing is imported), so they cost nothing to
run and they name the file and line to fix.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: source folder → the import name it is installed under (pyproject's package-dir)
PACKAGES = {"viprog": "viprog", "primitives": "viprog.primitives", "tasks": "viprog.tasks"}
SCRIPTS = ("selftrain.py",)

#: Third-party packages a function may import when it needs them. Each one costs seconds
#: or a GPU stack at import time (or is optional, an extra that may not be installed), so
#: importing it at module level would make `viprog --help`, the sandbox workers and every
#: test pay for it.
HEAVY = frozenset({
    "torch", "torchvision",  # seconds to import; CUDA initialisation
    "transformers", "peft", "trl", "accelerate", "datasets",  # each pulls torch in
    "vllm", "ray",  # optional extras (gpu, dist)
    "llama_cpp",  # optional extra (engine), a compiled library
    # the shapes profile's perception: OpenCV and scikit-image's colour module (which pulls in
    # scipy) take 0.8-0.9 s each to import on the 2-core dev machine
    "cv2", "skimage",
    # PIL: the primitives package, its profiles and the prompt's API section are built
    # without it (test_primitives_patch checks), since most of them never touch pixels
    "PIL",
    "open_clip", "ultralytics",  # the neural profile's models; each imports torch
    "pycocotools", "pycocoevalcap",  # optional, dev extra: captioning and grounding metrics
})

#: First-party imports a function may make although the module is light, with the reason.
LAZY_ON_PURPOSE = {
    ("viprog", "viprog.library"): "`viprog.load`: the package itself imports nothing, since every sandbox worker "
                                  "imports it (viprog.executor.worker) and must not load the library, policy and tasks",
}

#: Modules allowed past MAX_LINES, each with the reason it stays whole.
LONG_MODULES: dict[str, str] = {}
MAX_LINES = 500


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the dotted module imported
    line: int
    local: bool  # inside a function or class body


def module_files() -> dict[str, Path]:
    """Dotted module name → file, for every first-party module."""
    out: dict[str, Path] = {}
    for folder, name in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([name, *parts])] = path
    for script in SCRIPTS:
        out[Path(script).stem] = ROOT / script
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import the module runs (type-checking-only imports aside), with where it sits."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit_one(sub, local)
                continue
            visit_one(child, local)

    def visit_one(node: ast.AST, local: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(module, alias.name, node.lineno, local) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            # `from package import submodule` imports the submodule
            subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
            found.extend(Import(module, name, node.lineno, local) for name in subs or [target])
        else:
            inner = local or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
            visit(node, inner)

    visit(tree, False)
    return found


def all_imports() -> list[Import]:
    files = module_files()
    known = set(files)
    return [imp for name, path in files.items() for imp in imports_of(name, path, known)]


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def first_party_graph(imports: list[Import]) -> dict[str, dict[str, Import]]:
    """importer → {imported first-party module: the import}. Importing `a.b.c` also runs
    the packages `a` and `a.b`: those count too, except the importer's own packages (a
    module importing a sibling is initialised by its package, not the other way round)."""
    known = set(module_files())
    graph: dict[str, dict[str, Import]] = {name: {} for name in known}
    for imp in imports:
        own = set(_ancestors(imp.importer))
        for target in [*_ancestors(imp.target), imp.target]:
            if target in known and target != imp.importer and target not in own:
                graph[imp.importer].setdefault(target, imp)
    return graph


def find_cycle(graph: dict[str, dict[str, Import]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := dfs(start)):
            return cycle
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, Import]]) -> str:
    steps = []
    for a, b in itertools.pairwise(cycle):
        imp = graph[a][b]
        steps.append(f"{a} -> {b} (line {imp.line}{', in a function' if imp.local else ''})")
    return "; ".join(steps)


# -- the checks --------------------------------------------------------------------------
def test_the_walk_finds_the_modules_and_their_imports() -> None:
    files = module_files()
    assert {"viprog.rollout", "viprog.primitives.patch", "viprog.tasks.shapes", "selftrain"} <= set(files)
    targets = {imp.target for imp in all_imports() if imp.importer == "viprog.rollout"}
    assert "viprog.executor.result" in targets  # a module-level `from viprog.executor.result import ...`


def test_find_cycle_reports_the_path() -> None:
    fake = Import("a", "b", 1, False)
    graph = {"a": {"b": fake}, "b": {"c": fake}, "c": {"a": fake}, "d": {"a": fake}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": fake}, "b": {}}) is None


def test_no_first_party_import_cycle() -> None:
    graph = first_party_graph(all_imports())
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {describe(cycle, graph)}"


def heavy_modules(imports: list[Import]) -> set[str]:
    """First-party modules that import a heavy package at module level, directly or
    through another such module: importing one costs what importing the package costs."""
    top = [imp for imp in imports if not imp.local]
    heavy: set[str] = set()
    while True:
        more = {imp.importer for imp in top if imp.target.split(".")[0] in HEAVY or imp.target in heavy} - heavy
        if not more:
            return heavy
        heavy |= more


def test_function_local_imports_are_heavy_only() -> None:
    """A function imports only what is heavy to import (HEAVY, or a first-party module that
    imports it at module level) or what LAZY_ON_PURPOSE names; everything else is imported
    at the top, where a reader sees what the module depends on."""
    files, imports = module_files(), all_imports()
    heavy = heavy_modules(imports)
    bad = [f"{files[imp.importer].relative_to(ROOT)}:{imp.line}: import {imp.target}" for imp in imports
           if imp.local and imp.target.split(".")[0] not in HEAVY and imp.target not in heavy
           and (imp.importer, imp.target) not in LAZY_ON_PURPOSE]
    assert not bad, "move these imports to the top of their module:\n" + "\n".join(bad)


def test_heavy_modules_are_found_through_first_party_imports() -> None:
    imports = [Import("a", "torch", 1, False), Import("b", "a", 1, False), Import("c", "b", 1, True)]
    assert heavy_modules(imports) == {"a", "b"}  # c imports b only inside a function


def test_modules_are_of_a_readable_size() -> None:
    long = {}
    for name, path in module_files().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and name not in LONG_MODULES:
            long[name] = lines
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"
