"""Self-training variants side by side on the study's held-out set: ReST against GRPO, plain
self-training against self-training with a correction pool (issue #16's two measurements).

Why its own bench: the study (`bench/selftrain_study.py`) takes one default run apart into
arms; this one runs whole variants of the run — another algorithm, or hand-written programs
mixed in — and asks which one is ahead at each round, on the same questions and seeds:

    rest              ReST, filtered behaviour cloning (the default)
    grpo              --algo grpo: TRL's GRPOTrainer, rewarded by the sandbox
    plain             ReST without corrections (the control of the corrections comparison)
    corrections       ReST with --corrections FILE
    grpo-corrections  --algo grpo with --corrections FILE

Every variant × seed is one `viprog.selftrain` run under runs/compare/<task>/<variant>/seed<s>,
evaluated after every round, greedily, on the study's held-out set (the first N test
questions, covering every question type) under one prompt for all — few-shot, no library
programs (`--no-eval-library`) — so what is compared is the weights. Round 0 is the base
model under that prompt, the same for every run: it is evaluated once and copied. Each
round's evaluation rows are saved as a cell (rows/<variant>/seed<s>-round<k>.jsonl, as the
study's), and a run whose cells all exist is not run again, so a killed comparison resumes.
The variants sample the same number of programs per round (questions_per_round ×
sampling.n): checked before anything runs, and the programs each round really sampled are
recorded beside it.

With --eval-train-prompt each round's adapter is also evaluated under the prompt it was trained
on (the study's arm c under the training prompt: ViReP's protocol), as the cells
<variant>@train: ReST trains under --selftrain.train-prompt, GRPO too with --grpo.loss-prompt
train (with `sampled` its loss is the sampling prompt's: few-shot here, with library
programs from round 2 on when --selftrain.library-shots > 0, so its @train cells are its
few-shot ones, without library, exact only where no library was in its prompts). Their
round 0 is the base model under that prompt (evaluated once for all); their gains are taken
against the shared few-shot round 0, the base model's best prompt.

    python bench/selftrain_compare.py --variants rest grpo                       # shapes, 3 seeds x 3 rounds
    python bench/selftrain_compare.py --task shapes-hard --variants plain corrections --rounds 6 \\
        --corrections bench/data/shapes_hard_corrections.jsonl
    python bench/selftrain_compare.py --variants rest grpo --summary-only       # tables from the saved cells

Output (`compare_summary.summarise`): table.md and report.html under runs/compare/<task>/,
rows.jsonl, and bench/results/selftrain_compare_<name>.json.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heldout import (
    ARCHIVED_RUNS,
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

log = logging.getLogger("viprog.compare")

#: variant → (what it is, the selftrain algorithm, whether it trains on --corrections)
VARIANTS: dict[str, tuple[str, str, bool]] = {
    "rest": ("ReST: filtered behaviour cloning (the default)", "rest", False),
    "grpo": ("--algo grpo: TRL's GRPOTrainer, the sandbox's reward", "grpo", False),
    "plain": ("ReST without corrections", "rest", False),
    "corrections": ("ReST with --corrections FILE", "rest", True),
    "grpo-corrections": ("--algo grpo with --corrections FILE (a supervised step on them before each round)",
                         "grpo", True),
}


@dataclass
class CompareConfig(HeldOutSettings):
    """Named self-training variants on the study's held-out set (see the module docstring)."""

    variants: tuple[str, ...] = ("rest", "grpo")
    """Variants to run, in order: the differences are each later one minus the first."""
    corrections: str | None = None
    """The corrections file of the *corrections variants (JSONL, `viprog corrections suggest`)."""
    eval_train_prompt: bool = False
    """Also evaluate each round's adapter under the prompt it was trained on, no library (cells <variant>@train)."""
    name: str | None = None
    """Name of the results file bench/results/selftrain_compare_<name>.json (None: the variants joined by _)."""
    out_dir: str = "runs/compare"
    """Where the runs, rows, table and report go (a folder per task)."""
    results_dir: str | None = "bench/results"
    """Also write the results JSON into this folder, and beside it the archive of every cell's rows and the runs'
    round metrics (None: only the summary under out_dir)."""
    restore: bool = True
    """When out_dir has no rows yet (a new machine), first restore the archive's cells: they are not run again."""

    @property
    def results_name(self) -> str:
        return self.name or "_".join(v.replace("-", "_") for v in self.variants)

    def results_path(self) -> Path | None:
        return Path(self.results_dir) / f"selftrain_compare_{self.results_name}.json" if self.results_dir else None


#: suffix of the arms that evaluate a variant's adapters under the prompt they were trained on
TRAINED = "@train"


def untrained(arm: str) -> str:
    """The variant an arm belongs to: `arm` without its @train suffix."""
    return arm.removesuffix(TRAINED)


def arms(cfg: CompareConfig) -> list[str]:
    """The arms the summary reads: the variants, then their @train arms when asked for."""
    return [*cfg.variants, *([v + TRAINED for v in cfg.variants] if cfg.eval_train_prompt else [])]


def trained_style(run: SelfTrainConfig) -> str:
    """The prompt style `run`'s adapters were trained under: --train-prompt, except for GRPO
    with --grpo.loss-prompt sampled, whose loss is taken under the prompt it samples with
    (the tuned prompt; any library programs in it are not part of the style)."""
    if run.algo == "grpo" and run.grpo.loss_prompt == "sampled":
        return run.tuned_prompt
    return run.train_prompt


def variant_config(cfg: CompareConfig, root: Path, variant: str, seed: int) -> SelfTrainConfig:
    """The selftrain config of one variant's run for one seed."""
    _, algo, corrected = VARIANTS[variant]
    return held_out_run(cfg.selftrain, task=cfg.task, seed=seed, rounds=cfg.rounds, n_questions=cfg.n_questions,
                        runs_dir=root / variant, run_name=f"seed{seed}", algo=algo, eval_library=False,
                        corrections=cfg.corrections if corrected else None)


def sampled_per_round(run: SelfTrainConfig) -> int:
    """Programs one round of `run` samples: questions × programs per question. GRPO trains on
    whole steps of --grpo.questions-per-step questions, so it samples none for a remainder."""
    questions = run.questions_per_round
    if run.algo == "grpo":
        questions -= questions % run.grpo.questions_per_step
    return questions * run.sampling.n


def check_budgets(configs: dict[str, SelfTrainConfig]) -> dict[str, int]:
    """Each variant's programs sampled per round; a `UsageError` unless they are all equal."""
    retrying = sorted(v for v, run in configs.items() if run.sampling.retry)
    if retrying:
        raise UsageError(f"variant {retrying[0]} has --selftrain.sampling.retry: its programs per round depend on "
                         "what the first draw solved, so the budgets could not be equal; leave it at 0 here")
    budgets = {variant: sampled_per_round(run) for variant, run in configs.items()}
    if len(set(budgets.values())) > 1:
        shown = ", ".join(f"{v} {n}" for v, n in budgets.items())
        raise UsageError(f"the variants would sample different numbers of programs per round ({shown}); make "
                         "--selftrain.questions-per-round a multiple of --selftrain.grpo.questions-per-step")
    return budgets


class Compare:
    """Runs the variants' runs that have cells to do, then summarises all saved cells."""

    def __init__(self, cfg: CompareConfig) -> None:
        unknown = sorted(set(cfg.variants) - set(VARIANTS))
        if unknown:
            raise UsageError(f"unknown variant {unknown[0]!r}; variants: {', '.join(VARIANTS)}")
        if len(set(cfg.variants)) != len(cfg.variants) or not cfg.variants:
            raise UsageError(f"--variants names each variant once, got {' '.join(cfg.variants) or 'none'}")
        if not cfg.seeds or cfg.rounds < 1 or cfg.n_questions < 1:
            raise UsageError("the comparison needs at least one seed, one round and one question")
        needs = [v for v in cfg.variants if VARIANTS[v][2]]
        if needs and cfg.corrections is None:
            raise UsageError(f"variant {needs[0]} trains on corrections: pass --corrections FILE")
        if not needs and cfg.corrections is not None:
            raise UsageError("--corrections is given but no variant uses it (corrections, grpo-corrections)")
        self.cfg = cfg
        self.root = Path(cfg.out_dir) / cfg.task
        self.budgets = check_budgets({v: variant_config(cfg, self.root, v, cfg.seeds[0]) for v in cfg.variants})
        self.failed: list[dict[str, Any]] = []
        self.components = Components()  # what the @train cells are evaluated with
        results = cfg.results_path()
        if cfg.restore and results and archive_path(results).exists():
            from compare_summary import restore

            restored = restore(cfg, self.root, archive_path(results))
            if restored:
                log.info("restored %d files from %s into %s (rows/, %s/)", restored, archive_path(results), self.root,
                         ARCHIVED_RUNS)

    def done(self, variant: str, seed: int) -> bool:
        return all(rows_path(self.root, variant, seed, k).exists() for k in range(self.cfg.rounds + 1))

    def share_round_0(self, variant: str, seed: int, run_root: Path) -> None:
        """Give a new run the finished round 0 (the base model, greedy, under the common prompt)
        so it is evaluated once for all: the round's folder from a run of this machine or of the
        archive, and its cell, which the archive's folders cannot rebuild (they hold no
        eval.jsonl)."""
        if not (run_root / "round_0").exists():
            sources = [folder / v / f"seed{s}" / "round_0" for folder in (self.root, self.root / ARCHIVED_RUNS)
                       for v in self.cfg.variants for s in self.cfg.seeds]
            if source := next((p for p in sources if (p / "metrics.json").exists()), None):
                shutil.copytree(source, run_root / "round_0")
        shared = self.first_cell(self.cfg.variants, 0)
        if shared is not None and not rows_path(self.root, variant, seed, 0).exists():
            from viprog.runs import read_jsonl

            save_cell(self.root, variant, seed, 0, read_jsonl(shared))

    def first_cell(self, arms: Sequence[str], k: int) -> Path | None:
        """The first saved round-k cell of `arms` over the seeds, or None."""
        paths = (rows_path(self.root, arm, seed, k) for arm in arms for seed in self.cfg.seeds)
        return next((p for p in paths if p.exists()), None)

    def check_restored(self) -> None:
        """A `UsageError` when a seed's cells came from the archive (its run is not on this
        machine) but cells of it are still to do that need the run: a new run would mix two
        runs' rounds, and an @train cell past round 0 needs the run's adapters (unless it is a
        copy of the few-shot cell)."""
        for variant in self.cfg.variants:
            for seed in self.cfg.seeds:
                run_root = self.root / variant / f"seed{seed}"
                if (run_root / "config.json").exists() or not rows_path(self.root, variant, seed, 1).exists():
                    continue
                missing = [k for k in range(self.cfg.rounds + 1) if not rows_path(self.root, variant, seed, k).exists()]
                adapters = trained_style(variant_config(self.cfg, self.root, variant, seed)) != "few-shot"
                trained = [k for k in range(1, self.cfg.rounds + 1) if self.cfg.eval_train_prompt and adapters
                           and not rows_path(self.root, variant + TRAINED, seed, k).exists()]
                if missing or trained:
                    cell, fix = ((f"{variant} round {missing[0]}", "keep --rounds at what the archive holds") if missing
                                 else (f"{variant}{TRAINED} round {trained[0]}", "leave out --eval-train-prompt"))
                    raise UsageError(f"{variant} seed {seed}: its cells came from the archive but its run is not in "
                                     f"{run_root}, and {cell} is still to do, which needs that run: {fix}, leave the "
                                     f"seed out, or start another --out-dir with --no-restore and a --name of its own")

    def one_run(self, variant: str, seed: int) -> None:
        """Run (or resume) one variant for one seed and save the cells it evaluated."""
        from viprog.runs import read_jsonl
        from viprog.selftrain import main as selftrain

        run = variant_config(self.cfg, self.root, variant, seed)  # now: whether to resume depends on the folder
        run_root = Path(run.runs_dir) / run.run_name
        self.share_round_0(variant, seed, run_root)
        log.info("%s, seed %d: run in %s", variant, seed, run_root)
        selftrain(run)
        for k in range(self.cfg.rounds + 1):
            if not rows_path(self.root, variant, seed, k).exists():
                save_cell(self.root, variant, seed, k, read_jsonl(run_root / f"round_{k}" / "eval.jsonl"))

    def trained_cells(self, variant: str, seed: int) -> None:
        """Save the cells <variant>@train of one run: each evaluated round's adapter under the
        prompt it was trained on (a copy of the few-shot cell when that is the prompt)."""
        from viprog.runs import Run, read_jsonl

        run = variant_config(self.cfg, self.root, variant, seed)
        run_root, style, arm = Path(run.runs_dir) / run.run_name, trained_style(run), variant + TRAINED
        for k in range(self.cfg.rounds + 1):
            if rows_path(self.root, arm, seed, k).exists() or not rows_path(self.root, variant, seed, k).exists():
                continue
            adapter = Run(run_root).latest_adapter(before=k + 1) if k else None
            shared = self.base_cell(style) if k == 0 else None
            if style == "few-shot":
                rows = read_jsonl(rows_path(self.root, variant, seed, k))
            elif shared is not None:  # round 0: the base model under this prompt, evaluated once for all
                rows = read_jsonl(shared)
            elif k and adapter is None:
                raise FileNotFoundError(f"{run_root}: no adapter of round {k} or earlier to evaluate as {arm}")
            else:
                log.info("%s, seed %d, round %d: %s under the %s prompt", arm, seed, k, adapter, style)
                rows = evaluate_cell(run, run_root, k, f"compare-{arm}", adapter=adapter, style=style, library=None,
                                     parts=self.components.get(run))
            save_cell(self.root, arm, seed, k, rows)

    def base_cell(self, style: str) -> Path | None:
        """A saved round-0 @train cell under `style` (the base model, greedy: the same for every
        seed and variant that trains under that prompt), or None."""
        same = [v + TRAINED for v in self.cfg.variants
                if trained_style(variant_config(self.cfg, self.root, v, self.cfg.seeds[0])) == style]
        return self.first_cell(same, 0)

    def close(self) -> None:
        self.components.close()

    def guarded(self, variant: str, seed: int, fn: Callable[[str, int], None]) -> None:
        """Run one step of one variant and seed; a failure is recorded (the next call retries
        it), not fatal: the other runs go on."""
        try:
            fn(variant, seed)
        except Exception as exc:  # noqa: BLE001 - recorded in the results and in the log
            step = getattr(fn, "__name__", "run")  # one_run (the selftrain run) or trained_cells
            log.error("%s seed %d, %s failed: %s: %s", variant, seed, step, type(exc).__name__, exc)
            self.failed.append({"variant": variant, "seed": seed, "step": step,
                                "error": f"{type(exc).__name__}: {exc}"})

    def run(self) -> None:
        from tqdm.auto import tqdm

        check_coverage(self.cfg)
        self.check_restored()
        todo = [(v, s) for s in self.cfg.seeds for v in self.cfg.variants]  # seed by seed: pairs complete early
        try:
            with tqdm(total=len(todo), desc="compare runs", unit="run", dynamic_ncols=True) as bar:
                for variant, seed in todo:
                    if not self.done(variant, seed):
                        self.close()  # the run loads its own policy
                        self.guarded(variant, seed, self.one_run)
                    if self.cfg.eval_train_prompt:
                        self.guarded(variant, seed, self.trained_cells)
                    bar.update()
        finally:
            self.close()


def run_compare(cfg: CompareConfig) -> int:
    """Run what is missing of `cfg`, summarise, write the results; the exit status."""
    from compare_summary import summarise

    load_before, start = machine_load(), time.perf_counter()
    compare = Compare(cfg)
    if not cfg.summary_only:
        compare.run()
    meta = {"load_before": load_before, "load_after": machine_load(),
            "wall_s_this_process": round(time.perf_counter() - start, 1), "failed_runs": compare.failed}
    summary = summarise(cfg, compare.root, compare.budgets, meta)
    results = cfg.results_path()
    if results:
        from compare_summary import archive, plot

        from viprog.runs import write_json_atomic, write_text_atomic

        write_json_atomic(results, summary)
        write_text_atomic(results.with_suffix(".svg"), plot(summary) + "\n")
        log.info("results written to %s (plot: .svg beside it), rows and run metrics to %s", results,
                 archive(cfg, compare.root, archive_path(results)))
    log.info("table, report and rows written under %s", compare.root)
    return 1 if compare.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    import tyro

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run_compare(tyro.cli(CompareConfig, args=list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())

