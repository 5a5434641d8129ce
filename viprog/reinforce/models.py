"""The two output families the tuner drives: per-pixel categorical maps and token sequences.

Why: REINFORCE needs only two things of a model, `sample(x, n)` and `log_prob(x, y)`
(see `viprog.reinforce.tuner.TunablePolicy`). Vision models that emit pixels come in two
shapes: a categorical distribution per pixel, independent given the image (semantic
segmentation, colorization into colour bins), and an autoregressive sequence of tokens
(pix2seq-style boxes, or VQ codes that a frozen decoder turns into pixels). One small
reference model of each family lives here, plus the pix2seq box tokenizer. Both are
small enough to train on a CPU in a minute; a user's own model replaces them by
implementing the same two methods. `log_prob` takes the temperature and top-k that
`sample` drew with and scores under that same distribution (`tempered`), as REINFORCE
needs. `RegionPolicy` turns a per-pixel model into one whose samples relabel whole
regions, which is what lets reward tuning move panoptic quality.
"""

from __future__ import annotations

import copy
from typing import Protocol

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn
from torch.nn import functional as F


def tempered(logits: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
    """The logits that sampling at (`temperature`, `top_k`) draws from: divided by the
    temperature (> 0), everything below the k-th largest at −inf. `log_prob` scores with
    the same function, so the tuner's log-probabilities are those of the distribution
    its samples came from. At (1, None) the logits come back unchanged."""
    if temperature != 1:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def _draw(logits: Tensor, temperature: float, top_k: int | None) -> Tensor:
    """Sample the last axis of `tempered(logits)`; temperature 0 means argmax."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = tempered(logits, temperature, top_k)
    flat = logits.reshape(-1, logits.shape[-1])
    return torch.multinomial(flat.softmax(-1), 1).reshape(logits.shape[:-1])


class PixelPolicy(nn.Module):
    """Per-pixel categorical output: image (B, C, H, W) → K-way distribution per pixel.

    A small fully convolutional net: dilated convolutions at half resolution (receptive
    field ≈ 60 px, so each pixel sees the whole shape it lies on), upsampled logits plus
    a full-resolution path for sharp edges. `y` is an integer map (B, n, H, W).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.GELU()]
        for dilation in (1, 2, 4, 8, 1):
            conv = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)
            layers += [conv, nn.GroupNorm(4, width), nn.GELU()]
        self.low = nn.Sequential(*layers, nn.Conv2d(width, num_classes, 1))
        self.high = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, num_classes, 1))

    def logits(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, H, W, K) logits."""
        low = F.interpolate(self.low(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return (low + self.high(x)).permute(0, 2, 3, 1)

    @torch.no_grad()
    def sample(self, x: Tensor, n: int, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """`n` maps per image, (B, n, H, W); temperature 0 gives the argmax map."""
        logits = self.logits(x).unsqueeze(1).expand(-1, n, -1, -1, -1)
        return _draw(logits, temperature, top_k)

    def log_prob(self, x: Tensor, y: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """Sum over pixels of log p(y_ij | x) under the distribution `sample` draws from at
        the same temperature and top-k: y (B, n, H, W) → (B, n)."""
        logp = tempered(self.logits(x), temperature, top_k).log_softmax(-1).unsqueeze(1)
        logp = logp.expand(-1, y.shape[1], -1, -1, -1)
        return logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).flatten(2).sum(-1)


def label_regions(semantic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected regions (4-neighbour) of each class of an integer map (H, W): the region
    id of every pixel, 0 … R−1, and the class of each region (R,)."""
    ids = np.zeros(semantic.shape, np.int64)
    classes: list[int] = []
    for c in np.unique(semantic):
        lab, k = ndimage.label(semantic == c)
        inside = lab > 0
        ids[inside] = lab[inside] - 1 + len(classes)
        classes += [int(c)] * k
    return ids, np.array(classes, np.int64)


class RegionPolicy(nn.Module):
    """One class per region of a frozen partition: the policy a per-pixel model is reward-
    tuned as when its reward counts segments (panoptic quality).

    The regions are the connected regions of each class in a *reference* model's argmax
    map; the reference is a frozen copy of `model` taken at construction (wrap the model
    after MLE), so the output space does not move while `model` is tuned. Each region
    takes one class, drawn from the mean of `model`'s logits over its pixels; a sample
    is an integer map (B, n, H, W) constant on every region. Before any tuning the
    greedy output is exactly `model`'s argmax map (a region's pixels all rank its class
    first, so their mean does too).

    Why not sample pixels independently: a wrong 5-pixel blob is repaired only when all
    five pixels flip in one sample, and each sample paints new specks elsewhere, so the
    reward's variance is about the specks, not the blob (segmentation demo, seed 0, six
    settings of learning rate and temperature: held-out PQ 95.0 → 93.1 … 95.1). Relabelling
    a region is one draw. Why a frozen partition: with regions taken from the model being
    tuned, tuning sharpened the region means while the pixel map fragmented around them
    (on a fixed batch at lr 1e-3 the greedy reward fell from 0.94 to 0.80 in 150 steps).

    `model` needs `logits(x) -> (B, H, W, K)`, as `PixelPolicy` has; `log_prob` scores
    only maps constant on the regions (this policy's own samples), so the MLE anchor of
    the reward phase (`mle_weight`) does not apply.
    """

    def __init__(self, model: nn.Module, reference: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.reference = (copy.deepcopy(model) if reference is None else reference).eval().requires_grad_(False)
        self._last: tuple[Tensor, int, tuple[Tensor, Tensor]] | None = None

    def train(self, mode: bool = True) -> RegionPolicy:
        """Train mode reaches `model` only: the reference (and so the partition) stays fixed."""
        super().train(mode)
        self.reference.eval()
        return self

    @torch.no_grad()
    def regions(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Region id of every pixel (B, H*W) and the number of regions per image (B,)."""
        amax = self.reference.logits(x).argmax(-1).cpu().numpy()
        labelled = [label_regions(m) for m in amax]
        ids = torch.from_numpy(np.stack([i for i, _ in labelled]).reshape(len(amax), -1)).to(x.device)
        return ids, torch.tensor([len(c) for _, c in labelled], device=x.device)

    def region_logits(self, x: Tensor, ids: Tensor) -> Tensor:
        """Mean logits of `model` over each region: (B, R, K), R the most regions of an image."""
        logits = self.model.logits(x)
        b, k = logits.shape[0], logits.shape[-1]
        r = int(ids.max()) + 1
        flat = logits.reshape(b, -1, k)
        sums = flat.new_zeros(b, r, k).scatter_add(1, ids.unsqueeze(-1).expand(-1, -1, k), flat)
        sizes = flat.new_zeros(b, r).scatter_add(1, ids, flat.new_ones(ids.shape)).clamp(min=1)
        return sums / sizes.unsqueeze(-1)

    @torch.no_grad()
    def sample(self, x: Tensor, n: int, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """`n` maps per image, (B, n, H, W), one class per region; temperature 0 is greedy."""
        ids, counts = self.regions(x)
        # the tuner scores these samples next, on the same `x`: keep its regions for that
        # (holding `x` itself, so another tensor cannot be mistaken for it)
        self._last = (x, x._version, (ids, counts))
        rl = self.region_logits(x, ids).unsqueeze(1).expand(-1, n, -1, -1)
        classes = _draw(rl, temperature, top_k)  # (B, n, R)
        return classes.gather(2, ids.unsqueeze(1).expand(-1, n, -1)).view(x.shape[0], n, *x.shape[-2:])

    def log_prob(self, x: Tensor, y: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """Sum over regions of log p(region's class) at the temperature and top-k the
        samples were drawn with: y (B, n, H, W) → (B, n)."""
        last, self._last = self._last, None
        ids, counts = last[2] if last is not None and last[0] is x and last[1] == x._version else self.regions(x)
        b, n = y.shape[:2]
        flat = y.reshape(b, n, -1)
        index = ids.unsqueeze(1).expand(-1, n, -1)
        classes = flat.new_zeros(b, n, int(ids.max()) + 1).scatter(2, index, flat)  # (B, n, R): a pixel's class per region
        if not torch.equal(classes.gather(2, index), flat):
            raise ValueError("RegionPolicy.log_prob scores only maps constant on its regions (its own samples)")
        logp = tempered(self.region_logits(x, ids), temperature, top_k).log_softmax(-1)
        logp = logp.unsqueeze(1).expand(-1, n, -1, -1)
        picked = logp.gather(-1, classes.unsqueeze(-1)).squeeze(-1)
        live = torch.arange(classes.shape[-1], device=ids.device) < counts.unsqueeze(1)
        return (picked * live.unsqueeze(1)).sum(-1)


class BoxTokenizer:
    """pix2seq box sequences: per object `x0 y0 x1 y1 class`, then EOS, then PAD.

    Token ids: 0 PAD, 1 EOS, 2 … 2+size coordinates (one bin per pixel edge, exact for
    integer boxes), then the classes. Training sequences list the objects in random
    order, as pix2seq does.
    """

    PAD, EOS, FIELDS = 0, 1, 5

    def __init__(self, image_size: int, num_classes: int, max_objects: int) -> None:
        self.size, self.num_classes, self.max_objects = image_size, num_classes, max_objects
        self.coord0 = 2
        self.class0 = self.coord0 + image_size + 1
        self.vocab_size = self.class0 + num_classes
        self.length = self.FIELDS * max_objects + 1

    def encode(self, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """One sequence (length,) of int64; objects shuffled by `rng` when given."""
        order = rng.permutation(len(labels)) if rng is not None else np.arange(len(labels))
        order = order[: self.max_objects]
        seq = np.full(self.length, self.PAD, np.int64)
        body = np.c_[np.clip(np.round(boxes[order]), 0, self.size) + self.coord0, labels[order] + self.class0]
        seq[: body.size] = body.ravel()
        seq[body.size] = self.EOS
        return seq

    def decode(self, seq: np.ndarray, token_logp: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Boxes, labels and scores (mean token probability of each box) of one sequence."""
        seq = np.asarray(seq)
        eos = np.nonzero(seq == self.EOS)[0]
        n = (int(eos[0]) if len(eos) else len(seq)) // self.FIELDS
        body = seq[: n * self.FIELDS].reshape(n, self.FIELDS)
        boxes = (body[:, :4] - self.coord0).astype(np.float64)
        scores = np.ones(n) if token_logp is None else np.exp(
            np.asarray(token_logp)[: n * self.FIELDS].reshape(n, self.FIELDS).mean(1))
        return {"boxes": boxes, "labels": body[:, 4] - self.class0, "scores": scores}

    def allowed(self) -> Tensor:
        """(length, vocab) bool: the grammar, which tokens may appear at each position."""
        ok = torch.zeros(self.length, self.vocab_size, dtype=torch.bool)
        for t in range(self.length):
            slot = t % self.FIELDS
            if slot == 4:
                ok[t, self.class0:] = True
            else:
                ok[t, self.coord0:self.class0] = t < self.length - 1
            if slot == 0:
                ok[t, self.EOS] = True
        return ok


class TokenGrammar(Protocol):
    """What `SeqPolicy` needs of a tokenizer: sizes, the PAD / EOS ids, and which tokens
    may stand at each position (`BoxTokenizer`, or a caption's word tokenizer)."""

    PAD: int
    EOS: int
    size: int
    """side of the (square) input image in pixels"""
    vocab_size: int
    length: int

    def allowed(self) -> Tensor: ...


class SeqPolicy(nn.Module):
    """Autoregressive token output: a CNN encoder and a small Transformer decoder.

    Decoding follows the tokenizer's grammar (a coordinate where a coordinate belongs,
    a class where a class belongs, EOS only between objects), so every sample parses;
    `log_prob` scores under the same masked distribution, which keeps REINFORCE exact.
    Tokens after EOS are PAD and carry no probability.
    """

    def __init__(self, tokenizer: TokenGrammar, in_channels: int = 3, dim: int = 96, layers: int = 2) -> None:
        super().__init__()
        self.tok = tokenizer
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, 48, 3, padding=1), nn.GELU(),
            nn.Conv2d(48, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, 96, 3, padding=1), nn.GELU(),
            nn.Conv2d(96, dim, 3, stride=2, padding=1), nn.GELU())
        cells = (tokenizer.size // 4) ** 2
        self.mem_pos = nn.Parameter(torch.randn(cells, dim) * 0.02)
        self.embed = nn.Embedding(tokenizer.vocab_size + 1, dim)  # the last id is BOS
        self.pos = nn.Parameter(torch.randn(tokenizer.length, dim) * 0.02)
        block = nn.TransformerDecoderLayer(dim, 4, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(block, layers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, tokenizer.vocab_size)
        self.register_buffer("grammar", tokenizer.allowed(), persistent=False)

    def memory(self, x: Tensor) -> Tensor:
        return self.encoder(x).flatten(2).transpose(1, 2) + self.mem_pos

    def _logits(self, memory: Tensor, prefix: Tensor) -> Tensor:
        """Masked next-token logits for every position of `prefix` (B, T) → (B, T, V)."""
        bos = torch.full_like(prefix[:, :1], self.tok.vocab_size)
        inp = torch.cat([bos, prefix[:, :-1]], 1)
        h = self.embed(inp) + self.pos[: inp.shape[1]]
        causal = nn.Transformer.generate_square_subsequent_mask(inp.shape[1], device=inp.device)
        h = self.decoder(h, memory, tgt_mask=causal, tgt_is_causal=True)
        logits = self.head(self.norm(h))
        return logits.masked_fill(~self.grammar[: inp.shape[1]], float("-inf"))

    @torch.no_grad()
    def sample(self, x: Tensor, n: int, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """`n` sequences per image, (B, n, length); temperature 0 decodes greedily."""
        mem = self.memory(x).repeat_interleave(n, 0)
        seq = torch.full((mem.shape[0], self.tok.length), self.tok.PAD, dtype=torch.long, device=x.device)
        done = torch.zeros(mem.shape[0], dtype=torch.bool, device=x.device)
        for t in range(self.tok.length):
            nxt = _draw(self._logits(mem, seq[:, : t + 1])[:, t], temperature, top_k)
            seq[:, t] = torch.where(done, self.tok.PAD, nxt)
            done |= nxt == self.tok.EOS
            if done.all():
                break
        return seq.view(x.shape[0], n, -1)

    def token_log_probs(self, x: Tensor, y: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """log p of each token at the sampling temperature and top-k, 0 on PAD after EOS:
        y (B, n, L) → (B, n, L)."""
        b, n, length = y.shape
        mem = self.memory(x).repeat_interleave(n, 0)
        flat = y.reshape(b * n, length)
        logp = tempered(self._logits(mem, flat), temperature, top_k).log_softmax(-1)
        live = torch.cumsum((flat == self.tok.EOS).long(), 1) - (flat == self.tok.EOS).long() == 0
        tok = logp.gather(-1, flat.unsqueeze(-1)).squeeze(-1)
        return torch.where(live, tok, torch.zeros_like(tok)).view(b, n, length)

    def log_prob(self, x: Tensor, y: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """log p(y | x) of whole sequences, sampled at `temperature` / `top_k`: y (B, n, L) → (B, n)."""
        return self.token_log_probs(x, y, temperature, top_k).sum(-1)
