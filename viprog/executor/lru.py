"""`ResultCache`: primitive results kept by key, least recently used out first, bounded by bytes.

Why one class: the local PrimitiveServer and the Ray model actor both keep the results of
model calls keyed by (primitive, image, boxes, arguments) and must not grow without end
over a long run. A bound in entries says little about memory (a `find` answer can be a
few bytes or a long list of boxes), so the bound is in bytes: the key's and the result's
JSON text, plus a fixed overhead per entry for the Python objects around them.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Any

#: bytes counted per entry beyond its text: the dict slot, the tuple and the string objects
ENTRY_OVERHEAD = 200
#: the default bound of every cache of primitive results
DEFAULT_MAX_BYTES = 256 * 2**20


def _size(key: Hashable, value: Any) -> int:
    return len(repr(key)) + len(json.dumps(value, default=repr)) + ENTRY_OVERHEAD


class ResultCache:
    """A mapping of results whose total size stays within `max_bytes` (oldest use out first)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()

    def lookup(self, key: Hashable) -> tuple[bool, Any]:
        """`(True, result)` for a kept key (it becomes the most recently used), else `(False, None)`."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        self._entries.move_to_end(key)
        return True, entry[0]

    def put(self, key: Hashable, value: Any) -> None:
        """Keep `value` under `key`, dropping the least recently used entries beyond the bound
        (a result larger than the whole bound is not kept)."""
        size = _size(key, value)
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if size > self.max_bytes:
            return
        self._entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.bytes -= self._entries.popitem(last=False)[1][1]

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._entries))
