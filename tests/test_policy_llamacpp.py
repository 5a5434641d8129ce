"""The `llamacpp` policy on the tiny random Qwen2 exported to GGUF: greedy tokens equal to
`hf`'s, seeds, stops, sampling parameters, LoRA adapters switched in place; and the
embedded default falling back to `hf` with one warning when the engine cannot run."""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import replace

import pytest
from policy_fixtures import GREEDY, PROMPTS, check_prefix_encoded_once, check_stop_string_cuts, make_adapters

from viprog.errors import UsageError
from viprog.policy import SamplingParams, embedded, load_policy
from viprog.policy.gguf_export import export_lora, export_model
from viprog.policy.hf import HFPolicy
from viprog.policy.llamacpp import LlamaCppPolicy, unavailable
from viprog.policy.tiny import build_tiny_model

#: CI sets VIPROG_REQUIRE_ENGINE=1: there a missing engine fails these tests instead of skipping them
needs_engine = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None
                                  and not os.environ.get("VIPROG_REQUIRE_ENGINE"),
                                  reason="llama-cpp-python is not installed (bash scripts/env.sh dev,engine)")



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def tiny_gguf(tiny, tmp_path_factory):
    return export_model(tiny, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def policy(tiny, tiny_gguf):
    p = LlamaCppPolicy(tiny, gguf=tiny_gguf, batch_size=8, threads=1, progress=False)
    yield p
    p.close()


@pytest.fixture(scope="module")
def hf(tiny):
    return HFPolicy(tiny, progress=False)


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory):
    return make_adapters(tiny, tmp_path_factory.mktemp("adapters"))


@needs_engine
def test_greedy_completions_equal_hf_fp32(policy, hf):
    assert policy.sample(PROMPTS, GREEDY) == hf.sample(PROMPTS, GREEDY)


@needs_engine
def test_n_completions_for_each_prompt_and_they_differ(policy):
    out = policy.sample(PROMPTS, SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=0))
    assert [len(per) for per in out] == [4, 4, 4]
    assert all(len(set(per)) > 1 for per in out)


@needs_engine
def test_same_seed_same_samples_other_seed_other_samples(policy):
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=7)
    first = policy.sample(PROMPTS, params)
    assert policy.sample(PROMPTS, params) == first
    assert policy.sample(PROMPTS, replace(params, seed=8)) != first


@needs_engine
def test_a_vanishing_top_p_or_temperature_samples_the_greedy_tokens(policy):
    greedy = policy.sample(PROMPTS, GREEDY)
    nucleus = policy.sample(PROMPTS, SamplingParams(n=1, temperature=1.0, top_p=1e-6, max_new_tokens=12, seed=3))
    cold = policy.sample(PROMPTS, SamplingParams(n=1, temperature=1e-4, top_p=1.0, max_new_tokens=12, seed=3))
    assert nucleus == greedy and cold == greedy


@needs_engine
def test_max_new_tokens_bounds_every_completion(policy):
    before = policy.stats["generated_tokens"]
    out = policy.sample(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=5, seed=0))
    assert policy.stats["generated_tokens"] - before <= 5 * 6
    longer = policy.sample(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=20, seed=0))
    assert all(len(short) <= len(long) for s, lo in zip(out, longer) for short, long in zip(s, lo))


@needs_engine
def test_stop_string_ends_the_completion_before_it(policy):
    check_stop_string_cuts(policy)


@needs_engine
def test_greedy_n_copies_are_decoded_once(policy):
    before = policy.stats["generated_tokens"]
    out = policy.sample(PROMPTS[:1], SamplingParams(n=3, temperature=0.0, max_new_tokens=6))
    assert len(out[0]) == 3 and len(set(out[0])) == 1
    assert policy.stats["generated_tokens"] - before <= 6


@needs_engine
def test_prefix_is_encoded_once_across_calls(tiny, tiny_gguf):
    fresh = LlamaCppPolicy(tiny, gguf=tiny_gguf, threads=1, progress=False)
    check_prefix_encoded_once(fresh)
    fresh.close()


@needs_engine
def test_waves_smaller_than_the_samples_give_the_same_greedy_tokens(tiny, tiny_gguf, policy):
    narrow = LlamaCppPolicy(tiny, gguf=tiny_gguf, batch_size=2, threads=1, progress=False)
    many = [*PROMPTS, *(p.replace("Query:", "Question:") for p in PROMPTS)]
    assert narrow.sample(many, GREEDY) == policy.sample(many, GREEDY)
    narrow.close()


@needs_engine
def test_adapters_switch_in_place_and_match_hf_with_the_same_adapter(tiny, tiny_gguf, adapters):
    p = LlamaCppPolicy(tiny, gguf=tiny_gguf, threads=1, progress=False)
    reference = HFPolicy(tiny, progress=False)
    base_out = p.sample(PROMPTS, GREEDY)
    model = p._model
    outs = []
    for path in adapters:
        p.load_adapter(path)
        reference.load_adapter(path)
        outs.append(p.sample(PROMPTS, GREEDY))
        assert outs[-1] == reference.sample(PROMPTS, GREEDY)
    assert outs[0] != base_out and outs[1] != outs[0]
    assert p._model is model  # the base was never reloaded
    p.load_adapter(None)
    assert p.sample(PROMPTS, GREEDY) == base_out
    p.close()


@needs_engine
def test_an_adapter_given_before_the_first_sample_is_applied(tiny, tiny_gguf, adapters):
    early = LlamaCppPolicy(tiny, gguf=tiny_gguf, threads=1, progress=False, adapter=adapters[0])
    reference = HFPolicy(tiny, progress=False, adapter=adapters[0])
    assert early.sample(PROMPTS, GREEDY) == reference.sample(PROMPTS, GREEDY)
    early.close()


@needs_engine
def test_without_a_gguf_the_folder_is_exported(tiny, policy):
    exported = LlamaCppPolicy(tiny, threads=1, progress=False)
    assert exported.sample(PROMPTS[:1], GREEDY) == policy.sample(PROMPTS[:1], GREEDY)
    exported.close()


@needs_engine
def test_probe_accepts_a_model_and_names_a_broken_file(tiny_gguf, tmp_path):
    assert unavailable(tiny_gguf) is None
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(100))
    reason = unavailable(broken)
    assert reason is not None and "broken.gguf" in reason and "\n" not in reason


def test_embedded_falls_back_to_hf_with_one_warning(tiny, monkeypatch, caplog):
    monkeypatch.setattr(embedded, "ensure_gguf", lambda cache=None, **k: tiny)
    monkeypatch.setattr(embedded, "ensure_model", lambda cache=None, **k: tiny)
    monkeypatch.setattr(embedded, "unavailable", lambda gguf: "llama-cpp-python is not installed")
    with caplog.at_level(logging.WARNING):
        p = load_policy(embedded.NAME, engine="llamacpp", quantize="int8", progress=False)
    assert isinstance(p, HFPolicy) and p.name == embedded.NAME and p.quantize == "int8"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "not installed" in warnings[0].getMessage()


@needs_engine
def test_the_embedded_default_samples_with_llama_cpp_on_a_cpu(tiny, tiny_gguf, monkeypatch):
    monkeypatch.setattr(embedded, "ensure_gguf", lambda cache=None, **k: tiny_gguf)
    monkeypatch.setattr(embedded, "ensure_model", lambda cache=None, **k: tiny)
    p = load_policy(embedded.NAME, progress=False)  # engine "auto", device "cpu"
    assert isinstance(p, LlamaCppPolicy) and p.name == embedded.NAME
    p.close()
    assert isinstance(load_policy(embedded.NAME, model=tiny, progress=False), HFPolicy)  # a model of one's own: hf


def test_the_embedded_default_falls_back_to_hf_when_the_engine_cannot_run(tiny, monkeypatch, caplog):
    monkeypatch.setattr(embedded, "ensure_gguf", lambda cache=None, **k: tiny)
    monkeypatch.setattr(embedded, "ensure_model", lambda cache=None, **k: tiny)
    monkeypatch.setattr(embedded, "unavailable", lambda gguf: "llama-cpp-python is not installed")
    with caplog.at_level(logging.WARNING):
        p = load_policy(embedded.NAME, progress=False)
    assert isinstance(p, HFPolicy)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "llama-cpp-python is not installed; the embedded policy samples with hf instead"]


@needs_engine
def test_embedded_on_the_engine_drops_hf_only_options(tiny, tiny_gguf, monkeypatch):
    monkeypatch.setattr(embedded, "ensure_gguf", lambda cache=None, **k: tiny_gguf)
    monkeypatch.setattr(embedded, "ensure_model", lambda cache=None, **k: tiny)
    p = load_policy(embedded.NAME, engine="llamacpp", quantize="int8", progress=False)
    assert isinstance(p, LlamaCppPolicy) and p.name == embedded.NAME and p.model_path == tiny
    p.close()


def test_bad_options_are_one_line_usage_errors(tiny):
    with pytest.raises(UsageError, match="CPU"):
        LlamaCppPolicy(tiny, device="cuda")
    with pytest.raises(UsageError, match="batch_size"):
        LlamaCppPolicy(tiny, batch_size=0)
    with pytest.raises(UsageError, match="needs a model"):
        load_policy("llamacpp")
    with pytest.raises(UsageError, match="unknown engine"):
        load_policy(embedded.NAME, engine="onnx")


def test_unsupported_adapters_and_architectures_are_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "use_dora": true, "lora_alpha": 8}')
    with pytest.raises(UsageError, match="use_dora"):
        export_lora(tmp_path, tmp_path / "a.gguf", model_type="qwen2", layers=2)
    with pytest.raises(UsageError, match="supported: qwen2"):
        export_lora(tmp_path, tmp_path / "a.gguf", model_type="gpt_neox", layers=2)
