"""The `scripted` policy: returns programs it was given, no model involved.

Why: tests of the self-training loop need a policy whose output is known, and released
programs (a JSONL file of `{"query", "program"}` rows, e.g. a library exported by an
earlier run) are scored through the same rollout code as a model's samples. The query a
prompt asks is read from its last `Query:` line (every prompt style writes one). Like a
model's, its completions are cut at the request's stop strings by the shared rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from itertools import cycle, islice
from pathlib import Path

from viprog.errors import UsageError
from viprog.policy.base import Policy, SamplingParams
from viprog.policy.prompts import normalize_query
from viprog.policy.stops import cut_all
from viprog.runs import read_programs

_QUERY = re.compile(r"Query:\s*(.+?)\s*$", re.MULTILINE)

Programs = Mapping[str, Sequence[str]] | Sequence[str] | Callable[[str], Sequence[str]]


def query_of(prompt: str) -> str:
    """The query a prompt asks: the text of its last `Query:` line (the prompt itself when none)."""
    found = _QUERY.findall(prompt)
    return found[-1] if found else prompt.strip()


def programs_by_query(path: str | Path) -> dict[str, list[str]]:
    """{query: [program, …]} from a JSONL file of {"query", "program"} rows (`read_programs`)."""
    table: dict[str, list[str]] = {}
    for query, program in read_programs(path, "query"):
        table.setdefault(normalize_query(query), []).append(program)
    return table


class ScriptedPolicy(Policy):
    """Answers each prompt with given programs, cycled to `n` per prompt.

    programs: {query: programs} (matched case- and space-insensitively), one list for
        every prompt, or a function of the query; path: a JSONL file of {query, program}.
    default: programs for a query with none of its own (None: such a query is an error).
    """

    name = "scripted"

    def __init__(self, programs: Programs | None = None, *, path: str | Path | None = None,
                 default: Sequence[str] | None = None) -> None:
        if (programs is None) == (path is None):
            raise UsageError("the scripted policy needs programs or a path to a JSONL file of {query, program}")
        if path is not None:
            programs = programs_by_query(path)
        elif isinstance(programs, Mapping):
            programs = {normalize_query(q): list(p) for q, p in programs.items()}
        self.programs = programs
        self.default = list(default) if default is not None else None
        self.calls: list[tuple[list[str], SamplingParams]] = []  # what was asked (tests read it)

    def _for(self, query: str) -> list[str]:
        if callable(self.programs):
            found = list(self.programs(query))
        elif isinstance(self.programs, Mapping):
            found = list(self.programs.get(normalize_query(query), ()))
        else:
            found = list(self.programs)
        if not found:
            if self.default is None:
                raise UsageError(f"the scripted policy has no program for the query {query!r}")
            found = self.default
        return found

    def sample(self, prompts: Sequence[str], params: SamplingParams) -> list[list[str]]:
        self.calls.append((list(prompts), params))
        return cut_all([list(islice(cycle(self._for(query_of(p))), params.n)) for p in prompts], params.stop)

    def load_adapter(self, path: str | Path | None) -> None:
        """Nothing to adapt: a scripted policy always returns its programs."""
