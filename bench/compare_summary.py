"""The comparison's numbers from its saved cells: the results JSON, table.md, report.html and
rows.jsonl (`bench/selftrain_compare.py` writes the cells; this reads only them and the runs'
metrics, so a summary can be redone at any time without running a model).

Every accuracy is a mean over (seed, question) cells with a 95 % percentile-bootstrap
interval over questions and seeds (`viprog.bootstrap`). Differences — a variant against the
first one at the same round, and a variant's round against its previous round (does it still
rise?) — are paired on the same questions and seeds, over the seeds both sides have.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import heldout
from heldout import rows_path
from selftrain_compare import TRAINED, VARIANTS, CompareConfig, arms, untrained
from study_summary import estimate_text, html_page, matrix

from viprog.bootstrap import bootstrap_ci, paired_difference
from viprog.runs import read_json, read_jsonl, write_json_atomic, write_jsonl_atomic, write_text_atomic

Cells = dict[tuple[str, int, int], dict[str, dict[str, Any]]]
#: what each run's round metrics contribute: the budget, what was kept and trained, seconds, memory,
#: and for GRPO the share of groups whose rewards were all equal (no advantage, no gradient)
RUN_METRICS = ("sample/programs", "reward/mean", "exec/error_rate", "filter/kept", "train/examples", "train/steps",
               "corrections/examples", "corrections/steps", "grpo/frac_reward_zero_std", "grpo/kl",
               "time/round_s", "time/sample_s", "time/train_s", "time/eval_s", "memory/peak_rss_mb")


def load_cells(cfg: CompareConfig, root: Path) -> Cells:
    """(variant, seed, round) → {question id: row} for every saved cell."""
    cells: Cells = {}
    for variant in arms(cfg):
        for seed in cfg.seeds:
            for k in range(cfg.rounds + 1):
                path = rows_path(root, variant, seed, k)
                if path.exists():
                    cells[(variant, seed, k)] = {r["question_id"]: r for r in read_jsonl(path)}
    return cells


def paired(cells: Cells, control: tuple[str, int], treated: tuple[str, int], seeds: tuple[int, ...],
           questions: list[str], draws: int) -> dict[str, Any] | None:
    """treated − control, each a (variant, round), paired over the seeds both have (None: none)."""
    common = tuple(s for s in seeds if (control[0], s, control[1]) in cells and (treated[0], s, treated[1]) in cells)
    if not common:
        return None
    a = matrix(cells, treated[0], common, treated[1], questions)
    b = matrix(cells, control[0], common, control[1], questions)
    return {**paired_difference(a, b, draws=draws).to_json(), "seeds": len(common)}


def run_metrics(cfg: CompareConfig, root: Path) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """variant → seed<s> → round_k → the round's RUN_METRICS (what exists of them), from this
    machine's runs and, for the runs it does not have, the archive's."""
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for variant in cfg.variants:
        for path in heldout.run_files(root, "", f"{variant}/seed*/round_*/metrics.json"):
            metrics = read_json(path)
            out.setdefault(variant, {}).setdefault(path.parent.parent.name, {})[path.parent.name] = {
                key: metrics[key] for key in RUN_METRICS if key in metrics}
    return out


#: selftrain settings the bench sets for each run itself (`held_out_run`, `variant_config`)
SET_PER_RUN = ("task", "seed", "rounds", "run_name", "runs_dir", "resume", "overwrite", "algo", "corrections",
               "eval_size", "eval_split", "eval_library", "base_prompt", "tuned_prompt", "report", "preset")


def run_settings(cfg: CompareConfig) -> dict[str, Any]:
    """The selftrain settings every variant's runs share (less what the bench sets per run)."""
    return heldout.shared_settings(cfg.selftrain, SET_PER_RUN)


def archive_key(cfg: CompareConfig) -> dict[str, Any]:
    """What must match for an archive's cells to belong to this comparison: the task, the
    held-out set, the corrections file's content and the runs' settings."""
    digest = None
    if cfg.corrections is not None and Path(cfg.corrections).exists():
        digest = hashlib.sha256(Path(cfg.corrections).read_bytes()).hexdigest()
    return {"task": cfg.task, "n_questions": cfg.n_questions, "corrections_sha256": digest,
            "settings": json.loads(json.dumps(run_settings(cfg), default=str))}


def archive(cfg: CompareConfig, root: Path, path: Path) -> Path:
    """Every cell's rows and every run's round metrics and kept programs at `path`."""
    patterns = [f"{v}/seed*/round_*/{name}" for v in VARIANTS for name in heldout.ARCHIVED_FILES]
    return heldout.write_archive(root, path, archive_key(cfg), patterns, runs="")


def restore(cfg: CompareConfig, root: Path, path: Path) -> int:
    """The archive at `path` back into a comparison folder without rows (a new machine). A
    folder with runs of its own but no rows yet (its first run was killed) is refused: the
    archive's cells and its runs would mix, and the archive rewritten from it would lose cells."""
    from viprog.errors import UsageError

    if not (root / "rows").exists() and (ran := sorted(root.glob("*/seed*/config.json"))):
        raise UsageError(f"{ran[0].parent} is a run of this machine, but {path} holds the comparison's cells: finish "
                         f"it in another --out-dir with --no-restore and a --name of its own, or remove {root}")
    return heldout.restore_archive(root, path, archive_key(cfg), runs="", own="--name")


def budget(budgets: dict[str, int], runs: dict[str, dict[str, dict[str, dict[str, Any]]]]) -> dict[str, Any]:
    """The planned programs per round of each variant and the numbers each round really sampled."""
    sampled = {variant: {seed: {r: m["sample/programs"] for r, m in rounds.items() if "sample/programs" in m}
                         for seed, rounds in per_seed.items()} for variant, per_seed in runs.items()}
    counts = {n for per_seed in sampled.values() for rounds in per_seed.values() for n in rounds.values()}
    return {"per_round": budgets, "equal": len(set(budgets.values())) == 1, "sampled": sampled,
            "sampled_equal": len(counts) <= 1}


def summarise(cfg: CompareConfig, root: Path, budgets: dict[str, int], meta: dict[str, Any]) -> dict[str, Any]:
    """The results dict (also written to root/compare.json), with the tables and report.html."""
    cells = load_cells(cfg, root)
    first = next((key for key in cells if key[2] == 0), None)
    if first is None:
        raise RuntimeError(f"{root}: no round-0 rows yet; run the comparison first")
    questions = sorted(cells[first])
    types = {q: cells[first][q].get("question_type") or "?" for q in questions}
    seeds, draws, base = cfg.seeds, cfg.draws, cfg.variants[0]
    names = arms(cfg)
    variants: dict[str, dict[str, Any]] = {}
    for variant in names:
        for k in range(cfg.rounds + 1):
            m = matrix(cells, variant, seeds, k, questions)
            if m is not None:
                variants.setdefault(variant, {})[f"round_{k}"] = {**bootstrap_ci(m, draws=draws).to_json(),
                                                                  "seeds": m.shape[0]}

    def per_round(control: Callable[[int], tuple[str, int]], treated: str) -> dict[str, Any]:
        return {f"round_{k}": d for k in range(1, cfg.rounds + 1)
                if (d := paired(cells, control(k), (treated, k), seeds, questions, draws))}

    def control(arm: str) -> str:  # what each arm is compared with at the same round
        return base + TRAINED if arm.endswith(TRAINED) else base

    differences = {f"{v} - {control(v)}": per_round(lambda k, v=v: (control(v), k), v)
                   for v in names if v != control(v)}
    gains = {v: per_round(lambda k, v=v: (untrained(v), 0), v) for v in names}
    steps = {v: per_round(lambda k, v=v: (v, k - 1), v) for v in names}  # an @train arm: from the base under its prompt
    last = max((k for (_, _, k) in cells), default=0)
    runs = run_metrics(cfg, root)
    result: dict[str, Any] = {
        "task": cfg.task,
        "n_questions": len(questions),
        "seeds": list(seeds),
        "rounds": cfg.rounds,
        "variants": variants,
        "differences": differences,
        "gains_vs_round_0": gains,
        "round_over_round": steps,
        "by_type_round": last,
        "by_type": by_type(cells, tuple(names), seeds, last, questions, types),
        "by_type_per_round": {f"round_{k}": by_type(cells, tuple(names), seeds, k, questions, types)
                              for k in range(last + 1)},
        "budget": budget(budgets, runs),
        "protocol": "each round evaluated greedily on the first n_questions of the task's evaluation split, "
                    "few-shot prompt without library programs, the same for every variant (the @train arms: each "
                    "round's adapter under the prompt it was trained on); round 0 is the base model few-shot, "
                    "evaluated once and shared",
        "variant_descriptions": {v: VARIANTS[untrained(v)][0] + (", each round's adapter under the prompt it was "
                                                                 "trained on, no library" if v != untrained(v) else "")
                                 for v in names},
        "corrections": cfg.corrections,
        "runs": runs,
        "settings": run_settings(cfg),
        "meta": meta,
        "note": "bootstrap over questions and seeds; accuracies in [0, 1]; differences are paired",
    }
    write_outputs(root, cfg, result, cells)
    return result


def by_type(cells: Cells, variants: tuple[str, ...], seeds: tuple[int, ...], k: int, questions: list[str],
            types: dict[str, str]) -> dict[str, dict[str, dict[str, float]]]:
    """Round k's accuracy per question type and variant (mean over seeds and questions, with n)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for variant in variants:
        m = matrix(cells, variant, seeds, k, questions)
        if m is None:
            continue
        for t in sorted(set(types.values())):
            cols = [i for i, q in enumerate(questions) if types[q] == t]
            out.setdefault(t, {"n": len(cols)})[variant] = round(float(m[:, cols].mean()), 6)
    return out


def tables(result: dict[str, Any]) -> str:
    """Markdown: accuracy per variant and round, the paired differences, and per question type."""
    rounds = [f"round_{k}" for k in range(result["rounds"] + 1)]
    b = result["budget"]
    lines = [(f"n = {result['n_questions']} held-out questions × seeds {result['seeds']} ({result['task']}); greedy, "
              "few-shot prompt without library programs, the same for every variant"
              + ("; the @train arms: under the prompt each adapter was trained on" if any(
                  v.endswith(TRAINED) for v in result["variants"]) else "")),
             "programs sampled per round: " + ", ".join(f"{v} {n}" for v, n in b["per_round"].items())
             + f" (equal: {'yes' if b['equal'] else 'NO'}; as sampled: {'yes' if b['sampled_equal'] else 'NO'})",
             "", "| variant | " + " | ".join(rounds) + " |", "|---" * (len(rounds) + 1) + "|"]
    for variant, per_round in result["variants"].items():
        lines.append(f"| {variant} | " + " | ".join(estimate_text(per_round.get(r)) for r in rounds) + " |")
    lines += ["", "| paired difference | " + " | ".join(rounds[1:]) + " |", "|---" * len(rounds) + "|"]
    named = [(name, d) for name, d in result["differences"].items()]
    named += [(f"{v}: round k − round k−1", d) for v, d in result["round_over_round"].items()]
    for name, per_round in named:
        lines.append(f"| {name} | " + " | ".join(estimate_text(per_round.get(r)) for r in rounds[1:]) + " |")
    variants = list(result["variants"])
    lines += ["", f"| question type (round {result['by_type_round']}) | " + " | ".join(variants) + " |",
              "|---" * (len(variants) + 1) + "|"]
    for t, row in result["by_type"].items():
        lines.append(f"| {t} (n={row['n']}) | " + " | ".join(f"{row[v]:.0%}" if v in row else "–" for v in variants)
                     + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any]) -> str:
    """The mean held-out accuracy of every arm per round, as an SVG, from the results dict alone:
    report.html shows it, and the bench writes it beside a committed results file, so the docs
    can show the plot of a comparison whose run folders are gone."""
    from viprog.report import svg_plot

    series = {v: sorted((int(r.removeprefix("round_")), e["mean"]) for r, e in result["variants"][v].items())
              for v in sorted(result["variants"])}  # the results file sorts its keys: the same plot from either
    seeds = result["seeds"]
    return svg_plot(series, width=760, height=340,
                    title=f"{result['task']}: held-out accuracy per round ({result['n_questions']} questions, "
                          f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''})")


def write_outputs(root: Path, cfg: CompareConfig, result: dict[str, Any], cells: Cells) -> None:
    """compare.json, table.md, rows.jsonl (every cell's rows) and report.html under `root`."""
    write_json_atomic(root / "compare.json", result)
    table = tables(result)
    write_text_atomic(root / "table.md", table)
    write_jsonl_atomic(root / "rows.jsonl", (row for key in sorted(cells) for row in cells[key].values()))
    described = "".join(f"<li><b>{html.escape(v)}</b>: {html.escape(d)}</li>"
                        for v, d in result["variant_descriptions"].items())
    write_text_atomic(root / "report.html", html_page(
        f"viprog compare {cfg.task}",
        f"<h1>Self-training variants: <code>{html.escape(cfg.task)}</code></h1>"
        f"<p>{result['n_questions']} held-out questions, seeds {result['seeds']}, {cfg.rounds} round(s); "
        f"load {html.escape(str(result['meta'].get('load_before')))}</p>{plot(result)}"
        f"<p>Means over questions and seeds; the tables give the 95 % bootstrap intervals and the paired "
        f"differences.</p><ul>{described}</ul><pre>{html.escape(table)}</pre>"))

