"""The captioning demo: shapes scenes, several reference captions each, tuned on CIDEr-D.

Why: image captioning is where reward tuning started (self-critical training on CIDEr),
and it is the fourth task of Pinto et al. 2023 (their Table 3). A scene of
`viprog.reinforce.data` has several correct descriptions, so each image gets five
references written from its objects: names only, with sizes, with positions, with a
count, and one with synonyms, each listing the objects in its own order. MLE on a
randomly chosen reference per step learns the mixture of those styles, and its greedy
caption is whatever blend is most likely word by word; CIDEr-D rewards the n-grams
the references agree on. The model is the autoregressive `SeqPolicy` over a word
vocabulary (`WordTokenizer`); the reward is `rewards.cider` per sampled caption with
document frequencies from the training references, the metric corpus CIDEr-D on a
held-out split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from viprog.reinforce import rewards
from viprog.reinforce.data import CLASSES, Shapes, generate
from viprog.reinforce.demo_parts import Demo, images_tensor, step_batches
from viprog.reinforce.models import SeqPolicy
from viprog.reinforce.tuner import Batch, PhaseConfig

SYNONYMS: dict[str, str] = {"circle": "disc", "square": "box", "triangle": "triangle", "big": "large",
                            "small": "little"}
NUMBERS = ("zero", "one", "two", "three", "four", "five")


@dataclass(frozen=True)
class Thing:
    """One object of a scene as captions name it."""

    name: str
    size: str
    place: str
    x: float


def things(shapes: Shapes, i: int) -> list[Thing]:
    """The objects of scene `i`, left to right: class name, big / small (box side ≥ 11 px),
    and the quadrant of the box centre."""
    size = shapes.images.shape[1]
    out = []
    for (x0, y0, x1, y1), label in zip(shapes.boxes[i], shapes.labels[i]):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        place = f"{'top' if cy < size / 2 else 'bottom'} {'left' if cx < size / 2 else 'right'}"
        out.append(Thing(CLASSES[int(label)], "big" if max(x1 - x0, y1 - y0) >= 11 else "small", place, cx))
    return sorted(out, key=lambda t: t.x)


def _listing(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else " , ".join(phrases[:-1]) + " and " + phrases[-1]


def references(objects: list[Thing], rng: np.random.Generator) -> list[str]:
    """Five reference captions of one scene, in five styles and orders."""
    shuffled = [objects[k] for k in rng.permutation(len(objects))]
    by_size = sorted(objects, key=lambda t: t.size != "big")
    count = NUMBERS[len(objects)] + (" shape" if len(objects) == 1 else " shapes")
    return [
        _listing([f"a {t.name}" for t in objects]),
        _listing([f"a {t.size} {t.name}" for t in by_size]),
        _listing([f"a {t.name} at the {t.place}" for t in shuffled]),
        f"{count} : " + _listing([f"a {t.size} {t.name}" for t in objects]),
        _listing([f"a {SYNONYMS[t.size]} {SYNONYMS[t.name]}" for t in shuffled[::-1]]),
    ]


class WordTokenizer:
    """Captions as word ids for `SeqPolicy`: 0 PAD, 1 EOS, then the vocabulary; a caption
    has at least one word and at most `length − 1`, then EOS, then PAD."""

    PAD, EOS = 0, 1

    def __init__(self, vocabulary: list[str], length: int, image_size: int = 32) -> None:
        self.words = list(vocabulary)
        self.index = {w: k + 2 for k, w in enumerate(self.words)}
        self.vocab_size = len(self.words) + 2
        self.length, self.size = length, image_size

    def encode(self, caption: str) -> np.ndarray:
        ids = [self.index[w] for w in caption.split()][: self.length - 1] + [self.EOS]
        return np.array(ids + [self.PAD] * (self.length - len(ids)), np.int64)

    def decode(self, seq: np.ndarray) -> str:
        words = []
        for t in np.asarray(seq).tolist():
            if t in (self.EOS, self.PAD):
                break
            words.append(self.words[t - 2])
        return " ".join(words)

    def allowed(self) -> Tensor:
        """(length, vocab) bool: any word but PAD; EOS not first; only EOS last."""
        ok = torch.ones(self.length, self.vocab_size, dtype=torch.bool)
        ok[:, self.PAD] = False
        ok[0, self.EOS] = False
        ok[-1, :] = False
        ok[-1, self.EOS] = True
        return ok


@dataclass(frozen=True)
class CaptionWorld:
    """Images with five references each, their tokenizer, and the training corpus' CIDEr statistics."""

    train: Shapes
    test: Shapes
    train_refs: list[list[str]]
    test_refs: list[list[str]]
    tokenizer: WordTokenizer
    corpus: rewards.CiderCorpus


def caption_world(seed: int, train_size: int, test_size: int, length: int = 16, max_shapes: int = 2
                  ) -> CaptionWorld:
    """A seeded caption world of noise-free scenes with 1 … `max_shapes` shapes; `length`
    bounds a caption in tokens (its words and EOS)."""
    train, test = generate(train_size, seed, max_shapes=max_shapes), generate(test_size, 10_000 + seed,
                                                                              max_shapes=max_shapes)
    rng = np.random.default_rng([seed, 7])
    train_refs = [references(things(train, i), rng) for i in range(train_size)]
    test_refs = [references(things(test, i), rng) for i in range(test_size)]
    vocab = sorted({w for refs in train_refs + test_refs for r in refs for w in r.split()})
    longest = max(len(r.split()) for refs in train_refs + test_refs for r in refs)
    if longest >= length:
        raise ValueError(f"caption_world: a reference has {longest} words; raise `length` above it")
    return CaptionWorld(train, test, train_refs, test_refs, WordTokenizer(vocab, length),
                        rewards.CiderCorpus.of(train_refs))


def captioning(seed: int = 0, train_size: int = 2000, test_size: int = 300,
               device: str | torch.device = "cpu") -> Demo:
    """Shapes scenes → caption tokens with `SeqPolicy`; reward: per-caption CIDEr-D against
    the image's five references (training-corpus document frequencies); metric: corpus
    CIDEr-D of greedy captions on the held-out split."""
    world = caption_world(seed, train_size, test_size)
    tok = world.tokenizer
    dev = torch.device(device)
    torch.manual_seed(seed)
    policy = SeqPolicy(tok, dim=64, layers=2).to(dev)
    encoded = [np.stack([tok.encode(r) for r in refs]) for refs in world.train_refs]

    def make(idx: np.ndarray, rng: np.random.Generator) -> Batch:
        pick = rng.integers(0, 5, len(idx))
        seqs = np.stack([encoded[i][k] for i, k in zip(idx, pick)])
        return {"x": images_tensor(world.train, idx, dev), "y": torch.from_numpy(seqs).to(dev),
                "refs": [world.train_refs[i] for i in idx]}

    def reward(batch: Batch, samples: Tensor) -> np.ndarray:
        b, n = samples.shape[:2]
        texts = [tok.decode(s) for s in samples.reshape(b * n, -1).cpu().numpy()]
        refs = [r for r in batch["refs"] for _ in range(n)]
        return rewards.cider(texts, refs, per_caption=True, corpus=world.corpus).reshape(b, n)

    @torch.no_grad()
    def evaluate(p: nn.Module) -> dict[str, float]:
        texts = []
        for i in range(0, test_size, 100):
            x = images_tensor(world.test, np.arange(i, min(i + 100, test_size)), dev)
            texts += [tok.decode(s) for s in p.sample(x, 1, temperature=0)[:, 0].cpu().numpy()]
        words = [len(t.split()) for t in texts]
        return {"cider": 100 * rewards.cider(texts, world.test_refs),
                "cider_train_df": 100 * rewards.cider(texts, world.test_refs, corpus=world.corpus),
                "words": float(np.mean(words))}

    return Demo("captioning", policy, step_batches(train_size, 32, seed, make), step_batches(train_size, 8, seed + 1, make),
                reward, evaluate, "cider",
                mle=PhaseConfig(steps=400, lr=2e-3, schedule="cosine"),
                reward=PhaseConfig(steps=150, lr=2e-4, warmup=10, num_samples=8, temperature=1.0))
