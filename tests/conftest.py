"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tiny random `neural` models are built: pytest's cache when it is on (built
    once across runs), else a temporary folder (`-p no:cacheprovider`)."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("viprog-tiny-models-v1"))
    return tmp_path_factory.mktemp("viprog-tiny-models")
