"""What `--executor ray` costs on one machine: the same 2,000 programs through the local
`Executor` and through `RayExecutor`, side by side in one run, wall time and the ratio.

Each program asks a fake batched `find` (20 ms a batch + 0.2 ms per call, like a small
detector) about two names on one of 50 images, so the primitive batches are what the
time is spent on and the comparison shows the overhead of Ray's actors, the object store
and the per-chunk round trips. Both executors get the same sandbox workers in total (the
local one 2; Ray one sandbox actor of 2 on this single node), both without the result
cache (each round would otherwise be answered from the last one's), and every result is
checked equal. The Ray side runs on a Ray instance started here (`ray.init` with 2 CPUs); its
start-up is timed apart and not in the ratio. Rounds alternate local / ray; the machine's
load is recorded before and after. Written to bench/results/ray.json.

Usage: python bench/ray_overhead.py [--programs N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from viprog.executor import Executor, Job
from viprog.executor.ray_backend import RayExecutor
from viprog.primitives import Profile

NAMES = ["cat", "dog", "car", "tree", "cup"]
PROGRAM = ("def execute_command(image, query):\n    patch = ImagePatch(image)\n"
           "    return [len(patch.find(name)) for name in query.split()]\n")


class FakeFind(Profile):
    """find: 20 ms a batch + 0.2 ms a call; an answer that depends on the image and name."""

    name = "fake-find"

    def find(self, calls: list) -> list:
        time.sleep(0.02 + 0.0002 * len(calls))
        return [[[0, 0, 4, 4]] * ((int(c.patch.image[0, 0, 0]) + len(c.args[0])) % 4) for c in calls]


def make_jobs(n: int) -> list[Job]:
    images = [np.full((32, 32, 3), i, np.uint8) for i in range(50)]
    return [Job(PROGRAM, f"img-{i % 50}", images[i % 50], query=f"{NAMES[i % 5]} {NAMES[(i // 5) % 5]}")
            for i in range(n)]


def timed(executor: object, jobs: list[Job]) -> tuple[float, list]:
    start = time.perf_counter()
    results = executor.run_many(jobs)  # type: ignore[attr-defined]
    return time.perf_counter() - start, [(r.answer, r.error, r.trace) for r in results]


def main() -> None:
    import ray

    parser = argparse.ArgumentParser()
    parser.add_argument("--programs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    jobs = make_jobs(args.programs)
    load_before = os.getloadavg()
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    started = time.perf_counter() - start
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    with Executor(FakeFind(), workers=2, cache=False) as local, \
            RayExecutor(FakeFind(), workers=2, sandboxes=1, cache=False) as remote:
        _, expected = timed(local, jobs[:200])  # warm both: forkservers, actors, imports
        assert timed(remote, jobs[:200])[1] == expected
        for _ in range(args.rounds):
            for name, executor in (("local", local), ("ray", remote)):
                wall, out = timed(executor, jobs)
                walls[name].append(wall)
                if name == "local":
                    expected = out
                assert out == expected, "the Ray executor's results differ from the local one's"
                print(f"{name:5s} {wall:6.2f} s")
    ray.shutdown()
    local_s, ray_s = statistics.median(walls["local"]), statistics.median(walls["ray"])
    result = {
        "programs": args.programs, "rounds": args.rounds, "primitive": "find: 20 ms a batch + 0.2 ms a call",
        "workers": "local 2; ray 1 sandbox actor x 2 workers + 1 model actor, one node; no result cache",
        "wall_s": walls, "median_local_s": round(local_s, 3), "median_ray_s": round(ray_s, 3),
        "ratio_ray_over_local": round(ray_s / local_s, 3), "ray_start_s": round(started, 2),
        "results_identical": True, "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "uptime": os.popen("uptime").read().strip(),
    }
    print(f"ray / local wall time: {result['ratio_ray_over_local']:.2f}x (median of {args.rounds}; "
          f"load {result['load_before'][0]} -> {result['load_after'][0]})")
    out = Path(__file__).with_name("results") / "ray.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
