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
4. Mixed run (issue 14): innocent programs sharing workers with hostile ones (SIGSEGV by
   C-stack overflow, a generator's finally block in a cycle, 1,000 calls of 16 kB, an
   answer and trace past max_result_bytes): innocents affected, hostiles misblamed.
5. Streaming: 10,000 programs each returning ~1 MB through `run_iter`, results dropped as
   they come: the parent's RSS at start, after 1,000 and at the end.

Part 1 also runs the Executor side by side with its kernel layers and per-job collection
off, alternating rounds. Part 6 runs it side by side with the executor as it was before
issue 14 (commit d67dac6, extracted with `git archive` into a temporary folder): each in
its own Python process running the same driver, PYTHONPATH pointing at its own `viprog`,
alternating rounds (the ratio is the cost of issue 14's hardening and blame). Everything
is written to bench/results/executor.json with the machine's load.

Usage: python bench/executor.py [--quick] [--soak | --part N]
(quick: smaller counts; soak: only part 3, printed; part N: only that part, merged into the results)
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from multiprocessing import get_context
from pathlib import Path

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

    rates = side_by_side(n)
    sandbox_rate = rates["hardened"]
    print(f"   in-process exec      {exec_rate:9.0f} programs/s")
    print(f"   subprocess each      {sub_rate:9.1f} programs/s")
    print(f"   multiprocessing.Pool {pool_rate:9.0f} programs/s (no sandbox)")
    print(f"   Executor (sandboxed) {sandbox_rate:9.0f} programs/s")
    print(f"   Executor / subprocess = {sandbox_rate / sub_rate:.0f}x (target >= 100x); "
          f"Executor / exec = {sandbox_rate / exec_rate:.2f}x (target >= 0.2x)")
    RESULTS["throughput"] = {"programs": n, "exec_per_s": round(exec_rate), "subprocess_per_s": round(sub_rate, 1),
                             "pool_per_s": round(pool_rate), "executor_per_s": round(sandbox_rate)}


def _cpu_seconds(ex: Executor) -> float:
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in ex.worker_pids())


def side_by_side(n: int, rounds: int = 16) -> dict[str, float]:
    """Clean-program throughput with the kernel layers and the per-job generator closing and
    collection (hardened) against both off (the executor before issue 14 collected the
    young generation per job and had no layers: 'plain' is, if anything, faster than it).
    Rounds alternate A B B A so that a change of the machine's load falls on both; the
    median rate of each is compared, and the CPU time per program (workers + parent)."""
    variants = {"hardened": {}, "plain": {"layers": False, "collect": False}}
    samples: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    executors = {k: Executor(SlowFind(), workers=2, **v) for k, v in variants.items()}
    me = psutil.Process()
    per_round = max(200, n // rounds)
    try:
        for ex in executors.values():
            ex.run_many([Job(TRIVIAL, "i", IMAGE)] * 200)
        for r in range(rounds):
            for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
                ex = executors[name]
                before = _cpu_seconds(ex) + sum(me.cpu_times()[:2])
                start = time.perf_counter()
                results = ex.run_many([Job(TRIVIAL, "i", IMAGE)] * per_round)
                samples[name].append(per_round / (time.perf_counter() - start))
                cpu[name].append((_cpu_seconds(ex) + sum(me.cpu_times()[:2]) - before) / per_round * 1e6)
                assert all(r.answer == 2 for r in results)
    finally:
        for ex in executors.values():
            ex.close()
    rates = {k: statistics.median(v) for k, v in samples.items()}
    micros = {k: statistics.median(v) for k, v in cpu.items()}
    ratio = rates["hardened"] / rates["plain"]
    print(f"   side by side, median of {rounds} alternating rounds of {per_round}: hardened {rates['hardened']:.0f}/s, "
          f"layers and per-job collection off {rates['plain']:.0f}/s: ratio {ratio:.2f} (target >= 0.8); "
          f"CPU per program {micros['hardened']:.0f} us vs {micros['plain']:.0f} us "
          f"(ratio {micros['plain'] / micros['hardened']:.2f})")
    RESULTS["side_by_side"] = {"rounds": rounds, "programs_per_round": per_round,
                               "hardened_per_s": [round(x) for x in samples["hardened"]],
                               "plain_per_s": [round(x) for x in samples["plain"]],
                               "median_hardened_per_s": round(rates["hardened"]),
                               "median_plain_per_s": round(rates["plain"]), "ratio": round(ratio, 3),
                               "cpu_us_per_program": {k: round(v, 1) for k, v in micros.items()},
                               "cpu_ratio": round(micros["plain"] / micros["hardened"], 3)}
    return rates


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
    RESULTS["batching"] = {"programs": n, "one_by_one_s": round(one_by_one, 3), "executor_s": round(batched, 3),
                           "ideal_s": round(ideal, 3), "speedup": round(one_by_one / batched, 2)}


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
    RESULTS["soak"] = {"programs": n, "seconds": round(seconds, 1), "kinds": dict(sorted(kinds.items())),
                       "healthy_failed": len(wrong), "rss_mb": [round(rss[0] / 2**20, 1), round(rss[-1] / 2**20, 1)]}


HOSTILE = {  # issue 14's findings: program -> the error kind it must be blamed with
    "crash": "def execute_command(image):\n    t = ()\n    for i in range(300000):\n        t = (t,)\n"
             "    return hash(t)\n",
    "policy": "def gen(box):\n    try:\n        yield 1\n    finally:\n        try:\n            getattr(box, '_x')\n"
              "        except Exception:\n            pass\ndef execute_command(image):\n    box = []\n    g = gen(box)\n"
              "    box.append(g)\n    next(g)\n    keep = [[j] for j in range(50000)]\n    return len(keep)\n",
    "timeout": "def execute_command(image):\n    p = ImagePatch(image)\n    for i in range(1000):\n"
               "        p.find(str(i) + 'x' * 16000)\n    return 1\n",
    "output": "def execute_command(image):\n    p = ImagePatch(image)\n    for i in range(60):\n"
              "        p.find('y' * 16000 + str(i))\n    return 'z' * 900000\n",
}


def bench_mixed(innocents: int) -> None:
    print(f"\n4. mixed run: {innocents} innocent programs sharing 2 workers with {len(HOSTILE) * 4} hostile ones")
    rng = random.Random(2)
    jobs, expected = [], []
    for i in range(innocents):
        jobs.append(Job(GOOD.format(name=rng.choice(NAMES), i=i), f"img{i % 16}", IMAGE))
        expected.append(None)
    for kind, source in HOSTILE.items():
        for _ in range(4):
            at = rng.randrange(len(jobs))
            jobs.insert(at, Job(source, "img0", IMAGE))
            expected.insert(at, kind)
    with Executor(SlowFind(), workers=2, timeout=2.0, wall_timeout=6.0) as ex:
        truth = {i: r.answer for i, r in enumerate(ex.run_many([j for j, e in zip(jobs, expected) if e is None]))}
        start = time.perf_counter()
        results = ex.run_many(jobs)
        seconds = time.perf_counter() - start
    clean = iter(truth.values())
    affected = sum(1 for r, e in zip(results, expected) if e is None and r.answer != next(clean))
    misblamed = [f"{e}->{r.error_kind}" for r, e in zip(results, expected) if e is not None and r.error_kind != e]
    print(f"   {seconds:.1f} s; innocent programs affected: {affected} of {innocents} (target 0); "
          f"hostile programs blamed for another's doing or not blamed: {len(misblamed)} {misblamed[:4]} (target 0)")
    RESULTS["mixed"] = {"innocents": innocents, "hostile": {k: 4 for k in HOSTILE}, "seconds": round(seconds, 1),
                        "innocents_affected": affected, "hostile_misblamed": len(misblamed)}


def bench_stream(n: int) -> None:
    print(f"\n5. streaming: {n} programs each returning ~1 MB, read with run_iter and dropped")
    source = "def execute_command(image):\n    return 'r' * 990000\n"
    me = psutil.Process()
    with Executor(SlowFind(), workers=2) as ex:
        ex.run_many([Job(TRIVIAL, "i", IMAGE)] * 20)
        rss = [me.memory_info().rss]
        start = time.perf_counter()
        total = 0
        for k, (_, result) in enumerate(ex.run_iter(Job(source, "i", IMAGE) for _ in range(n))):
            total += len(result.answer)
            if k == min(999, n - 1):
                rss.append(me.memory_info().rss)
        seconds = time.perf_counter() - start
        rss.append(me.memory_info().rss)
    growth = (rss[-1] - rss[0]) / 2**20
    print(f"   {total / 2**30:.1f} GiB of answers in {seconds:.1f} s; parent RSS start {rss[0] / 2**20:.0f} MB, "
          f"after 1000 {rss[1] / 2**20:.0f} MB, end {rss[-1] / 2**20:.0f} MB: +{growth:.0f} MB (target <= +200 MB)")
    RESULTS["stream"] = {"programs": n, "answer_bytes": total, "seconds": round(seconds, 1),
                         "rss_mb": [round(x / 2**20, 1) for x in rss], "rss_growth_mb": round(growth, 1)}


BASELINE = "d67dac6"  # the last commit before issue 14's executor
DRIVER = """
import json, sys, time
import numpy as np, psutil
import viprog
from viprog.executor import Executor, Job
from viprog.primitives import Profile

class Find(Profile):
    name = "find"
    def find(self, calls):
        return [[[0, 0, 4, 4]] for _ in calls]

program, image = "def execute_command(image):\\n    return 1 + 1\\n", np.zeros((48, 64, 3), np.uint8)
me = psutil.Process()
with Executor(Find(), workers=2) as ex:
    ex.run_many([Job(program, "i", image)] * 200)
    print(json.dumps({"viprog": viprog.__file__}), flush=True)
    for line in sys.stdin:
        n = int(line)
        cpu = lambda: sum(sum(psutil.Process(p).cpu_times()[:2]) for p in ex.worker_pids()) + sum(me.cpu_times()[:2])
        before, start = cpu(), time.perf_counter()
        results = ex.run_many([Job(program, "i", image)] * n)
        seconds = time.perf_counter() - start
        assert all(r.answer == 2 for r in results)
        print(json.dumps({"per_s": n / seconds, "cpu_us": (cpu() - before) / n * 1e6}), flush=True)
"""


def _driver(root: Path) -> subprocess.Popen:
    """The DRIVER in a fresh Python whose `viprog` is the one under `root`."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env, cwd=root)
    where = json.loads(proc.stdout.readline())["viprog"]  # type: ignore[union-attr]
    assert Path(where).resolve().is_relative_to(root.resolve()), f"{root}: imported {where}"
    return proc


def bench_baseline(n: int, rounds: int = 16) -> None:
    """Clean-program throughput of this executor against the one at BASELINE, each in its own
    process with the same driver; rounds alternate A B B A, the medians are compared."""
    print(f"\n6. throughput against the executor before issue 14 (commit {BASELINE}), {rounds} alternating rounds")
    here = Path(__file__).resolve().parents[1]
    per_round = max(200, n // rounds)
    samples: dict[str, list[dict]] = {"current": [], "baseline": []}
    with tempfile.TemporaryDirectory(prefix="viprog-baseline-") as tmp:
        archive = subprocess.run(["git", "-C", str(here), "archive", BASELINE, "viprog"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        drivers = {"current": _driver(here), "baseline": _driver(Path(tmp))}
        try:
            for r in range(rounds):
                for name in (list(drivers) if r % 2 == 0 else list(drivers)[::-1]):
                    proc = drivers[name]
                    proc.stdin.write(f"{per_round}\n")  # type: ignore[union-attr]
                    proc.stdin.flush()  # type: ignore[union-attr]
                    samples[name].append(json.loads(proc.stdout.readline()))  # type: ignore[union-attr]
        finally:
            for proc in drivers.values():
                proc.stdin.close()  # type: ignore[union-attr]
                proc.wait(timeout=60)
    rates = {k: statistics.median(s["per_s"] for s in v) for k, v in samples.items()}
    micros = {k: statistics.median(s["cpu_us"] for s in v) for k, v in samples.items()}
    ratio = rates["current"] / rates["baseline"]
    print(f"   median of {rounds} rounds of {per_round}: current {rates['current']:.0f}/s, "
          f"{BASELINE} {rates['baseline']:.0f}/s: ratio {ratio:.2f} (target >= 0.8); CPU per program "
          f"{micros['current']:.0f} us vs {micros['baseline']:.0f} us (ratio {micros['baseline'] / micros['current']:.2f})")
    RESULTS["baseline"] = {"commit": BASELINE, "rounds": rounds, "programs_per_round": per_round,
                           "current_per_s": [round(s["per_s"]) for s in samples["current"]],
                           "baseline_per_s": [round(s["per_s"]) for s in samples["baseline"]],
                           "median_current_per_s": round(rates["current"]),
                           "median_baseline_per_s": round(rates["baseline"]), "ratio": round(ratio, 3),
                           "cpu_us_per_program": {k: round(v, 1) for k, v in micros.items()},
                           "cpu_ratio": round(micros["baseline"] / micros["current"], 3)}


RESULTS: dict = {}


def machine(quick: bool) -> dict:
    return {"cpus": psutil.cpu_count(), "load": [round(x, 2) for x in os.getloadavg()],
            "uptime": subprocess.run(["uptime"], check=True, capture_output=True, text=True).stdout.strip(),
            "quick": quick}


def main() -> None:
    quick = "--quick" in sys.argv
    if "--soak" in sys.argv:
        bench_soak(1000 if quick else 10000, 0.5)
        return
    parts = {
        1: lambda: bench_throughput(2000 if quick else 10000),
        2: lambda: bench_batching(128 if quick else 512, 8 if quick else 32),
        3: lambda: bench_soak(1000 if quick else 10000, 0.5),
        4: lambda: bench_mixed(72 if quick else 200),
        5: lambda: bench_stream(1000 if quick else 10000),
        6: lambda: bench_baseline(2000 if quick else 40000),
    }
    chosen = [int(sys.argv[sys.argv.index("--part") + 1])] if "--part" in sys.argv else list(parts)
    print(f"executor benchmarks ({psutil.cpu_count()} CPUs{', quick' if quick else ''})")
    out = Path(__file__).parent / "results" / "executor.json"
    merged = json.loads(out.read_text()) if out.exists() and len(chosen) < len(parts) else {}
    for part in chosen:
        before, known = machine(quick), set(RESULTS)
        parts[part]()
        for key in set(RESULTS) - known:
            RESULTS[key]["machine"] = {"before": before, "after": machine(quick)}
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({**merged, **RESULTS}, indent=2) + "\n")
    print(f"\nload {machine(quick)['uptime']}\nresults written to {out}")


if __name__ == "__main__":
    main()
