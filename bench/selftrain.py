"""Benchmark: the embedded default self-training run (`python selftrain.py` with no options).

Runs the embedded preset (shapes world, Qwen2.5-Coder-0.5B on CPU, round 0 = few-shot
baseline + 2 rounds) into runs/bench-selftrain, then prints a markdown table of held-out
accuracy per round, seconds per phase and peak memory, for docs/selftrain.md. Targets: round 2
beats round 0 by ≥ 10 points; peak memory ≤ 12 GB; the whole run ≤ 30 min on 2 cores.

    python bench/selftrain.py [--resume]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path


def main() -> int:
    from viprog.metrics import peak_memory_mb
    from viprog.selftrain import embedded
    from viprog.selftrain import main as selftrain

    resume = "--resume" in sys.argv[1:]
    cfg = dataclasses.replace(embedded(), run_name="bench-selftrain", resume=resume, overwrite=not resume)
    start = time.perf_counter()
    code = selftrain(cfg)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in Path(cfg.runs_dir, cfg.run_name, "metrics.jsonl").read_text().splitlines()]
    print("\n| round | held-out accuracy | train reward | kept | sample s | execute s | train s | eval s | round s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in rows:
        cells = [f"{m[key]:{fmt}}" if key in m else "–" for key, fmt in
                 (("reward/mean", ".2f"), ("filter/kept", ".0f"), ("sample/seconds", ".0f"),
                  ("sample/execute_seconds", ".0f"), ("time/train_s", ".0f"), ("time/eval_s", ".0f"),
                  ("time/round_s", ".0f"))]
        print(f"| {m['round']} | {m['eval/accuracy']:.1%} | " + " | ".join(cells) + " |")
    gain = rows[-1]["eval/accuracy"] - rows[0]["eval/accuracy"]
    mem = peak_memory_mb()
    print(f"\nround {rows[-1]['round']} - round 0: {gain * 100:+.1f} points (target ≥ +10); "
          f"wall {wall / 60:.1f} min (target ≤ 30); peak RSS {mem['memory/peak_rss_mb'] / 1024:.2f} GB parent, "
          f"{mem['memory/peak_children_rss_mb'] / 1024:.2f} GB largest child (target ≤ 12 GB)")
    return code


if __name__ == "__main__":
    sys.exit(main())
