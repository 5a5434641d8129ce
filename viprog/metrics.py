"""Namespaced metrics of a self-training round (cleanrl style: `reward/mean`, `exec/…`).

Why its own module: the same numbers are computed for sampling and for evaluation, are
written to `metrics.json` / `metrics.jsonl`, read back by the report, and printed; one
place keeps their names consistent. Namespaces: `reward/`, `eval/`, `exec/`, `filter/`
(see `viprog.filtering`), `sample/` (tokens/s, programs/s), `train/`, `time/` (seconds
per phase), `memory/`.
"""

from __future__ import annotations

import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from viprog.executor.result import ERROR_KINDS


class PhaseTimer:
    """Seconds spent per phase: `with timer("sample"): ...` → `time/sample_s`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"time/{phase}_s": round(s, 3) for phase, s in self.seconds.items()}


def exec_metrics(rows: Sequence[dict[str, Any]], prefix: str = "exec") -> dict[str, float]:
    """Error rate overall and per kind, and mean run time, over rows with `error_kind`."""
    n = max(len(rows), 1)
    kinds = Counter(r.get("error_kind") for r in rows if r.get("error_kind"))
    out: dict[str, float] = {f"{prefix}/error_rate": sum(kinds.values()) / n}
    for kind in ERROR_KINDS:
        out[f"{prefix}/error_rate/{kind}"] = kinds.get(kind, 0) / n
    out[f"{prefix}/seconds_mean"] = sum(float(r.get("seconds", 0.0)) for r in rows) / n
    return out


def reward_metrics(rows: Sequence[dict[str, Any]], prefix: str = "reward") -> dict[str, float]:
    rewards = [float(r["reward"]) for r in rows]
    n = max(len(rewards), 1)
    return {f"{prefix}/mean": sum(rewards) / n, f"{prefix}/max_frac": sum(r >= 1.0 for r in rewards) / n}


def sampling_metrics(seconds: float, programs: int, tokens: int | None, prefix: str = "sample") -> dict[str, float]:
    """Throughput of a sampling phase (tokens/s only when the policy has a tokenizer)."""
    out = {f"{prefix}/seconds": round(seconds, 3), f"{prefix}/programs": programs,
           f"{prefix}/programs_per_s": programs / max(seconds, 1e-9)}
    if tokens is not None:
        out[f"{prefix}/tokens"] = tokens
        out[f"{prefix}/tokens_per_s"] = tokens / max(seconds, 1e-9)
    return out


def task_metrics(task_report: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Flatten a `Task.metrics` report: `eval/accuracy`, `eval/accuracy/<question type>`."""
    out: dict[str, float] = {f"{prefix}/accuracy": float(task_report["accuracy"]), f"{prefix}/n": task_report.get("n", 0)}
    for qtype, acc in (task_report.get("accuracy_by_type") or {}).items():
        out[f"{prefix}/accuracy/{qtype}"] = float(acc)
    for key, value in task_report.items():  # task-specific extras (mean IoU, ...)
        if key not in ("accuracy", "n", "accuracy_by_type", "errors") and isinstance(value, (int, float)):
            out[f"{prefix}/{key}"] = float(value)
    return out


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process and of its finished children, in MB."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # ru_maxrss: KiB on Linux, bytes on macOS
    return {
        "memory/peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1),
        "memory/peak_children_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale, 1),
    }


def summary_line(k: int, metrics: dict[str, Any]) -> str:
    """One human line per round for the log."""
    parts = [f"round {k}"]
    for key, fmt in (("eval/accuracy", "eval acc {:.1%}"), ("reward/mean", "train reward {:.2f}"),
                     ("filter/kept", "kept {:.0f}"), ("exec/error_rate", "exec errors {:.0%}"),
                     ("time/round_s", "{:.0f} s")):
        if key in metrics:
            parts.append(fmt.format(metrics[key]))
    return ", ".join(parts)
