"""The held-out set that the self-training benches share, and its cells.

`bench/selftrain_study.py` (arms of one run) and `bench/selftrain_compare.py` (whole variants
of the run) measure on the same questions the same way: the first `n_questions` of the task's
evaluation split, checked to cover every question type; each (arm, seed, round) cell is the
greedy per-question rows saved under rows/<arm>/, written whole so a killed bench resumes at
the first missing cell. This module is that common ground, so neither bench imports the other's
machinery.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from viprog.errors import UsageError
from viprog.selftrain_config import SelfTrainConfig, embedded, resolve_config

log = logging.getLogger("viprog.heldout")


@dataclass
class HeldOutSettings:
    """What the study and the benches built on it share: a task, its held-out set, seeds,
    rounds, the bootstrap and the settings of every selftrain run."""

    task: str = "shapes"
    """Task (shapes, shapes-hard, or any other with train and test splits)."""
    n_questions: int = 300
    """Held-out questions: the first N of the evaluation split (they must cover all its question types)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the self-training runs (question order, sampling, training)."""
    rounds: int = 3
    """Self-training rounds after round 0."""
    draws: int = 10_000
    """Bootstrap resamples."""
    summary_only: bool = False
    """Run nothing: summarise the cells saved so far (tables, report, results JSON)."""
    selftrain: SelfTrainConfig = field(default_factory=embedded)
    """Settings of each run (the embedded preset's by default); the bench sets task, seed, rounds,
    eval set and prompt, run folders (and what it compares) itself."""


def rows_path(root: Path, arm: str, seed: int | None, k: int) -> Path:
    return root / "rows" / arm / (f"round{k}.jsonl" if seed is None else f"seed{seed}-round{k}.jsonl")


def cell_rows(rows: Sequence[dict[str, Any]], arm: str, seed: int | None, k: int) -> list[dict[str, Any]]:
    """The per-question record of one cell: what the statistics and the analysis read."""
    keep = ("question_id", "question_type", "reward", "error_kind", "program", "answer")
    return [{"arm": arm, "seed": seed, "round": k, **{key: r.get(key) for key in keep}} for r in rows]


def save_cell(root: Path, arm: str, seed: int | None, k: int, rows: Sequence[dict[str, Any]]) -> None:
    from viprog.runs import write_jsonl_atomic

    write_jsonl_atomic(rows_path(root, arm, seed, k), cell_rows(rows, arm, seed, k))


def held_out_run(selftrain: SelfTrainConfig, *, task: str, seed: int, rounds: int, n_questions: int,
                 runs_dir: Path, run_name: str, **options: Any) -> SelfTrainConfig:
    """`selftrain` as one run of a study: evaluated each round on the first `n_questions` of
    the task's evaluation split under the few-shot prompt, in runs_dir/run_name (resumed when
    that folder holds a run), no report of its own; `options` set the rest (e.g. the algorithm)."""
    return dataclasses.replace(selftrain, task=task, seed=seed, rounds=rounds, eval_size=n_questions, eval_split=None,
                               base_prompt="few-shot", tuned_prompt="few-shot", run_name=run_name,
                               runs_dir=str(runs_dir), resume=(runs_dir / run_name / "config.json").exists(),
                               overwrite=False, report=False, preset=None, **options)


def shared_settings(selftrain: SelfTrainConfig, set_per_run: Sequence[str]) -> dict[str, Any]:
    """The selftrain settings all of a bench's runs share: every field less `set_per_run`, what
    the bench sets for each run itself. It goes into the results and into the archive's key,
    so each bench keeps its own list (a changed list would refuse the archives it wrote)."""
    return {k: v for k, v in dataclasses.asdict(selftrain).items() if k not in set_per_run}


def evaluate_cell(cfg: SelfTrainConfig, run_root: Path, k: int, name: str, *, adapter: Path | None,
                  style: str, library: Any, parts: Any) -> list[dict[str, Any]]:
    """Greedy rows of the eval set under one (adapter, prompt, library), through the run's
    own rollout (its partial file under run_root/round_k makes a killed cell resume)."""
    from viprog.rollout import greedy_params, prompt_fn
    from viprog.runs import Run
    from viprog.selftrain import Context, round_rollout

    cfg = resolve_config(cfg, parts.task)
    eval_set = parts.task.examples(cfg.eval_split, limit=cfg.eval_size)
    ctx = Context(cfg, Run(run_root), parts, [], eval_set)
    ctx.run.round_dir(k).mkdir(parents=True, exist_ok=True)
    parts.policy.load_adapter(adapter)
    prompt = prompt_fn(parts.prompter, style, library, cfg.library_shots)
    rows, _ = round_rollout(ctx, k, eval_set, prompt, greedy_params(parts.prompter, cfg.max_new_tokens,
                                                                    seed=cfg.seed), name)
    ctx.run.artifact(k, f"{name}.partial.jsonl").unlink(missing_ok=True)
    return rows


class Components:
    """The policy and primitives that cells outside a selftrain run are evaluated with: built
    from the first config asked for, then reused; closed before a run loads its own policy, so
    two copies of the model never sit in memory at once."""

    def __init__(self) -> None:
        self.parts: Any = None

    def get(self, cfg: SelfTrainConfig) -> Any:
        from viprog.rollout import build

        if self.parts is None:
            self.parts = build(cfg)
        return self.parts

    def close(self) -> None:
        if self.parts is not None:
            self.parts.close()
            self.parts = None


def check_coverage(cfg: HeldOutSettings) -> None:
    """A `UsageError` when the first n_questions of the evaluation split miss a question type."""
    from viprog.tasks import TASKS

    task = TASKS.get(cfg.task)(data_dir=cfg.selftrain.data_dir)
    split = task.default_splits[1]
    every = {ex.question_type for ex in task.examples(split)}
    held_out = task.examples(split, limit=cfg.n_questions)
    missing = sorted(every - {ex.question_type for ex in held_out})
    if missing:
        raise UsageError(f"the first {cfg.n_questions} {split} questions of {cfg.task} miss the question type(s) "
                         f"{', '.join(missing)}; raise --n-questions")
    log.info("held-out set: %d %s questions of %s covering all %d question types", len(held_out), split, cfg.task,
             len(every))


def machine_load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


# -- the archive: a bench's cells and run metrics, committed beside its results JSON ------------
#: where restored run files go: beside, not inside, the run folders selftrain resumes from
ARCHIVED_RUNS = "archived-runs"
#: the run files an archive keeps of each round: its metrics and kept programs (never adapters)
ARCHIVED_FILES = ("metrics.json", "kept.jsonl")
#: where restored rows are written before they become rows/ in one rename
RESTORING = "rows.restoring"


def archive_path(results: str | Path) -> Path:
    """Where the archive of `results` (bench/results/NAME.json) goes: NAME.rows.json.gz beside it."""
    results = Path(results)
    return results.with_name(f"{results.stem}.rows.json.gz")


def write_archive(root: Path, path: Path, key: dict[str, Any], run_patterns: Sequence[str], runs: str) -> Path:
    """Every cell's rows under `root`, with the run files matching `run_patterns` (relative to
    root; metrics and kept programs, never adapters), as one gzipped JSON at `path`.

    Why: cells and runs live under an out_dir that is not committed and is gone on a new
    machine; with this file (a few hundred KB) the summary can be redone there, and the cells
    it holds are not evaluated again. `runs` is the folder under root that holds the run
    folders ("" when they sit in root itself); files restored earlier (archived-runs/) go back
    under it, so an archive never loses what it once held. No gzip timestamp and sorted keys:
    on the same zlib an unchanged bench writes the same bytes."""
    import gzip
    import json

    from viprog.runs import write_bytes_atomic

    files = {str(p.relative_to(root)): p.read_text(encoding="utf-8")
             for pattern in ("rows/*/*.jsonl", *run_patterns) for p in sorted(root.glob(pattern))}
    for name in ARCHIVED_FILES:
        for p in sorted((root / ARCHIVED_RUNS).glob(f"**/round_*/{name}")):
            files.setdefault(str(Path(runs) / p.relative_to(root / ARCHIVED_RUNS)), p.read_text(encoding="utf-8"))
    blob = json.dumps({**key, "files": files}, sort_keys=True, default=str).encode()
    write_bytes_atomic(path, gzip.compress(blob, mtime=0))
    return path


def settings_that_differ(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """The selftrain settings (top-level names) in which an archive's runs differ from ours.
    A setting the archive lacks was added after it was written: it matches when ours is at its
    default (the behaviour the old runs had); inside a nested group (grpo, train, ...) the same
    holds per field. GRPO's group does not count when both sides' runs all train with ReST (their
shared settings say algo "rest"): it is unread."""
    defaults = json.loads(json.dumps(dataclasses.asdict(SelfTrainConfig()), default=str))
    both_rest = ours.get("algo") == theirs.get("algo") == "rest"  # a bench that sets algo per run has none here

    def same(mine: Any, saved: Any, default: Any) -> bool:
        if isinstance(mine, dict) and isinstance(saved, dict):
            default = default if isinstance(default, dict) else {}
            return all(same(mine.get(k), saved[k], default.get(k)) if k in saved else mine.get(k) == default.get(k)
                       for k in set(mine) | set(saved))
        return mine == saved

    return [k for k in sorted(set(ours) | set(theirs)) if not (k == "grpo" and both_rest)
            and not (same(ours.get(k), theirs[k], defaults.get(k)) if k in theirs else ours.get(k) == defaults.get(k))]


def restore_archive(root: Path, path: Path, key: dict[str, Any], runs: str, own: str) -> int:
    """Bring the archive at `path` back into a folder that has no rows yet (a new machine); how
    many files. Rows go to rows/, run files to archived-runs/ — read by the summary, never taken
    by selftrain for finished rounds, so restored cells are not continued by a new run unawares
    (the benches refuse that). A folder with rows is this machine's own work and is left alone;
    an archive whose `key` (task, held-out size, settings) differs is refused, naming `own`, the
    option that gives this bench an archive of its own."""
    import gzip

    from viprog.runs import write_text_atomic

    if (root / "rows").exists():
        return 0
    saved = json.loads(gzip.decompress(path.read_bytes()))
    theirs = saved.get("settings", {})
    differ = [k for k in key if k != "settings" and saved.get(k) != key[k]]
    differ += [f"--selftrain.{k.replace('_', '-')}" for k in settings_that_differ(key.get("settings", {}), theirs)]
    if differ:
        raise UsageError(f"{path} holds cells with another {differ[0]} ({len(differ)} setting(s) differ); give this "
                         f"one {own} of its own (--no-restore with the same {own} would overwrite that archive)")
    targets = {}
    for rel in saved["files"]:
        parts = Path(rel).parts
        inside = not Path(rel).is_absolute() and ".." not in parts and len(parts) > 1
        if inside and parts[0] == "rows":
            targets[rel] = root / RESTORING / Path(*parts[1:])
        elif inside and (parts[0] == runs if runs else parts[0] not in ("rows", RESTORING, ARCHIVED_RUNS)):
            targets[rel] = root / ARCHIVED_RUNS / Path(*parts[1 if runs else 0:])
        else:
            raise UsageError(f"{path}: {rel!r} is not a rows or runs file of the bench's folder")
    shutil.rmtree(root / RESTORING, ignore_errors=True)  # what a killed restore left
    for rel, text in saved["files"].items():
        write_text_atomic(targets[rel], text)
    (root / RESTORING).mkdir(parents=True, exist_ok=True)
    (root / RESTORING).rename(root / "rows")  # the rows appear whole or not at all
    return len(saved["files"])


def run_files(root: Path, runs: str, pattern: str) -> list[Path]:
    """`pattern` (e.g. "seed*/round_*/metrics.json") under root/runs and, for the runs and rounds
    this machine does not have, under archived-runs/ (what `restore_archive` brought back)."""
    local = sorted((root / runs).glob(pattern))
    have = {p.relative_to(root / runs) for p in local}
    return local + [p for p in sorted((root / ARCHIVED_RUNS).glob(pattern))
                    if p.relative_to(root / ARCHIVED_RUNS) not in have]
