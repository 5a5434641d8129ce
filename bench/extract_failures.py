"""Why extracted programs do not compile: re-runs `extract_program` on recorded completions.

Reads the eval/samples JSONL files of earlier runs (rows with a `completion`; a run's
`config.json` next to its rounds gives the prompt style), extracts every completion again
with the current `viprog.policy.extract`, and groups the programs that do not compile by
a short cause (the SyntaxError message without line numbers, or a recognised pattern:
empty body, statements run together, non-code text, truncated statement). Also counts
the programs that compile and return a value (one without a `return` answers None), and
those missing text the completion had (junk dropped, or a statement cut: a sample that
runs but may not answer). Prints the counts and one example completion per cause.

Usage: python bench/extract_failures.py [FILE.jsonl ...]   (default: runs/*/round_*/{eval,samples}.jsonl)
"""

from __future__ import annotations

import ast
import glob
import json
import re
import sys
from collections import Counter
from pathlib import Path

from viprog.policy.extract import HEADER, extract_program

DEFAULT = ["runs/*/round_*/eval.jsonl", "runs/*/round_*/samples.jsonl"]
_LINE_NO = re.compile(r"\s*\((detected at )?line \d+\)|\s+on line \d+")
_RUN_TOGETHER = re.compile(r"[\w)\]\"']\s+(return\b|[A-Za-z_]\w*\s*=(?!=))")


def prompt_style(path: Path) -> str:
    for parent in path.parents:
        config = parent / "config.json"
        if config.is_file():
            return json.loads(config.read_text()).get("prompt_style", "completion")
    return "completion"


def completions(paths: list[str]) -> list[tuple[str, str]]:
    rows = []
    for name in paths:
        path = Path(name)
        style = prompt_style(path)
        for line in path.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if isinstance(row.get("completion"), str):
                rows.append((row["completion"], style))
    return rows


def cause(completion: str, program: str) -> str | None:
    """None when the program compiles, else a short name for why it does not."""
    try:
        compile(program, "<program>", "exec")
        return None
    except (SyntaxError, ValueError) as exc:
        error = exc
    body = [line for line in program.splitlines()[1:] if line.strip()]
    if program.startswith(HEADER) and not body:
        text = [line.strip() for line in completion.splitlines() if line.strip()]
        if not text:
            return "empty body: blank completion"
        if text[0].startswith("# Query"):
            return "empty body: completion starts the next example (# Query)"
        if all(line.startswith("#") for line in text):
            return "empty body: comment only"
        if _RUN_TOGETHER.search(text[0]) and text[0].count("=") + text[0].count("return") >= 2:
            return "empty body: statements run together (dropped)"
        return "empty body: non-code text (dropped)"
    if not isinstance(error, SyntaxError):
        return f"ValueError: {error}"
    lines = program.splitlines()
    bad = lines[error.lineno - 1] if error.lineno and error.lineno <= len(lines) else ""
    message = _LINE_NO.sub("", error.msg)
    if any(ord(ch) > 127 for ch in bad) or "invalid character" in message:
        return "non-code text (non-ASCII)"
    if _RUN_TOGETHER.search(bad.strip()) and message == "invalid syntax":
        return "statements run together"
    if "was never closed" in message or message.startswith("unexpected EOF"):
        return "truncated statement (unclosed bracket)"
    return message


def lost_code(completion: str, program: str) -> bool:
    """Whether a code line of the completion's body is missing from the program."""
    squeezed = "".join(program.split())
    for line in completion.split("```")[0].splitlines():
        code = line.split(" #")[0].strip()
        if code and not code.startswith(("#", "->")) and "".join(code.split()) not in squeezed:
            return True
    return False


def returns_value(program: str) -> bool:
    """Whether the (compiling) program has a `return` with a value: one without answers None."""
    return any(isinstance(node, ast.Return) and node.value is not None for node in ast.walk(ast.parse(program)))


def main(argv: list[str]) -> None:
    paths = argv or sorted({p for pattern in DEFAULT for p in glob.glob(pattern)})
    rows = completions(paths)
    if not rows:
        sys.exit(f"no completions in {paths or DEFAULT}")
    causes: Counter[str] = Counter()
    examples: dict[str, str] = {}
    lost = answering = 0
    for completion, style in rows:
        program = extract_program(completion, style)  # type: ignore[arg-type]
        why = cause(completion, program)
        if why is None:
            lost += lost_code(completion, program)
            answering += returns_value(program)
            continue
        causes[why] += 1
        examples.setdefault(why, completion)
    total, failed = len(rows), sum(causes.values())
    print(f"{total} completions ({len(set(rows))} distinct) from {len(paths)} files")
    print(f"compile: {total - failed}/{total} ({(total - failed) / total:.1%}); of those, "
          f"with a `return` of a value: {answering}; with completion text missing (junk dropped or a statement cut): {lost}")
    print(f"do not compile: {failed}/{total} ({failed / total:.1%})")
    for why, count in causes.most_common():
        print(f"  {count:5d}  {why}")
        print(f"         e.g. {examples[why][:160]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
