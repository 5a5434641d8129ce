"""Benchmark: the embedded default self-training run (`python selftrain.py` with no options).

Runs the embedded preset (shapes world, Qwen2.5-Coder-0.5B on CPU, round 0 = few-shot
baseline + 2 rounds) into runs/bench-selftrain[-ENGINE], then prints a markdown table of
held-out accuracy per round, seconds per phase and peak memory, for docs/selftrain.md.
Targets: the whole run ≤ 30 min on 2 cores, peak memory ≤ 12 GB.

With `--engines hf llamacpp` each engine's default run goes into its own child process, one
after the other, so each peak RSS is that run's own; the table puts them side by side with
the ratio llamacpp / hf for wall time and peak memory (the CPU engine issue's targets:
≤ 0.6× each) and the load average sampled through each run; `--json` keeps the rows.

    python bench/selftrain.py [--resume]
    python bench/selftrain.py --engines hf llamacpp --json bench/results/selftrain_engines.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

PHASES = (("reward/mean", ".2f"), ("filter/kept", ".0f"), ("sample/seconds", ".0f"),
          ("sample/execute_seconds", ".0f"), ("time/train_s", ".0f"), ("time/eval_s", ".0f"),
          ("time/round_s", ".0f"))


def run_one(engine: str | None, resume: bool) -> dict:
    """One default run in this process; its rounds, wall time and peak memory."""
    from viprog.metrics import peak_memory_mb
    from viprog.selftrain import main as selftrain
    from viprog.selftrain_config import embedded

    cfg = embedded()
    name = "bench-selftrain" if engine is None else f"bench-selftrain-{engine}"
    options = None if engine is None else json.dumps({"engine": engine})
    cfg = dataclasses.replace(cfg, run_name=name, resume=resume, overwrite=not resume, policy_options=options)
    start = time.perf_counter()
    code = selftrain(cfg)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in Path(cfg.runs_dir, name, "metrics.jsonl").read_text().splitlines()]
    mem = peak_memory_mb()
    return {"engine": engine or "default", "exit_code": code, "wall_s": round(wall, 1), "run": str(Path(cfg.runs_dir, name)),
            "peak_rss_gb": round(mem["memory/peak_rss_mb"] / 1024, 2),  # GiB: peak_memory_mb is in MiB
            "peak_children_rss_gb": round(mem["memory/peak_children_rss_mb"] / 1024, 2), "rounds": rows}


def print_rounds(row: dict) -> None:
    print(f"\n{row['engine']}: {row['run']}")
    print("| round | held-out accuracy | train reward | kept | sample s | execute s | train s | eval s | round s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in row["rounds"]:
        cells = [f"{m[key]:{fmt}}" if key in m else "–" for key, fmt in PHASES]
        print(f"| {m['round']} | {m['eval/accuracy']:.1%} | " + " | ".join(cells) + " |")


class LoadSampler:
    """The 1-minute load average every 30 s while a child runs (the machine may be shared)."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(30):
            self.values.append(os.getloadavg()[0])

    def __enter__(self) -> Self:
        self.values.append(os.getloadavg()[0])
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.values.append(os.getloadavg()[0])


def side_by_side(engines: list[str], resume: bool) -> dict:
    """Each engine's default run in a child process, one after the other."""
    rows = []
    for engine in engines:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp, "row.json")
            cmd = [sys.executable, __file__, "--engine", engine, "--row", str(out)] + (["--resume"] if resume else [])
            print(f"[bench] {engine}: {' '.join(cmd)}", flush=True)
            with LoadSampler() as load:
                subprocess.run(cmd, check=True)
            row = json.loads(out.read_text())
        row["load"] = {"min": min(load.values), "max": max(load.values),
                       "mean": round(sum(load.values) / len(load.values), 2)}
        rows.append(row)
    result = {"bench": "selftrain_engines", "engines": engines, "cpus": os.cpu_count(), "rows": rows}
    if len(rows) == 2:
        base, other = rows
        result["ratio"] = {"wall": round(other["wall_s"] / base["wall_s"], 3),
                           "peak_rss": round(max(other["peak_rss_gb"], other["peak_children_rss_gb"])
                                             / max(base["peak_rss_gb"], base["peak_children_rss_gb"]), 3)}
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resume", action="store_true", help="continue the bench runs where they stopped")
    ap.add_argument("--engines", nargs="+", choices=["hf", "llamacpp"],
                    help="run the default once per engine, each in its own process, and compare")
    ap.add_argument("--json", type=Path, help="with --engines: write the rows and ratios here")
    ap.add_argument("--engine", choices=["hf", "llamacpp"], help=argparse.SUPPRESS)
    ap.add_argument("--row", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.json and not args.engines:
        ap.error("--json needs --engines")
    if args.row:  # the child of --engines
        row = run_one(args.engine, args.resume)
        args.row.write_text(json.dumps(row))
        return row["exit_code"]
    if not args.engines:
        row = run_one(None, args.resume)
        print_rounds(row)
        print(f"\nwall {row['wall_s'] / 60:.1f} min (target ≤ 30); peak RSS {row['peak_rss_gb']:.2f} GiB parent, "
              f"{row['peak_children_rss_gb']:.2f} GiB largest child (target ≤ 12 GB)")
        return row["exit_code"]
    result = side_by_side(args.engines, args.resume)
    print("\n| engine | wall min | peak RSS GiB (parent / largest child) | load (min–max) | accuracy per round |")
    print("|---|---|---|---|---|")
    for row in result["rows"]:
        accs = " → ".join(f"{m['eval/accuracy']:.1%}" for m in row["rounds"])
        print(f"| {row['engine']} | {row['wall_s'] / 60:.1f} | {row['peak_rss_gb']:.2f} / {row['peak_children_rss_gb']:.2f} "
              f"| {row['load']['min']:.1f}–{row['load']['max']:.1f} | {accs} |")
    for row in result["rows"]:
        print_rounds(row)
    if "ratio" in result:
        r = result["ratio"]
        print(f"\n{args.engines[1]} / {args.engines[0]}: wall {r['wall']:.2f}×, peak RSS {r['peak_rss']:.2f}× (targets ≤ 0.6× each)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"[bench] rows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
