"""The train step under `accelerate launch` with two processes on the CPU (DDP over gloo):
both processes train (each on half the batches), rank 0 publishes the adapter, the loss falls.
The command is the issue's `accelerate launch --num_processes 2 --cpu`, which accelerate alone
would run as one process (`viprog.launch.launch_command`)."""

import json
import sys
from pathlib import Path

import selftrain_fixtures as F
from test_selftrain_loop import tiny_model  # noqa: F401  (session fixture)

from viprog.finetune import LoraSettings, TrainSettings
from viprog.launch import finetune_launched, launch_command
from viprog.policy import Prompter


def test_two_processes_fine_tune_the_tiny_policy_and_publish_one_adapter(tiny_model, tmp_path):  # noqa: F811
    accelerate = Path(sys.executable).with_name("accelerate")
    prompter = Prompter("", [])
    pairs = [(prompter.short(F.query_for(s)), F.right_program(s)) for s in F.SHAPES] * 4  # 16 pairs
    out = tmp_path / "adapter"
    stats = finetune_launched(f"{accelerate} launch --num_processes 2 --cpu --main_process_port 0",
                              str(tiny_model), None, pairs, out, lora=LoraSettings(8, 16, 0.0, ("q_proj", "v_proj")),
                              train=TrainSettings(learning_rate=1e-2, epochs=4, batch_size=2, max_length=256))
    assert stats["train/processes"] == 2
    assert stats["train/steps"] == 16 * 4 // (2 * 2)  # each step: one batch of 2 on each of the 2 processes
    assert stats["train/loss_last"] < stats["train/loss_first"]
    assert (out / "adapter_model.safetensors").exists() and json.loads((out / "train_stats.json").read_text()) == stats
    assert not list(tmp_path.glob("*.tmp-*"))  # both processes' work folders are gone


def test_only_the_single_process_cpu_form_is_rewritten():
    assert launch_command("accelerate launch --num_processes 2 --cpu") == (
        ["accelerate", "launch", "--num_processes", "2", "--multi_gpu"], {"ACCELERATE_USE_CPU": "true"})
    assert launch_command("/venv/bin/accelerate launch --cpu --num_processes=4")[0][2] == "--multi_gpu"
    for kept in ("accelerate launch --cpu", "accelerate launch --cpu --num_processes 1",
                 "accelerate launch --cpu --num_processes 2 --mpirun_hostfile hosts",
                 "accelerate launch --multi_gpu --num_processes 2", "torchrun --nproc_per_node 2 --cpu"):
        assert launch_command(kept) == (kept.split(), {}), kept


def test_a_misspelt_launcher_is_refused_before_any_round(tmp_path):
    import pytest

    from viprog.errors import UsageError
    from viprog.selftrain_config import SelfTrainConfig, resolve_config

    cfg = SelfTrainConfig(train_launcher="acelerate launch --num_processes 2 --cpu", runs_dir=str(tmp_path))
    with pytest.raises(UsageError, match="'acelerate' is not a command on PATH"):
        resolve_config(cfg)
    accelerate = Path(sys.executable).with_name("accelerate")
    resolve_config(SelfTrainConfig(train_launcher=f"{accelerate} launch --multi_gpu --num_processes 2"))



def test_the_rewrite_is_logged_by_the_launch_not_by_the_check(caplog):
    import sys
    from pathlib import Path

    from viprog.launch import check_launcher

    launcher = f"{Path(sys.executable).with_name('accelerate')} launch --cpu --num_processes 2"  # this venv's
    with caplog.at_level("INFO", logger="viprog.launch"):
        check_launcher(launcher)
        assert "--multi_gpu" not in caplog.text
        launch_command(launcher)
    assert caplog.text.count("ACCELERATE_USE_CPU=true") == 1
