"""LoRA fine-tuning with TRL's SFTTrainer + PEFT (viprog.finetune), on a tiny Qwen2; a continued
adapter refuses other LoRA settings, and over-long pairs are counted, not silently cut."""

import json
import logging

import pytest
from selftrain_fixtures import SHAPES, build_tiny_policy, query_for, right_program

from viprog.errors import UsageError
from viprog.finetune import LoraSettings, TrainSettings, completion_for, finetune, sft_options

PROMPT = "# Query: {}\ndef execute_command(image):\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer

    path = build_tiny_policy(tmp_path_factory.mktemp("tiny"), PROMPT.format, dict.fromkeys(SHAPES, 0.5), steps=0)
    return str(path), AutoTokenizer.from_pretrained(path)


def pairs():
    return [(PROMPT.format(query_for(s)), right_program(s)) for s in SHAPES] * 2


def test_completion_does_not_repeat_the_lines_the_prompt_ends_with():
    assert completion_for(PROMPT.format("q"), right_program("star")) == right_program("star").split("\n", 1)[1]
    assert completion_for("# Query: q\n", right_program("star")) == right_program("star")


def test_finetune_publishes_an_adapter_and_lowers_the_loss(tiny, tmp_path):
    path, tokenizer = tiny
    stats = finetune(path, tokenizer, pairs(), tmp_path / "adapter", lora=LoraSettings(r=8, alpha=16),
                     train=TrainSettings(learning_rate=1e-2, epochs=4, batch_size=4))
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "adapter" / "train_stats.json").read_text())["train/steps"] == stats["train/steps"] == 8
    assert stats["train/loss_last"] < stats["train/loss_first"]
    assert stats["train/checkpointing"] == 1  # the LoRA weights learn through checkpointed layers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporaries left


def test_on_cuda_training_checkpoints_activations_in_bf16(tmp_path):
    """The GPU settings, read without a GPU: TRL's SFTConfig takes the options as given
    (bf16 needs a GPU to construct, so the built config is checked with it off)."""
    from trl import SFTConfig

    options = sft_options(TrainSettings(), tmp_path, cuda=True, bf16=True)
    assert options["bf16"] is True and options["use_cpu"] is False
    config = SFTConfig(**(options | {"bf16": False, "use_cpu": True}))
    assert config.gradient_checkpointing is True
    off = SFTConfig(**sft_options(TrainSettings(checkpointing=False), tmp_path, cuda=False, bf16=False))
    assert off.gradient_checkpointing is False  # explicit, not TRL's default (True)


def test_checkpointing_off_reaches_the_model(tiny, tmp_path):
    path, tokenizer = tiny
    stats = finetune(path, tokenizer, pairs(), tmp_path / "adapter",
                     train=TrainSettings(epochs=1, batch_size=4, checkpointing=False))
    assert stats["train/checkpointing"] == 0 and stats["train/steps"] == 2


def test_continuing_an_adapter_starts_where_it_stopped(tiny, tmp_path):
    path, tokenizer = tiny
    train = TrainSettings(learning_rate=1e-2, epochs=2, batch_size=4)
    first = finetune(path, tokenizer, pairs(), tmp_path / "a1", train=train)
    second = finetune(path, tokenizer, pairs(), tmp_path / "a2", train=train, init_adapter=tmp_path / "a1")
    assert second["train/loss_first"] < first["train/loss_first"] - 0.1


def test_loss_falls_on_the_completion_only(tiny, tmp_path):
    """A long prompt must not change the number of trained tokens' loss terms: the labels
    of prompt tokens are masked (TRL's completion_only_loss on a prompt-completion dataset)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    path, tokenizer = tiny
    data = Dataset.from_list([{"prompt": PROMPT.format(query_for("star")) * 3,
                               "completion": completion_for(PROMPT.format(""), right_program("star"))}])
    args = SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, report_to="none", use_cpu=True)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args, train_dataset=data,
                         processing_class=tokenizer)
    row = trainer.train_dataset[0]
    n_completion = len(tokenizer(data[0]["completion"] + tokenizer.eos_token)["input_ids"])
    trained = [label for label in row["labels"] if label != -100]
    assert len(trained) == n_completion < len(row["input_ids"])


def test_trainer_logs_go_to_the_logger_and_the_bar_not_stdout(tiny, tmp_path, capfd, caplog):
    path, tokenizer = tiny
    with caplog.at_level(logging.DEBUG, logger="viprog.finetune"):
        stats = finetune(path, tokenizer, pairs(), tmp_path / "adapter", train=TrainSettings(epochs=1, batch_size=4))
    out, err = capfd.readouterr()
    assert "{'loss'" not in out and "'train_runtime'" not in out and "{'loss'" not in err
    steps = [r for r in caplog.records if r.getMessage().startswith("trainer step")]
    assert len(steps) == stats["train/steps"] == 2 and "'loss'" in steps[0].getMessage()
    assert any(r.levelno == logging.INFO and "train_runtime" in r.getMessage() for r in caplog.records)


def four_pairs():
    return pairs()[:len(SHAPES)]


def test_continuing_an_adapter_with_other_lora_settings_is_refused(tiny, tmp_path):
    path, tokenizer = tiny
    train = TrainSettings(epochs=1, batch_size=4)
    finetune(path, tokenizer, four_pairs(), tmp_path / "a1", lora=LoraSettings(r=4, alpha=8, dropout=0.0), train=train)
    for other in (LoraSettings(r=8, alpha=8, dropout=0.0), LoraSettings(r=4, alpha=16, dropout=0.0),
                  LoraSettings(r=4, alpha=8, dropout=0.1), LoraSettings(r=4, alpha=8, dropout=0.0,
                                                                        target_modules=("q_proj",))):
        with pytest.raises(UsageError, match="other LoRA settings") as err:
            finetune(path, tokenizer, four_pairs(), tmp_path / "a2", lora=other, train=train, init_adapter=tmp_path / "a1")
        assert "\n" not in str(err.value)
        assert not (tmp_path / "a2").exists()
    same = finetune(path, tokenizer, four_pairs(), tmp_path / "a3", lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                    train=train, init_adapter=tmp_path / "a1")
    assert same["train/steps"] == 1


def test_pairs_longer_than_max_length_are_counted_and_logged(tiny, tmp_path, caplog):
    path, tokenizer = tiny
    long_prompt = "# a few-shot prompt\n" * 40 + PROMPT.format(query_for("star"))
    batch = [*four_pairs(), (long_prompt, right_program("star"))]
    limit = max(len(tokenizer(p)["input_ids"]) for p, _ in four_pairs()) + 40
    assert len(tokenizer(long_prompt)["input_ids"]) > limit
    with caplog.at_level(logging.WARNING, logger="viprog.finetune"):
        stats = finetune(path, tokenizer, batch, tmp_path / "a", train=TrainSettings(epochs=1, batch_size=5,
                                                                                      max_length=limit))
    assert stats["train/over_max_length"] == 1
    assert any("1 of 5 training pairs are longer than max_length" in r.getMessage() for r in caplog.records)
    stats = finetune(path, tokenizer, four_pairs(), tmp_path / "b", train=TrainSettings(epochs=1, batch_size=4,
                                                                                   max_length=limit))
    assert stats["train/over_max_length"] == 0
