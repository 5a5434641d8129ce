"""The `viprog` command: help for every subcommand, one-line errors with exit 2, laziness."""

from __future__ import annotations

import subprocess
import sys

import pytest

from viprog.cli import COMMANDS, main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "viprog.cli", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_top_level_help_lists_every_command(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name}" in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command: str) -> None:
    proc = run(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()


def test_unknown_command_exits_2_with_suggestion(capsys) -> None:
    assert main(["tsks"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean tasks" in err


def test_unknown_task_name_exits_2_with_one_line() -> None:
    proc = run("tasks", "shapse")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown task 'shapse'" in proc.stderr and "shapes" in proc.stderr


def test_selftrain_script_help_is_the_subcommand_help() -> None:
    proc = subprocess.run([sys.executable, "selftrain.py", "--help"], capture_output=True, text=True, timeout=120,
                          cwd=__import__("pathlib").Path(__file__).parents[1], check=False)
    assert proc.returncode == 0, proc.stderr
    assert "selftrain.py" in proc.stdout


HEAVY = ("torch", "transformers", "cv2", "ultralytics", "open_clip", "peft", "trl", "skimage")


def test_import_and_help_load_no_heavy_library() -> None:
    code = ("import sys, viprog, viprog.primitives, viprog.tasks, viprog.policy, viprog.executor\n"
            "from viprog.cli import main\n"
            "main(['--help'])\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
