"""The VQ-token demo: colorization by writing the codes of a frozen VQ-VAE decoder.

Why: Pinto et al. 2023 tune their pixel tasks (panoptic segmentation, colorization) on a
UViM model, which does not emit pixels: an autoregressive model writes the discrete
codes of a VQ-VAE, and the VQ-VAE's decoder, trained beforehand and frozen, turns them
into the image. The reward is computed on that decoded image, so REINFORCE optimises a
pixel metric through a network it never changes. This module runs that pipeline on a
CPU: a small VQ-VAE (van den Oord et al. 2017: nearest-code quantisation, the straight-
through gradient, codebook and commitment losses) learns 32×32 colour images as an 8×8
grid of codes; `CodePolicy` (a GRU with `SeqPolicy`'s interface), given the grey image,
writes the grid as 64 tokens; MLE teaches it the VQ-VAE's codes of the true images, and
the reward is minus the mean squared error between the decoded image and the true one.

The world is the palette colorization world of `viprog.reinforce.data` with one change:
in each brightness group a hue is the most frequent colour and the grey member has a
hue's share (`HUE_FIRST`). A grey image cannot tell a group's colours apart, so MLE's
most likely output paints that hue, while the colour with the least expected squared
error is the grey member, which lies nearest the group's mean colour (for the
background: expected MSE 0.038 for grey, 0.071 for the frequent hue). The pixel reward
asks for the grey; likelihood asks for the mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from viprog.reinforce.data import PALETTE, Shapes, generate
from viprog.reinforce.demo_parts import Demo, images_tensor, step_batches
from viprog.reinforce.models import TokenGrammar, _draw, tempered
from viprog.reinforce.tuner import Batch, PhaseConfig

HUE_FIRST = np.array([1, 0, 2, 3])
"""A colour the palette world draws as member k of its brightness group is painted as
member HUE_FIRST[k]: the most frequent draw (prior 0.4, the grey member there) paints a
hue, and the grey member gets a hue's prior (0.2)."""


def hue_first_world(n: int, seed: int) -> Shapes:
    """`n` palette scenes (`generate(colorization=True)`) with `HUE_FIRST` applied."""
    s = generate(n, seed, colorization=True)
    colours = 4 * (s.colours // 4) + HUE_FIRST[s.colours % 4]
    return replace(s, images=PALETTE[colours], colours=colours)


class VQVAE(nn.Module):
    """A vector-quantised autoencoder: image (B, 3, H, W) in [0, 1] ↔ codes (B, H/4, W/4).

    The encoder's output at each cell is replaced by its nearest codebook vector; the
    decoder sees only those vectors, so an integer grid of codes is a complete
    description of what it draws.
    """

    def __init__(self, codes: int = 256, dim: int = 32, width: int = 64, beta: float = 0.25) -> None:
        super().__init__()
        self.beta = beta
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, dim, 1))
        self.codebook = nn.Embedding(codes, dim)
        nn.init.uniform_(self.codebook.weight, -1 / codes, 1 / codes)
        self.decoder = nn.Sequential(
            nn.Conv2d(dim, width, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1), nn.Sigmoid())

    @property
    def num_codes(self) -> int:
        return self.codebook.num_embeddings

    def nearest(self, z: Tensor) -> Tensor:
        """Index of the nearest code for every cell of encoder output z (B, D, h, w) → (B, h, w)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        book = self.codebook.weight
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.T + book.pow(2).sum(1)
        return dist.argmin(1).view(z.shape[0], *z.shape[2:])

    def embed(self, codes: Tensor) -> Tensor:
        """Codebook vectors of a code grid (B, h, w) → (B, D, h, w)."""
        return self.codebook(codes).permute(0, 3, 1, 2)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """The code grid of images (B, 3, H, W) → (B, H/4, W/4)."""
        return self.nearest(self.encoder(images))

    def decode(self, codes: Tensor) -> Tensor:
        """The image a code grid draws: (B, h, w) → (B, 3, 4h, 4w) in [0, 1]."""
        return self.decoder(self.embed(codes))

    def loss(self, images: Tensor) -> Tensor:
        """Reconstruction MSE + ‖sg[z] − e‖² (moves the codes) + β ‖z − sg[e]‖² (commits
        the encoder); the decoder's gradient reaches the encoder straight through the
        quantisation."""
        z = self.encoder(images)
        e = self.embed(self.nearest(z.detach()))
        recon = self.decoder(z + (e - z).detach())
        return F.mse_loss(recon, images) + F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(z, e.detach())


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error on a [0, 1] scale."""
    return float(10 * np.log10(1.0 / max(mse, 1e-10)))


@torch.no_grad()
def reconstruction_mse(vq: VQVAE, images: Tensor, chunk: int = 256) -> float:
    """Mean squared error of decode(encode(images)) against the images."""
    total = sum(F.mse_loss(vq.decode(vq.encode(images[i:i + chunk])), images[i:i + chunk], reduction="sum").item()
                for i in range(0, len(images), chunk))
    return total / images.numel()


def train_vqvae(vq: VQVAE, images: Tensor, steps: int, batch_size: int = 32, lr: float = 2e-3, seed: int = 0,
                progress: bool = True) -> None:
    """Fit the VQ-VAE to `images` (N, 3, H, W) with Adam, then freeze it (eval mode, no
    gradients)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(vq.parameters(), lr=lr)
    vq.train()
    bar = tqdm(range(steps), desc="VQ-VAE", disable=None if progress else True, leave=False, dynamic_ncols=True)
    for _ in bar:  # the bar shows on a terminal only: `viprog reinforce` cannot switch it off
        idx = torch.randint(0, len(images), (batch_size,), generator=gen).to(images.device)
        loss = vq.loss(images[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    vq.eval().requires_grad_(False)


class CodeTokenizer:
    """A code grid as a `SeqPolicy` sequence: the grid's codes row by row (ids 2 … 2+K−1),
    then EOS. Every position but the last takes any code and the last only EOS, so
    each sample is a whole grid; PAD (0) never occurs."""

    PAD, EOS = 0, 1

    def __init__(self, codes: int, grid: int, image_size: int) -> None:
        self.codes, self.grid, self.size = codes, grid, image_size
        self.vocab_size = codes + 2
        self.length = grid * grid + 1

    def encode(self, codes: Tensor) -> Tensor:
        """(B, g, g) code grids → (B, g² + 1) token sequences."""
        eos = torch.full_like(codes[:, :1, 0], self.EOS)
        return torch.cat([codes.flatten(1) + 2, eos], 1)

    def decode(self, seqs: Tensor) -> Tensor:
        """(…, g² + 1) sequences → (…, g, g) code grids."""
        return (seqs[..., :-1] - 2).reshape(*seqs.shape[:-1], self.grid, self.grid)

    def allowed(self) -> Tensor:
        ok = torch.zeros(self.length, self.vocab_size, dtype=torch.bool)
        ok[:-1, 2:] = True
        ok[-1, self.EOS] = True
        return ok


class CodePolicy(nn.Module):
    """Autoregressive code grid: a CNN reads the input image down to one feature per grid
    cell, a GRU writes the codes row by row; each step sees the previous code, its own
    cell's features (which see the neighbouring cells), and through its state every code
    written so far, so a colour chosen for one cell can be kept for the rest of a region.

    The same `sample` / `log_prob` / `token_log_probs` as `SeqPolicy`, over the same
    tokenizer grammar (`CodeTokenizer`: codes, then EOS); `SeqPolicy` takes that
    tokenizer too, but its sampler reruns the Transformer over the whole prefix at each
    of the 65 steps. A step here is one GRU update.
    """

    def __init__(self, tokenizer: TokenGrammar, in_channels: int = 1, dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        if tokenizer.size % 4 or tokenizer.length != (tokenizer.size // 4) ** 2 + 1:
            raise ValueError("CodePolicy writes one code per 4×4 cell of the image, then EOS")
        self.tok = tokenizer
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, dim, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(dim, dim, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=2, dilation=2), nn.GELU())
        self.embed = nn.Embedding(tokenizer.vocab_size + 1, dim)  # the last id is BOS
        self.rnn = nn.GRU(2 * dim, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden + dim, hidden), nn.GELU(), nn.Linear(hidden, tokenizer.vocab_size))
        self.register_buffer("grammar", tokenizer.allowed()[:-1], persistent=False)

    def cells(self, x: Tensor, n: int) -> Tensor:
        """Image features per grid cell, row by row, each image repeated n times: (B·n, g², dim)."""
        return self.features(x).flatten(2).transpose(1, 2).repeat_interleave(n, 0)

    def _logits(self, cells: Tensor, previous: Tensor, state: Tensor | None = None, start: int = 0
                ) -> tuple[Tensor, Tensor]:
        """Masked logits of positions `start` … of the codes, whose cells are `cells`
        (N, T, dim), after the tokens `previous` (N, T) and GRU `state`: (N, T, V) and
        the new state."""
        out, state = self.rnn(torch.cat([self.embed(previous), cells], -1), state)
        logits = self.head(torch.cat([out, cells], -1))
        return logits.masked_fill(~self.grammar[start:start + cells.shape[1]], float("-inf")), state

    @torch.no_grad()
    def sample(self, x: Tensor, n: int, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """`n` code sequences per image, (B, n, g² + 1), ending in EOS; temperature 0 is greedy."""
        cells = self.cells(x, n)
        token = torch.full(cells.shape[:1], self.tok.vocab_size, dtype=torch.long, device=x.device)
        state, out = None, []
        for t in range(cells.shape[1]):
            logits, state = self._logits(cells[:, t:t + 1], token.unsqueeze(1), state, t)
            token = _draw(logits[:, 0], temperature, top_k)
            out.append(token)
        out.append(torch.full_like(token, self.tok.EOS))
        return torch.stack(out, 1).view(x.shape[0], n, -1)

    def token_log_probs(self, x: Tensor, y: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """log p of each token at the sampling temperature and top-k: y (B, n, L) → (B, n, L);
        the final EOS is certain (0)."""
        b, n, length = y.shape
        flat = y.reshape(b * n, length)
        bos = torch.full_like(flat[:, :1], self.tok.vocab_size)
        logits, _ = self._logits(self.cells(x, n), torch.cat([bos, flat[:, :-2]], 1))
        logp = tempered(logits, temperature, top_k).log_softmax(-1).gather(-1, flat[:, :-1].unsqueeze(-1))
        return torch.cat([logp.squeeze(-1), torch.zeros_like(logp[:, :1, 0])], 1).view(b, n, length)

    def log_prob(self, x: Tensor, y: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """log p(y | x) of whole code sequences: y (B, n, L) → (B, n)."""
        return self.token_log_probs(x, y, temperature, top_k).sum(-1)


@dataclass
class CodeWorld:
    """The demo's data and its frozen VQ-VAE: colour targets, grey inputs, the token
    sequences of the training targets, and the seconds training the VQ-VAE took."""

    train: Shapes
    test: Shapes
    vq: VQVAE
    tokenizer: CodeTokenizer
    train_images: Tensor
    train_grey: Tensor
    train_seqs: Tensor
    test_images: Tensor
    test_grey: Tensor
    vq_seconds: float


def code_world(seed: int, train_size: int, test_size: int, vq_steps: int, codes: int = 256,
               device: str | torch.device = "cpu", progress: bool = True) -> CodeWorld:
    """Generate the hue-first world, train a VQ-VAE on its training images for `vq_steps`
    steps, freeze it, and tokenise the training images' codes."""
    train, test = hue_first_world(train_size, seed), hue_first_world(test_size, 10_000 + seed)
    dev = torch.device(device)
    everything = np.arange(train_size)
    train_images, test_images = images_tensor(train, everything, dev), images_tensor(test, np.arange(test_size), dev)
    torch.manual_seed(seed)
    vq = VQVAE(codes).to(dev)
    start = time.perf_counter()
    train_vqvae(vq, train_images, vq_steps, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    tok = CodeTokenizer(codes, train_images.shape[-1] // 4, train_images.shape[-1])
    seqs = torch.cat([tok.encode(vq.encode(train_images[i:i + 256])) for i in range(0, train_size, 256)])
    grey = lambda s: torch.from_numpy(s.grey()).unsqueeze(1).to(dev)
    return CodeWorld(train, test, vq, tok, train_images, grey(train), seqs, test_images, grey(test), seconds)


def decoded(world: CodeWorld, samples: Tensor) -> Tensor:
    """The frozen decoder's images of sampled sequences (B, n, L) → (B, n, 3, H, W)."""
    with torch.no_grad():
        images = world.vq.decode(world.tokenizer.decode(samples.flatten(0, 1)))
    return images.view(*samples.shape[:2], *images.shape[1:])


def pixel_reward(world: CodeWorld, batch: Batch, samples: Tensor) -> Tensor:
    """−100 × the mean squared error (RGB in [0, 1]) of each decoded sample against its
    true image: (B, n). Linear in the squared error, so its expectation is largest for
    the colour nearest the conditional mean, not for the most likely one."""
    err = (decoded(world, samples) - batch["target"].unsqueeze(1)).pow(2).mean((2, 3, 4))
    return -100.0 * err


def vq_colorization(seed: int = 0, train_size: int = 1000, test_size: int = 300, vq_steps: int = 300,
                    device: str | torch.device = "cpu", world: CodeWorld | None = None, dim: int = 64,
                    progress: bool = True) -> Demo:
    """Grey image → the 64 codes of its colour image (`CodePolicy`), decoded by the frozen
    VQ-VAE; reward `pixel_reward`; metric: PSNR of the greedy decoded images over the
    held-out split (from their mean squared error). `world` reuses a trained `code_world`."""
    w = world or code_world(seed, train_size, test_size, vq_steps, device=device, progress=progress)
    dev = w.train_images.device
    torch.manual_seed(seed)
    policy = CodePolicy(w.tokenizer, in_channels=1, dim=dim).to(dev)
    ceiling: list[float] = []  # the frozen VQ-VAE's held-out reconstruction MSE, from the first evaluation

    def make(idx: np.ndarray, _rng: np.random.Generator) -> Batch:
        at = torch.from_numpy(idx).to(dev)
        return {"x": w.train_grey[at], "y": w.train_seqs[at], "target": w.train_images[at]}

    @torch.no_grad()
    def evaluate(p: nn.Module) -> dict[str, float]:
        out = torch.cat([decoded(w, p.sample(w.test_grey[i:i + 100], 1, temperature=0))[:, 0]
                         for i in range(0, len(w.test_grey), 100)])
        err = (out - w.test_images).pow(2).mean((1, 2, 3))
        ceiling[:] = ceiling or [reconstruction_mse(w.vq, w.test_images)]
        return {"psnr": psnr(err.mean().item()), "image_psnr": float(np.mean([psnr(e) for e in err.tolist()])),
                "colour_err": 255 * (out - w.test_images).abs().mean().item(),
                "chroma": 255 * (out.amax(1) - out.amin(1)).mean().item(), "vq_psnr": psnr(ceiling[0])}

    # sized for three seeds in about 15 minutes on two shared CPU cores
    demo = Demo("vq-colorization", policy, step_batches(len(w.train_seqs), 16, seed, make),
                step_batches(len(w.train_seqs), 4, seed + 1, make), lambda b, s: pixel_reward(w, b, s), evaluate,
                "psnr", mle=PhaseConfig(steps=300, lr=2e-3, schedule="cosine"),
                reward=PhaseConfig(steps=50, lr=5e-4, warmup=5, num_samples=8, log_every=10))
    demo.setup_seconds = w.vq_seconds
    return demo
