"""The train step under a launcher: `accelerate launch` (DDP, FSDP, DeepSpeed) instead of in-process.

Why a separate process: a self-training run's driver holds the policy, the profile and the
sandbox; multi-process training needs one process per device, started by the launcher with
its rendezvous environment. So the driver writes the step's inputs (pairs and settings) to
a JSON file and runs `LAUNCHER -m viprog.launch FILE` — e.g.

    accelerate launch --multi_gpu --num_processes 2 -m viprog.launch step.json      (DDP)
    accelerate launch --config_file scripts/accelerate/fsdp.yaml -m viprog.launch step.json

Every process calls the same `viprog.finetune.finetune` (TRL's trainer does the rest);
rank 0 alone publishes the adapter, and the driver reads its `train_stats.json`.
`viprog selftrain --train-launcher "accelerate launch --multi_gpu --num_processes 2"` does
this for every round. On CPUs that is DDP over gloo: torchrun's processes, each with a
trainer that sees no GPU.

`accelerate launch --cpu --num_processes N`, the form one tries first on a CPU machine,
would start a single process: accelerate's `--cpu` path runs the script once, or under
`mpirun` when given `--mpirun_hostfile`, and ignores `--num_processes` otherwise. So
`launch_command` runs that form as `--multi_gpu` (torchrun's N processes) with
`ACCELERATE_USE_CPU=true`, which keeps every process's accelerator state on the CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from viprog.errors import UsageError
from viprog.finetune import LoraSettings, TrainSettings, finetune
from viprog.runs import read_json, tmp_dir_for, write_json_atomic

log = logging.getLogger(__name__)


def launched(launcher: str | None, in_process: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """`in_process` (`finetune`) when there is no launcher, else the same call run under it."""
    return in_process if not launcher else functools.partial(finetune_launched, launcher)


def check_launcher(launcher: str | None) -> None:
    """A `UsageError` now, before a round is spent, when `launcher`'s program is not on PATH."""
    if launcher:
        program = launch_command(launcher, announce=False)[0][0]
        if shutil.which(program) is None:
            raise UsageError(f"--train-launcher: {program!r} is not a command on PATH; fix the spelling, activate "
                             "the environment that has it (accelerate comes with viprog) or give its full path")


def launch_command(launcher: str, announce: bool = True) -> tuple[list[str], dict[str, str]]:
    """The launcher's command line, and what to add to the environment: the form
    `accelerate launch --cpu --num_processes N` (N > 1, no `--mpirun_hostfile`) becomes
    accelerate's multi-process launcher on the CPU (see the module's docstring), which
    `announce` logs (the check before round 0 does not: the launch logs it)."""
    command = shlex.split(launcher)
    if not command:
        raise UsageError("--train-launcher is empty; give a command such as 'accelerate launch --multi_gpu --num_processes 2'")
    accelerate = Path(command[0]).name == "accelerate" and command[1:2] == ["launch"]
    if not accelerate or "--cpu" not in command or any(a.startswith("--mpirun_hostfile") for a in command):
        return command, {}
    given = [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == "--num_processes"]
    given += [arg.split("=", 1)[1] for arg in command if arg.startswith("--num_processes=")]
    processes = int(given[-1]) if given and given[-1].isdigit() else 1
    if processes < 2:
        return command, {}
    if announce:
        log.info("accelerate launch --cpu starts one process without an MPI hostfile: running %d processes as "
                 "--multi_gpu with ACCELERATE_USE_CPU=true (DDP over gloo)", processes)
    return ["--multi_gpu" if arg == "--cpu" else arg for arg in command], {"ACCELERATE_USE_CPU": "true"}


def finetune_launched(launcher: str, model_path: str, tokenizer: Any, pairs: Sequence[tuple[str, str]],
                      out_dir: str | Path, *, lora: LoraSettings, train: TrainSettings,
                      init_adapter: str | Path | None = None, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """`finetune`'s call run as `launcher -m viprog.launch SPEC` (the launcher's processes
    share the work; each loads the tokenizer from `model_path`, so `tokenizer` is not sent);
    returns the same `train/*` metrics, read from the published adapter."""
    out_dir = Path(out_dir)
    command, env = launch_command(launcher)
    work = tmp_dir_for(out_dir.with_name(out_dir.name + ".launch"))
    spec = work / "step.json"
    write_json_atomic(spec, {"model_path": model_path, "pairs": [list(p) for p in pairs], "out_dir": str(out_dir),
                             "lora": dataclasses.asdict(lora), "train": dataclasses.asdict(train),
                             "init_adapter": str(init_adapter) if init_adapter is not None else None,
                             "device": device, "seed": seed})
    log.info("training under %s (log: %s)", launcher, work / "launch.log")
    with open(work / "launch.log", "wb") as out:
        code = subprocess.call([*command, "-m", "viprog.launch", str(spec)], stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, **env})
    if code != 0 or not (out_dir / "train_stats.json").exists():
        tail = (work / "launch.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the launched train step failed (exit {code}); the end of its log:\n{tail}")
    stats = read_json(out_dir / "train_stats.json")
    shutil.rmtree(work, ignore_errors=True)
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """One launched process: train on the step file's pairs (rank 0 publishes)."""
    from transformers import AutoTokenizer

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise UsageError("usage: LAUNCHER -m viprog.launch STEP.json (written by viprog.launch.finetune_launched)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    spec = json.loads(Path(args[0]).read_text())
    train = spec["train"] | {"report_to": tuple(spec["train"]["report_to"])}
    lora = spec["lora"] | {"target_modules": tuple(spec["lora"]["target_modules"])}
    finetune(spec["model_path"], AutoTokenizer.from_pretrained(spec["model_path"]),
             [tuple(p) for p in spec["pairs"]], spec["out_dir"], lora=LoraSettings(**lora),
             train=TrainSettings(**train), init_adapter=spec["init_adapter"], device=spec["device"],
             seed=spec["seed"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
