"""Executor benchmarks, printed as ratios measured side by side in one run.

1. Throughput on a trivial program: the sandboxed Executor against in-process `exec`
   (compile + run per program, no isolation), one `subprocess` per program, and a bare
   `multiprocessing.Pool` (isolation of nothing, for scale).
2. Batching and caching: 512 programs over 32 images, each calling a fake `find`
   (20 ms per call + 1 ms per item) 2-4 times with repeated arguments; wall time against
   running them one by one without batching or cache, and against the ideal (the model
   time of the minimal set of full batches over the distinct calls).
3. Soak: 10,000 programs, 10% of them faulty (timeouts, CPU burners, memory bombs, deep
   recursion, huge answers, call floods, escapes, syntax errors), run 1,000 at a time
   with the results dropped after each chunk: every result returned, the parent's RSS
   printed at start, after the first chunk and at the end.

Usage: python bench/executor.py [--quick] [--soak]   (quick: smaller counts; soak: only part 3)
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
from collections import Counter
from multiprocessing import get_context

import numpy as np
import psutil

from viprog.executor import Executor, Job
from viprog.primitives import Profile
from viprog.primitives.local import run_unsandboxed

TRIVIAL = "def execute_command(image):\n    return 1 + 1\n"
IMAGE = np.zeros((48, 64, 3), np.uint8)
NAMES = ["cat", "dog", "car", "tree"]


class SlowFind(Profile):
    """find costs 20 ms per batch + 1 ms per item, like a small detector on CPU."""

    name = "slow-find"

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def find(self, calls: list) -> list:
        self.batches.append(len(calls))
        time.sleep(0.020 + 0.001 * len(calls))
        return [[[0, 0, 4, 4]] * (len(c.args[0]) % 3) for c in calls]


def _exec_trivial(_: int) -> int:
    namespace: dict = {}
    exec(compile(TRIVIAL, "<program>", "exec"), namespace)  # noqa: S102 — benchmark of the unsafe baseline
    return namespace["execute_command"](None)


def bench_throughput(n: int) -> None:
    print(f"\n1. throughput, trivial program ({n} runs)")
    start = time.perf_counter()
    for i in range(n):
        _exec_trivial(i)
    exec_rate = n / (time.perf_counter() - start)

    m = max(10, n // 200)
    start = time.perf_counter()
    for _ in range(m):
        code = TRIVIAL + "print(execute_command(None))\n"
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    sub_rate = m / (time.perf_counter() - start)

    with get_context("forkserver").Pool(2) as pool:
        pool.map(_exec_trivial, range(100))
        start = time.perf_counter()
        pool.map(_exec_trivial, range(n), chunksize=64)
        pool_rate = n / (time.perf_counter() - start)

    with Executor(SlowFind(), workers=2) as ex:
        ex.run_many([Job(TRIVIAL, "i", IMAGE)] * 200)
        start = time.perf_counter()
        results = ex.run_many([Job(TRIVIAL, "i", IMAGE)] * n)
        sandbox_rate = n / (time.perf_counter() - start)
    assert all(r.answer == 2 for r in results)
    print(f"   in-process exec      {exec_rate:9.0f} programs/s")
    print(f"   subprocess each      {sub_rate:9.1f} programs/s")
    print(f"   multiprocessing.Pool {pool_rate:9.0f} programs/s (no sandbox)")
    print(f"   Executor (sandboxed) {sandbox_rate:9.0f} programs/s")
    print(f"   Executor / subprocess = {sandbox_rate / sub_rate:.0f}x (target >= 100x); "
          f"Executor / exec = {sandbox_rate / exec_rate:.2f}x (target >= 0.2x)")


def _batching_jobs(n: int, images: int, seed: int = 0) -> list[Job]:
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        names = [rng.choice(NAMES) for _ in range(rng.randint(2, 4))]
        body = "\n".join(f"    n += len(p.find({name!r}))" for name in names)
        source = f"def execute_command(image):\n    p = ImagePatch(image)\n    n = 0\n{body}\n    return n\n"
        jobs.append(Job(source, f"img{i % images}", IMAGE))
    return jobs


def _ideal_seconds(jobs: list[Job], batch_size: int) -> tuple[int, float]:
    distinct = {(j.image_id, line) for j in jobs for line in j.program.splitlines() if "find(" in line}
    full, rest = divmod(len(distinct), batch_size)
    seconds = full * (0.020 + 0.001 * batch_size) + (0.020 + 0.001 * rest if rest else 0.0)
    return len(distinct), seconds


def bench_batching(n: int, images: int) -> None:
    print(f"\n2. batching and caching: {n} programs over {images} images, find = 20 ms + 1 ms/item")
    jobs = _batching_jobs(n, images)
    distinct, ideal = _ideal_seconds(jobs, 32)
    total_calls = sum(j.program.count("find(") for j in jobs)

    profile = SlowFind()
    start = time.perf_counter()
    baseline = [run_unsandboxed(j.program, IMAGE, profile) for j in jobs]
    one_by_one = time.perf_counter() - start

    with Executor(SlowFind(), workers=2, batch_size=32) as ex:
        ex.run_many([Job(TRIVIAL, "warm", IMAGE)] * 10)
        start = time.perf_counter()
        results = ex.run_many(jobs)
        batched = time.perf_counter() - start
        sizes = ex.profile.batches  # type: ignore[attr-defined]
    assert [r.answer for r in results] == baseline
    print(f"   {total_calls} find calls, {distinct} distinct; ideal = {math.ceil(distinct / 32)} full batches "
          f"= {ideal:.3f} s of model time")
    print(f"   one by one, no batching, no cache: {one_by_one:7.2f} s")
    print(f"   Executor (batch 32, cache):        {batched:7.2f} s in {len(sizes)} batches "
          f"(sizes {sorted(sizes, reverse=True)[:8]}...)")
    print(f"   speed-up vs one by one = {one_by_one / batched:.1f}x (target >= 10x); "
          f"vs ideal = {batched / ideal:.2f}x (target <= 1.3x)")


FAULTS = {
    "timeout": "def execute_command(image):\n    while True:\n        pass\n",
    "cpu": "def execute_command(image):\n    return sum(range(10**12))\n",
    "memory": "def execute_command(image):\n    return len([0] * 10**10)\n",
    "recursion": "def f(n):\n    return f(n + 1)\ndef execute_command(image):\n    return f(0)\n",
    "output": "def execute_command(image):\n    return 'x' * (100 * 10**6)\n",
    "calls": "def execute_command(image):\n    p = ImagePatch(image)\n    for i in range(10**6):\n        p.find('x')\n",
    "escape": "def execute_command(image):\n    return getattr(image, '_' + '_class__')\n",
    "syntax": "def execute_command(image):\n    return (\n",
    "import": "import os\ndef execute_command(image):\n    return 1\n",
    "zero": "def execute_command(image):\n    return 1 / 0\n",
}
GOOD = "def execute_command(image):\n    p = ImagePatch(image)\n    return len(p.find('{name}')) + {i}\n"


def bench_soak(n: int, timeout: float) -> None:
    print(f"\n3. soak: {n} programs, 10% faulty, timeout {timeout:g} s")
    rng = random.Random(1)
    jobs, expected = [], []
    for i in range(n):
        if rng.random() < 0.1:
            kind = rng.choice(list(FAULTS))
            jobs.append(Job(FAULTS[kind], f"img{i % 100}", IMAGE))
            expected.append(kind)
        else:
            jobs.append(Job(GOOD.format(name=rng.choice(NAMES), i=i), f"img{i % 100}", IMAGE))
            expected.append(None)
    me = psutil.Process()
    kinds: Counter[str] = Counter()
    wrong: list[str] = []
    chunk = 1000
    with Executor(SlowFind(), workers=2, timeout=timeout, memory_mb=512) as ex:
        ex.run_many(jobs[:50])
        rss = [me.memory_info().rss]
        start = time.perf_counter()
        for i in range(0, n, chunk):  # as a self-training round does: results are scored, then dropped
            results = ex.run_many(jobs[i:i + chunk], progress=f"soak {i // chunk + 1}/{-(-n // chunk)}")
            kinds.update(r.error_kind or "ok" for r in results)
            wrong += [f"{r.error_kind}: {r.error}" for r, e in zip(results, expected[i:i + chunk]) if e is None and not r.ok]
            del results
            rss.append(me.memory_info().rss)
        seconds = time.perf_counter() - start
    print(f"   {sum(kinds.values())} results for {n} jobs in {seconds:.1f} s; kinds {dict(sorted(kinds.items()))}")
    print(f"   healthy programs that failed: {len(wrong)} {wrong[:3]}")
    print(f"   parent RSS: start {rss[0] / 2**20:.1f} MB, after the first {chunk} {rss[1] / 2**20:.1f} MB, "
          f"end {rss[-1] / 2**20:.1f} MB")


def main() -> None:
    quick = "--quick" in sys.argv
    if "--soak" in sys.argv:
        bench_soak(1000 if quick else 10000, 0.5)
        return
    print(f"executor benchmarks ({psutil.cpu_count()} CPUs{', quick' if quick else ''})")
    bench_throughput(2000 if quick else 10000)
    bench_batching(128 if quick else 512, 8 if quick else 32)
    bench_soak(1000 if quick else 10000, 0.5)


if __name__ == "__main__":
    main()
