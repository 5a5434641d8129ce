"""What one GRPO step costs on this machine, by who samples the group and which prompt the
loss sees: TRL's `generate` (`--grpo.rollout trl`), the run's policy engine
(`--grpo.rollout policy`), and the policy engine with the loss under the training prompt
(`--grpo.loss-prompt train`).

Why its own bench: GRPO's step time decides whether the ReST-vs-GRPO comparison (#16) fits
a CPU machine at all, and which part of a step to make faster. Each setting is one
`viprog selftrain --algo grpo --rounds 1` run in its own process (so each peak RSS is its
own), on the same questions, seed and settings, one after the other in this one call, and
the bench prints each setting's mean step time (TRL's `step_time`), its ratio to the
first, and the process's peak RSS.

    python bench/grpo_step.py                          # the embedded 0.5B, llama.cpp, shapes-hard
    python bench/grpo_step.py --questions 4 --n 4      # bigger groups

Output: bench/results/grpo_step.json (settings, per-setting step times and peaks, the
machine's load before and after) and the runs under runs/bench-grpo-step/.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heldout import machine_load

log = logging.getLogger("viprog.bench.grpo_step")

#: name → (--grpo.rollout, --grpo.loss-prompt)
SETTINGS: dict[str, tuple[str, str]] = {
    "trl_generate": ("trl", "sampled"),
    "policy_engine": ("policy", "sampled"),
    "policy_engine_train_prompt": ("policy", "train"),
}


@dataclass
class StepBench:
    """Options of the bench (see the module docstring)."""

    task: str = "shapes-hard"
    """Task whose train questions the GRPO round trains on."""
    questions: int = 2
    """Questions in the round (one group each)."""
    n: int = 2
    """Programs per group (--sampling.n)."""
    questions_per_step: int = 1
    """Groups per optimiser step."""
    eval_size: int = 2
    """Held-out questions each run evaluates (not what is measured; kept small)."""
    settings: tuple[str, ...] = tuple(SETTINGS)
    """Which settings to run, in order (the ratios are to the first)."""
    policy_options: str = '{"engine":"llamacpp"}'
    """--policy-options of the runs (the embedded model on llama.cpp)."""
    out_dir: str = "runs/bench-grpo-step"
    """Where the runs go (replaced)."""
    results: str = "bench/results/grpo_step.json"
    """The results file."""


def run_setting(cfg: StepBench, name: str) -> dict[str, Any]:
    """One `viprog selftrain --algo grpo` round in a subprocess; its steps and peak memory."""
    rollout, loss_prompt = SETTINGS[name]
    root = Path(cfg.out_dir)
    args = [sys.executable, "-m", "viprog.cli", "selftrain", "--algo", "grpo", "--task", cfg.task, "--rounds", "1",
            "--questions-per-round", str(cfg.questions), "--sampling.n", str(cfg.n),
            "--grpo.questions-per-step", str(cfg.questions_per_step), "--grpo.rollout", rollout,
            "--grpo.loss-prompt", loss_prompt, "--eval-size", str(cfg.eval_size),
            "--policy-options", cfg.policy_options, "--runs-dir", str(root), "--run-name", name]
    log.info("%s: %s", name, " ".join(args[1:]))
    start = time.perf_counter()
    proc = subprocess.run(args, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=os.environ | {"HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    run = root / name / "round_1"
    steps = [h["step_time"] for h in map(json.loads, (run / "grpo_log.jsonl").read_text().splitlines())
             if "step_time" in h]
    metrics = json.loads((run / "metrics.json").read_text())
    return {"rollout": rollout, "loss_prompt": loss_prompt, "step_s": [round(s, 2) for s in steps],
            "step_s_mean": round(sum(steps) / len(steps), 2), "train_s": metrics.get("time/train_s"),
            "peak_rss_gb": round(metrics["memory/peak_rss_mb"] / 1024, 2),
            "completion_tokens_mean": metrics.get("grpo/completions/mean_length"),
            "wall_s": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    import tyro

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = tyro.cli(StepBench, args=argv)
    unknown = sorted(set(cfg.settings) - set(SETTINGS))
    if unknown or not cfg.settings:
        raise SystemExit(f"unknown setting {unknown[0] if unknown else '(none)'}; settings: {', '.join(SETTINGS)}")
    shutil.rmtree(cfg.out_dir, ignore_errors=True)
    load_before = machine_load()
    results = {name: run_setting(cfg, name) for name in cfg.settings}
    first = results[cfg.settings[0]]["step_s_mean"]
    for name, r in results.items():
        r["speedup_vs_first"] = round(first / r["step_s_mean"], 2)
        print(f"{name:28s} step {r['step_s_mean']:7.1f} s  ({r['speedup_vs_first']:.2f}x the first)  "
              f"peak RSS {r['peak_rss_gb']:.1f} GB")
    out = {"settings": {k: v for k, v in vars(cfg).items() if k not in ("out_dir", "results")},
           "results": results, "load_before": load_before, "load_after": machine_load(),
           "cpus": len(os.sched_getaffinity(0))}
    Path(cfg.results).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.results).write_text(json.dumps(out, indent=2) + "\n")
    log.info("results written to %s; runs under %s", cfg.results, cfg.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
