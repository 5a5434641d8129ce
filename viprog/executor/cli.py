"""`viprog run`: one program on one image in the sandbox, its ExecutionResult as JSON.

For trying a program by hand, or a policy's output, exactly as self-training runs it:
same restricted compile, same worker limits, same PrimitiveServer. Exit status 0 when the
program returned an answer, 1 when it failed (the JSON says how), 2 for bad input.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from viprog.errors import UsageError


@dataclass
class RunConfig:
    """Run one program on one image and print its ExecutionResult as JSON."""

    program: Path
    """Python file defining execute_command(image) or execute_command(image, query)."""
    image: Path
    """Image file (any format Pillow reads)."""
    query: str | None = None
    """Passed as the second argument when execute_command takes two."""
    profile: str = "shapes"
    """Primitive profile: neural, shapes, scene-graph, or a registered one."""
    meta: Path | None = None
    """JSON file of annotations for the image (e.g. a scene graph for --profile scene-graph)."""
    timeout: float = 10.0
    """Seconds of the program's own run time (time waiting for primitives excluded)."""
    memory_mb: int = 1024
    """Memory the program may allocate, in MB."""
    indent: int | None = 2
    """Indentation of the printed JSON (none: one line)."""


def _read_inputs(config: RunConfig) -> tuple[str, dict | None]:
    try:
        source = config.program.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read program {config.program} ({exc.__class__.__name__}); "
                         "give a Python file that defines execute_command(image)") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(config.image) as img:
            img.verify()
    except (OSError, UnidentifiedImageError) as exc:
        raise UsageError(f"cannot read image {config.image} ({exc.__class__.__name__}); give a PNG/JPEG file") from None
    meta = None
    if config.meta is not None:
        try:
            meta = json.loads(config.meta.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read annotations {config.meta} ({exc.__class__.__name__}); give a JSON file") from None
    if config.timeout <= 0 or config.memory_mb < 16:
        raise UsageError("--timeout must be > 0 and --memory-mb at least 16")
    return source, meta


def main(config: RunConfig) -> int:
    from viprog.executor.pool import Executor, Job
    from viprog.primitives import PROFILES

    source, meta = _read_inputs(config)
    PROFILES.get(config.profile)  # unknown name → one-line error with suggestions (exit 2)
    with Executor(config.profile, workers=1, slots=1, timeout=config.timeout, memory_mb=config.memory_mb) as ex:
        result = ex.run(Job(source, str(config.image), config.image, config.query, meta))
    print(json.dumps(result.to_json(), indent=config.indent))
    print(f"viprog run: {'answer' if result.ok else result.error_kind + ' error'} printed to stdout", file=sys.stderr)
    return 0 if result.ok else 1
