"""Corrections reach GRPO's weights: with `--corrections FILE`, each `--algo grpo` round first
fine-tunes the adapter it continues on the hand-written programs (`train_on_corrections`),
then runs GRPO from there. On the toy counting task the tiny Qwen2 writes the star program
only 20 % of the time; one correction for a star question makes that program likelier under
the prompt it is trained with, round after round, and the held-out star questions right.
(GRPO's learning rate is lower here than in test_grpo: at 5e-3 the round after the supervised
step collapsed the toy policy into unparsable programs, and the next round recovered.)"""

import contextlib
import io
import json

import pytest
import selftrain_fixtures as F
from test_grpo import grpo_config
from test_selftrain_loop import tiny_model  # noqa: F401  (session fixture)

from viprog.finetune import completion_for
from viprog.grpo import GrpoOptions
from viprog.policy import Prompter
from viprog.runs import read_json
from viprog.selftrain import main as selftrain


@pytest.fixture(scope="module")
def corrected_run(tiny_model, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("grpo-corrections")
    corrections = root / "corrections.jsonl"
    corrections.write_text(json.dumps({"query": F.query_for("star"), "program": F.right_program("star")}) + "\n")
    with contextlib.redirect_stdout(io.StringIO()):
        assert selftrain(grpo_config(tiny_model, root, corrections=str(corrections), grpo=GrpoOptions(
            questions_per_step=2, learning_rate=1e-3, save_steps=2))) == 0
    return root / "tiny"


def program_logprob(model_path, adapter, prompt: str, program: str) -> float:
    """log p(program | prompt) under the base weights with `adapter` (None: the bare base)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = prompt_ids + tokenizer(completion_for(prompt, program))["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return float(logprobs[len(prompt_ids) - 1:].sum())


def adapter_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_each_round_trains_on_the_corrections_before_grpo(corrected_run):
    for k in (1, 2):
        assert (corrected_run / f"round_{k}" / "corrections_adapter" / "adapter_model.safetensors").exists()
        m = read_json(corrected_run / f"round_{k}" / "metrics.json")
        assert m["corrections/examples"] == 1 and m["corrections/steps"] >= 1, m
        assert m["corrections/loss_last"] < m["corrections/loss_first"]
        assert m["train/algo"] == "grpo" and m["train/steps"] == 8  # GRPO ran after it, whole
    import viprog

    assert "correction-0" in viprog.load(corrected_run).question_ids()  # and the library holds it, as before


def test_the_corrections_program_gets_likelier_on_the_same_adapter(corrected_run, tiny_model):  # noqa: F811
    """Round 1 starts a fresh LoRA on the correction; round 2 continues round 1's GRPO adapter
    (its weights change) and raises the correction's likelihood above where GRPO left it."""
    prompt = Prompter("", []).short(F.query_for("star"))  # the prompt the toy run trains under
    program = F.right_program("star")
    r1, r2 = corrected_run / "round_1", corrected_run / "round_2"
    base = program_logprob(tiny_model, None, prompt, program)
    after_1 = program_logprob(tiny_model, r1 / "corrections_adapter", prompt, program)
    grpo_1 = program_logprob(tiny_model, r1 / "adapter", prompt, program)
    after_2 = program_logprob(tiny_model, r2 / "corrections_adapter", prompt, program)
    assert after_1 > base + 0.5, (base, after_1)
    assert after_2 > grpo_1, (grpo_1, after_2)
    before, after = adapter_weights(r1 / "adapter"), adapter_weights(r2 / "corrections_adapter")
    assert before.keys() == after.keys()
    assert any(not before[name].equal(after[name]) for name in before)


def test_grpo_samples_and_evaluates_the_corrected_program(corrected_run):
    """GRPO's own samples for the star questions come from the corrected adapter (the base
    writes the star program 20 % of the time), and greedy, the held-out star questions,
    which the base policy never gets right, come right."""
    from viprog.runs import read_jsonl

    star = [r["reward"] for r in read_jsonl(corrected_run / "round_1" / "samples.jsonl") if r["question_type"] == "star"]
    assert star and sum(star) / len(star) >= 0.8, star
    acc = [read_json(corrected_run / f"round_{k}" / "metrics.json")["eval/accuracy/star"] for k in (0, 1, 2)]
    assert acc[0] == 0.0 and min(acc[1:]) >= 0.5, acc
