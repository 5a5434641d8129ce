"""The captioning demo: references written from the scene, the word tokenizer, the CIDEr reward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from viprog.reinforce.captioning import SYNONYMS, WordTokenizer, caption_world, captioning, things
from viprog.reinforce.data import CLASSES
from viprog.reinforce.tuner import train


def test_references_describe_the_scene_in_five_styles() -> None:
    world = caption_world(3, 40, 10)
    for i, refs in enumerate(world.train_refs):
        objects = things(world.train, i)
        assert len(refs) == 5 and len(set(refs)) == 5
        names = sorted(t.name for t in objects)
        for r in refs[:4]:  # every style but the last names each object by its class
            assert sorted(w for w in r.split() if w in CLASSES) == names
        assert sorted(w for w in refs[4].split() if w in SYNONYMS.values() and w not in ("large", "little")) == \
            sorted(SYNONYMS[n] for n in names)
        assert refs[3].split()[0] == ("one", "two")[len(objects) - 1]
        assert all(len(r.split()) < world.tokenizer.length for r in refs)


def test_word_tokenizer_round_trip_and_grammar() -> None:
    tok = WordTokenizer(["a", "circle", "square"], length=5)
    seq = tok.encode("a circle")
    assert seq.tolist() == [2, 3, tok.EOS, tok.PAD, tok.PAD] and tok.decode(seq) == "a circle"
    ok = tok.allowed()
    assert not ok[0, tok.EOS] and ok[1, tok.EOS] and ok[-1].sum() == 1 and not ok[:, tok.PAD].any()


def test_reward_scores_samples_against_their_own_images_references(tmp_path) -> None:
    torch.set_num_threads(1)
    demo = captioning(0, train_size=40, test_size=10)
    batch = demo.reward_batches(0)
    tok = demo.policy.tok
    own = [tok.encode(refs[0]) for refs in batch["refs"]]
    other = [tok.encode(refs[0]) for refs in batch["refs"][1:] + batch["refs"][:1]]
    samples = torch.from_numpy(np.stack([own, other], 1))  # (B, 2, L): its own reference, its neighbour's
    scores = demo.reward_fn(batch, samples)
    assert scores.shape == (len(batch["refs"]), 2)
    assert (scores[:, 0] > 0).all() and scores[:, 0].mean() > scores[:, 1].mean() + 1.0
    # the tuner's plumbing end to end: two MLE steps, two reward steps, a held-out evaluation
    demo.mle.steps, demo.reward.steps, demo.reward.warmup = 2, 2, 1
    train(demo.policy, "mle", demo.mle_batches, demo.mle, tmp_path, progress=False)
    train(demo.policy, "reward", demo.reward_batches, demo.reward, tmp_path, reward_fn=demo.reward_fn, progress=False)
    result = demo.evaluate(demo.policy)
    assert set(result) == {"cider", "cider_train_df", "words"} and result["words"] >= 1 and result["cider"] >= 0
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert '"phase": "reward"' in rows[-1] and '"reward/mean"' in rows[-1]


@pytest.mark.slow
def test_captioning_tuning_raises_held_out_cider(tmp_path) -> None:
    from viprog.reinforce.demos import run

    result = run("captioning", 0, tmp_path, progress=False)
    assert result.after_reward["cider"] > result.after_mle["cider"] + 5.0
