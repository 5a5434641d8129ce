"""`ExecutionResult`: what running one program on one example produced, as plain data.

Never a bare `None`: a failure is a result with `error` and `error_kind` set, so a
wrong answer (a reward of 0) is always distinguishable from a program that crashed,
timed out or hit a failing primitive.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

ErrorKind = Literal["syntax", "policy", "runtime", "timeout", "memory", "primitive", "output", "crash"]
ERROR_KINDS: tuple[str, ...] = ("syntax", "policy", "runtime", "timeout", "memory", "primitive", "output", "crash")


@dataclass(frozen=True)
class ExecutionResult:
    """The outcome of one program run.

    answer: the returned value as JSON-able data (an ImagePatch becomes a dict with
        `type: "ImagePatch"` and its `box` as [x0, y0, x1, y1] pixels, origin top-left).
    error: one line saying what went wrong, or None.
    error_kind: one of ERROR_KINDS, or None when the program returned normally
        (`crash`: the program killed its worker process, e.g. SIGSEGV from a C-stack overflow).
    trace: the primitive calls made, in order: dicts with `primitive`, `box`, `args`,
        `result` (and `error` for a failed call).
    seconds: wall-clock time of the run.
    """

    answer: Any = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    trace: tuple[dict[str, Any], ...] = ()
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if (self.error is None) != (self.error_kind is None):
            raise ValueError("error and error_kind are set together")
        if self.error_kind is not None and self.error_kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {self.error_kind!r}")

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["trace"] = list(self.trace)
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExecutionResult:
        return cls(answer=data.get("answer"), error=data.get("error"), error_kind=data.get("error_kind"),
                   trace=tuple(data.get("trace") or ()), seconds=float(data.get("seconds", 0.0)))

    @classmethod
    def failure(cls, kind: ErrorKind, message: str, **fields: Any) -> ExecutionResult:
        return cls(error=message, error_kind=kind, **fields)


def within_budget(result: ExecutionResult, size: int, spent: int,
                  max_bytes: int | None) -> tuple[ExecutionResult, int]:
    """`result` (of `size` bytes) as a run yields it after `spent` bytes of results: an
    `output` error in its place (counted as 512 bytes) when it would pass `max_bytes`."""
    if max_bytes is None or spent + size <= max_bytes:
        return result, size
    return ExecutionResult.failure("output", f"the run's results passed {max_bytes} bytes (max_run_bytes); "
                                   "this one was dropped", seconds=result.seconds), 512
