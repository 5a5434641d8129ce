"""From an LLM completion to a program source: fences, headers, chatter, indentation.

Why repair instead of reject: a sampled completion that is one fixable slip away from a
program (a closing code fence, prose after the function, a body that lost its first
indent, a statement cut off by the token limit) is still a useful sample — self-training
learns from the programs it keeps, and throwing away near-misses wastes most of a small
model's samples. Repairs are tried in a fixed order and each must make the source
compile; what no repair can fix is returned as it is, so the executor's `check_program`
turns it into an `ExecutionResult` of kind `syntax` (never an exception here).

The prompts (`viprog.policy.prompts`) end with the program's header, so a completion
normally starts inside the function body; a completion that writes the whole function
itself (chat models like to) is recognised by its own `def execute_command`.
"""

from __future__ import annotations

import re
import textwrap
from typing import Literal

#: the first line every prompt style ends with; a completion continues after it
HEADER = "def execute_command(image):"
FUNCTION = "execute_command"

PromptStyle = Literal["completion", "chat", "short", "raw"]

_DEF = re.compile(rf"^def\s+{FUNCTION}\s*\(")
_FENCE = re.compile(r"^\s*```")
_TOP_LEVEL_END = re.compile(r"^(#|def |class |@|if __name__|print\(|```|>>>|Query:)")


def _compiles(source: str) -> bool:
    try:
        compile(source, "<program>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def _unfence(text: str) -> str:
    """The code of the first fenced block; text before an unopened closing fence (the
    prompt opened it); the text itself when it has no fence."""
    lines = text.splitlines()
    fences = [i for i, line in enumerate(lines) if _FENCE.match(line)]
    if not fences:
        return text
    first = fences[0]
    before = "\n".join(lines[:first])
    if _DEF.search(before.lstrip()) or _looks_like_body(lines[:first]):
        return before  # the fence was opened by the prompt: this one closes the code
    end = fences[1] if len(fences) > 1 else len(lines)
    return "\n".join(lines[first + 1:end])


def _looks_like_body(lines: list[str]) -> bool:
    code = [line for line in lines if line.strip()]
    return bool(code) and all(line.startswith((" ", "\t")) for line in code[:2])


def _function_lines(text: str) -> list[str]:
    """The function's lines: its header (the completion's own, or the prompt's) and the
    body up to the first top-level line that is not part of it."""
    lines = text.expandtabs(4).splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    starts = [i for i, line in enumerate(lines) if _DEF.match(line)]
    if starts and not (lines[0].startswith(" ") and starts[0] > 0):  # an indented start is the body
        header, body = lines[starts[0]], lines[starts[0] + 1:]
    else:
        header, body = HEADER, lines
        if body and body[0].strip() and not body[0].startswith(" ") and not _TOP_LEVEL_END.match(body[0]):
            # the model wrote the body flush left: indent it up to the first blank line
            flush = 0
            while flush < len(body) and body[flush].strip() and not _TOP_LEVEL_END.match(body[flush]):
                flush += 1
            body = ["    " + line for line in body[:flush]] + body[flush:]
    kept = []
    for line in body:
        if line.strip() and not line[0].isspace():
            break  # back at top level: chatter, the next example, a test call
        kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return [header, *kept]


def _reindent(lines: list[str]) -> list[str]:
    """Header + body dedented to a common margin and indented by four spaces, with a
    first body line that lost (or gained) its indent aligned with the second."""
    header, body = lines[0], lines[1:]
    code = [i for i, line in enumerate(body) if line.strip()]
    if len(code) >= 2:
        first, second = body[code[0]], body[code[1]]
        indent = len(second) - len(second.lstrip())
        if first.rstrip().endswith(":"):
            indent = max(indent - 4, 0)
        body[code[0]] = " " * indent + first.lstrip()
    dedented = textwrap.dedent("\n".join(body)).splitlines()
    return [header, *("    " + line if line.strip() else "" for line in dedented)]


_RETURN_ANNOTATION = re.compile(r"^\s*->\s*[^\n:]*:?\s*$")


def _drop_header_tail(completion: str) -> str:
    """The completion continues the prompt's header line (`def execute_command(image):`):
    text before its first newline is the rest of that line. A restated return annotation
    (` -> str:`) or chatter (` example command`) there is dropped; a one-line body
    (` return 3`) is kept as the body's first line."""
    first, newline, rest = completion.partition("\n")
    continues_header = first[:1] in (" ", "\t") or first.lstrip().startswith("->")
    if not newline or not first.strip() or not continues_header or _DEF.match(first.lstrip()):
        return completion
    if _RETURN_ANNOTATION.match(first) or not _compiles(f"def f():\n    {first.strip()}\n"):
        return "\n" + rest
    return completion


def extract_program(completion: str, prompt_style: PromptStyle = "completion") -> str:
    """Best-effort program source from a completion.

    prompt_style: "completion", "chat" and "short" prompts end with `HEADER`, so a
        completion without its own `def execute_command` is taken as the body;
        "raw" means the text is a whole program (released programs, scripted policies).
    Returns the repaired source (ending with a newline), or the unrepairable text as is.
    """
    if prompt_style != "raw":
        completion = _drop_header_tail(completion)
    text = _unfence(completion)
    if prompt_style == "raw" and not any(_DEF.match(line) for line in text.splitlines()):
        return text if text.endswith("\n") else text + "\n"
    lines = _function_lines(text)
    candidates = [lines, _reindent(list(lines))]
    for candidate in candidates:
        source = "\n".join(candidate) + "\n"
        if _compiles(source):
            return source
    for candidate in candidates:  # cut-off tail (token limit, a broken last statement)
        for end in range(len(candidate) - 1, 1, -1):
            source = "\n".join(candidate[:end]) + "\n"
            if _compiles(source):
                return source
    return "\n".join(lines) + "\n"
