"""Primitive backends (profiles): neural, shapes, scene-graph."""

import os
from typing import Any


def yolo_class() -> Any:
    """ultralytics' `YOLO`, imported quietly and offline.

    ultralytics logs to stdout at INFO by default — on a machine's first import it announces
    the settings file it creates — which corrupts the JSON that `viprog run` prints there;
    it also pip-installs missing extras at run time. Both are off unless the user's
    environment says otherwise (YOLO_VERBOSE, YOLO_AUTOINSTALL)."""
    os.environ.setdefault("YOLO_VERBOSE", "false")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    from ultralytics import YOLO

    return YOLO
