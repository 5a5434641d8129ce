"""An in-process transport: primitive calls answered directly by a profile, one by one.

For tests and debugging of profiles and tasks only: the program runs unsandboxed in this
process. Programs from a policy go through `viprog.executor.Executor`, whose
PrimitiveServer answers the same requests batched and cached.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any, Self

import numpy as np

from viprog import primitives as P
from viprog.primitives.patch import ImageRef, PrimitiveError, set_transport
from viprog.primitives.profile import Call, PatchData, Profile, get_profile
from viprog.primitives.spec import get_spec


class LocalServer:
    """Holds images (id → pixels, annotations) and answers primitive calls with `profile`."""

    def __init__(self, profile: str | Profile) -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.images: dict[str, tuple[np.ndarray, Mapping[str, Any]]] = {}
        self.trace: list[dict[str, Any]] = []

    def add_image(self, image_id: str, pixels: np.ndarray, meta: Mapping[str, Any] | None = None) -> ImageRef:
        self.images[image_id] = (pixels, meta or {})
        return ImageRef(image_id, int(pixels.shape[1]), int(pixels.shape[0]))

    def make_call(self, name: str, patches: list[tuple[Any, ...]], args: tuple[Any, ...]) -> Call:
        """Turn a transport request (handles) into a `Call` over pixels (shared with the executor)."""
        get_spec(name)  # unknown primitive → UnknownNameError with suggestions
        data = []
        for image_id, *box in patches:
            pixels, meta = self.images[image_id]
            data.append(PatchData(image_id, pixels, tuple(int(v) for v in box), meta))  # type: ignore[arg-type]
        return Call(name, data, tuple(args))

    def __call__(self, name: str, patches: list[tuple[Any, ...]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = self.make_call(name, patches, args)
        try:
            (result,) = self.profile.run(name, [call])
        except PrimitiveError:
            raise
        except Exception as exc:  # a backend bug or a model failure is the primitive's error
            raise PrimitiveError(f"{name}: {exc.__class__.__name__}: {exc}") from exc
        self.trace.append({"primitive": name, "box": list(patches[0][1:]) if patches else None,
                           "args": list(args), "result": result})
        return result

    def __enter__(self) -> Self:
        set_transport(self)
        return self

    def __exit__(self, *exc: object) -> None:
        set_transport(None)


def run_unsandboxed(program: str, pixels: np.ndarray, profile: str | Profile, meta: Mapping[str, Any] | None = None,
                    query: str | None = None) -> Any:
    """Run a trusted program's `execute_command(image)` in this process (tests only)."""
    with LocalServer(profile) as server:
        # a content-derived id: profiles cache per image id, so two images never share one
        ref = server.add_image(hashlib.sha1(pixels.tobytes()).hexdigest()[:16], pixels, meta)
        namespace: dict[str, Any] = {"ImagePatch": P.ImagePatch, "math": math, "distance": P.distance,
                                     "bool_to_yesno": P.bool_to_yesno, "coerce_to_numeric": P.coerce_to_numeric,
                                     **P.FUNCTIONS}
        exec(compile(program, "<program>", "exec"), namespace)  # noqa: S102 — trusted test input only
        fn = namespace["execute_command"]
        answer = fn(ref, query) if fn.__code__.co_argcount > 1 else fn(ref)
        return answer.to_json() if isinstance(answer, P.ImagePatch) else answer
