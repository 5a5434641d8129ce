"""The `hf` policy on a tiny random Qwen2 with a tokenizer trained in the test."""

from __future__ import annotations

import pytest
from policy_fixtures import GREEDY, PROMPTS, QUERIES, check_prefix_encoded_once, check_stop_string_cuts, make_adapters

from viprog.errors import UsageError
from viprog.policy import Prompter, SamplingParams, load_policy
from viprog.policy.hf import HFPolicy
from viprog.policy.tiny import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def policy(tiny):
    return HFPolicy(tiny, progress=False)


def test_n_completions_for_each_prompt(policy):
    out = policy.sample(PROMPTS, SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=0))
    assert [len(per) for per in out] == [3, 3, 3] and all(isinstance(c, str) for per in out for c in per)


def test_samples_of_one_prompt_differ(policy):
    out = policy.sample(PROMPTS[:1], SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=1))
    assert len(set(out[0])) > 1


def test_same_seed_same_samples(policy):
    params = SamplingParams(n=2, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=7)
    assert policy.sample(PROMPTS, params) == policy.sample(PROMPTS, params)


def test_other_seed_other_samples(policy):
    a = policy.sample(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=1))
    b = policy.sample(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=2))
    assert a != b


def test_shared_prefix_path_matches_plain_generate_greedily(tiny, policy):
    plain = HFPolicy(tiny, prefix_cache=False, progress=False)
    assert policy.sample(PROMPTS, GREEDY) == plain.sample(PROMPTS, GREEDY)


def test_prefix_is_encoded_once_across_calls(tiny):
    fresh = HFPolicy(tiny, progress=False)
    check_prefix_encoded_once(fresh)


def test_stop_string_ends_the_completion_before_it(policy):
    check_stop_string_cuts(policy)


def test_greedy_n_copies(policy):
    out = policy.sample(PROMPTS[:1], SamplingParams(n=3, temperature=0.0, max_new_tokens=6))
    assert len(out[0]) == 3 and len(set(out[0])) == 1


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory):
    return make_adapters(tiny, tmp_path_factory.mktemp("adapters"))


def test_adapter_switching_changes_outputs_without_reloading_base(tiny, adapters):
    p = HFPolicy(tiny, progress=False)
    base_out = p.sample(PROMPTS, GREEDY)
    base_weights = p.model.get_input_embeddings().weight
    p.load_adapter(adapters[0])
    first = p.sample(PROMPTS, GREEDY)
    p.load_adapter(adapters[1])
    second = p.sample(PROMPTS, GREEDY)
    assert first != base_out and second != first
    assert p.model.get_input_embeddings().weight is base_weights


def test_no_adapter_restores_base_outputs(tiny, adapters):
    p = HFPolicy(tiny, progress=False)
    base_out = p.sample(PROMPTS, GREEDY)
    p.load_adapter(adapters[0])
    p.load_adapter(None)
    assert p.sample(PROMPTS, GREEDY) == base_out


def test_int8_copy_carries_the_merged_adapter(tiny, adapters):
    fp32 = HFPolicy(tiny, progress=False, adapter=adapters[0])
    int8 = HFPolicy(tiny, progress=False, quantize="int8", adapter=adapters[0])
    base = HFPolicy(tiny, progress=False, quantize="int8")
    merged = int8.sample(PROMPTS, GREEDY)
    assert merged != base.sample(PROMPTS, GREEDY)
    agree = sum(a[0][:4] == b[0][:4] for a, b in zip(merged, fp32.sample(PROMPTS, GREEDY)))
    assert agree >= 2  # int8 rounding may flip a late token, not the start of most outputs


def test_missing_adapter_is_a_usage_error(policy, tmp_path):
    with pytest.raises(UsageError, match="adapter_config.json"):
        policy.load_adapter(tmp_path)


def test_missing_model_is_a_one_line_usage_error(tmp_path):
    with pytest.raises(UsageError) as err:
        load_policy("hf", model=str(tmp_path / "nothing-here")).sample(["x"], GREEDY)
    assert "\n" not in str(err.value)


def test_load_policy_hf_exposes_tokenizer_and_model_for_finetuning(tiny):
    p = load_policy("hf", model=tiny)
    assert p.model_path == tiny and p.tokenizer("def")["input_ids"] and p.model.config.model_type == "qwen2"


def test_grouped_attention_equals_sdpa_with_repeated_heads():
    import torch

    from viprog.policy.decode import grouped_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(3, 6, 4, 8), torch.randn(3, 2, 10, 8), torch.randn(3, 2, 10, 8)
    mask = torch.rand(3, 1, 4, 10) > 0.3
    mask[..., 0] = True
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1), attn_mask=mask).transpose(1, 2)
    got, _ = grouped_attention(None, q, k, v, mask)
    assert torch.allclose(got, expected, atol=1e-5)


# -- prompts with no shared prefix (the short prompt style) ------------------------------------
SHORT = [Prompter("API", []).short(q) for q in [*QUERIES, "Why?"]]


def alone(model, tokenizer, prompt, max_new_tokens):
    """`model.generate` greedily on one prompt, no padding: the reference every path must meet."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        row = model.generate(input_ids=ids, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    from viprog.policy.stops import eos_ids

    ends = eos_ids(tokenizer, model.generation_config)  # the rule every backend ends a program by (any special token)
    end = next((k for k, t in enumerate(row) if t in ends), len(row))
    return tokenizer.decode(row[:end], skip_special_tokens=True)


def test_short_prompts_share_too_little_for_a_prefix_and_differ_in_length(policy):
    from viprog.policy.decode import MIN_PREFIX, common_prefix

    ids = [policy.tokenizer(p)["input_ids"] for p in SHORT]
    assert common_prefix(ids) < MIN_PREFIX and len({len(i) for i in ids}) > 1


def test_greedy_on_short_prompts_equals_generate_on_each_alone(policy):
    """Left padding with no shared prefix gave rows that attend to nothing: NaN, then ''."""
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=16)
    expected = [[alone(policy.model, policy.tokenizer, p, 16)] for p in SHORT]
    assert all(e[0] for e in expected) and policy.sample(SHORT, params) == expected


def test_int8_greedy_on_short_prompts_starts_like_int8_generate_alone(tiny):
    """Dynamic int8 scales activations per batch tensor, so a batch (with its padding rows)
    may drift from a lone prompt late in a completion; the first tokens must agree."""
    int8 = HFPolicy(tiny, progress=False, quantize="int8")
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=4)
    got = int8.sample(SHORT, params)
    assert got == [[alone(int8._sampling_model(), int8.tokenizer, p, 4)] for p in SHORT]


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_sampling_short_prompts_sees_finite_logits(tiny, monkeypatch, quantize):
    import torch

    from viprog.policy import decode

    finite = []
    real = decode.pick_tokens

    def watched(logits, temperature, top_p):
        finite.append(bool(torch.isfinite(logits).all()))
        return real(logits, temperature, top_p)

    monkeypatch.setattr(decode, "pick_tokens", watched)
    p = HFPolicy(tiny, progress=False, quantize=quantize)
    out = p.sample(SHORT, SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=0))
    assert [len(per) for per in out] == [3] * len(SHORT) and finite and all(finite)


def test_grouped_attention_keeps_a_row_that_sees_nothing_finite():
    import torch

    from viprog.policy.decode import grouped_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    mask = torch.ones(3, 3, dtype=torch.bool).tril()[None, None]
    mask[..., 0, :] = False  # a left-padding position: nothing before it is a real token
    got, _ = grouped_attention(None, q, k, v, mask)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), attn_mask=mask).transpose(1, 2)
    assert torch.isfinite(got).all() and torch.allclose(got[:, 1:], expected[:, 1:], atol=1e-5)


def test_plain_generate_applies_the_same_stop_rule(tiny, policy):
    free = policy.sample(SHORT, SamplingParams(n=1, temperature=0.0, max_new_tokens=16))
    stops = tuple(text[5:7] for [text] in free if text[5:7].strip())
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=16, stop=stops)
    plain = HFPolicy(tiny, prefix_cache=False, progress=False)
    assert policy.sample(SHORT, params) == plain.sample(SHORT, params) != free
