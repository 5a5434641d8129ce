"""Results held back until the ones before them finish, for `Executor.run_iter(ordered=True)`.

Why a separate count: a result that finished early waits here for a slower program
before it, and it is neither queued nor running, so a look-ahead that counts only those
would keep reading new jobs while finished results pile up behind one slow program (one
slow program, then thousands of 200 kB results: hundreds of MB in the parent). The
executor stops reading jobs while this buffer is `full`, by count or by bytes, so the
parent holds at most a look-ahead's worth of results. It cannot stall: while anything is
held, the result it waits for belongs to a job already read.
"""

from __future__ import annotations

from collections.abc import Iterator

from viprog.executor.result import ExecutionResult


class InOrder:
    """Results by job index, released in index order; `high` is the most ever held at once."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count, self.max_bytes = max_count, max_bytes
        self.held: dict[int, tuple[ExecutionResult, int]] = {}
        self.bytes = 0
        self.following = 0  # the index to yield next
        self.high = (0, 0)  # (results, bytes) held at the fullest

    def __len__(self) -> int:
        return len(self.held)

    def full(self) -> bool:
        return len(self.held) >= self.max_count or self.bytes >= self.max_bytes

    def add(self, index: int, result: ExecutionResult, size: int) -> Iterator[tuple[int, ExecutionResult]]:
        """Hold `result` (`size` bytes as it came from its worker); yield those now in order."""
        self.held[index] = (result, size)
        self.bytes += size
        self.high = (max(self.high[0], len(self.held)), max(self.high[1], self.bytes))
        while self.following in self.held:
            result, size = self.held.pop(self.following)
            self.bytes -= size
            yield self.following, result
            self.following += 1
