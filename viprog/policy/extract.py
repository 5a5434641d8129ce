"""From an LLM completion to a program source: fences, headers, chatter, indentation.

Why repair instead of reject: a sampled completion that is one fixable slip away from a
program (a closing code fence, prose after the function, a body that lost its first
indent, a statement cut off by the token limit) is still a useful sample — self-training
learns from the programs it keeps, and throwing away near-misses wastes most of a small
model's samples. Repairs are tried in a fixed order and each must make the source
compile; what no repair can fix is returned as it is, so the executor's `check_program`
turns it into an `ExecutionResult` of kind `syntax` (never an exception here).

Repairs only re-layout, drop junk, or close/cut a truncated statement; none writes code
the completion did not have: statements run together on one line are split onto lines of
their own, a stray word after a statement (` return x  segment`) or on the header line is
dropped, and a last statement cut off by the token limit inside brackets is closed when it
ends on a complete operand the program already named (else it is cut, as before).

The prompts (`viprog.policy.prompts`) end with the program's header, so a completion
normally starts inside the function body; a completion that writes the whole function
itself (chat models like to) is recognised by its own `def execute_command`.
"""

from __future__ import annotations

import ast
import builtins
import functools
import io
import itertools
import keyword
import re
import textwrap
import tokenize
from typing import Literal

#: the program's first line; every prompt style ends with it and its newline
HEADER = "def execute_command(image):"
#: where every prompt ends. The newline belongs to the prompt because BPE vocabularies
#: such as Qwen2's merge `):` with the newline after it (`):\n` is one token in the
#: few-shot examples): a prompt that stopped at `):` asked the model for a token split
#: it never saw after a header, and the 0.5B model answered with blank lines and the
#: next `# Query` (131 of 161 unparsable completions in the first embedded runs).
PROMPT_END = HEADER + "\n"
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


def _is_statement(piece: str, *, opener: bool = False) -> bool:
    """Whether `piece` (one stripped line) is a statement of a function body; with
    `opener`, also a block opener (`if x:`) whose body follows on the next lines."""
    return _compiles(f"def f():\n    {piece}\n") or (
        opener and piece.rstrip().endswith(":") and _compiles(f"def f():\n    {piece}\n        pass\n"))


def _is_junk(piece: str) -> bool:
    """A statement that does nothing: a bare expression that calls nothing (`segment`,
    `personal`, `a, [1, 2]`) — a stray word, not code the program needs."""
    try:
        tree = ast.parse(piece.strip())
    except (SyntaxError, ValueError):
        return False
    return all(isinstance(node, ast.Expr) and not any(isinstance(sub, ast.Call) for sub in ast.walk(node))
               for node in tree.body)


def _scan(text: str) -> tuple[list[tokenize.TokenInfo], bool] | None:
    """The significant tokens of `text` and whether it ends outside any bracket;
    None when it has text Python cannot tokenize (a stray `$`, an unclosed quote)."""
    skip = {tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    tokens: list[tokenize.TokenInfo] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.ERRORTOKEN:
                return None
            if token.type not in skip:
                tokens.append(token)
    except tokenize.TokenError:
        return tokens, False
    except (IndentationError, SyntaxError):
        return None
    return tokens, True


_OPEN, _CLOSE = "([{", ")]}"


def _ends_operand(token: tokenize.TokenInfo) -> bool:
    """Whether an expression can end with `token` (a name, number, string or closer)."""
    if token.type == tokenize.NAME:
        return not keyword.iskeyword(token.string) or token.string in ("True", "False", "None")
    return token.type in (tokenize.NUMBER, tokenize.STRING) or token.string in _CLOSE


def _split_statements(line: str) -> list[str] | None:
    """`line` (stripped) split into the statements run together on it, e.g.
    `patch = ImagePatch(image) return patch.exists("x")`; a stray word after the last
    statement is dropped. Splits fall only between an operand and a name, outside
    brackets; every part must be a statement (the last may open a block). None when
    the line is already one statement or cannot be split so."""
    if _is_statement(line, opener=True):
        return None
    scanned = _scan(line)
    if scanned is None or not scanned[1]:
        return None
    tokens, depth, cuts = scanned[0], 0, []
    for before, token in itertools.pairwise(tokens):
        depth += (before.string in _OPEN) - (before.string in _CLOSE)
        if depth == 0 and token.type == tokenize.NAME and _ends_operand(before) and before.end[1] < token.start[1]:
            cuts.append(token.start[1])
    if not cuts or len(cuts) > 16:
        return None

    @functools.cache
    def split_from(start: int) -> tuple[str, ...] | None:
        rest = line[start:].strip()
        if _is_statement(rest, opener=True):
            return (rest,)
        for cut in (c for c in cuts if c > start):
            piece = line[start:cut].strip()
            if _is_statement(piece) and (tail := split_from(cut)) is not None:
                return (piece, *tail)
        return None

    found = split_from(0)
    if found is None:
        return None
    pieces = list(found)
    while len(pieces) > 1 and _is_junk(pieces[-1]):
        pieces.pop()
    if any(_is_junk(piece) for piece in pieces):
        return None  # a stray word between statements: not a layout slip
    return pieces


def _split_run_together(lines: list[str]) -> list[str]:
    """Header + body with each line that holds several statements split into lines of
    its own, at that line's indentation."""
    out = [lines[0]]
    for line in lines[1:]:
        pieces = _split_statements(line.strip()) if line.strip() else None
        indent = line[:len(line) - len(line.lstrip())]
        out.extend([indent + piece for piece in pieces] if pieces else [line])
    return out


def _close_truncated(lines: list[str]) -> list[str] | None:
    """Header + body whose last statement, cut off inside brackets (the token limit),
    gets its closing brackets: only when it ends on a complete operand — a number, a
    string, a closer, or a name the program used before and that begins no other name it
    used (a word cut short, `== yellow_square` of `yellow_square_size`, is not closed but
    cut, since closing it would run a different program). None when nothing to close."""
    scanned = _scan("\n".join(lines))
    if scanned is None or scanned[1] or not scanned[0]:
        return None
    tokens, stack = scanned[0], []
    for token in tokens:
        if token.string in _OPEN:
            stack.append(token.string)
        elif token.string in _CLOSE and (not stack or _OPEN.index(stack.pop()) != _CLOSE.index(token.string)):
            return None
    last = tokens[-1]
    if not stack or not _ends_operand(last):
        return None
    if last.type == tokenize.NAME and not keyword.iskeyword(last.string):
        named = {token.string for token in tokens[:-1] if token.type == tokenize.NAME}
        if last.string not in named and not hasattr(builtins, last.string):
            return None  # cut inside a word: `small_red_object` of `small_red_object_color`
        if any(name != last.string and name.startswith(last.string) for name in named):
            return None  # maybe cut inside a word: `yellow_square` of `yellow_square_size`
    closers = "".join(_CLOSE[_OPEN.index(bracket)] for bracket in reversed(stack))
    row, col = last.end  # before a trailing comment, not inside it
    line = lines[row - 1]
    return [*lines[:row - 1], line[:col] + closers + line[col:], *lines[row:]]


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


#: a restated signature's end on the header line: ` -> str:`, ` path: str) -> bool:`
_SIGNATURE_TAIL = re.compile(r"^[^#\"'\n]*?->\s*[\w\[\]., |]*:")


def _drop_header_tail(completion: str) -> str:
    """The completion continues the prompt's header line (`def execute_command(image):`):
    text before its first newline is the rest of that line. A restated return annotation
    (` -> str:`), chatter (` example command`, ` personal`) or punctuation (`.`) there is
    dropped; a one-line body (` return 3`), also after an annotation or run together with
    a second statement (` patch = ImagePatch(image) return ...`), is kept as the body's
    first line."""
    first, newline, rest = completion.partition("\n")
    continues_header = first[:1] in (" ", "\t") or first.lstrip().startswith("->")
    if first.strip() and not re.search(r"\w", first):
        return "\n" + rest  # punctuation only (` .`, `:`): no statement
    if not first.strip() or not continues_header or _DEF.match(first.lstrip()):
        return completion
    if signature := _SIGNATURE_TAIL.match(first):
        first = " " + first[signature.end():].strip()
    code = first.strip()
    if not code or _is_junk(code) or not (_is_statement(code, opener=True) or _split_statements(code)):
        return "\n" + rest
    return first + newline + rest


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
    for split in (_split_run_together(candidates[1]), _split_run_together(lines)):
        if split not in candidates:
            candidates.append(split)
            if _compiles(source := "\n".join(split) + "\n"):
                return source
    for candidate in candidates:  # last statement cut inside brackets (token limit)
        closed = _close_truncated(candidate)
        if closed is not None and _compiles(source := "\n".join(closed) + "\n"):
            return source
    for candidate in candidates:  # cut-off tail (token limit, a broken last statement)
        for end in range(len(candidate) - 1, 1, -1):
            source = "\n".join(candidate[:end]) + "\n"
            if _compiles(source):
                return source
    return "\n".join(lines) + "\n"
