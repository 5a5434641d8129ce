"""`viprog run`: one ExecutionResult as JSON; exit 0 answer, 1 failure, 2 bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from viprog.cli import main


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    Image.fromarray(np.full((24, 32, 3), 255, np.uint8)).save(path)
    return path


def write(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "prog.py"
    path.write_text(source)
    return path


def test_answer_exits_zero_and_prints_the_result(tmp_path: Path, image: Path, capsys: pytest.CaptureFixture) -> None:
    prog = write(tmp_path, "def execute_command(image, query):\n    p = ImagePatch(image)\n    return [query, p.width]\n")
    code = main(["run", "--program", str(prog), "--image", str(image), "--query", "size?", "--profile", "scene-graph"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["answer"] == ["size?", 32] and out["error_kind"] is None


def test_failed_program_exits_one(tmp_path: Path, image: Path, capsys: pytest.CaptureFixture) -> None:
    prog = write(tmp_path, "def execute_command(image):\n    return 1 / 0\n")
    code = main(["run", "--program", str(prog), "--image", str(image), "--profile", "scene-graph"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["error_kind"] == "runtime" and "ZeroDivisionError" in out["error"]


@pytest.mark.parametrize("what", ["program", "image", "profile"])
def test_bad_input_is_one_line_and_exit_two(tmp_path: Path, image: Path, capsys: pytest.CaptureFixture,
                                            what: str) -> None:
    prog = write(tmp_path, "def execute_command(image):\n    return 1\n")
    bad_image = tmp_path / "broken.png"
    bad_image.write_text("not an image")
    args = {"program": str(tmp_path / "missing.py") if what == "program" else str(prog),
            "image": str(bad_image) if what == "image" else str(image),
            "profile": "shapez" if what == "profile" else "scene-graph"}
    code = main(["run", *[f"--{k}={v}" for k, v in args.items()]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and ("shapes" in err if what == "profile" else what in err)


def test_wall_timeout_below_timeout_is_bad_input(tmp_path: Path, image: Path, capsys: pytest.CaptureFixture) -> None:
    prog = write(tmp_path, "def execute_command(image):\n    return 1\n")
    code = main(["run", "--program", str(prog), "--image", str(image), "--timeout", "2", "--wall-timeout", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--wall-timeout" in err


def test_the_neural_profile_runs_on_the_models_profile_options_name(tmp_path: Path, image: Path,
                                                                      tiny_models_dir: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from viprog.primitives.backends.tiny import build_tiny_models

    options = json.dumps(build_tiny_models(tiny_models_dir / "neural"))
    prog = write(tmp_path, "def execute_command(image):\n    return len(ImagePatch(image).find('ball')) >= 0\n")
    code = main(["run", "--program", str(prog), "--image", str(image), "--profile", "neural", "--profile-options",
                 options])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["answer"] is True and out["trace"][0]["primitive"] == "find"
    missing = json.dumps({**json.loads(options), "detector": str(tmp_path / "nothing.pt")})
    code = main(["run", "--program", str(prog), "--image", str(image), "--profile", "neural", "--profile-options",
                 missing])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and "nothing.pt" in errors[0]


def test_stdout_stays_json_on_a_machine_where_ultralytics_first_runs(tmp_path: Path, image: Path,
                                                                      tiny_models_dir: Path) -> None:
    """ultralytics announces, on stdout, the settings file it creates on a machine's first import;
    `viprog run` prints its result there, so a fresh machine got unparsable output (seen on one)."""
    import os
    import subprocess
    import sys

    from viprog.primitives.backends.tiny import build_tiny_models, tiny_yolo

    yolo = {"detector": tiny_yolo(tiny_models_dir / "neural")}  # the YOLO detector: viprog run imports ultralytics
    options = json.dumps(build_tiny_models(tiny_models_dir / "neural") | yolo)
    prog = write(tmp_path, "def execute_command(image):\n    return len(ImagePatch(image).find('ball'))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")} | {"YOLO_CONFIG_DIR": str(tmp_path / "cfg")}
    done = subprocess.run([sys.executable, "-c", "import sys; from viprog.cli import main; sys.exit(main())", "run", "--program", str(prog), "--image", str(image),
                           "--profile", "neural", "--profile-options", options], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert (tmp_path / "cfg").exists(), "ultralytics was not imported with a fresh settings folder"
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["answer"] == 0
