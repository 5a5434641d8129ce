"""Benchmark: does reward tuning beat its MLE model, and beat simply training MLE longer?

For each demo and seed: train with MLE, evaluate on a held-out split, tune with the
task reward, evaluate; as the control, continue MLE from the same checkpoint for as many
steps as the reward tuning took. Prints one row per run, then per demo the mean and
standard deviation of (reward − MLE) and (MLE longer − MLE), and the wall time.

    .venv/bin/python bench/reinforce.py                    # all demos: 5 / 5 / 3 seeds
    .venv/bin/python bench/reinforce.py --demos detection --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from viprog.reinforce.cli import format_table
from viprog.reinforce.demos import DEMOS, run

DEFAULT_SEEDS = {"segmentation": [0, 1, 2, 3, 4], "detection": [0, 1, 2, 3, 4], "colorization": [0, 1, 2]}


def short(metrics: dict[str, float] | None) -> str:
    return "-" if metrics is None else ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def fmt(deltas: list[float]) -> str:
    return f"{statistics.mean(deltas):+.2f} ± {statistics.stdev(deltas) if len(deltas) > 1 else 0.0:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demos", nargs="+", choices=DEMOS, default=list(DEMOS))
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 5 for segmentation and detection, 3 for colorization")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start, results = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="bench-reinforce-") as tmp:
        for demo in args.demos:
            for seed in args.seeds or DEFAULT_SEEDS[demo]:
                print(f"{demo} seed {seed} …", flush=True)
                results.append(run(demo, seed, f"{tmp}/{demo}/{seed}", progress=False, control=True))
                print(format_table(results[-1:]).splitlines()[1], flush=True)
    print()
    print(format_table(results))
    print()
    print(f"{'demo':<13} {'metric':<13} {'MLE':>7} {'Δ reward':>14} {'Δ MLE longer':>14}  runs")
    for demo in args.demos:
        rs = [r for r in results if r.demo == demo]
        m = rs[0].metric
        base = [r.after_mle[m] for r in rs]
        gain = [r.after_reward[m] - r.after_mle[m] for r in rs]
        ctrl = [r.after_mle_control[m] - r.after_mle[m] for r in rs]
        print(f"{demo:<13} {m:<13} {statistics.mean(base):>7.2f} {fmt(gain):>14} {fmt(ctrl):>14}  {len(rs)}")
    print("\nall held-out metrics (MLE → reward | MLE longer):")
    for r in results:
        print(f"  {r.demo} seed {r.seed}: {short(r.after_mle)} → {short(r.after_reward)}"
              f" | {short(r.after_mle_control)}")
    print(f"\nwall time {time.perf_counter() - start:.0f} s on {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
