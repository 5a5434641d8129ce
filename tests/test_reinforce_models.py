"""The two output families: their samples are well formed and `log_prob` is a normalised
log-likelihood of exactly what `sample` draws."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from viprog.reinforce.models import BoxTokenizer, PixelPolicy, SeqPolicy


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


def test_seq_policy_distribution_sums_to_one() -> None:
    """Enumerate every grammatical sequence of a tiny vocabulary: probabilities sum to 1."""
    torch.manual_seed(0)
    tok = BoxTokenizer(4, 2, 1)  # coordinates 0..4, two classes, one object: 5^4 · 2 + 1 sequences
    policy = SeqPolicy(tok, dim=16, layers=1).eval()
    coords = range(tok.coord0, tok.class0)
    seqs = [[tok.EOS] + [tok.PAD] * 5]
    seqs += [[*c, k, tok.EOS] for c in itertools.product(coords, repeat=4) for k in range(tok.class0, tok.vocab_size)]
    y = torch.tensor(seqs).unsqueeze(0)
    with torch.no_grad():
        total = policy.log_prob(torch.rand(1, 3, 4, 4), y).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-4)


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
