"""The two output families: their samples are well formed and `log_prob` is a normalised
log-likelihood of exactly what `sample` draws."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from viprog.reinforce.models import BoxTokenizer, PixelPolicy, RegionPolicy, SeqPolicy


def test_box_tokenizer_round_trip_and_random_order() -> None:
    tok = BoxTokenizer(32, 3, 4)
    boxes = np.array([[1, 2, 10, 12], [20, 5, 32, 30.0]])
    labels = np.array([2, 0])
    seq = tok.encode(boxes, labels)
    assert seq.shape == (tok.length,) and seq[10] == tok.EOS and (seq[11:] == tok.PAD).all()
    out = tok.decode(seq)
    np.testing.assert_array_equal(out["boxes"], boxes)
    np.testing.assert_array_equal(out["labels"], labels)
    orders = {tuple(tok.decode(tok.encode(boxes, labels, np.random.default_rng(s)))["labels"]) for s in range(20)}
    assert orders == {(2, 0), (0, 2)}
    assert tok.decode(np.array([tok.EOS] + [tok.PAD] * 20))["boxes"].shape == (0, 4)


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, None), (0.5, None), (2.0, 3)])
def test_seq_policy_distribution_sums_to_one(temperature: float, top_k: int | None) -> None:
    """Enumerate every grammatical sequence of a tiny vocabulary: probabilities sum to 1,
    also under the temperature and top-k the samples are drawn with."""
    torch.manual_seed(0)
    tok = BoxTokenizer(4, 2, 1)  # coordinates 0..4, two classes, one object: 5^4 · 2 + 1 sequences
    policy = SeqPolicy(tok, dim=16, layers=1).eval()
    coords = range(tok.coord0, tok.class0)
    seqs = [[tok.EOS] + [tok.PAD] * 5]
    seqs += [[*c, k, tok.EOS] for c in itertools.product(coords, repeat=4) for k in range(tok.class0, tok.vocab_size)]
    y = torch.tensor(seqs).unsqueeze(0)
    with torch.no_grad():
        logp = policy.log_prob(torch.rand(1, 3, 4, 4), y, temperature, top_k)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-4)
    assert (top_k is not None) == bool(torch.isinf(logp).any())  # top-k leaves some sequences out


def test_seq_policy_scores_its_samples_at_the_temperature_they_were_drawn_at() -> None:
    """Each token's log-probability is log softmax(masked logits / T) at that position, with
    all but the top k at −inf; every token drawn at (T, k) has a finite one."""
    torch.manual_seed(0)
    tok = BoxTokenizer(16, 3, 2)
    policy = SeqPolicy(tok, dim=32, layers=1).eval()
    x = torch.rand(2, 3, 16, 16)
    t, k = 0.6, 5
    y = policy.sample(x, 3, temperature=t, top_k=k)
    with torch.no_grad():
        got = policy.token_log_probs(x, y, t, k)
        logits = policy._logits(policy.memory(x).repeat_interleave(3, 0), y.reshape(6, -1)) / t
    kth = logits.topk(k, dim=-1).values[..., -1:]
    direct = logits.masked_fill(logits < kth, float("-inf")).log_softmax(-1)
    direct = direct.gather(-1, y.reshape(6, -1, 1)).squeeze(-1).view_as(got)
    live = got != 0  # PAD after EOS scores 0
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[live], direct[live])
    assert not torch.allclose(policy.log_prob(x, y), policy.log_prob(x, y, t, k))


def test_seq_policy_samples_parse_and_greedy_is_the_mode() -> None:
    torch.manual_seed(0)
    tok = BoxTokenizer(16, 3, 3)
    policy = SeqPolicy(tok, dim=32, layers=1).eval()
    x = torch.rand(4, 3, 16, 16)
    samples = policy.sample(x, 5)
    assert samples.shape == (4, 5, tok.length)
    for seq in samples.reshape(-1, tok.length).numpy():
        eos = np.nonzero(seq == tok.EOS)[0]
        assert len(eos) == 1 and eos[0] % 5 == 0 and (seq[eos[0] + 1:] == tok.PAD).all()
        body = seq[: eos[0]].reshape(-1, 5)
        assert ((body[:, :4] >= tok.coord0) & (body[:, :4] < tok.class0)).all() and (body[:, 4] >= tok.class0).all()
    greedy = policy.sample(x, 1, temperature=0)
    assert torch.equal(greedy, policy.sample(x, 1, temperature=1.0, top_k=1))
    logp = policy.log_prob(x, torch.cat([greedy, samples], 1))
    assert torch.isfinite(logp).all()
    # greedy maximises every next token, so its first token is at least as likely as any sample's
    first = policy.token_log_probs(x, torch.cat([greedy, samples], 1))[..., 0]
    assert (first[:, :1] >= first[:, 1:] - 1e-6).all()


def test_pixel_policy_scores_the_tempered_distribution_it_samples() -> None:
    """One pixel, four classes, T = 0.5 and top-3: log_prob is log softmax(logits / T) with
    the smallest class at −inf, and the sampling frequencies follow it."""
    torch.manual_seed(0)
    policy = PixelPolicy(1, 4, width=8).eval()
    x = torch.rand(1, 1, 1, 1)
    t, k = 0.5, 3
    every = torch.arange(4).view(1, 4, 1, 1)
    with torch.no_grad():
        logp = policy.log_prob(x, every, temperature=t, top_k=k)[0]
        logits = policy.logits(x)[0, 0, 0]
    top = logits > logits.min()
    direct = torch.full((4,), float("-inf"))
    direct[top] = (logits[top] / t).log_softmax(-1)
    torch.testing.assert_close(logp, direct)
    assert not torch.allclose(logp, logits.log_softmax(-1))  # T = 1 would score another distribution
    draws = policy.sample(x, 20_000, temperature=t, top_k=k).flatten()
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    np.testing.assert_allclose(freq.numpy(), logp.exp().double().numpy(), atol=0.015)


def test_pixel_policy_log_prob_matches_its_sampling_distribution() -> None:
    torch.manual_seed(0)
    policy = PixelPolicy(1, 3, width=8).eval()
    x = torch.rand(2, 1, 8, 8)
    y = policy.sample(x, 4)
    assert y.shape == (2, 4, 8, 8) and y.max() < 3
    logits = policy.logits(x).log_softmax(-1)
    manual = torch.stack([logits[b].gather(-1, y[b, j].unsqueeze(-1)).sum() for b in range(2) for j in range(4)])
    torch.testing.assert_close(policy.log_prob(x, y).flatten(), manual)
    argmax = policy.sample(x, 1, temperature=0)
    assert (policy.log_prob(x, argmax) >= policy.log_prob(x, y).max(1, keepdim=True).values).all()
    assert torch.equal(argmax, policy.sample(x, 1, top_k=1))


def _region_policy(seed: int = 0, size: int = 4) -> tuple[RegionPolicy, torch.Tensor]:
    torch.manual_seed(seed)
    model = PixelPolicy(1, 3, width=8).eval()
    return RegionPolicy(model), torch.rand(2, 1, size, size)


def test_region_policy_greedy_is_the_argmax_and_samples_relabel_whole_regions() -> None:
    policy, x = _region_policy()
    argmax = policy.model.sample(x, 1, temperature=0)
    assert torch.equal(policy.sample(x, 1, temperature=0), argmax)
    ids, counts = policy.regions(x)
    assert counts.max() >= 2
    samples = policy.sample(x, 16).flatten(2)
    for b in range(2):
        for r in range(int(counts[b])):
            inside = samples[b][:, ids[b] == r]
            assert (inside == inside[:, :1]).all()  # one class per region in every sample
    assert len({tuple(s.tolist()) for s in samples[0]}) > 1  # and the samples differ


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, None), (0.5, None), (2.0, 2)])
def test_region_policy_log_prob_is_a_normalised_distribution_over_relabellings(temperature: float,
                                                                               top_k: int | None) -> None:
    """Enumerate every assignment of a class to each region: probabilities sum to 1, and
    the sampling frequencies at the same temperature and top-k match them."""
    policy, x = _region_policy(seed=1, size=3)
    x = x[:1]
    ids, counts = policy.regions(x)
    r = int(counts[0])
    maps = torch.stack([torch.tensor(a)[ids[0]] for a in itertools.product(range(3), repeat=r)])
    logp = policy.log_prob(x, maps.view(1, -1, 3, 3), temperature, top_k)
    assert float(logp.detach().exp().sum()) == pytest.approx(1.0, abs=1e-5)
    draws = policy.sample(x, 4000, temperature, top_k).view(4000, -1)
    index = {tuple(m.tolist()): i for i, m in enumerate(maps)}
    freq = np.bincount([index[tuple(d.tolist())] for d in draws], minlength=len(maps)) / 4000
    np.testing.assert_allclose(freq, logp[0].exp().detach().numpy(), atol=0.03)


def test_region_policy_rejects_maps_its_regions_cannot_produce() -> None:
    policy, x = _region_policy()
    ids, _ = policy.regions(x)
    y = policy.sample(x, 1, temperature=0).clone()
    big = int(torch.bincount(ids[0]).argmax())  # a region of several pixels
    pixel = int((ids[0] == big).nonzero()[0])
    y.view(2, 1, -1)[0, 0, pixel] = (y.view(2, 1, -1)[0, 0, pixel] + 1) % 3
    with pytest.raises(ValueError, match="constant on its regions"):
        policy.log_prob(x, y)


def test_region_policy_tunes_the_model_and_keeps_its_partition(tmp_path) -> None:
    from viprog.reinforce.tuner import PhaseConfig, train

    policy, x = _region_policy(size=8)
    before_ids, _ = policy.regions(x)
    frozen = {k: v.clone() for k, v in policy.reference.state_dict().items()}
    model_before = {k: v.clone() for k, v in policy.model.state_dict().items()}

    def reward(batch, samples):  # prefer class 2 everywhere
        return (samples == 2).float().flatten(2).mean(-1)

    cfg = PhaseConfig(steps=30, lr=1e-2, warmup=1, num_samples=4)
    train(policy, "reward", lambda step: {"x": x}, cfg, tmp_path, reward_fn=reward, progress=False)
    assert all(torch.equal(v, policy.reference.state_dict()[k]) for k, v in frozen.items())
    assert any(not torch.equal(v, policy.model.state_dict()[k]) for k, v in model_before.items())
    assert torch.equal(policy.regions(x)[0], before_ids)
    policy.train()
    assert policy.model.training and not policy.reference.training
    greedy = policy.sample(x, 1, temperature=0)
    assert (greedy == 2).float().mean() > (policy.reference.sample(x, 1, temperature=0) == 2).float().mean()


def test_region_policy_scores_its_samples_with_the_regions_it_drew_them_on() -> None:
    policy, x = _region_policy(size=8)
    samples = policy.sample(x, 3)  # keeps the regions of `x` for the next log_prob
    kept = policy.log_prob(x, samples)
    torch.testing.assert_close(kept, policy.log_prob(x, samples))  # recomputed: the same
    policy.sample(x, 3)
    x.add_(0.0)  # an in-place change: the kept regions no longer count as x's
    assert policy._last is not None and policy._last[1] != x._version
    torch.testing.assert_close(policy.log_prob(x, samples), kept)
