"""`--grpo.rollout policy`: GRPO's groups sampled by the run's policy engine under the
trainer's current LoRA (viprog.grpo_rollout). What TRL gets back is checked against a
recording policy (one completion per row, in group order; the adapter synced once per
step; an ended program closed by EOS, a cut one not); a GRPO run on the toy task with the
llama.cpp engine (the `auto` choice) samples there and still raises the held-out accuracy."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_grpo import grpo_config
from test_selftrain_loop import tiny_model  # noqa: F401  (session fixture)

from viprog.errors import UsageError
from viprog.grpo import GrpoOptions, check_options
from viprog.grpo_rollout import PolicyRollout, resolve_rollout, sampling_prompts
from viprog.policy.base import Policy, SamplingParams
from viprog.runs import read_jsonl
from viprog.selftrain import main as selftrain

needs_engine = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None
                                  and not os.environ.get("VIPROG_REQUIRE_ENGINE"),
                                  reason="llama-cpp-python is not installed (bash scripts/env.sh dev,engine)")


class Recording(Policy):
    """Answers each prompt with `n` numbered texts and records what it was asked and given."""

    name = "recording"

    def __init__(self, texts):
        self.texts, self.adapters, self.calls, self.released = texts, [], [], 0

    def sample(self, prompts, params):
        self.calls.append((list(prompts), params))
        return [[self.texts[j % len(self.texts)].format(q=q) for j in range(params.n)] for q in range(len(prompts))]

    def load_adapter(self, path):
        self.adapters.append((Path(path).name, (Path(path) / "adapter_config.json").is_file()))

    def release_caches(self):
        self.released += 1


class SavedModel:
    def save_pretrained(self, folder):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "adapter_config.json").write_text("{}")


@pytest.fixture(scope="module")
def tokenizer(tiny_model):  # noqa: F811
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def trainer_at(step, tokenizer, n=2, training=True):
    model = SavedModel()
    model.training = training
    return SimpleNamespace(state=SimpleNamespace(global_step=step), num_generations=n, num_generations_eval=1,
                           processing_class=tokenizer, model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m))


def test_each_row_gets_its_groups_completion_as_the_trainers_tokens(tokenizer, tmp_path):
    short, long = "    return {q}\n", "    x = 1\n" * 40
    policy = Recording([short, long])
    params = SamplingParams(n=2, temperature=1.0, top_p=0.9, max_new_tokens=24, stop=("\n\n",), seed=7)
    rollout = PolicyRollout(policy, params, tmp_path / "adapters")
    out = rollout(["prompt A", "prompt A", "prompt B", "prompt B"], trainer_at(0, tokenizer))
    (asked, used), = policy.calls
    assert asked == ["prompt A", "prompt B"] and used.n == 2 and used.seed == 7 * 1_000_003 and used.stop == ("\n\n",)
    assert out["logprobs"] is None and policy.released == 1
    assert out["prompt_ids"] == [tokenizer(text=p)["input_ids"] for p in ["prompt A"] * 2 + ["prompt B"] * 2]
    eos = tokenizer.eos_token_id
    for row, q, text in [(0, 0, short), (2, 1, short)]:  # ended: its tokens, then EOS
        assert out["completion_ids"][row] == tokenizer(text=text.format(q=q), add_special_tokens=False)["input_ids"] + [eos]
    for row in (1, 3):  # longer than max_new_tokens: cut there, no EOS (TRL counts it as clipped)
        assert len(out["completion_ids"][row]) == 24 and eos not in out["completion_ids"][row]


def test_the_adapter_is_synced_once_per_step_and_seeds_move_on(tokenizer, tmp_path):
    policy = Recording(["    return 1\n"])
    rollout = PolicyRollout(policy, SamplingParams(n=2, seed=100), tmp_path / "adapters")
    for step in (0, 0, 1, 3):
        rollout(["p", "p"], trainer_at(step, tokenizer))
    assert policy.adapters == [("step0", True), ("step1", True), ("step3", True)]
    assert [params.seed for _, params in policy.calls] == [(100 * 1_000_003 + step) % 2 ** 31 for step in (0, 0, 1, 3)]
    assert [p.name for p in (tmp_path / "adapters").iterdir()] == ["step3"]  # the older copies are removed


def test_with_loss_prompt_train_the_group_is_sampled_under_its_own_prompt(tokenizer, tmp_path):
    """TRL's prompts are the loss's (the short one); the policy is asked the few-shot one."""
    policy = Recording(["    return 2\n"])
    rollout = PolicyRollout(policy, SamplingParams(n=2), tmp_path, sample_prompts={"short": "few-shot long"})
    out = rollout(["short", "short"], trainer_at(0, tokenizer))
    assert policy.calls[0][0] == ["few-shot long"]
    assert out["prompt_ids"] == [tokenizer(text="short")["input_ids"]] * 2


def test_in_eval_mode_groups_have_the_eval_size(tokenizer, tmp_path):
    policy = Recording(["    return 3\n"])
    out = PolicyRollout(policy, SamplingParams(n=2), tmp_path)(["a", "b"], trainer_at(0, tokenizer, training=False))
    assert policy.calls[0][0] == ["a", "b"] and policy.calls[0][1].n == 1 and len(out["completion_ids"]) == 2


def test_questions_sharing_a_training_prompt_are_sampled_under_the_first_ones_prompt():
    ex = [SimpleNamespace(id=i, query=q) for i, q in enumerate(["How many?", "What colour?", "How many?"])]
    got = sampling_prompts(ex, lambda e: f"short {e.query}", lambda e: f"few-shot {e.query} without {e.id}")
    assert got == {"short How many?": "few-shot How many? without 0", "short What colour?": "few-shot What colour? without 1"}


def test_grpo_checkpoints_activations_as_the_train_settings_say(tmp_path):
    """On by default on the CPU too (off, the 0.5B's loss forward over few-shot groups took ~17 GB)."""
    from trl import GRPOConfig

    from viprog.finetune import checkpointing_option
    from viprog.grpo import grpo_settings

    cfg = grpo_config("unused", tmp_path)
    name = checkpointing_option(GRPOConfig)
    assert grpo_settings(cfg, tmp_path, steps=1, seed=0, cuda=False, bf16=False)[name] is True
    off = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, checkpointing=False))
    assert grpo_settings(off, tmp_path, steps=1, seed=0, cuda=False, bf16=False)[name] is False


def test_loss_prompt_train_with_trls_sampler_is_refused_before_round_0(tiny_model, tmp_path):  # noqa: F811
    """The hf policy makes `auto` choose TRL's sampler, which cannot sample under another prompt."""
    cfg = grpo_config(tiny_model, tmp_path, grpo=GrpoOptions(loss_prompt="train"))
    with pytest.raises(UsageError, match="needs --grpo.rollout policy"):
        selftrain(cfg)
    assert not (tmp_path / "tiny").exists()


def test_rows_that_are_not_whole_groups_are_refused(tokenizer, tmp_path):
    rollout = PolicyRollout(Recording(["x"]), SamplingParams(n=2), tmp_path)
    with pytest.raises(RuntimeError, match="whole groups"):
        rollout(["a", "a", "b"], trainer_at(0, tokenizer))
    with pytest.raises(RuntimeError, match="repeated 2 times"):
        rollout(["a", "b", "b", "a"], trainer_at(0, tokenizer))


def test_auto_takes_the_llamacpp_engine_and_bad_choices_are_refused(tmp_path):
    class Engine(Recording):
        def info(self):
            return {"policy": "llamacpp", "engine": "llama.cpp"}

    assert resolve_rollout("auto", Engine([]), use_vllm=False) == "policy"
    assert resolve_rollout("auto", Engine([]), use_vllm=True) == "trl"
    assert resolve_rollout("auto", Recording([]), use_vllm=False) == "trl"  # hf: TRL's generate is the same model
    assert resolve_rollout("policy", Recording([]), use_vllm=False) == "policy"
    for options, match in [({"rollout": "vllm"}, "--grpo.rollout must be one of"),
                           ({"rollout": "policy", "use_vllm": True}, "choose one"),
                           ({"loss_prompt": "short"}, "--grpo.loss-prompt must be"),
                           ({"loss_prompt": "train", "rollout": "trl"}, "needs --grpo.rollout policy")]:
        cfg = grpo_config("unused", tmp_path)
        cfg = dataclasses.replace(cfg, device="cuda", grpo=dataclasses.replace(cfg.grpo, **options))
        with pytest.raises(UsageError, match=match):
            check_options(cfg)


@needs_engine
@pytest.mark.parametrize("loss_prompt", ["sampled", "train"])
def test_a_grpo_run_sampled_by_llamacpp_raises_the_held_out_accuracy(loss_prompt, tiny_model, tmp_path,  # noqa: F811
                                                                      caplog):
    """The tiny policy on the llama.cpp engine, `--grpo.rollout auto`: every step's group is
    sampled there under that step's LoRA, and GRPO still makes the greedy policy right for
    more shapes than the circles it starts with. (The tiny run's prompts are all short, so
    `train` goes through the loss-to-sampling prompt map with equal texts.)"""
    cfg = grpo_config(tiny_model, tmp_path, policy="llamacpp", rounds=1,
                      grpo=GrpoOptions(questions_per_step=2, learning_rate=5e-3, save_steps=4, loss_prompt=loss_prompt))
    with caplog.at_level(logging.INFO, logger="viprog.policy.llamacpp"):
        assert selftrain(cfg) == 0
    run = tmp_path / "tiny"
    loaded = [r.getMessage().rsplit("/", 1)[-1] for r in caplog.records if "rollout_adapters" in r.getMessage()]
    assert loaded == [f"step{i}" for i in range(8)]  # one sync a step, in order
    metrics = read_jsonl(run / "metrics.jsonl")
    assert metrics[1]["train/rollout"] == "policy" and metrics[1]["train/loss_prompt"] == loss_prompt
    acc = [m["eval/accuracy"] for m in metrics]
    assert 0 < acc[0] <= 0.5 and acc[1] >= acc[0] + 0.25, acc
    samples = read_jsonl(run / "round_1" / "samples.jsonl")
    assert sorted({s["step"] for s in samples}) == list(range(8)) and len(samples) == 64
    assert not (run / "round_1" / "rollout_adapters").exists()
