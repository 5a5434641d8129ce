"""`viprog run`: one program on one image in the sandbox, its ExecutionResult as JSON;
`viprog doctor`: which of the sandbox's kernel-level layers this machine allows.

For trying a program by hand, or a policy's output, exactly as self-training runs it:
same restricted compile, same worker limits, same PrimitiveServer. Exit status 0 when the
program returned an answer, 1 when it failed (the JSON says how), 2 for bad input.
`doctor` asks a real sandbox worker what it applied, since containers differ in what
they refuse (namespaces, seccomp, capabilities).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from viprog.errors import UsageError
from viprog.executor.layers import LAYERS
from viprog.executor.pool import Executor, Job
from viprog.rollout import build_profile


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
    profile_options: str | None = None
    """Options of the profile as a JSON object, e.g. '{"detector": "/models/owlv2", "device": "cuda"}'
    (models are loaded and checked before the program runs)."""
    device: str = "cpu"
    """Device for the profile's models unless --profile-options names one."""
    meta: Path | None = None
    """JSON file of annotations for the image (e.g. a scene graph for --profile scene-graph)."""
    timeout: float = 10.0
    """Seconds of the program's own run time (time waiting for primitives excluded)."""
    wall_timeout: float | None = None
    """Seconds of run time plus time waiting for primitives (default 6 x --timeout)."""
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
    if config.wall_timeout is not None and config.wall_timeout < config.timeout:
        raise UsageError("--wall-timeout must be at least --timeout (it counts the run time too)")
    return source, meta


def main(config: RunConfig) -> int:
    source, meta = _read_inputs(config)
    # an unknown name is a one-line error with suggestions (exit 2); the models load and are checked now
    profile = build_profile(config.profile, config.profile_options, device=config.device)
    with Executor(profile, workers=1, slots=1, timeout=config.timeout, wall_timeout=config.wall_timeout,
                  memory_mb=config.memory_mb) as ex:
        result = ex.run(Job(source, str(config.image), config.image, config.query, meta))
    print(json.dumps(result.to_json(), indent=config.indent))
    print(f"viprog run: {'answer' if result.ok else result.error_kind + ' error'} printed to stdout", file=sys.stderr)
    return 0 if result.ok else 1


@dataclass
class DoctorConfig:
    """List the sandbox's kernel-level layers and whether each is active on this machine."""

    json: bool = False
    """Print the layers as one JSON object ({layer: null when active, else why not})."""


def doctor_main(config: DoctorConfig) -> int:
    """Start one sandbox worker, run one program in it, and report the layers it applied.
    Exit status 0 when every layer is active, 1 when the machine refused some."""
    with Executor("scene-graph", workers=1, slots=1) as ex:
        result = ex.run(Job("def execute_command(image):\n    return 1 + 1\n", "doctor", _blank))
        layers = dict(ex.layers)
    if config.json:
        print(json.dumps({"layers": layers, "program": result.to_json()}, indent=2))
    else:
        print(f"sandbox worker: program {'ran' if result.answer == 2 else 'FAILED: ' + str(result.error)}")
        for name, what in LAYERS.items():
            reason = layers.get(name, "not reported by the worker")
            print(f"  {name:<10} {'active ' if reason is None else 'REFUSED'}  {what}"
                  + ("" if reason is None else f"\n             why: {reason}"))
    refused = [name for name in LAYERS if layers.get(name, "missing") is not None]
    print(f"viprog doctor: {len(LAYERS) - len(refused)} of {len(LAYERS)} kernel layers active"
          + (f" (refused: {', '.join(refused)})" if refused else ""), file=sys.stderr)
    return 0 if not refused and result.answer == 2 else 1


def _blank() -> Any:
    return np.zeros((4, 4, 3), np.uint8)
