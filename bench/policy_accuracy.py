"""Few-shot accuracy of a policy on a task split: the round-0 baseline self-training must beat.

Greedy programs from the few-shot prompt (API section + the task's seed programs + the
query), extracted, run in the sandbox with the task's profile, scored by the task's
reward. `--style both` compares the completion prompt with the chat-template prompt on
the same questions, which is how the default style was chosen. `--api REV` (repeatable)
gives an arm whose API section carries the docstrings of `primitives/api.py` and
`primitives/patch.py` at git revision REV — `worktree`, the default, is the files as they are
— with everything else (questions, examples, decoding) equal: how the prompt's own-words API
text was checked against the text it replaced. `--seeds FILE` (repeatable; `task` is the task's own)
gives an arm whose few-shot examples are FILE's (JSONL in the correction pool's format: "query" and
"program" a line), everything else equal: how a change to the examples is measured before it goes
into tasks/seeds.py. `--merge` adds this run's arms to an existing
--json report, so arms run as separate processes at the same time (each with its own --out) land
in one file, every arm paired with the report's first.

Usage: python bench/policy_accuracy.py [--n 100] [--style completion|chat|both]
       [--task shapes] [--split val] [--policy qwen2.5-coder-0.5b] [--model PATH]
       [--engine llamacpp|hf]   (the embedded default's engine: quantisation's cost on accuracy)
       [--api worktree --api REV ...] [--seeds task --seeds FILE ...] [--json bench/results/NAME.json [--merge]] [--dry-run]
The API-text comparison as committed: --n 100 --engine llamacpp --api worktree --api f873141 --json
bench/results/prompt_text.json; the guarded-find examples: --split test --n 300 --engine llamacpp --seeds task
--seeds bench/data/shapes_seeds_guarded.jsonl --batch 16 --max-new-tokens 96 --json bench/results/fewshot_seeds.json
(9-13 min an arm here at load 1-4; the report pairs every arm with the first, question by question, and
`--paired-from ROWS --json REPORT` adds that to an existing report from its --out rows); `--engine hf` is the fp32
reference, some 5-10 min an arm quiet, over an hour at load 20; --dry-run gives the prompt
lengths alone).
Writes the programs and results as JSON lines to --out (default bench/policy_accuracy.jsonl),
and with --json the report (per arm: accuracy, per question type, errors, prompt length,
with `uptime` before and after).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from viprog.corrections import load_corrections
from viprog.errors import DataError, UsageError
from viprog.policy import Prompter, SamplingParams, extract_program, load_policy
from viprog.primitives.apidoc import api_section
from viprog.rollout import execute_programs, load_images
from viprog.tasks import TASKS

REPO = Path(__file__).resolve().parents[1]
#: the files whose docstrings make up the API section's text
API_FILES = ("primitives/api.py", "primitives/patch.py")


def docstrings_at(rev: str) -> dict[str, str]:
    """The API section's docstrings at git revision `rev`, by member name (`api_section(docs=)`):
    module-level functions, the ImagePatch class ("ImagePatch") and its methods."""
    docs: dict[str, str] = {}
    for path in API_FILES:
        source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True,
                                text=True).stdout
        for node in ast.parse(source).body:
            members = node.body if isinstance(node, ast.ClassDef) and node.name == "ImagePatch" else []
            for member in [node, *members]:
                if isinstance(member, (ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(member):
                    docs[member.name] = ast.get_docstring(member) or ""
    return docs


def seed_programs(task: Any, name: str, task_name: str) -> list[tuple[str, str]]:
    """The few-shot examples of arm `name`: the task's own ("task") or the lines of the file
    `name` that are for this task (checked as the correction pool's lines are)."""
    if name == "task":
        return task.seed_programs()
    try:
        return [(c.query, c.program) for c in load_corrections(name, task_name, option="--seeds")]
    except (UsageError, DataError) as exc:
        raise SystemExit(str(exc)) from None


def per_type(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Accuracy and count per question type."""
    groups: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        groups[str(row.get("question_type"))].append(row["reward"])
    return {k: {"accuracy": round(sum(v) / len(v), 3), "n": len(v)} for k, v in sorted(groups.items())}


def paired(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each arm of `rows` (an --out file's lines) minus the first, question by question: the
    mean difference with its 95 % bootstrap interval over the questions (`viprog.bootstrap`),
    and how many questions it wins and loses. One greedy run an arm, so the interval is over
    questions alone."""
    from viprog.bootstrap import paired_difference

    by_arm: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        by_arm[r["arm"]][r["question_id"]] = float(r["reward"] or 0.0)
    first, *others = list(by_arm)
    out = {}
    for arm in others:
        qs = sorted(set(by_arm[arm]) & set(by_arm[first]))
        a, b = [[by_arm[arm][q] for q in qs]], [[by_arm[first][q] for q in qs]]
        out[arm] = {"versus": first, "n": len(qs), **paired_difference(a, b).to_json(),
                    "wins": sum(x > y for x, y in zip(a[0], b[0])), "losses": sum(x < y for x, y in zip(a[0], b[0]))}
    return out


def merge_report(earlier: dict[str, Any], new: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`new` (this run's report, `rows` its --out lines) added to `earlier` (another process's
    report in the same --json file). Every arm is paired with the earlier report's first arm
    when the rows behind it can still be read: an earlier run's --out file, recorded in its meta,
    when it is not this run's own (which has just been rewritten). Arms whose rows are gone
    keep the pairs their own process computed, each naming the arm it is versus."""
    this_out = Path(new["runs"][0]["out"]).resolve()
    readable: list[dict[str, Any]] = []
    for run in earlier["runs"]:
        out = run.get("out")
        if out and not run.get("dry_run") and Path(out).exists() and Path(out).resolve() != this_out:
            readable += [r for r in read_rows(out) if r["arm"] in earlier["arms"]]
    arms = {**earlier["arms"], **new["arms"]}
    pairs = dict(earlier.get("paired", {}))
    every = readable + rows
    if len({r["arm"] for r in every}) > 1:
        pairs |= paired(sorted(every, key=lambda r: list(arms).index(r["arm"])))
    unpaired = [a for a in arms if a not in pairs and a != next(iter(arms))]
    if unpaired:
        print(f"not paired (their rows were not found; rerun with --paired-from on the joined --out files): "
              f"{', '.join(unpaired)}")
    return {"runs": [*earlier["runs"], *new["runs"]], "arms": arms, **({"paired": pairs} if pairs else {})}


def read_rows(path: str) -> list[dict[str, Any]]:
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def uptime() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="questions")
    parser.add_argument("--style", choices=("completion", "chat", "both"), default="completion")
    parser.add_argument("--task", default="shapes")
    parser.add_argument("--split", default="val")
    parser.add_argument("--policy", default="qwen2.5-coder-0.5b")
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16, help="questions per sampling call")
    parser.add_argument("--quantize", choices=("none", "int8"), default="none")
    parser.add_argument("--engine", choices=("auto", "llamacpp", "hf"), help="the embedded default's engine")
    parser.add_argument("--api", action="append", default=None, metavar="REV",
                        help="an arm with the API docstrings of git revision REV, or 'worktree' (repeatable)")
    parser.add_argument("--seeds", action="append", default=None, metavar="FILE",
                        help="an arm with FILE's few-shot examples (JSONL: query, program), or 'task' (repeatable)")
    parser.add_argument("--json", default=None, help="write the report here too (e.g. bench/results/NAME.json)")
    parser.add_argument("--merge", action="store_true", help="add the arms to the --json report that exists")
    parser.add_argument("--dry-run", action="store_true",
                        help="build every arm's prompts and report their lengths; sample nothing")
    parser.add_argument("--out", default="bench/policy_accuracy.jsonl")
    parser.add_argument("--paired-from", default=None, metavar="ROWS",
                        help="sample nothing: add to --json each arm's paired difference from the first arm, "
                             "computed from ROWS (an --out file, .gz allowed)")
    args = parser.parse_args()
    if args.paired_from:
        if not args.json or not Path(args.json).exists():
            raise SystemExit(f"--paired-from needs --json naming the report of that run; got {args.json}")
        if not Path(args.paired_from).exists():
            raise SystemExit(f"--paired-from {args.paired_from}: no such file; give the --out file of the run")
        report = json.loads(Path(args.json).read_text())
        report["paired"] = paired(read_rows(args.paired_from))
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report["paired"], indent=1))
        return
    load_before = uptime()

    task = TASKS.get(args.task)(progress=False)
    seed_sets = {name: seed_programs(task, name, args.task) for name in args.seeds or ["task"]}
    examples = task.examples(args.split, limit=args.n)
    images = load_images(task, examples)
    policy = load_policy(args.policy, model=args.model, batch_size=args.batch, quantize=args.quantize,
                         **({"engine": args.engine} if args.engine else {}))
    texts = {f"api@{rev}": api_section(task=args.task, docs=None if rev == "worktree" else docstrings_at(rev))
             for rev in args.api or ["worktree"]}
    arms = [(style, api, seeds) for style in (("completion", "chat") if args.style == "both" else (args.style,))
            for api in texts for seeds in seed_sets]
    report: dict[str, Any] = {}
    every_row: list[dict[str, Any]] = []  # this run's arms, for the paired differences
    with open(args.out, "w") as out:
        for style, api, seeds in arms:
            arm = "/".join([style, *([api] if args.api else []), *([f"seeds@{seeds}"] if args.seeds else [])])
            arm_load = uptime()
            prompter = Prompter(texts[api], seed_sets[seeds], style=style, tokenizer=policy.tokenizer)
            lengths = {"prompt_tokens": prompter.describe(examples[0].query)["prompt/few_shot_length"],
                       "api_tokens": prompter.length(texts[api])}
            if args.dry_run:
                longest = max(prompter.length(prompter.few_shot(ex.query)) for ex in examples)
                report[arm] = {**lengths, "longest_prompt_tokens": longest, "sampled": False}
                print(json.dumps({arm: report[arm]}), flush=True)
                continue
            params = SamplingParams(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens, stop=prompter.stop())
            start, tokens_before = time.perf_counter(), policy.stats["generated_tokens"]
            programs = {}
            for b in range(0, len(examples), args.batch):
                batch = examples[b:b + args.batch]
                completions = policy.sample([prompter.few_shot(ex.query) for ex in batch], params)
                for ex, (completion,) in zip(batch, completions):
                    programs[ex.id] = [(completion, extract_program(completion, style))]
            seconds = time.perf_counter() - start
            tokens = policy.stats["generated_tokens"] - tokens_before
            rows = execute_programs(task, examples, programs, profile=task.default_profile, images=images,
                                    desc=f"execute ({arm})")
            rows = [{"arm": arm, "style": style, "api": api, "seeds": seeds, **row} for row in rows]
            out.writelines(json.dumps(row) + "\n" for row in rows)
            every_row += rows
            report[arm] = {
                "accuracy": sum(r["reward"] for r in rows) / max(len(rows), 1), "n": len(rows),
                "per_type": per_type(rows),
                "errors": dict(Counter(r["error_kind"] for r in rows if r["error_kind"])),
                **lengths,
                "sample_s": round(seconds, 1), "tok_s": round(tokens / seconds, 2),
                "uptime_before": arm_load, "uptime_after": uptime(),
            }
            print(json.dumps({arm: report[arm]}), flush=True)
    print(f"programs and results written to {Path(args.out).resolve()}")
    print(json.dumps(report, indent=1))
    if args.json:
        meta = {"dry_run": args.dry_run, "out": args.out, "task": args.task, "split": args.split, "n": args.n, "policy": args.policy, "engine": args.engine,
                "batch": args.batch, "max_new_tokens": args.max_new_tokens, "decoding": "greedy",
                "uptime_before": load_before, "uptime_after": uptime(), "cpus": os.cpu_count()}
        path = Path(args.json)
        full = {"runs": [meta], "arms": report}
        if args.merge and path.exists():  # another process's arms, run alongside: keep them and its meta
            full = merge_report(json.loads(path.read_text()), full, every_row)
        elif not args.dry_run and len(arms) > 1:
            full["paired"] = paired(every_row)
        path.write_text(json.dumps(full, indent=1) + "\n")
        print(f"report written to {Path(args.json).resolve()}")


if __name__ == "__main__":
    main()
