"""`viprog reinforce`: run a REINFORCE demo end to end and print a before/after table.

Why here: the command's options are a typed dataclass (tyro builds the parser from it),
and `main` imports torch only when it runs, so `viprog --help` stays fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from viprog.errors import UsageError
from viprog.reinforce.diagnostics import diagnostics_table


@dataclass
class ReinforceConfig:
    """MLE-train a small model on the shapes world, tune it with its task reward, compare."""

    demo: Literal["segmentation", "detection", "colorization", "captioning", "vq-colorization"] = "segmentation"
    """which demonstration: per-pixel segmentation (reward: panoptic quality), pix2seq detection
    (reward: big_vision's detection reward, metric mAP), colorization (reward:
    colourfulness with fidelity penalties), captioning (reward: CIDEr-D against five
    references per image) or vq-colorization (VQ-VAE codes written from the grey image,
    reward: minus the squared error of the frozen decoder's image, metric PSNR)"""
    seeds: tuple[int, ...] = (0,)
    """one run per seed (data, initialisation and sampling all follow the seed)"""
    mle_steps: int | None = None
    """MLE steps (default: the demo's own)"""
    reward_steps: int | None = None
    """reward-tuning steps (default: the demo's own)"""
    converged: bool = False
    """detection only: train MLE at a constant learning rate until the mAP on a validation
    split (not the test split) has not improved for 4 evaluations 250 steps apart (cap:
    --mle-steps, default 15,000), then tune and run the control from that checkpoint;
    output in runs/reinforce/detection-converged"""
    control: bool = False
    """also continue MLE for as many steps as reward tuning took, from the same MLE
    checkpoint, so the table separates the reward's effect from longer training"""
    out: Path | None = None
    """output folder (default runs/reinforce/<demo>); seed k goes to <out>/seed_<k>/"""
    resume: bool = False
    """continue from the checkpoints in the output folder instead of starting over"""
    device: str = "cpu"
    """where the models, the data batches and the rewards live: cpu, cuda, cuda:1, …
    (results on a GPU differ from the CPU's: another random stream and float order)"""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)"""
    progress: bool = True
    """show progress bars"""


def format_table(results: list) -> str:
    """Before/after table of `DemoResult`s, one row per demo and seed."""
    control = any(r.after_mle_control is not None for r in results)
    head = f"{'demo':<19} {'seed':>4} {'metric':<13} {'MLE':>7} {'reward':>7} {'Δ':>6}"
    head += f" {'MLE+':>7} {'Δ MLE+':>7}" if control else ""
    lines = [head + f" {'MLE s':>6} {'tune s':>6}"]
    for r in results:
        a, b = r.after_mle[r.metric], r.after_reward[r.metric]
        row = f"{r.demo:<19} {r.seed:>4} {r.metric:<13} {a:>7.2f} {b:>7.2f} {b - a:>+6.2f}"
        if control:
            c = r.after_mle_control[r.metric] if r.after_mle_control else float("nan")
            row += f" {c:>7.2f} {c - a:>+7.2f}"
        lines.append(row + f" {r.mle_seconds:>6.0f} {r.reward_seconds:>6.0f}")
    return "\n".join(lines)


def details(results: list) -> str:
    """Below the table: where MLE stopped for runs trained to a plateau, and the detection
    error counts of each model (empty lines left out)."""
    lines = [f"{r.demo} seed {r.seed}: MLE stopped at step {r.mle_record['steps_trained']} ({r.mle_record['stopped']}: "
             f"{r.mle_record['reason']}); tuning and control start from step {r.mle_record['best_step']}"
             for r in results if r.mle_record]
    return "\n".join([*lines, diagnostics_table(results)]).strip("\n")


def _check_device(name: str) -> None:
    """A device torch can parse and this machine has, else a one-line UsageError."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this machine has no CUDA device visible to torch; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here; "
                         f"use cuda:0 … cuda:{torch.cuda.device_count() - 1}")


def main(cfg: ReinforceConfig) -> int:
    """Run the demo for every seed; print the table; write `results.json`. Returns 0."""
    for name in ("mle_steps", "reward_steps", "threads"):
        value = getattr(cfg, name)
        least = 0 if name == "reward_steps" else 1
        if value is not None and value < least:
            raise UsageError(f"--{name.replace('_', '-')} must be {'≥ 0' if least == 0 else 'positive'}, got {value}")
    if not cfg.seeds:
        raise UsageError("--seeds needs at least one seed")
    if min(cfg.seeds) < 0:
        raise UsageError(f"--seeds must be ≥ 0 (numpy refuses negative seeds), got {min(cfg.seeds)}")
    import torch

    from viprog.reinforce.demos import DEMOS, run

    name = f"{cfg.demo}-converged" if cfg.converged else cfg.demo
    if cfg.demo not in DEMOS:
        raise UsageError(f"unknown demo {cfg.demo!r}; choose one of {', '.join(DEMOS)}")
    if name not in DEMOS:
        raise UsageError(f"--converged: only detection has a converged-MLE variant, not {cfg.demo}")
    _check_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = cfg.out or Path("runs") / "reinforce" / name
    if cfg.resume and not out.exists():
        raise UsageError(f"--resume: nothing to resume in {out}")
    results = []
    for seed in cfg.seeds:
        seed_dir = out / f"seed_{seed}"
        print(f"viprog reinforce: {name} seed {seed} on {cfg.device}: MLE then reward tuning → {seed_dir}",
              flush=True)
        results.append(run(name, seed, seed_dir, resume=cfg.resume, progress=cfg.progress,
                           mle_steps=cfg.mle_steps, reward_steps=cfg.reward_steps, control=cfg.control,
                           device=cfg.device))
    print(format_table(results))
    print(details(results))
    (out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(f"viprog reinforce: metrics in {out}/seed_*/metrics.jsonl, results in {out / 'results.json'}")
    return 0
