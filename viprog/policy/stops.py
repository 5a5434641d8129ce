"""Where a completion ends: the one stop-string rule and the end-of-sequence tokens of every backend.

Why one module: the same prompt must give the same program whichever backend sampled
it. A stop string counts only once the program's code has started, because a small
model often restates the header or writes a comment first and stopping there leaves an
empty program. Engines that apply `stop` anywhere (vLLM, `generate(stop_strings=…)`)
disagree with that, so backends do not hand stop strings to an engine: they either
check `stopped` while decoding or cut the finished text with `cut_at_stop`.

The rule is stable under extension: once `stopped(text)` is true, `cut_at_stop` gives
the same cut for `text` and for anything the model could have written after it. That is
what makes "stop as soon as the rule fires" (hf) and "decode to the end, then cut"
(vLLM) agree. It needs two things: a line whose newline has not been written yet is not
classified (a partial `de` may still become the restated header `def execute_command(`,
a partial `  ` a comment), and no stop string starts inside another's match and ends
after it (true of every stop set in `viprog.policy.prompts`).

Nothing here imports torch, so every backend can use it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

#: lines that may come before the program's code: blank, a comment, a (restated) header
_PREAMBLE_LINE = re.compile(r"\s*$|\s*#|def\s+execute_command\s*\(")


def body_start(text: str, *, final: bool = True) -> int | None:
    """Where the completion's code starts: the first line that is not blank, not a comment
    and not a `def execute_command(...)` header; None if no such line yet. final=False:
    the text may still grow, so its last line counts only once its newline is there."""
    pos = 0
    lines = text.split("\n")
    for number, line in enumerate(lines):
        if number == len(lines) - 1 and not final:
            return None
        if not _PREAMBLE_LINE.match(line):
            return pos
        pos += len(line) + 1
    return None


def cut_at_stop(text: str, stops: Sequence[str], *, final: bool = True) -> tuple[str, bool]:
    """`text` up to its first counting stop string (excluded), and whether one was found.
    A stop counts from the newline before the first code line on (a stop such as "\\n#"
    begins with it). final=False: `text` is a prefix still being decoded."""
    start = body_start(text, final=final)
    if start is None:
        return text, False
    start = max(start - 1, 0)
    cut = min((i for i in (text.find(s, start) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def stopped(text: str, stops: Sequence[str]) -> bool:
    """Whether decoding may end after `text` (a completion still being written): the
    final cut is then `cut_at_stop(text, stops)[0]`, whatever would have followed."""
    return bool(stops) and cut_at_stop(text, stops, final=False)[1]


def cut_all(completions: Sequence[Sequence[str]], stops: Sequence[str]) -> list[list[str]]:
    """Every completion of every prompt cut at its first counting stop."""
    return [[cut_at_stop(text, stops)[0] for text in per_prompt] for per_prompt in completions]


def eos_ids(tokenizer: Any, generation_config: Any = None) -> set[int]:
    """Every token that ends a program: the tokenizer's eos, the generation config's, and
    every special token the tokenizer adds — a program never contains one, and a model that
    writes one has left the program: Qwen2.5-Coder writes `<|endoftext|>` or `<|file_sep|>`
    (a new file of its repository-level pretraining) right after a `return` line, and a
    backend that went on past it glued the next file's text onto that line."""
    ids = {tokenizer.eos_token_id} if getattr(tokenizer, "eos_token_id", None) is not None else set()
    ids.update(i for i, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
               if getattr(token, "special", False))
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return ids


def eos_ids_of(model_path: str, tokenizer: Any) -> set[int]:
    """`eos_ids` for an engine that loads no transformers model: the generation config read
    from the model's folder (none there: the tokenizer's alone)."""
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(model_path)
    except OSError:
        generation = None
    return eos_ids(tokenizer, generation)
