"""End-to-end demonstrations on the shapes world: MLE first, then reward tuning.

Why: they show that the tuner does what the paper claims on problems small enough for a
CPU, and they are the recipe for users (build data, a policy, a batch function, a
reward, an evaluation; hand them to `tuner.train`). Each demo reports its task metric on
a held-out split after MLE and after reward tuning. `device` puts the model and every
batch there; the rewards read the samples back to the CPU (NumPy) and the tuner moves
them to the log-probabilities' device.

- segmentation: per-pixel classes (background + 3 shapes; colour is uninformative),
  reward = per-image panoptic quality of the sampled map (each connected region of a
  class is a segment, the background one "stuff" segment), metric = dataset PQ of the
  greedy map (mIoU alongside). Per-pixel cross-entropy does not see segments: a shape
  whose pixels are split between two classes costs MLE a few pixels and PQ a whole
  false positive and false negative. The reward phase tunes the model as a
  `RegionPolicy` (one class per region of the MLE model's argmax map), whose samples
  relabel whole regions; independent per-pixel samples gave no gain.
- detection: pix2seq box sequences, reward = `detection_reward`, metric = COCO mAP of
  greedy decoding (box score = mean token probability), with the error counts of
  `diagnostics` beside it. detection-converged: the same, with MLE trained until the
  validation mAP plateaus (`converge`) before tuning and the control start.
- colorization: grey → 12 palette colours whose luma groups the grey cannot tell apart
  (grey is the most likely member, so the MLE mode is dull); reward = colourfulness
  minus fidelity penalties (luma error, colour edges where the grey image has none), so
  painting noise or the wrong brightness does not pay; metric = colourfulness.
- captioning (`viprog.reinforce.captioning`): word tokens from `SeqPolicy`, five
  references per scene, reward = per-caption CIDEr-D, metric = corpus CIDEr-D.
- vq-colorization (`viprog.reinforce.vq`): grey → the codes of a VQ-VAE trained in the
  demo, decoded by its frozen decoder; reward = −MSE of the decoded image, metric = PSNR.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from viprog.reinforce import rewards
from viprog.reinforce.captioning import captioning
from viprog.reinforce.converge import Plateau, train_to_plateau
from viprog.reinforce.data import CLASSES, PALETTE, Shapes, generate
from viprog.reinforce.demo_parts import Demo, images_tensor, step_batches
from viprog.reinforce.diagnostics import detection_diagnostics
from viprog.reinforce.models import BoxTokenizer, PixelPolicy, RegionPolicy, SeqPolicy, label_regions
from viprog.reinforce.tuner import Batch, PhaseConfig, train
from viprog.reinforce.vq import vq_colorization

DEMOS: tuple[str, ...] = ("segmentation", "detection", "colorization", "captioning", "vq-colorization",
                          "detection-converged")
LUMA = np.array([0.299, 0.587, 0.114])


def segmentation(seed: int = 0, train_size: int = 10_000, test_size: int = 300,
                 device: str | torch.device = "cpu") -> Demo:
    """Noisy scenes of up to 4 small shapes; a `PixelPolicy` over background + 3 classes,
    reward-tuned as a `RegionPolicy`. The training pool is large enough that the MLE model
    does not memorise it (with 1500 images its greedy reward on the pool was 0.997 and on
    held-out images 0.90: nothing left for the reward to act on)."""
    train_set = generate(train_size, seed, noise=50.0, min_radius=3.0, max_radius=6.5, max_shapes=4)
    test = generate(test_size, 10_000 + seed, noise=50.0, min_radius=3.0, max_radius=6.5, max_shapes=4)
    k = len(CLASSES) + 1
    dev = torch.device(device)
    torch.manual_seed(seed)
    policy = PixelPolicy(3, k).to(dev)

    def make(idx: np.ndarray, _rng: np.random.Generator) -> Batch:
        return {"x": images_tensor(train_set, idx, dev), "y": torch.from_numpy(train_set.semantic[idx]).to(dev)}

    def reward(batch: Batch, samples: Tensor) -> np.ndarray:
        gts = [_components(g) for g in batch["y"].cpu().numpy()]
        return np.array([[_pq([_components(m)], [gts[i]]) for m in maps]
                         for i, maps in enumerate(samples.cpu().numpy())])

    test_segments = [_components(m) for m in test.semantic]

    @torch.no_grad()
    def evaluate(p: nn.Module) -> dict[str, float]:
        pred = torch.cat([p.sample(images_tensor(test, np.arange(i, min(i + 100, test_size)), dev), 1, temperature=0)[:, 0]
                          for i in range(0, test_size, 100)]).cpu().numpy()
        pq = _pq([_components(m) for m in pred], test_segments)
        return {"pq": 100 * pq, "miou": 100 * rewards.miou(pred, test.semantic, k, reduce="dataset")}

    return Demo("segmentation", policy, step_batches(train_size, 32, seed, make), step_batches(train_size, 32, seed + 1, make),
                reward, evaluate, "pq",
                mle=PhaseConfig(steps=1200, lr=2e-3, schedule="cosine"),
                reward=PhaseConfig(steps=600, lr=1e-4, num_samples=8, temperature=1.0),
                tuned_as=RegionPolicy)


def _components(semantic: np.ndarray) -> dict:
    """A panoptic record from a semantic map: each connected region of a shape class is a
    segment; the background (class 0) is one "stuff" segment, so blobs painted on it are
    false positives (nothing is void)."""
    ids, classes = label_regions(semantic)
    shape = classes[ids] > 0
    categories = {0: 0} if not shape.all() else {}
    categories |= {int(r) + 1: int(classes[r]) for r in np.nonzero(classes > 0)[0]}
    return {"segments": np.where(shape, ids + 1, 0), "categories": categories}


def _pq(predictions: list[dict], ground_truths: list[dict]) -> float:
    return rewards.panoptic_quality(predictions, ground_truths, void_id=-1)["pq"]


def detection(seed: int = 0, train_size: int = 3000, test_size: int = 300, max_objects: int = 5,
              device: str | torch.device = "cpu", converged: bool = False, val_size: int = 300) -> Demo:
    """Noisy scenes of up to 5 small shapes; a `SeqPolicy` emitting pix2seq box tokens.

    `converged`: MLE at a constant learning rate until the mAP on a validation split
    (`val_size` images of another seed than the test split's) stops improving, instead
    of the fixed 1,500-step cosine schedule (see `converge`)."""
    world = {"max_shapes": max_objects, "noise": 30.0, "min_radius": 3.0, "max_radius": 6.5}
    train_set, test = generate(train_size, seed, **world), generate(test_size, 10_000 + seed, **world)
    tok = BoxTokenizer(32, len(CLASSES), max_objects)
    dev = torch.device(device)
    torch.manual_seed(seed)
    policy = SeqPolicy(tok).to(dev)

    def make(idx: np.ndarray, rng: np.random.Generator) -> Batch:
        seqs = np.stack([tok.encode(train_set.boxes[i], train_set.labels[i], rng) for i in idx])
        return {"x": images_tensor(train_set, idx, dev), "y": torch.from_numpy(seqs).to(dev),
                "gt": [{"boxes": train_set.boxes[i], "labels": train_set.labels[i]} for i in idx]}

    def reward(batch: Batch, samples: Tensor) -> np.ndarray:
        b, n = samples.shape[:2]
        preds = [tok.decode(s) for s in samples.reshape(b * n, -1).cpu().numpy()]
        gts = [g for g in batch["gt"] for _ in range(n)]
        return rewards.detection_reward(preds, gts).reshape(b, n)

    @torch.no_grad()
    def greedy(p: nn.Module, split: Shapes) -> tuple[list[dict], list[dict]]:
        preds = []
        for i in range(0, len(split), 100):
            x = images_tensor(split, np.arange(i, min(i + 100, len(split))), dev)
            seqs = p.sample(x, 1, temperature=0)
            logp = p.token_log_probs(x, seqs)
            preds += [tok.decode(s, lp) for s, lp in zip(seqs[:, 0].cpu().numpy(), logp[:, 0].cpu().numpy())]
        return preds, [{"boxes": bx, "labels": lb} for bx, lb in zip(split.boxes, split.labels)]

    def evaluate(p: nn.Module) -> dict[str, float]:
        preds, gts = greedy(p, test)
        n_pred = sum(len(q["labels"]) for q in preds)
        return {"map": 100 * rewards.coco_map(preds, gts), "boxes_per_object": n_pred / sum(map(len, test.labels)),
                "reward": float(rewards.detection_reward(preds, gts).mean()), **detection_diagnostics(preds, gts)}

    mle = PhaseConfig(steps=1500, lr=2e-3, schedule="cosine")
    plateau = validate = None
    if converged:
        val = generate(val_size, 20_000 + seed, **world)
        mle = PhaseConfig(steps=0, lr=1e-3, schedule="constant")
        plateau = Plateau(every=250, patience=4, max_steps=15_000, min_delta=0.2)

        def validate(p: nn.Module) -> float:
            return 100 * rewards.coco_map(*greedy(p, val))

    return Demo("detection-converged" if converged else "detection", policy,
                step_batches(train_size, 48, seed, make), step_batches(train_size, 16, seed + 1, make),
                reward, evaluate, "map", mle=mle,
                # on-policy samples (temperature 1) and 12 per image: at 0.7 and 6 the
                # held-out mAP drifted instead of climbing
                reward=PhaseConfig(steps=600, lr=1e-4, num_samples=12, temperature=1.0),
                plateau=plateau, validate=validate)


def colorization_terms(colours: np.ndarray, grey: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: colourfulness of the painted RGB, mean |luma(out) − grey|, and the share
    of neighbouring pixels with equal grey but different colour (painted noise).
    `colours` (B, H, W) palette indices, `grey` (B, H, W) in [0, 1]."""
    rgb = PALETTE[colours]
    flat_h, flat_v = np.isclose(grey[:, 1:], grey[:, :-1]), np.isclose(grey[:, :, 1:], grey[:, :, :-1])
    edges = (((colours[:, 1:] != colours[:, :-1]) & flat_h).sum((1, 2))
             + ((colours[:, :, 1:] != colours[:, :, :-1]) & flat_v).sum((1, 2)))
    return {"colorfulness": rewards.colorfulness(rgb), "luma_err": np.abs(rgb @ LUMA / 255.0 - grey).mean((1, 2)),
            "colour_edges": edges / (flat_h.sum((1, 2)) + flat_v.sum((1, 2)) + 1e-9)}


def colorization_reward(colours: np.ndarray, grey: np.ndarray, luma_weight: float = 40.0,
                        edge_weight: float = 8.0) -> np.ndarray:
    """Colourfulness / 25 − luma_weight · luma error − edge_weight · colour-edge share: a
    wrong brightness (≈ 0.2 luma off) or painted noise costs more than colour earns."""
    t = colorization_terms(colours, grey)
    return t["colorfulness"] / 25.0 - luma_weight * t["luma_err"] - edge_weight * t["colour_edges"]


def colorization(seed: int = 0, train_size: int = 1500, test_size: int = 300,
                 device: str | torch.device = "cpu") -> Demo:
    """Palette scenes shown in grey; a `PixelPolicy` over the 12 palette colours."""
    train_set, test = generate(train_size, seed, colorization=True), generate(test_size, 10_000 + seed,
                                                                            colorization=True)
    train_grey, test_grey = train_set.grey(), test.grey()
    dev = torch.device(device)
    torch.manual_seed(seed)
    policy = PixelPolicy(1, len(PALETTE)).to(dev)

    def make(idx: np.ndarray, _rng: np.random.Generator) -> Batch:
        return {"x": torch.from_numpy(train_grey[idx]).unsqueeze(1).to(dev),
                "y": torch.from_numpy(train_set.colours[idx]).to(dev)}

    def reward(batch: Batch, samples: Tensor) -> np.ndarray:
        b, n = samples.shape[:2]
        grey = batch["x"][:, 0].cpu().numpy().repeat(n, 0)
        return colorization_reward(samples.reshape(b * n, *samples.shape[2:]).cpu().numpy(), grey).reshape(b, n)

    @torch.no_grad()
    def evaluate(p: nn.Module) -> dict[str, float]:
        out = p.sample(torch.from_numpy(test_grey).unsqueeze(1).to(dev), 1, temperature=0)[:, 0].cpu().numpy()
        terms = {k: float(v.mean()) for k, v in colorization_terms(out, test_grey).items()}
        return {**terms, "reward": float(colorization_reward(out, test_grey).mean()),
                "gt_colorfulness": float(rewards.colorfulness(test.images).mean()),
                "pixel_acc": float((out == test.colours).mean())}

    return Demo("colorization", policy, step_batches(train_size, 32, seed, make), step_batches(train_size, 16, seed + 1, make),
                reward, evaluate, "colorfulness",
                mle=PhaseConfig(steps=600, lr=2e-3, schedule="cosine"),
                reward=PhaseConfig(steps=150, lr=3e-4, num_samples=6))


BUILDERS: dict[str, Callable[..., Demo]] = {"segmentation": segmentation, "detection": detection,
                                            "colorization": colorization, "captioning": captioning,
                                            "vq-colorization": vq_colorization,
                                            "detection-converged": partial(detection, converged=True)}


@dataclass
class DemoResult:
    """Held-out metrics after MLE, after reward tuning and (the control) after MLE continued
    for as many steps as reward tuning took; seconds per phase (`setup_seconds`: training
    done while building the demo, e.g. the VQ-VAE). `mle_record`, for a demo that trains
    MLE to a plateau: the validation curve, where and why it stopped (`converge`), and the
    steps and images of tuning and of the control."""

    demo: str
    seed: int
    metric: str
    after_mle: dict[str, float]
    after_reward: dict[str, float]
    after_mle_control: dict[str, float] | None
    mle_seconds: float
    reward_seconds: float
    control_seconds: float | None = None
    setup_seconds: float = 0.0
    mle_record: dict | None = None


def run(name: str, seed: int, out_dir: str | Path, resume: bool = False, progress: bool = True,
        mle_steps: int | None = None, reward_steps: int | None = None, control: bool = False,
        device: str | torch.device = "cpu") -> DemoResult:
    """Build a demo on `device` (its model, batches and rewards), train it with MLE,
    evaluate, tune it with its reward, evaluate.

    Writes `<out_dir>/{mle,reward}.pt` and `metrics.jsonl` (and, with `control`, the same
    under `<out_dir>/control/`). Without `resume`, earlier files there are replaced. A
    demo with a `plateau` trains MLE until its validation score stops improving
    (`mle_steps` is then the cap) and writes `mle_best.pt` and `plateau.json` too.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown demo {name!r}; choose one of {', '.join(DEMOS)}")
    demo = BUILDERS[name](seed, device=device)
    demo.mle = replace(demo.mle, steps=mle_steps if mle_steps is not None else demo.mle.steps)
    demo.reward = replace(demo.reward, steps=reward_steps if reward_steps is not None else demo.reward.steps)
    out = Path(out_dir)
    if not resume and out.exists():
        for stale in [*out.glob("*.pt"), *out.glob("control/*.pt"), *out.glob("**/metrics.jsonl"),
                      *out.glob("plateau.json")]:
            stale.unlink()
    t0 = time.perf_counter()
    record = None
    if demo.plateau is not None:
        plateau = replace(demo.plateau, max_steps=mle_steps or demo.plateau.max_steps)
        mle_ckpt, record = train_to_plateau(demo.policy, demo.mle_batches, demo.mle, out, demo.validate, plateau,
                                            resume=resume, progress=progress)
        mle_done = record["best_step"]
    else:
        mle_ckpt = train(demo.policy, "mle", demo.mle_batches, demo.mle, out, resume=resume, progress=progress)
        mle_done = demo.mle.steps
    t1 = time.perf_counter()
    before = demo.evaluate(demo.policy)
    mle_state = copy.deepcopy(demo.policy.state_dict())
    t2 = time.perf_counter()
    tuned = demo.tuned_as(demo.policy) if demo.tuned_as is not None else demo.policy
    train(tuned, "reward", demo.reward_batches, demo.reward, out, reward_fn=demo.reward_fn, resume=resume,
          progress=progress)
    t3 = time.perf_counter()
    after = demo.evaluate(tuned)
    baseline = None
    if control:
        (out / "control").mkdir(exist_ok=True)
        if not (out / "control" / "mle.pt").exists():
            shutil.copy(mle_ckpt, out / "control" / "mle.pt")
        demo.policy.load_state_dict(mle_state)
        longer = replace(demo.mle, steps=mle_done + demo.reward.steps)
        t4 = time.perf_counter()
        train(demo.policy, "mle", demo.mle_batches, longer, out / "control", resume=True, progress=progress)
        control_seconds = time.perf_counter() - t4
        baseline = demo.evaluate(demo.policy)
    if record is not None:
        record = {**record, "tuning_steps": demo.reward.steps,
                  "tuning_images": demo.reward.steps * len(demo.reward_batches(0)["x"]),
                  "control_extra_steps": longer.steps - mle_done if control else None,
                  "control_images": (longer.steps - mle_done) * len(demo.mle_batches(0)["x"]) if control else None}
    return DemoResult(name, seed, demo.metric, before, after, baseline, t1 - t0, t3 - t2,
                      control_seconds if control else None, demo.setup_seconds, record)
