"""SelfTrainConfig: presets, explicit options on top, the saved config on --resume."""

import dataclasses

import pytest

from viprog.config import SamplingSettings
from viprog.errors import UsageError
from viprog.finetune import LoraSettings, TrainSettings
from viprog.rollout import round_questions
from viprog.runs import write_json_atomic
from viprog.selftrain_config import SelfTrainConfig, config_from_dict, embedded, resolve_config, virep_gpu


def test_the_embedded_preset_is_the_default():
    assert embedded() == SelfTrainConfig()


def test_a_preset_applies_and_explicit_options_win():
    cfg = resolve_config(SelfTrainConfig.from_preset("virep-gpu", rounds=3))
    assert cfg.rounds == 3 and cfg.lora.r == virep_gpu().lora.r == 16 and cfg.lora.alpha == 32
    assert cfg.lora.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj") and cfg.sampling.temperature == 1.0
    assert (cfg.train.batch_size, cfg.train.grad_accum, cfg.train.max_length) == (8, 2, 1024)


def test_command_line_options_win_over_the_preset_even_when_they_equal_the_default():
    cfg = SelfTrainConfig.from_cli(["--preset", "virep-gpu", "--device", "cpu", "--task", "shapes", "--rounds", "3"])
    assert (cfg.device, cfg.task, cfg.rounds) == ("cpu", "shapes", 3)
    assert cfg.preset == "virep-gpu" and cfg.lora.r == 16 and cfg.policy == "vllm"  # the rest is the preset's
    assert SelfTrainConfig.from_cli(["--preset", "virep-gpu"]).device == "cuda"


def test_a_preset_named_in_python_without_from_preset_is_refused():
    with pytest.raises(UsageError, match="from_preset"):
        resolve_config(SelfTrainConfig(preset="virep-gpu"))


def test_the_task_names_its_default_splits():
    from viprog.tasks import TASKS

    gqa = resolve_config(SelfTrainConfig.from_preset("virep-gpu"), TASKS.get("gqa")())
    assert (gqa.train_split, gqa.eval_split) == TASKS.get("gqa").default_splits
    assert gqa.eval_split in TASKS.get("gqa")().splits()
    shapes = resolve_config(SelfTrainConfig(), TASKS.get("shapes")())
    assert (shapes.train_split, shapes.eval_split) == ("train", "test")
    given = resolve_config(SelfTrainConfig(eval_split="val"), TASKS.get("shapes")())
    assert given.eval_split == "val"


def test_resume_continues_with_the_saved_config_plus_what_is_given_now(tmp_path):
    saved = dataclasses.replace(SelfTrainConfig(), sampling=SamplingSettings(n=8), device="cuda", run_name="r",
                                runs_dir=str(tmp_path))
    write_json_atomic(tmp_path / "r" / "config.json", dataclasses.asdict(saved))
    cfg = SelfTrainConfig.from_cli(["--resume", "--rounds", "5", "--device", "cpu", "--run-name", "r",
                                    "--runs-dir", str(tmp_path)])
    assert cfg.sampling.n == 8 and cfg.rounds == 5 and cfg.resume and cfg.device == "cpu"


def test_resume_keeps_the_saved_lora_and_training_groups(tmp_path):
    saved = SelfTrainConfig.from_preset("virep-gpu", run_name="r", runs_dir=str(tmp_path),
                                        lora=LoraSettings(r=4, alpha=8, target_modules=("q_proj",)))
    write_json_atomic(tmp_path / "r" / "config.json", dataclasses.asdict(saved))
    cfg = SelfTrainConfig.from_cli(["--resume", "--run-name", "r", "--runs-dir", str(tmp_path), "--train.epochs", "3"])
    assert cfg.lora == LoraSettings(r=4, alpha=8, target_modules=("q_proj",))
    assert cfg.train == dataclasses.replace(virep_gpu().train, epochs=3.0)


def test_a_config_saved_with_the_flat_option_names_still_loads():
    flat = {k: v for k, v in dataclasses.asdict(SelfTrainConfig()).items() if k not in ("lora", "train")}
    flat |= {"lora_r": 32, "lora_alpha": 64, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"],
             "learning_rate": 1e-3, "epochs": 3.0, "batch_size": 16, "grad_accum": 4, "max_length": 2048,
             "report_to": ["tensorboard"]}
    cfg = config_from_dict(flat)
    assert cfg.lora == LoraSettings(r=32, alpha=64, dropout=0.1, target_modules=("q_proj", "v_proj"))
    assert cfg.train == TrainSettings(learning_rate=1e-3, epochs=3.0, batch_size=16, grad_accum=4, max_length=2048,
                                      report_to=("tensorboard",))
    assert config_from_dict(dataclasses.asdict(cfg)) == cfg  # and the grouped form reads back as it was written


def test_group_options_on_the_command_line():
    cfg = SelfTrainConfig.from_cli(["--lora.r", "4", "--lora.target-modules", "q_proj", "v_proj",
                                    "--train.learning-rate", "1e-3", "--train.report-to", "tensorboard"])
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (4, 16, ("q_proj", "v_proj"))
    assert (cfg.train.learning_rate, cfg.train.epochs, cfg.train.report_to) == (1e-3, 2.0, ("tensorboard",))


def test_a_flat_option_name_in_python_says_where_it_went():
    with pytest.raises(UsageError, match=r"lora_r is now lora\.r"):
        SelfTrainConfig.from_preset("embedded", lora_r=4)


def test_a_reward_threshold_outside_the_unit_interval_is_refused():
    with pytest.raises(UsageError, match="tau"):
        resolve_config(SelfTrainConfig(tau=1.5))


def test_each_round_takes_a_new_slice_of_the_train_split():
    pool = list(range(10))
    first, second, wrapped = (round_questions(pool, k, 4, seed=0) for k in (1, 2, 3))
    assert not set(first) & set(second) and len(set(first + second)) == 8
    assert len(wrapped) == 4 and round_questions(pool, 1, 4, seed=0) == first
