"""Image files as pixels: one reader, one error.

Why: tasks (`Task.load_image`), the executor's image store and the library API
(`viprog.library.as_pixels`) all read an image file into H x W x 3 uint8 RGB. Reading it
here gives them the same conversion (greyscale, palette and RGBA files become RGB) and
the same one-line `DataError` for a missing, truncated or non-image file; a caller that
reports bad input differently (the library raises `UsageError`) converts that one error.
PIL is imported on first read, so importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from viprog.errors import DataError


@contextmanager
def _opened(path: str | Path) -> Iterator[Any]:
    """The open PIL image; DataError naming the file for any read error, including one
    that surfaces only when the pixels are decoded inside the `with` block."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            yield img
    except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"{path}: cannot read image ({exc.__class__.__name__})") from None


def read_rgb(path: str | Path) -> np.ndarray:
    """The file's pixels as H x W x 3 uint8 RGB; DataError when it is missing or unreadable."""
    with _opened(path) as img:
        return np.asarray(img.convert("RGB"))


def read_size(path: str | Path) -> tuple[int, int]:
    """The file's (width, height) from its header, without decoding the pixels; DataError
    when it is missing or not an image."""
    with _opened(path) as img:
        return img.size
