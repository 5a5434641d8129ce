"""The self-training study's numbers from its saved rows: the results JSON, the tables and
report.html (`bench/selftrain_study.py` writes the rows; this reads only them and the runs'
metrics, so a summary can be redone at any time without running a model), and the archive
of those files committed beside the results JSON, so that a new machine can redo it too.

Every accuracy is a mean over (seed, question) cells with a 95 % percentile-bootstrap
interval over questions and seeds (`viprog.bootstrap`); gains are paired differences on
the same questions and seeds. The base few-shot arm and the larger frozen model depend on
no seed (greedy decoding of fixed weights): they are one row per question, paired with
every seed of the arm they are compared with.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import heldout
import numpy as np
from heldout import rows_path
from selftrain_study import ARMS, LARGE, StudyConfig

from viprog.bootstrap import bootstrap_ci, paired_difference
from viprog.runs import read_json, read_jsonl, write_jsonl_atomic, write_text_atomic

Cells = dict[tuple[str, int | None, int], dict[str, dict[str, Any]]]
#: where the lucky-guess and dedup rules' counts, and the truncation count, are read from
RUN_METRICS = ("filter/kept", "filter/samples", "filter/removed/", "train/over_max_length", "train/examples",
               "time/round_s", "time/sample_s", "time/train_s", "time/eval_s")


def load_cells(cfg: StudyConfig, root: Path) -> Cells:
    """(arm, seed, round) → {question id: row} for every saved cell."""
    cells: Cells = {}
    wanted = [(arm, seed, k) for arm in ARMS for seed in cfg.seeds for k in range(cfg.rounds + 1)]
    for arm, seed, k in [*wanted, (LARGE, None, 0)]:
        path = rows_path(root, arm, seed, k)
        if path.exists():
            cells[(arm, seed, k)] = {r["question_id"]: r for r in read_jsonl(path)}
    return cells


def matrix(cells: Cells, arm: str, seeds: tuple[int | None, ...], k: int, questions: list[str]) -> np.ndarray | None:
    """Rewards (seeds with this cell × questions); a question without a row scores 0. None: no cell."""
    found = [cells[(arm, s, k)] for s in seeds if (arm, s, k) in cells]
    if not found:
        return None
    return np.array([[float(rows.get(q, {}).get("reward") or 0.0) for q in questions] for rows in found])


def summarise(cfg: StudyConfig, root: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The results dict (also written to root/study.json), with the tables and report.html."""
    cells = load_cells(cfg, root)
    base_key = next(((a, s, k) for (a, s, k) in cells if a == "a_base_fewshot"), None)
    if base_key is None:
        raise RuntimeError(f"{root}: no round-0 rows yet; run the study first")
    questions = sorted(cells[base_key])
    types = {q: cells[base_key][q].get("question_type") or "?" for q in questions}
    seeds: tuple[int | None, ...] = tuple(cfg.seeds)
    est = {"draws": cfg.draws}
    arms: dict[str, dict[str, Any]] = {}
    by_type: dict[str, dict[str, Any]] = {}
    scores: dict[tuple[str, int], np.ndarray] = {}
    for arm in ARMS:
        for k in range(cfg.rounds + 1):
            m = matrix(cells, arm, seeds, k, questions)
            if m is None:
                continue
            if arm == "a_base_fewshot":
                m = m[:1]  # the base is greedy with fixed weights: its seeds' cells are copies of one run
            scores[(arm, k)] = m
            arms.setdefault(arm, {})[f"round_{k}"] = {**bootstrap_ci(m, **est).to_json(), "seeds": m.shape[0]}
            by_type.setdefault(arm, {})[f"round_{k}"] = {
                t: {**bootstrap_ci(m[:, cols], **est).to_json(), "n": len(cols)}
                for t in sorted(set(types.values())) for cols in [[i for i, q in enumerate(questions) if types[q] == t]]}
    base = scores[("a_base_fewshot", 0)][:1]  # seed-independent: one row per question
    gains = {arm: {f"round_{k}": paired_difference(m, base, **est).to_json() for (a, k), m in scores.items()
                   if a == arm and k >= 1} for arm in ARMS if arm != "a_base_fewshot"}
    lora_only = lora_only_gain(gains)
    large = matrix(cells, LARGE, (None,), 0, questions)
    candidates = [(float(m.mean()), arm, k) for (arm, k), m in scores.items() if k >= 1]
    best = max(candidates, default=None)
    result: dict[str, Any] = {
        "task": cfg.task,
        "n_questions": len(questions),
        "seeds": list(cfg.seeds),
        "rounds": cfg.rounds,
        "arms": arms,
        "gain_lora_only": lora_only,
        "fewshot_1_5b": bootstrap_ci(large, **est).to_json() if large is not None else None,
        "large_policy": cfg.large_policy,
        "best_selftrained": ({"arm": best[1], "round": best[2], **bootstrap_ci(scores[best[1:]], **est).to_json()}
                             if best is not None else None),
        "best_minus_1_5b": (paired_difference(scores[best[1:]], large, **est).to_json()
                            if best is not None and large is not None else None),
        "gains_vs_round_0": gains,
        "library_effects": paired_effects(LIBRARY_PAIRS, cells, seeds, cfg.rounds, questions, base, est),
        "restart_effects": paired_effects(RESTART_PAIRS, cells, seeds, cfg.rounds, questions, base, est),
        "round_effects": round_effects(cells, seeds, cfg.rounds, questions, est),
        "by_type": by_type,
        "arm_descriptions": {**ARMS, LARGE: f"{cfg.large_policy}, few-shot prompt, frozen"},
        "runs": run_metrics(root),
        "analysis": analysis(root, cells),
        "settings": run_settings(cfg),
        "run_eval_library": getattr(cfg, "run_eval_library", True),
        "meta": meta,
        "note": "bootstrap over questions and seeds; accuracies in [0, 1]; best_selftrained is the maximum over "
                "arms b-e and rounds >= 1, so it is optimistic (a selection over cells)",
    }
    write_outputs(root, cfg, result, cells, scores, large)
    return result


#: the arms the LoRA-only target reads: the adapter without library programs, under either evaluation prompt
LORA_ONLY_ARMS = ("c_lora_train_prompt", "c_lora_fewshot")
#: the rounds it reads ("by round 2 or 3"); a study with fewer rounds falls back to those it has
LORA_ONLY_ROUNDS = (2, 3)


def lora_only_gain(gains: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """The LoRA-only gain over the base as the issue's target defines it: the best paired gain of
    an arm-c cell (either evaluation prompt, no library) at round 2 or 3 — or at the rounds the
    study has, when it has neither. Every cell it chose from is listed beside it, since the
    maximum over cells is a selection and reads optimistic."""
    cells = {(arm, int(r.removeprefix("round_"))): g for arm in LORA_ONLY_ARMS for r, g in gains.get(arm, {}).items()}
    wanted = {c: g for c, g in cells.items() if c[1] in LORA_ONLY_ROUNDS} or cells
    if not wanted:
        return None
    (arm, k), best = max(wanted.items(), key=lambda item: item[1]["mean"])
    return {**best, "arm": arm, "round": k, "versus": "a_base_fewshot round_0",
            "selected_from": {f"{a} round_{r}": {"mean": g["mean"], "ci95": g["ci95"]}
                              for (a, r), g in sorted(wanted.items())},
            "note": "the best of the listed cells (arm c, no library, rounds 2-3 where present): a selection"}


#: what library programs in the prompt add: (with them, without them) for the adapter and for the base
LIBRARY_PAIRS = {"adapter": ("d_lora_fewshot_library", "c_lora_fewshot"),
                 "base": ("b_base_fewshot_library", "a_base_fewshot")}
#: what --restart-from-base changes: (restarting, continuing), under the same evaluation prompt
RESTART_PAIRS = {"fewshot": ("e_restart_fewshot", "c_lora_fewshot"),
                 "fewshot_library": ("e_restart_fewshot_library", "d_lora_fewshot_library")}


def paired_effects(pairs: dict[str, tuple[str, str]], cells: Cells, seeds: tuple[int | None, ...], rounds: int,
                   questions: list[str], base: np.ndarray, est: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per pair and round, the paired difference (first arm − second) on the seeds whose cells
    both arms have: what library programs in the prompt add to the round-k adapter (d − c) and
    to the base model (b − a, against `base`, the one greedy round-0 run every seed shares),
    and what restarting from the base changes (e − c, e − d)."""
    out: dict[str, dict[str, Any]] = {}
    for name, (shown, plain) in pairs.items():
        for k in range(1, rounds + 1):
            both = tuple(s for s in seeds if (shown, s, k) in cells
                         and (plain == "a_base_fewshot" or (plain, s, k) in cells))
            if not both:
                continue
            control = base if plain == "a_base_fewshot" else matrix(cells, plain, both, k, questions)
            out.setdefault(name, {})[f"round_{k}"] = {
                **paired_difference(matrix(cells, shown, both, k, questions), control, **est).to_json(),
                "seeds": list(both), "with": shown, "without": plain}
    return out


def round_effects(cells: Cells, seeds: tuple[int | None, ...], rounds: int, questions: list[str],
                  est: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per arm and round k ≥ 2, round k − round k−1, paired on the seeds that have both cells:
    whether one more round still moves an arm, or it has flattened."""
    out: dict[str, dict[str, Any]] = {}
    for arm in (a for a in ARMS if a != "a_base_fewshot"):
        for k in range(2, rounds + 1):
            both = tuple(s for s in seeds if (arm, s, k) in cells and (arm, s, k - 1) in cells)
            if not both:
                continue
            out.setdefault(arm, {})[f"round_{k}"] = {
                **paired_difference(matrix(cells, arm, both, k, questions), matrix(cells, arm, both, k - 1, questions),
                                    **est).to_json(), "seeds": list(both), "versus": f"round_{k - 1}"}
    return out


#: selftrain settings the study sets for each run itself (`held_out_run`, its arms)
SET_PER_RUN = ("task", "seed", "rounds", "run_name", "runs_dir", "resume", "overwrite", "eval_size", "eval_split",
               "eval_library", "base_prompt", "tuned_prompt", "restart_from_base")


def run_settings(cfg: StudyConfig) -> dict[str, Any]:
    """The selftrain settings of the study's runs, less what the study sets itself."""
    return heldout.shared_settings(cfg.selftrain, SET_PER_RUN)


def run_files(root: Path, pattern: str) -> list[Path]:
    """`pattern` under the study's runs/, then what the archive restored (`heldout.run_files`)."""
    return heldout.run_files(root, "runs", pattern)


def run_metrics(root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Per selftrain run and round: what the filter rules removed, truncation, seconds."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for path in run_files(root, "seed*/round_*/metrics.json"):
        metrics = read_json(path)
        out.setdefault(path.parent.parent.name, {})[path.parent.name] = {
            k: v for k, v in metrics.items() if any(k == p or (p.endswith("/") and k.startswith(p)) for p in RUN_METRICS)}
    return out


def analysis(root: Path, cells: Cells) -> dict[str, Any]:
    """What the accuracy numbers come from: the kept (training) programs of each run and round
    by question type, and each cell's outcomes by kind (right, wrong answer, or the error kind)."""
    kept: dict[str, dict[str, dict[str, int]]] = {}
    for path in run_files(root, "seed*/round_*/kept.jsonl"):
        counts: dict[str, int] = defaultdict(int)
        for row in read_jsonl(path):
            counts[row.get("question_type") or "?"] += 1
        kept.setdefault(path.parent.parent.name, {})[path.parent.name] = dict(sorted(counts.items()))
    outcomes: dict[str, dict[str, dict[str, int]]] = {}
    for (arm, seed, k), rows in sorted(cells.items(), key=str):
        counts = defaultdict(int)
        for row in rows.values():
            counts["right" if float(row.get("reward") or 0.0) >= 1.0 else row.get("error_kind") or "wrong answer"] += 1
        outcomes.setdefault(arm, {})[f"seed{seed}-round{k}" if seed is not None else f"round{k}"] = dict(counts)
    return {"kept_by_type": kept, "outcomes": outcomes}


def analysis_tables(result: dict[str, Any]) -> str:
    """Markdown: kept programs per question type (all runs and rounds summed), outcomes per cell."""
    kept, outcomes = result["analysis"]["kept_by_type"], result["analysis"]["outcomes"]
    lines: list[str] = []
    if kept:
        keys = [(run, r) for run in kept for r in kept[run]]
        types = sorted({t for run, r in keys for t in kept[run][r]} | set(next(iter(result["by_type"].values()),
                                                                             {}).get("round_0", {})))
        lines += ["", "kept programs (the training data) per question type:", "",
                  "| question type | " + " | ".join(f"{run} {r}" for run, r in keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {t} | " + " | ".join(str(kept[run][r].get(t, 0)) for run, r in keys) + " |" for t in types]
    kinds = sorted({kind for per in outcomes.values() for c in per.values() for kind in c} - {"right"})
    lines += ["", "outcomes per cell (questions):", "", "| cell | right | " + " | ".join(kinds) + " |",
              "|---" * (len(kinds) + 2) + "|"]
    for arm, per in outcomes.items():
        lines += [f"| {arm} {cell} | {c.get('right', 0)} | " + " | ".join(str(c.get(k, 0)) for k in kinds) + " |"
                  for cell, c in per.items()]
    return "\n".join(lines) + "\n"


def estimate_text(entry: dict[str, Any] | None) -> str:
    """An estimate's JSON as "mean [lo, hi]" in percent (– for none)."""
    if not entry:
        return "–"
    lo, hi = entry["ci95"]
    return f"{entry['mean']:.1%} [{lo:.1%}, {hi:.1%}]"


def tables(result: dict[str, Any]) -> str:
    """Markdown: accuracy per arm and round, then per question type at round 0 and the last round."""
    rounds = [f"round_{k}" for k in range(result["rounds"] + 1)]
    lines = [f"n = {result['n_questions']} questions × seeds {result['seeds']} ({result['task']})", "",
             "| arm | " + " | ".join(rounds) + " |", "|---" * (len(rounds) + 1) + "|"]
    for arm, per_round in result["arms"].items():
        lines.append(f"| {arm} | " + " | ".join(estimate_text(per_round.get(r)) for r in rounds) + " |")
    if result["fewshot_1_5b"]:
        lines.append(f"| {LARGE} ({result['large_policy']}) | {estimate_text(result['fewshot_1_5b'])} |"
                     + " |" * len(rounds[1:]))
    if result["gain_lora_only"]:
        gain = result["gain_lora_only"]
        chosen = f"{gain['arm']} round {gain['round']} − round 0, the best of {len(gain['selected_from'])} arm-c cells"
        lines += ["", f"gain, LoRA only ({chosen}): {estimate_text(gain)}"]
    if result["best_selftrained"]:
        b = result["best_selftrained"]
        lines.append(f"best self-trained: {b['arm']} round {b['round']}: {estimate_text(b)}")
    for key, what in (("library_effects", "library programs in the prompt"), ("restart_effects", "restart from base")):
        for name, per_round in (result.get(key) or {}).items():
            for r, e in per_round.items():
                lines.append(f"{what}, {name} ({e['with']} − {e['without']}), {r}, seeds "
                             f"{e['seeds']}: {e['mean']:+.1%} [{e['ci95'][0]:+.1%}, {e['ci95'][1]:+.1%}]")
    for arm, per_round in (result.get("round_effects") or {}).items():
        for r, e in per_round.items():
            lines.append(f"one more round, {arm} ({r} − {e['versus']}), seeds {e['seeds']}: "
                         f"{e['mean']:+.1%} [{e['ci95'][0]:+.1%}, {e['ci95'][1]:+.1%}]")
    last = rounds[-1]
    shown = [(arm, r) for arm in result["by_type"] for r in ("round_0", last) if r in result["by_type"][arm]]
    type_names = sorted({t for arm, r in shown for t in result["by_type"][arm][r]})
    lines += ["", "| question type | " + " | ".join(f"{a} {r}" for a, r in shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for t in type_names:
        lines.append(f"| {t} (n={result['by_type'][shown[0][0]][shown[0][1]][t]['n']}) | "
                     + " | ".join(f"{result['by_type'][a][r][t]['mean']:.0%}" for a, r in shown) + " |")
    return "\n".join(lines) + "\n" + analysis_tables(result)


def write_outputs(root: Path, cfg: StudyConfig, result: dict[str, Any], cells: Cells,
                  scores: dict[tuple[str, int], np.ndarray], large: np.ndarray | None) -> None:
    """study.json, table.md, rows.jsonl (every cell's rows) and report.html under `root`."""
    from viprog.report import svg_plot
    from viprog.runs import write_json_atomic

    write_json_atomic(root / "study.json", result)
    table = tables(result)
    write_text_atomic(root / "table.md", table)
    write_jsonl_atomic(root / "rows.jsonl", (row for key in sorted(cells, key=str) for row in cells[key].values()))
    base = float(scores[("a_base_fewshot", 0)].mean())
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for (arm, k), m in sorted(scores.items()):
        series[arm].append((k, float(m.mean())))
    for arm in ("b_base_fewshot_library", "c_lora_fewshot", "d_lora_fewshot_library", "e_restart_fewshot_library",
                "e_restart_fewshot"):
        if arm in series:  # at round 0 each of these is the base model under the base prompt
            series[arm].insert(0, (0, base))
    flat = {"a_base_fewshot": base, **({LARGE: float(large.mean())} if large is not None else {})}
    for name, value in flat.items():
        series[name] = [(k, value) for k in range(cfg.rounds + 1)]
    plot = svg_plot(dict(series), width=760, height=340, title=f"Self-training study on {cfg.task}: held-out "
                                                                f"accuracy per round ({result['n_questions']} questions)")
    arms = "".join(f"<li><b>{html.escape(a)}</b>: {html.escape(d)}</li>" for a, d in result["arm_descriptions"].items())
    page = html_page(f"viprog study {cfg.task}",
                     f"<h1>Self-training study: <code>{html.escape(cfg.task)}</code></h1>"
                     f"<p>{result['n_questions']} held-out questions, seeds {result['seeds']}, {cfg.rounds} round(s); "
                     f"load {html.escape(str(result['meta'].get('load_before')))}</p>{plot}"
                     f"<p>Flat lines: the base model and the larger frozen model, which no round changes. Means over "
                     f"questions and seeds; the tables give the 95 % bootstrap intervals.</p><ul>{arms}</ul>"
                     f"<pre>{html.escape(table)}</pre>")
    write_text_atomic(root / "report.html", page)


def html_page(title: str, body: str) -> str:
    """One self-contained HTML page (the run reports' style) around `body`."""
    from viprog.report import CSS

    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>")


# -- the archive: what a summary needs, committed beside the results JSON ------------------------
#: the run files the summary reads: the round metrics and kept programs (the analysis)
ARCHIVED = tuple(f"runs/*/round_*/{name}" for name in heldout.ARCHIVED_FILES)


def archive_key(cfg: StudyConfig) -> dict[str, Any]:
    """What must match for an archive's cells to belong to this study: the held-out set, how
    the runs evaluate, and every selftrain setting of its runs."""
    return {"task": cfg.task, "n_questions": cfg.n_questions, "run_eval_library": getattr(cfg, "run_eval_library", True),
            "settings": json.loads(json.dumps(run_settings(cfg), default=str))}


def write_archive(root: Path, cfg: StudyConfig, path: Path) -> Path:
    """The study's rows and its runs' metrics and kept programs at `path` (`heldout.write_archive`)."""
    return heldout.write_archive(root, path, archive_key(cfg), ARCHIVED, runs="runs")


def restore_archive(root: Path, cfg: StudyConfig, path: Path) -> int:
    """The archive at `path` back into a study folder without rows (`heldout.restore_archive`);
    a seed's restored rows are not continued by a new run (`Study.selftrain_run` refuses that)."""
    return heldout.restore_archive(root, path, archive_key(cfg), runs="runs", own="--results")
