"""The prompts a policy samples from: few-shot (API + examples + query) and ViReP's short one.

Why a class: one round asks the same API and examples with hundreds of queries, so the
Prompter fixes them once and only the query varies — at the *end* of the prompt, which
keeps every prompt of a round sharing one long prefix that the `hf` backend encodes once
and vLLM's prefix cache keeps. Two styles:

- "completion" (default): ViperGPT-style source file — the generated API stub, examples
  as `# Query: …` comments followed by their programs, then the query and the program's
  header `def execute_command(image):`; the model continues the function body. Measured
  on the embedded Qwen2.5-Coder-0.5B this writes bodies, where the chat style tends to
  rewrite the API class (see docs/policy.md).
- "chat": the tokenizer's chat template (system: the API; user/assistant turns: the
  examples), with the answer pre-filled up to the same header inside a code fence.

Every style ends with `PROMPT_END` (the header and its newline, so the prompt stops on a
token boundary the examples have), and `extract_program` treats completions alike. Few-shot
examples whose query is the evaluated query are left out: a library built on a training
split must never show the answer to the question being asked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from viprog.errors import UsageError
from viprog.policy.extract import HEADER, PROMPT_END

Style = Literal["completion", "chat"]

SYSTEM = ("You write Python programs that answer questions about images. A program is a function "
          "`execute_command(image)` that uses only this API:")
INTRO = "# Examples: each query about an image is answered by a program that uses the API above."
COMPLETION_STOP: tuple[str, ...] = ("\n#", "\ndef ", "\nclass ", "\n```", "\nprint(", "\nif __name__")
CHAT_STOP: tuple[str, ...] = ("```",)
_HEADER_LINE = re.compile(r"^def\s+execute_command\s*\([^)]*\)[^:\n]*:[ \t]*$", re.MULTILINE)
_WORD = re.compile(r"[^\W_]+")


def normalize_query(query: str) -> str:
    """A query's words, case-folded and space-separated: two queries with the same words
    (case, spacing and punctuation aside) are the same question. One rule for all who ask:
    the prompter never shows the asked question's own program as an example, the library
    reuses a stored program for such a query, the scripted policy looks programs up by it."""
    return " ".join(_WORD.findall(query.casefold()))


def as_example(program: str) -> str:
    """A program as shown in a prompt: stripped, with its header written exactly as the
    prompt's own header (return annotations dropped), so examples and the query agree."""
    return _HEADER_LINE.sub(HEADER, program.strip(), count=1)


class Prompter:
    """Builds prompts for one task: fixed API section and seed examples, varying query.

    api: the API section (`viprog.primitives.apidoc.api_section(task=...)`).
    seeds: (query, program) few-shot pairs (`Task.seed_programs()`), shown in order.
    style: "completion" or "chat" (needs a tokenizer with a chat template).
    tokenizer: used for the chat template and to count prompt tokens.
    """

    def __init__(self, api: str, seeds: Sequence[tuple[str, str]], *, style: Style = "completion",
                 tokenizer: Any = None, system: str = SYSTEM) -> None:
        if style not in ("completion", "chat"):
            raise UsageError(f"unknown prompt style {style!r}; use 'completion' or 'chat'")
        if style == "chat" and not getattr(tokenizer, "chat_template", None):
            raise UsageError("prompt style 'chat' needs a tokenizer with a chat template; "
                             "pass the policy's tokenizer or use style='completion'")
        self.api = api.strip()
        self.seeds = [(q, as_example(p)) for q, p in seeds]
        self.style = style
        self.tokenizer = tokenizer
        self.system = system

    # -- prompts ------------------------------------------------------------------------
    def examples_for(self, query: str, extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        """Seeds then `extra` (library programs), minus any for the query itself and duplicates."""
        asked = normalize_query(query)
        seen: set[str] = {asked}
        chosen = []
        for q, program in [*self.seeds, *((q, as_example(p)) for q, p in extra)]:
            key = normalize_query(q)
            if key not in seen:
                seen.add(key)
                chosen.append((q, program))
        return chosen

    def few_shot(self, query: str, extra: Sequence[tuple[str, str]] = ()) -> str:
        """The full prompt: API section, examples (seeds, then `extra`), the query, the header."""
        examples = self.examples_for(query, extra)
        if self.style == "chat":
            messages = [{"role": "system", "content": f"{self.system}\n```python\n{self.api}\n```"}]
            for q, program in examples:
                messages += [{"role": "user", "content": f"Query: {q}"},
                             {"role": "assistant", "content": f"```python\n{program}\n```"}]
            return self._chat(messages, query)
        shots = "".join(f"# Query: {q}\n{program}\n\n\n" for q, program in examples)
        return f"{self.api}\n\n\n{INTRO}\n\n{shots}# Query: {query.strip()}\n{PROMPT_END}"

    def short(self, query: str) -> str:
        """ViReP's training prompt: the query and the header, no API and no examples."""
        if self.style == "chat":
            return self._chat([], query)
        return f"# Query: {query.strip()}\n{PROMPT_END}"

    def _chat(self, messages: list[dict[str, str]], query: str) -> str:
        messages = [*messages, {"role": "user", "content": f"Query: {query.strip()}"}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{text}```python\n{PROMPT_END}"

    def stop(self) -> tuple[str, ...]:
        """Stop sequences for this style: anything after the function is not the program."""
        return CHAT_STOP if self.style == "chat" else COMPLETION_STOP

    # -- reporting ----------------------------------------------------------------------
    def length(self, prompt: str) -> int:
        """The prompt's length in tokens (characters when there is no tokenizer)."""
        if self.tokenizer is None:
            return len(prompt)
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def describe(self, query: str = "How many objects are there?") -> dict[str, Any]:
        """Prompt lengths for a typical query: the few-shot and short prompts, and the unit."""
        return {"prompt/style": self.style, "prompt/unit": "chars" if self.tokenizer is None else "tokens",
                "prompt/few_shot_length": self.length(self.few_shot(query)),
                "prompt/short_length": self.length(self.short(query)),
                "prompt/examples": len(self.examples_for(query))}
