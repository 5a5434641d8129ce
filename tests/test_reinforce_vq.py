"""The VQ-token demo: the VQ-VAE, the code policy, the reward through the frozen decoder."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
import tyro

from viprog.reinforce import demos
from viprog.reinforce.cli import ReinforceConfig, main
from viprog.reinforce.data import PALETTE, generate
from viprog.reinforce.models import SeqPolicy
from viprog.reinforce.tuner import PhaseConfig, train
from viprog.reinforce.vq import (
    VQVAE,
    CodePolicy,
    CodeTokenizer,
    code_world,
    hue_first_world,
    pixel_reward,
    reconstruction_mse,
    train_vqvae,
    vq_colorization,
)


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(2)
    return code_world(0, 96, 16, vq_steps=150, progress=False)


def test_hue_first_world_keeps_the_grey_and_makes_grey_the_better_guess() -> None:
    plain, hue = generate(200, 4, colorization=True), hue_first_world(200, 4)
    np.testing.assert_allclose(hue.grey(), plain.grey(), atol=1.5 / 255)
    np.testing.assert_array_equal(PALETTE[hue.colours], hue.images)
    member = hue.colours % 4
    assert (member == 1).mean() > 1.5 * (member == 0).mean()  # a hue is the most frequent colour …
    truth = hue.images / 255.0
    grey, mode = PALETTE[4 * (hue.colours // 4)] / 255.0, PALETTE[4 * (hue.colours // 4) + 1] / 255.0
    assert ((grey - truth) ** 2).mean() < 0.7 * ((mode - truth) ** 2).mean()  # … the grey the least squared error


def test_vqvae_reconstructs_better_after_training_and_is_frozen_after() -> None:
    torch.manual_seed(0)
    images = torch.from_numpy(hue_first_world(64, 1).images).permute(0, 3, 1, 2).float() / 255
    vq = VQVAE(codes=64, dim=16, width=32)
    before = reconstruction_mse(vq, images)
    train_vqvae(vq, images, steps=120, batch_size=32, progress=False)
    assert reconstruction_mse(vq, images) < 0.5 * before
    assert not vq.training and not any(p.requires_grad for p in vq.parameters())
    codes = vq.encode(images[:4])
    assert codes.shape == (4, 8, 8) and codes.dtype == torch.long and int(codes.max()) < 64


def test_code_tokenizer_round_trip_and_grammar() -> None:
    tok = CodeTokenizer(codes=10, grid=2, image_size=8)
    codes = torch.tensor([[[0, 9], [3, 4]]])
    seq = tok.encode(codes)
    assert seq.tolist() == [[2, 11, 5, 6, tok.EOS]] and torch.equal(tok.decode(seq), codes)
    ok = tok.allowed()
    assert ok[:-1, 2:].all() and not ok[:-1, :2].any() and ok[-1].sum() == 1 and ok[-1, tok.EOS]


def test_policy_codes_decode_to_images_and_greedy_is_the_teacher_forced_argmax(world) -> None:
    torch.manual_seed(0)
    policy = CodePolicy(world.tokenizer)
    x = world.train_grey[:3]
    seqs = policy.sample(x, 2)
    assert seqs.shape == (3, 2, 65) and (seqs[..., -1] == world.tokenizer.EOS).all()
    assert int(seqs[..., :-1].min()) >= 2 and int(seqs[..., :-1].max()) < world.tokenizer.vocab_size
    images = world.vq.decode(world.tokenizer.decode(seqs.flatten(0, 1)))
    assert images.shape == (6, 3, 32, 32) and 0 <= float(images.min()) and float(images.max()) <= 1
    greedy = policy.sample(x, 1, temperature=0)
    tf = policy.token_log_probs(x, greedy)
    # the incremental sampler and the teacher-forced pass give the same distributions:
    # every greedy token is the most likely one under teacher forcing
    for t in (0, 17, 63):
        y = greedy.clone()
        for code in range(2, world.tokenizer.vocab_size, 37):
            y[..., t] = code
            assert (policy.token_log_probs(x, y)[..., t] <= tf[..., t] + 1e-5).all()
    assert torch.allclose(policy.log_prob(x, greedy), tf.sum(-1)) and (tf[..., -1] == 0).all()


def test_seq_policy_takes_the_code_tokenizer(world) -> None:
    """The Transformer `SeqPolicy` covers VQ codes too (the demo uses `CodePolicy` for speed)."""
    torch.manual_seed(0)
    seqs = SeqPolicy(world.tokenizer, in_channels=1, dim=32, layers=1).sample(world.train_grey[:2], 2)
    assert seqs.shape == (2, 2, 65) and (seqs[..., -1] == world.tokenizer.EOS).all()
    assert world.tokenizer.decode(seqs).shape == (2, 2, 8, 8)


def test_reward_goes_through_the_decoder(world) -> None:
    demo = vq_colorization(0, world=world)
    batch = demo.reward_batches(0)
    own = batch["y"].unsqueeze(1)
    other = batch["y"].roll(1, 0).unsqueeze(1)
    samples = torch.cat([own, other], 1)
    reward = demo.reward_fn(batch, samples)
    assert reward.shape == (len(own), 2) and (reward[:, 0] > reward[:, 1]).float().mean() >= 0.75
    decoded = world.vq.decode(world.tokenizer.decode(own[:, 0]))
    expected = -100 * (decoded - batch["target"]).pow(2).mean((1, 2, 3))
    torch.testing.assert_close(reward[:, 0], expected)
    # another decoder, the same codes: another reward
    original = world.vq.decoder[0].bias.clone()
    try:
        world.vq.decoder[0].bias.add_(0.5)
        assert not torch.allclose(pixel_reward(world, batch, samples), reward)
    finally:
        world.vq.decoder[0].bias.copy_(original)


def test_tiny_tune_raises_the_reward_and_leaves_the_decoder_alone(world, tmp_path) -> None:
    """A short MLE phase, then reward tuning on one fixed batch of four images: the mean
    reward of 32 samples per image rises (measured −5.2 → −3.7; its standard error is
    ≈ 0.3) and the VQ-VAE does not change."""
    torch.manual_seed(0)
    demo = vq_colorization(0, world=world, dim=32)
    train(demo.policy, "mle", demo.mle_batches, PhaseConfig(steps=60, lr=3e-3, warmup=5), tmp_path / "mle",
          progress=False)
    fixed = demo.reward_batches(0)
    frozen = {k: v.clone() for k, v in world.vq.state_dict().items()}
    before = demo.reward_fn(fixed, demo.policy.sample(fixed["x"], 32)).mean()
    cfg = PhaseConfig(steps=30, lr=1e-3, warmup=1, num_samples=8, log_every=10)
    train(demo.policy, "reward", lambda step: fixed, cfg, tmp_path, reward_fn=demo.reward_fn, progress=False)
    after = demo.reward_fn(fixed, demo.policy.sample(fixed["x"], 32)).mean()
    assert after > before + 1.0
    assert all(torch.equal(v, world.vq.state_dict()[k]) for k, v in frozen.items())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["reward/mean"] > rows[0]["reward/mean"]


def test_cli_parses_and_runs_the_vq_demo_at_a_tiny_size(world, tmp_path, monkeypatch, capsys) -> None:
    cfg = tyro.cli(ReinforceConfig, args=["--demo", "vq-colorization", "--mle-steps", "3", "--reward-steps", "2",
                                          "--control", "--out", str(tmp_path), "--no-progress"])
    assert cfg.demo == "vq-colorization"
    monkeypatch.setitem(demos.BUILDERS, "vq-colorization", partial(vq_colorization, world=world))
    assert main(cfg) == 0
    assert "vq-colorization" in capsys.readouterr().out
    result = json.loads((tmp_path / "results.json").read_text())[0]
    assert result["metric"] == "psnr" and result["setup_seconds"] == pytest.approx(world.vq_seconds)
    columns = [result[c] for c in ("after_mle", "after_reward", "after_mle_control")]
    assert all(np.isfinite(c["psnr"]) and c["psnr"] > 0 for c in columns)
    assert len({c["vq_psnr"] for c in columns}) == 1  # one frozen VQ-VAE behind all three
