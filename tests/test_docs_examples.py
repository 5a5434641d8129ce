"""Every Python example in the README and in docs/ runs as written.

Why: a newcomer copies these blocks first; an example that drifted from the API is the
first thing they see break. Each ```python block must carry a name
(`<!-- example: NAME -->` on the line before it) and a runner here, or be named in
ELSEWHERE with the test that runs it. A runner prepares only what the example assumes
(an image on disk, a run folder, the examples of a split) and then executes the block
verbatim; the embedded-model example also runs with the tiny Qwen2 in the plain suite
and as written in the slow suite.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NAMED = re.compile(r"<!-- example: ([\w-]+) -->\s*```python\n(.*?)```", re.DOTALL)
ELSEWHERE = {"add-a-primitive": "tests/test_primitives_extend.py",
             "use-a-primitive": "tests/test_primitives_extend.py",
             "plug-in-your-own-model": "tests/test_reinforce_demos.py"}


def examples() -> dict[str, str]:
    found: dict[str, str] = {}
    for page in PAGES:
        for name, code in NAMED.findall(page.read_text()):
            assert name not in found, f"two examples are named {name!r}"
            found[name] = code
    return found


def example(name: str) -> str:
    """The source of the named example (imported by the tests in ELSEWHERE too)."""
    return examples()[name]


def run_block(name: str, cwd: Path, namespace: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """Execute the named block in `cwd`; returns its namespace and what it printed."""
    namespace = dict(namespace or {})
    out = io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out):
        exec(compile(example(name), f"<example {name}>", "exec"), namespace)  # noqa: S102 -- running the docs is the test
    return namespace, out.getvalue()


def test_every_python_block_is_a_named_example() -> None:
    for page in PAGES:
        text = page.read_text()
        assert text.count("```python") == len(NAMED.findall(text)), \
            f"{page.relative_to(ROOT)}: a ```python block without <!-- example: NAME --> before it"


def test_every_example_has_a_runner() -> None:
    assert set(examples()) == set(RUNNERS) | set(ELSEWHERE)


def shapes_examples(split: str, limit: int) -> list[Any]:
    from viprog.tasks import TASKS

    return TASKS.get("shapes")().examples(split, limit=limit)


def run_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns, printed = run_block("executor", tmp_path)
    assert len(ns["results"]) == 4 and len(printed.splitlines()) == 4
    circles = [sum(o["name"] == "circle" for o in ex.meta["scene_graph"]["objects"].values()) for ex in ns["examples"]]
    assert [r.answer for r in ns["results"]] == ["yes" if n > 1 else "no" for n in circles]


def run_reference_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns, printed = run_block("reference-program", tmp_path)
    assert ns["ex"].question_type == "relate_query" and printed.startswith(ns["ex"].query)
    assert ns["result"].ok and ns["reward"] == 1.0


def tiny_load_policy(tmp_path: Path) -> Callable[..., Any]:
    from viprog.policy import load_policy
    from viprog.policy.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path / "tiny")
    return lambda *args, **kwargs: load_policy("hf", model=str(folder))


def run_policy_with_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import viprog.policy

    monkeypatch.setattr(viprog.policy, "load_policy", tiny_load_policy(tmp_path))
    ns, _ = run_block("policy", tmp_path)
    assert len(ns["programs"]) == 8 and all(isinstance(p, str) for p in ns["programs"])


def write_library_run(cwd: Path) -> None:
    """The run folder the library example opens: one kept shapes program, and a scripted
    policy that answers the new query of the example."""
    from viprog.library import Library
    from viprog.runs import Run, write_json_atomic, write_jsonl_atomic

    [kept] = shapes_examples("train", 1)
    asked = "How many red circles are there?"
    scripted = cwd / "policy.jsonl"
    program = 'def execute_command(image):\n    return len(ImagePatch(image).find("red circle"))\n'
    scripted.write_text(json.dumps({"query": asked, "program": program}) + "\n")
    run = Run(cwd / "runs" / "shapes-qwen2.5-coder-0.5b")
    write_json_atomic(run.config_path, {"task": "shapes", "policy": "scripted", "model": str(scripted),
                                        "profile": None, "library_shots": 1})
    write_jsonl_atomic(run.artifact(1, "kept.jsonl"), [{"question_id": kept.id, "query": kept.query,
                                                        "program": kept.reference_program, "reward": 1.0}])
    Library.write(run, [1])
    for name, ex in zip(("scene.png", "other_scene.png"), shapes_examples("val", 2), strict=True):
        shutil.copy(ex.image, cwd / name)


def run_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_library_run(tmp_path)
    ns, printed = run_block("library", tmp_path)
    assert ns["out"].source == "policy" and ns["out"].ok and 'find("red circle")' in ns["out"].program
    assert printed.splitlines()[0].startswith("1 ")


RUNNERS: dict[str, Callable[..., None]] = {
    "executor": run_executor,
    "reference-program": run_reference_program,
    "policy": run_policy_with_tiny_model,
    "library": run_library,
}


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_example_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    RUNNERS[name](tmp_path, monkeypatch)


@pytest.mark.slow
def test_policy_example_runs_as_written_with_the_embedded_model(tmp_path: Path) -> None:
    ns, _ = run_block("policy", tmp_path)
    assert len(ns["programs"]) == 8


COMMAND = re.compile(r"^(viprog \w[\w-]*|python selftrain\.py)\b(.*)$")


def logical_lines(block: str) -> list[str]:
    """Shell lines with `\\` continuations and quoted newlines joined."""
    lines, pending = [], ""
    for line in block.replace("\\\n", " ").splitlines():
        pending = f"{pending} {line}" if pending else line
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        lines.append(pending)
        pending = ""
    return lines


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(page, command, arguments) for every `viprog <command> ...` and `python selftrain.py ...`
    line of the bash blocks, continuation lines joined and comments dropped."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.DOTALL):
            for line in logical_lines(block):
                match = COMMAND.match(line.strip())
                if match:
                    head, rest = match.groups()
                    command = "selftrain" if head.startswith("python") else head.split()[1]
                    found.append((page.name, command, shlex.split(rest, comments=True)))
    return found


def test_the_docs_show_commands() -> None:
    assert len(documented_commands()) >= 20


@pytest.mark.parametrize("page,command,args", documented_commands(),
                         ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_every_documented_command_parses(page: str, command: str, args: list[str]) -> None:
    """The flags the docs show exist and take the values shown (a renamed flag fails here)."""
    from viprog.cli import COMMANDS, parse_command

    assert command in COMMANDS, f"{page}: unknown command viprog {command}"
    try:
        parse_command(command, args, prog=f"viprog {command}")
    except SystemExit as exc:
        pytest.fail(f"{page}: viprog {command} {' '.join(args)} does not parse (exit {exc.code})")


def test_a_renamed_flag_would_fail_the_check() -> None:
    from viprog.cli import parse_command

    with pytest.raises(SystemExit):
        parse_command("selftrain", ["--samples-per-questoin", "8"], prog="selftrain.py")
