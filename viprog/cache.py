"""Where viprog keeps what it derives once and reuses: the assembled embedded model, the
generated shapes worlds, GQA's scene-graph indexes.

One rule for all of them, so that one variable moves them all: `$VIPROG_CACHE`, else
`$XDG_CACHE_HOME/viprog`, else `~/.cache/viprog`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$VIPROG_CACHE`, else `$XDG_CACHE_HOME/viprog`, else `~/.cache/viprog`."""
    if os.environ.get("VIPROG_CACHE"):
        return Path(os.environ["VIPROG_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "viprog"
