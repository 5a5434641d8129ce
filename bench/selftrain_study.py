"""The self-training study: does the policy learn, and from what — its weights or its prompt?

One fixed held-out set (the first `n_questions` of the task's evaluation split, checked to
cover every question type of that split), seeds × rounds, and arms that take the two
mechanisms of a default run apart:

    a_base_fewshot             the base model, few-shot (round 0; no seed changes it: run once)
    b_base_fewshot_library     the base model, few-shot + the run's library of rounds 1..k (in context only)
    c_lora_train_prompt        the round-k adapter under the prompt it was trained on, no library
    c_lora_fewshot             the round-k adapter, few-shot, no library (round 0's prompt: the weights alone)
    d_lora_fewshot_library     the round-k adapter, few-shot + library (the default run's own evaluation)
    e_restart_fewshot_library  like d, but each round trains a fresh LoRA from the base on the whole library
    e_restart_fewshot          like c_lora_fewshot, on that restarting run (--no-run-eval-library)
    fewshot_large              a larger frozen model, few-shot (default Qwen2.5-Coder-1.5B), once

The rounds are `viprog.selftrain` runs (one continuing the adapter and one with
--restart-from-base per seed, under runs/); the other arms evaluate those runs' adapters
and libraries through the same rollout (`viprog.selftrain.rollout`). Every (arm, seed, round)
cell saves its per-question rows to rows/<arm>/seed<s>-round<k>.jsonl, and a cell whose rows
exist is not run again, so a killed study resumes where it stopped. At the end: a table of
mean ± 95 % bootstrap CI (over questions and seeds, `viprog.bootstrap`) per arm and round and
per question type, report.html with the curves, rows.jsonl, the results JSON, and beside it
its archive (NAME.rows.json.gz: every cell's rows and the runs' round metrics), which a new
machine restores into an out_dir without rows, so the summary survives the uncommitted runs/.

    python bench/selftrain_study.py                                    # the full study (hours)
    python bench/selftrain_study.py --n-questions 40 --seeds 0 --rounds 1 \\
        --results bench/results/selftrain_study_smoke.json             # a smoke run
    python bench/selftrain_study.py --task shapes-hard                 # the second table
    python bench/selftrain_study.py --selftrain.questions-per-round 24 # any selftrain option
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heldout import (
    Components,
    HeldOutSettings,
    archive_path,
    check_coverage,
    evaluate_cell,
    held_out_run,
    machine_load,
    rows_path,
    save_cell,
)

from viprog.errors import UsageError
from viprog.selftrain_config import SelfTrainConfig

log = logging.getLogger("viprog.study")

ARMS: dict[str, str] = {
    "a_base_fewshot": "base model, few-shot prompt (round 0)",
    "b_base_fewshot_library": "base model, few-shot + library programs of rounds 1..k (in context only)",
    "c_lora_train_prompt": "round-k adapter, the prompt it was trained on, no library",
    "c_lora_fewshot": "round-k adapter, few-shot prompt, no library",
    "d_lora_fewshot_library": "round-k adapter, few-shot + library (the default run's evaluation)",
    "e_restart_fewshot_library": "--restart-from-base: round-k adapter trained from the base on the whole library, "
                                 "few-shot + library",
    "e_restart_fewshot": "--restart-from-base: round-k adapter trained from the base on the whole library, "
                         "few-shot, no library (against c_lora_fewshot)",
}
#: the restart run's arm, by how the runs evaluate (StudyConfig.run_eval_library)
RESTART_ARM = {True: "e_restart_fewshot_library", False: "e_restart_fewshot"}
LARGE = "fewshot_large"
#: the default results JSON (of the shapes study; `StudyConfig.results_path` makes it per task)
RESULTS = "bench/results/selftrain_study.json"
#: arms the study can evaluate on a continuing run's adapters and libraries: (adapter?, prompt, library?)
EXTRA: dict[str, tuple[bool, str, bool]] = {
    "b_base_fewshot_library": (False, "few-shot", True),
    "c_lora_train_prompt": (True, "train", False),
    "c_lora_fewshot": (True, "few-shot", False),
    "d_lora_fewshot_library": (True, "few-shot", True),
}


@dataclass
class StudyConfig(HeldOutSettings):
    """A seeded self-training study with ablations (see the module docstring)."""

    arms: tuple[str, ...] = tuple(ARMS)
    """Arms to run (a_base_fewshot, and the arm the continuing runs evaluate, come with every seed). The restarting
    run is e_restart_fewshot_library when run_eval_library is True, e_restart_fewshot (no library) when False."""
    run_eval_library: bool = True
    """The continuing runs evaluate each round few-shot + library (arm d, as a default run does); False: few-shot
    alone (arm c_lora_fewshot, the weights alone) — d is then a cell of its own, run only when among the arms."""
    large_policy: str | None = "qwen2.5-coder-1.5b"
    """The larger frozen model evaluated few-shot once (None: skip)."""
    large_model: str | None = None
    """Model folder for large_policy when it is hf (None: the policy's own)."""
    out_dir: str = "runs/study"
    """Where the study's runs, rows, table and report go (a folder per task)."""
    results: str | None = RESULTS
    """Also write the results JSON here (None: only under out_dir; for a task other than shapes the default is
    bench/results/selftrain_study_<task>.json), and beside it the archive of every cell's rows and the runs' round
    metrics (NAME.rows.json.gz), from which a new machine can redo the summary."""
    restore: bool = True
    """When out_dir has no rows yet (a new machine), first restore the archive's cells: they are not run again."""
    replay: bool = False
    """A seed whose rows came from the archive but whose run did not (a new machine) is refused: a new run would
    mix two runs' rounds. With --replay its run is rebuilt instead (bench/study_replay.py): the archived rounds are
    retrained from their kept programs (not sampled or evaluated again), checked, and the later rounds run as
    usual — e.g. --rounds 3 on top of an archived two-round study."""
    replay_check: int = 32
    """Held-out questions the rebuilt adapter of the last archived round must answer with the archived programs
    (greedy) before its run is continued (0: no check)."""
    extra_rounds: tuple[int, ...] | None = None
    """Rounds at which the arms the study evaluates itself get a cell (None: every round): b, c under the training
    prompt, and whichever of c few-shot and d the runs do not evaluate (d under --no-run-eval-library, c few-shot
    otherwise, and with it gain_lora_only); e.g. --extra-rounds 2 for the last round alone, where a cell with
    library programs costs ~20 min of a 2-core CPU."""

    def results_path(self) -> str | None:
        """`results`, with the default made per task (so a shapes-hard study keeps its own file)."""
        if self.results == RESULTS and self.task != "shapes":
            return f"bench/results/selftrain_study_{self.task}.json"
        return self.results


# -- the cells ---------------------------------------------------------------------------------
def run_config(study: StudyConfig, root: Path, seed: int, restart: bool) -> SelfTrainConfig:
    """The selftrain config of one seed's continuing (or restarting) run."""
    return held_out_run(study.selftrain, task=study.task, seed=seed, rounds=study.rounds, n_questions=study.n_questions,
                        runs_dir=root / "runs", run_name=f"seed{seed}-{'restart' if restart else 'continue'}",
                        restart_from_base=restart, eval_library=study.run_eval_library)


class Study:
    """Runs the cells of a `StudyConfig` that have no rows yet, then summarises all of them."""

    def __init__(self, cfg: StudyConfig) -> None:
        from tqdm.auto import tqdm

        unknown = sorted(set(cfg.arms) - set(ARMS))
        if unknown:
            raise UsageError(f"unknown arm {unknown[0]!r}; arms: {', '.join(ARMS)}")
        if not cfg.seeds or cfg.rounds < 1 or cfg.n_questions < 1:
            raise UsageError("the study needs at least one seed, one round and one question")
        bad = sorted(set(cfg.extra_rounds or ()) - set(range(1, cfg.rounds + 1)))
        if bad:
            raise UsageError(f"--extra-rounds {bad[0]} is not a round of this study: give rounds within 1..{cfg.rounds}")
        if cfg.selftrain.library_shots < 1:
            raise UsageError("--selftrain.library-shots must be ≥ 1: the library arms show library programs")
        self.cfg = cfg
        self.root = Path(cfg.out_dir) / cfg.task
        self.failed: list[dict[str, Any]] = []
        self.components = Components()  # the 0.5B's, for the extra arms
        self.run_arm = "d_lora_fewshot_library" if cfg.run_eval_library else "c_lora_fewshot"
        self.restart_arm = RESTART_ARM[cfg.run_eval_library]
        other = RESTART_ARM[not cfg.run_eval_library]
        if other in cfg.arms and self.restart_arm not in cfg.arms:
            raise UsageError(f"{other} is the restarting run evaluated {'with' if not cfg.run_eval_library else 'without'}"
                             f" library programs: pass {'--run-eval-library' if not cfg.run_eval_library else '--no-run-eval-library'}"
                             f", or ask for {self.restart_arm}")
        results = cfg.results_path()
        if cfg.restore and results and archive_path(results).exists():
            from study_summary import restore_archive

            restored = restore_archive(self.root, cfg, archive_path(results))
            if restored:
                log.info("restored %d files from %s into %s (rows/, archived-runs/)", restored,
                         archive_path(results), self.root)
        self.bars = {arm: tqdm(total=len(cfg.seeds) * len(self._rounds(arm)), desc=arm,
                               unit="cell", position=i, leave=True, dynamic_ncols=True)
                     for i, arm in enumerate(a for a in ARMS if a != other
                                             and (a in cfg.arms or a in ("a_base_fewshot", self.run_arm)))}
        for arm, bar in self.bars.items():
            bar.update(sum(rows_path(self.root, arm, s, k).exists() for s in cfg.seeds for k in self._rounds(arm)))

    def _rounds(self, arm: str) -> Sequence[int]:
        if arm == "a_base_fewshot":
            return range(1)
        if arm in EXTRA and arm != self.run_arm and self.cfg.extra_rounds is not None:
            return sorted(set(self.cfg.extra_rounds))
        return range(1, self.cfg.rounds + 1)

    def _done(self, arm: str, seed: int) -> bool:
        return all(rows_path(self.root, arm, seed, k).exists() for k in self._rounds(arm))

    def _mark(self, arm: str) -> None:
        if arm in self.bars:
            self.bars[arm].update(1)

    # -- selftrain runs: arms a, d (continuing) and e (restarting) ------------------------------
    def selftrain_run(self, seed: int, restart: bool) -> Path | None:
        """Run (or resume) one seed's selftrain run and save the cells it evaluated; None when
        its replay failed the check (recorded in `failed`)."""
        from viprog.runs import read_json
        from viprog.selftrain import main as selftrain

        cfg = run_config(self.cfg, self.root, seed, restart)
        run_root = Path(cfg.runs_dir) / cfg.run_name
        arms = (self.restart_arm,) if restart else ("a_base_fewshot", self.run_arm)
        if all(self._done(arm, seed) for arm in arms):
            return run_root
        if (run_root / "replay.json").exists() and read_json(run_root / "replay.json")["differ"]:
            self.failed.append({"arm": arms[-1], "seed": seed, "round": None, "error": f"{run_root} is a replay that "
                                "failed its check (replay.json): not continued"})
            log.error("seed %d: %s", seed, self.failed[-1]["error"])
            return None
        saved = [k for k in range(1, self.cfg.rounds + 1) if rows_path(self.root, arms[-1], seed, k).exists()]
        if saved and not (run_root / "config.json").exists():
            if not self.cfg.replay:
                raise UsageError(f"{arms[-1]} seed {seed} has rows for round(s) {saved} (restored from the archive) but "
                                 f"no run folder {run_root}: a new run would mix two runs' rounds; pass --replay to "
                                 f"retrain them from the archive's kept programs, leave the seed out, keep --rounds at "
                                 f"{max(saved)}, or redo the whole study in a new --out-dir with its own --results")
            if not self.replay(cfg, run_root, arms[-1], seed, saved):
                return None
            cfg = dataclasses.replace(cfg, resume=True)
        first = self.round_0(restart)
        if first is not None and first.parent != run_root and not (run_root / "round_0").exists():
            shutil.copytree(first, run_root / "round_0")  # round 0 is the base model, greedy: the same for every run
        check_eval_library(run_root, cfg.eval_library)
        self.close()  # one copy of the model at a time: the run loads its own
        log.info("seed %d: %s run in %s", seed, "restart-from-base" if restart else "continuing", run_root)
        selftrain(cfg)
        from viprog.runs import read_json, read_jsonl

        for k in range(self.cfg.rounds + 1):
            arm = arms[0] if restart or k == 0 else arms[1]
            if (restart and k == 0) or rows_path(self.root, arm, seed, k).exists():
                continue
            shown = read_json(run_root / f"round_{k}" / "eval.metrics.json").get("eval/library")
            if k > 0 and shown is not None and shown != cfg.eval_library:
                log.warning("%s round %d was evaluated %s library programs: not saved as %s", run_root, k,
                            "with" if shown else "without", arm)
                continue
            save_cell(self.root, arm, seed, k, read_jsonl(run_root / f"round_{k}" / "eval.jsonl"))
            self._mark(arm)
        return run_root

    def replay(self, cfg: SelfTrainConfig, run_root: Path, arm: str, seed: int, saved: list[int]) -> bool:
        """Rebuild `run_root` from the archive, retrain its rounds `saved`, and check the last
        round's adapter against the archived rows of `arm` (StudyConfig.replay); the outcome
        goes to run_root/replay.json. False (recorded in `failed`) when the check fails."""
        import study_replay

        from viprog.library import Library
        from viprog.runs import Run, read_jsonl, write_json_atomic
        from viprog.selftrain import main as selftrain

        last, cells = max(saved), {k: rows_path(self.root, arm, seed, k) for k in saved}
        study_replay.rebuild(self.root, run_root, cells)
        log.info("seed %d: replaying %s from the archive: retraining the adapters of rounds 1..%d", seed,
                 run_root.name, last)
        self.close()
        selftrain(dataclasses.replace(cfg, rounds=last))
        result: dict[str, Any] = {"rounds": saved, "questions": 0, "same_programs": 0, "differ": []}
        n = min(self.cfg.replay_check, self.cfg.n_questions)
        if n:
            run, check_cfg = Run(run_root), dataclasses.replace(cfg, eval_size=n)
            library = Library(Library.collect(run, range(1, last + 1))) if cfg.eval_library else None
            rows = evaluate_cell(check_cfg, run_root, last, "replay-check", adapter=run.latest_adapter(before=last + 1),
                                 style="few-shot", library=library, parts=self._components(check_cfg))
            result |= study_replay.compare(rows, read_jsonl(cells[last]))
        write_json_atomic(run_root / "replay.json", result)
        if result["differ"]:
            self.failed.append({"arm": arm, "seed": seed, "round": last,
                                "error": study_replay.check_message(run_root.name, last, result)})
            log.error(self.failed[-1]["error"])
            return False
        log.info("seed %d: the replayed round-%d adapter wrote the archived program for all %d checked questions",
                 seed, last, result["questions"])
        return True

    def round_0(self, restart: bool) -> Path | None:
        """A finished round 0 for a new run to start from: the first seed's continuing run's,
        or, for a restarting run when that run came from the archive (a new machine), an
        archived round 0. Every run's round 0 is the same greedy base-model evaluation; a
        restarting run saves no cell of it, so its metrics alone let it skip the ~10 min."""
        first = self.root / "runs" / f"seed{self.cfg.seeds[0]}-continue" / "round_0"
        if (first / "eval.jsonl").exists():
            return first
        archived = sorted(self.root.glob("archived-runs/*-continue/round_0/metrics.json"))
        return archived[0].parent if restart and archived else None

    # -- arms b and c: the continuing run's adapters and libraries, evaluated here ---------------
    def _components(self, cfg: SelfTrainConfig) -> Any:
        return self.components.get(cfg)

    def extra_cells(self, seed: int, run_root: Path) -> None:
        from viprog.library import Library
        from viprog.runs import Run

        cfg = run_config(self.cfg, self.root, seed, restart=False)
        run = Run(run_root)
        for k in range(1, self.cfg.rounds + 1):
            for arm, (tuned, style, with_library) in EXTRA.items():
                if (arm not in self.cfg.arms or arm == self.run_arm or k not in self._rounds(arm)
                        or rows_path(self.root, arm, seed, k).exists()):
                    continue
                needs = run_root / ("config.json" if tuned else f"round_{k}/kept.jsonl")
                if not needs.exists():  # the run's cells came from the archive, its adapters did not
                    self.failed.append({"arm": arm, "seed": seed, "round": k, "error": f"{needs} is missing (the "
                                        "seed's cells came from the archive, its adapters and library did not)"})
                    log.error("cell %s seed %d round %d: %s", arm, seed, k, self.failed[-1]["error"])
                    continue
                if style == "train":
                    style = cfg.train_prompt
                library = Library(Library.collect(run, range(1, k + 1))) if with_library else None
                adapter = run.latest_adapter(before=k + 1) if tuned else None
                self.guarded(arm, seed, k, functools.partial(
                    evaluate_cell, cfg, run_root, k, f"study-{arm}", adapter=adapter, style=style, library=library,
                    parts=self._components(cfg)))

    def guarded(self, arm: str, seed: int | None, k: int, fn: Callable[[], list[dict[str, Any]]]) -> None:
        """Run one cell; a failure is recorded (and retried by the next run), not fatal: one
        broken cell must not cost the hours of the others."""
        try:
            rows = fn()
        except Exception as exc:  # noqa: BLE001 - recorded in the results and in the log, the cell stays to do
            log.error("cell %s seed %s round %d failed: %s: %s", arm, seed, k, type(exc).__name__, exc)
            self.failed.append({"arm": arm, "seed": seed, "round": k, "error": f"{type(exc).__name__}: {exc}"})
            return
        save_cell(self.root, arm, seed, k, rows)
        self._mark(arm)

    # -- the larger frozen model --------------------------------------------------------------
    def large_cell(self) -> str | None:
        """Evaluate the large policy few-shot once; returns why it could not be, or None."""
        if self.cfg.large_policy is None or rows_path(self.root, LARGE, None, 0).exists():
            return None
        from viprog.rollout import build

        self.close()  # the 0.5B's memory first
        cfg = dataclasses.replace(run_config(self.cfg, self.root, self.cfg.seeds[0], restart=False),
                                  policy=self.cfg.large_policy, model=self.cfg.large_model)
        try:
            parts = build(cfg)
        except UsageError as exc:
            log.warning("the large policy %s is not evaluated: %s", self.cfg.large_policy, exc)
            return str(exc)
        try:
            self.guarded(LARGE, None, 0, functools.partial(evaluate_cell, cfg, self.root / "runs" / "large-fewshot", 0,
                                                           "study-large", adapter=None, style="few-shot",
                                                           library=None, parts=parts))
        finally:
            parts.close()
        return None

    def close(self) -> None:
        self.components.close()

    def run(self) -> str | None:
        check_coverage(self.cfg)
        try:
            for seed in self.cfg.seeds:
                run_root = self.selftrain_run(seed, restart=False)
                if run_root is not None:
                    self.extra_cells(seed, run_root)
                if self.restart_arm in self.cfg.arms:
                    self.selftrain_run(seed, restart=True)
            return self.large_cell()
        finally:
            self.close()


def check_eval_library(run_root: Path, wanted: bool) -> None:
    """A `UsageError` when the run at `run_root` evaluates its rounds otherwise than `wanted`
    (with or without library programs): its rounds' rows would be saved under the wrong arm."""
    from viprog.runs import read_json

    config = run_root / "config.json"
    saved = read_json(config).get("eval_library", True) if config.exists() else wanted
    if saved != wanted:
        raise UsageError(f"{run_root} evaluates its rounds {'with' if saved else 'without'} library programs; "
                         f"pass {'--run-eval-library' if saved else '--no-run-eval-library'} or use another --out-dir")


def main(argv: Sequence[str] | None = None) -> int:
    import tyro
    from study_summary import summarise

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = tyro.cli(StudyConfig, args=list(sys.argv[1:] if argv is None else argv))
    load_before, start = machine_load(), time.perf_counter()
    study = Study(cfg)
    large_missing = None if cfg.summary_only else study.run()
    for bar in study.bars.values():
        bar.close()
    meta = {"load_before": load_before, "load_after": machine_load(), "cpus": os.cpu_count(),
            "wall_s_this_process": round(time.perf_counter() - start, 1), "failed_cells": study.failed,
            "large_missing": large_missing}
    summary = summarise(cfg, study.root, meta)
    results = cfg.results_path()
    if results:
        from study_summary import write_archive

        from viprog.runs import write_json_atomic

        write_json_atomic(results, summary)
        log.info("results written to %s, rows and run metrics to %s", results,
                 write_archive(study.root, cfg, archive_path(results)))
    return 1 if study.failed else 0


if __name__ == "__main__":
    sys.exit(main())
