"""Benchmark: does reward tuning beat its MLE model, and beat simply training MLE longer?

For each demo and seed: train with MLE, evaluate on a held-out split, tune with the
task reward, evaluate; as the control, continue MLE from the same checkpoint for as many
steps as the reward tuning took. Prints one row per run, then per demo the mean and
standard deviation of (reward − MLE) and (MLE longer − MLE), the seconds of each phase,
and the machine's load before and after; `--json` also writes all of it to a file.

    .venv/bin/python bench/reinforce.py                    # all demos but detection-converged: 5 / 5 / 3 / 3 / 3 seeds
    .venv/bin/python bench/reinforce.py --demos detection --seeds 0 1 2
    .venv/bin/python bench/reinforce.py --demos captioning --jobs 3 --threads 1 \\
        --json bench/results/reinforce_captioning.json    # seeds in parallel processes
    .venv/bin/python bench/reinforce.py --demos detection-converged --jobs 3 --threads 1 \\
        --out runs/bench-reinforce --resume \\
        --json bench/results/reinforce_detection_converged.json   # MLE to a plateau first (~2.5 h here)

Without `--out` the runs live in a temporary folder and are lost when the bench ends. With
`--out DIR` each run keeps its checkpoints and, once finished, `DIR/<demo>/<seed>/result.json`;
`--resume` then loads the finished runs instead of running them again and continues the
others from their checkpoints (MLE chunks, tuning, the control).

For detection the error counts of `viprog.reinforce.diagnostics` (duplicates, recall by
object size, precision, boxes per image) are printed per model and averaged per model in
the summary; for detection-converged also where MLE stopped on every seed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from viprog.reinforce.cli import details, format_table
from viprog.reinforce.demos import DEMOS, DemoResult, run
from viprog.runs import write_json_atomic

DEFAULT_SEEDS = {"segmentation": [0, 1, 2, 3, 4], "detection": [0, 1, 2, 3, 4], "colorization": [0, 1, 2],
                 "captioning": [0, 1, 2], "vq-colorization": [0, 1, 2], "detection-converged": [0, 1, 2, 3, 4]}
#: what runs without --demos: every demo but detection-converged, whose MLE phase alone
#: takes up to 15,000 steps per seed; it runs when named
DEFAULT_DEMOS = [d for d in DEMOS if d != "detection-converged"]


def short(metrics: dict[str, float] | None) -> str:
    return "-" if metrics is None else ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def fmt(deltas: list[float]) -> str:
    return f"{statistics.mean(deltas):+.2f} ± {statistics.stdev(deltas) if len(deltas) > 1 else 0.0:.2f}"


RESULT = "result.json"


def one_run(demo: str, seed: int, out: str, threads: int, resume: bool = False) -> DemoResult:
    """One demo and seed with its control, in this process (or a worker) on `threads` threads.
    The finished run is written to `<out>/result.json`; with `resume` a run that has one is
    read back instead of run, and an unfinished one continues from its checkpoints."""
    done = Path(out) / RESULT
    if resume and done.exists():
        result = DemoResult(**json.loads(done.read_text()))
        print(f"{demo} seed {seed}: finished earlier, read from {done}", flush=True)
        return result
    torch.set_num_threads(threads)
    print(f"{demo} seed {seed} …", flush=True)
    result = run(demo, seed, out, resume=resume, progress=False, control=True)
    write_json_atomic(done, asdict(result))
    print(format_table([result]).splitlines()[1] + f"   (run kept in {out})", flush=True)
    return result


def t_interval(values: list[float], level: float = 0.95) -> list[float]:
    """Two-sided t-interval of the mean of `values` (needs two or more)."""
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return [statistics.mean(values) - half, statistics.mean(values) + half]


def summary(results: list[DemoResult], demos: list[str]) -> dict[str, dict]:
    """Per demo: mean metric after MLE, mean ± sd of both deltas, the per-seed difference
    tuned − MLE-as-long with its 95 % t-interval, mean seconds per phase."""
    out = {}
    for demo in demos:
        rs = [r for r in results if r.demo == demo]
        m = rs[0].metric
        gain = [r.after_reward[m] - r.after_mle[m] for r in rs]
        ctrl = [r.after_mle_control[m] - r.after_mle[m] for r in rs]
        out[demo] = {"metric": m, "runs": len(rs), "after_mle": statistics.mean(r.after_mle[m] for r in rs),
                     "after_reward": statistics.mean(r.after_reward[m] for r in rs),
                     "delta_reward": statistics.mean(gain), "delta_reward_sd": statistics.stdev(gain) if len(rs) > 1 else 0.0,
                     "delta_mle_longer": statistics.mean(ctrl),
                     "delta_mle_longer_sd": statistics.stdev(ctrl) if len(rs) > 1 else 0.0,
                     "mle_s": statistics.mean(r.mle_seconds for r in rs),
                     "reward_s": statistics.mean(r.reward_seconds for r in rs),
                     "control_s": statistics.mean(r.control_seconds or 0.0 for r in rs),
                     "setup_s": statistics.mean(r.setup_seconds for r in rs)}
        beyond = [r.after_reward[m] - r.after_mle_control[m] for r in rs]
        out[demo] |= {"reward_minus_longer": beyond, "reward_minus_longer_mean": statistics.mean(beyond),
                      "reward_minus_longer_t95": t_interval(beyond) if len(rs) > 1 else None}
        if "duplicates" in rs[0].after_mle:
            models = {"mle": [r.after_mle for r in rs], "tuned": [r.after_reward for r in rs],
                      "mle_as_long": [r.after_mle_control for r in rs if r.after_mle_control]}
            out[demo]["diagnostics_mean"] = {model: {k: statistics.mean(m[k] for m in ms) for k in ms[0]}
                                             for model, ms in models.items() if ms}
        if rs[0].mle_record:
            out[demo]["mle_best_step"] = [r.mle_record["best_step"] for r in rs]
            out[demo]["mle_stopped"] = [r.mle_record["stopped"] for r in rs]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demos", nargs="+", choices=DEMOS, default=DEFAULT_DEMOS)
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 5 for segmentation, detection and detection-converged, 3 otherwise")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    parser.add_argument("--json", type=Path, help="also write the runs, the summary and the load here")
    parser.add_argument("--out", type=Path, help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--resume", action="store_true",
                        help="with --out: read finished runs back, continue unfinished ones from their checkpoints")
    args = parser.parse_args()
    if args.jobs < 1 or args.threads < 1:
        parser.error(f"--jobs and --threads must be at least 1, got {args.jobs} and {args.threads}")
    if args.seeds is not None and min(args.seeds) < 0:
        parser.error(f"--seeds must be ≥ 0, got {min(args.seeds)}")
    if args.resume and args.out is None:
        parser.error("--resume needs --out, the folder of the runs to continue")
    load_before = os.getloadavg()
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        root = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-reinforce-")))
        runs = [(demo, seed, str(root / demo / str(seed)), args.threads, args.resume)
                for demo in args.demos for seed in (args.seeds or DEFAULT_SEEDS[demo])]
        if args.out is not None:
            print(f"runs kept in {args.out}", flush=True)
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                results = list(pool.map(one_run, *zip(*runs)))
        else:
            results = [one_run(*r) for r in runs]
    wall, load_after = time.perf_counter() - start, os.getloadavg()
    print()
    print(format_table(results))
    print(details(results))
    print()
    print(f"{'demo':<19} {'metric':<13} {'MLE':>7} {'Δ reward':>14} {'Δ MLE longer':>14}  runs"
          "  MLE s / tune s / control s / setup s")
    table = summary(results, args.demos)
    for demo, row in table.items():
        gain = f"{row['delta_reward']:+.2f} ± {row['delta_reward_sd']:.2f}"
        ctrl = f"{row['delta_mle_longer']:+.2f} ± {row['delta_mle_longer_sd']:.2f}"
        print(f"{demo:<19} {row['metric']:<13} {row['after_mle']:>7.2f} {gain:>14} {ctrl:>14}  {row['runs']:>4}"
              f"  {row['mle_s']:.0f} / {row['reward_s']:.0f} / {row['control_s']:.0f} / {row['setup_s']:.0f}")
        if row["reward_minus_longer_t95"]:
            low, high = row["reward_minus_longer_t95"]
            print(f"{'':<19} tuned − MLE as long, per seed: {row['reward_minus_longer_mean']:+.2f} [{low:+.2f}, {high:+.2f}]")
    print("\nall held-out metrics (MLE → reward | MLE longer):")
    for r in results:
        print(f"  {r.demo} seed {r.seed}: {short(r.after_mle)} → {short(r.after_reward)}"
              f" | {short(r.after_mle_control)}")
    load = f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after on {os.cpu_count()} CPUs"
    print(f"\nwall time {wall:.0f} s; {args.jobs} job(s) × {args.threads} thread(s); {load}")
    if args.json:
        args.json.write_text(json.dumps({"summary": table, "runs": [asdict(r) for r in results], "wall_s": wall,
                                         "jobs": args.jobs, "threads": args.threads, "cpus": os.cpu_count(),
                                         "load_before": load_before, "load_after": load_after}, indent=1))
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
