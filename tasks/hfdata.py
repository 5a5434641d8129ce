"""Reading tasks through Hugging Face `datasets`: from the hub, or from a saved folder.

Why a module of its own: GQA, RefCOCO and SugarCrepe are on the hub with images
embedded as `Image` features, so an example's image is not a file but a row of a
dataset. Such an example's `image` is `"hf:<key>:<row>"`; `HFImages` keeps the datasets
opened by a task and decodes a row's image on demand (nothing is decoded at load time).
A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` loads the same
way with no network, which is how the tests exercise this path.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from viprog.tasks.base import DataError

PREFIX = "hf:"


def is_saved_dataset(path: Path) -> bool:
    """True for a folder written by `save_to_disk` (a Dataset or a DatasetDict)."""
    return path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists())


def load_saved(path: Path, split: str) -> Any:
    """The `split` of a saved dataset folder (a plain Dataset is every split)."""
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise DataError(f"{path}: not a readable saved dataset ({exc.__class__.__name__}: {exc})") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(f"{path}: no split {split!r} in the saved dataset (it has: {', '.join(data)})")
        return data[split]
    return data


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (or `HF_ENDPOINT`) accepts a connection, in seconds
    rather than the minute `datasets` spends retrying when there is no network."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


def load_hub(name: str, split: str, config: str | None = None) -> Any:
    """`datasets.load_dataset(name, config, split=split)`, or a one-line DataError saying
    the hub is unreachable and how to use a local copy instead. With `HF_HUB_OFFLINE=1`
    the Hugging Face cache is read without any connection attempt."""
    import datasets

    if os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false") and not hub_reachable():
        raise DataError(f"cannot load {name!r} ({config or 'default'}, {split}): the Hugging Face hub is "
                        "unreachable; download it and pass --data-dir (or set HF_HUB_OFFLINE=1 to use a cached copy)")
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001 — connection errors come in many classes
        raise DataError(f"cannot load {name!r} ({config or 'default'}, {split}) from the Hugging Face hub "
                        f"({exc.__class__.__name__}); download it and pass --data-dir") from None


class HFImages:
    """The datasets a task opened, by key, so `hf:<key>:<row>` images can be decoded."""

    def __init__(self) -> None:
        self.sources: dict[str, tuple[Any, str]] = {}

    def add(self, key: str, dataset: Any, column: str = "image") -> None:
        if column not in dataset.column_names:
            raise DataError(f"dataset {key!r} has no {column!r} column (columns: {', '.join(dataset.column_names)})")
        self.sources[key] = (dataset, column)

    def ref(self, key: str, row: int) -> str:
        return f"{PREFIX}{key}:{row}"

    def load(self, ref: str) -> np.ndarray:
        key, _, row = ref[len(PREFIX):].rpartition(":")
        dataset, column = self.sources[key]
        try:
            image = dataset[int(row)][column]
            return np.asarray(image.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 — PIL raises many kinds for a bad image
            raise DataError(f"{ref}: cannot decode image ({exc.__class__.__name__})") from None


def column(dataset: Any, *names: str, where: str) -> str:
    """The first of `names` that `dataset` has; DataError naming what is missing."""
    for name in names:
        if name in dataset.column_names:
            return name
    raise DataError(f"{where}: no {' / '.join(names)} column (columns: {', '.join(dataset.column_names)})")
