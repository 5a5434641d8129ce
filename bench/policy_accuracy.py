"""Few-shot accuracy of a policy on a task split: the round-0 baseline self-training must beat.

Greedy programs from the few-shot prompt (API section + the task's seed programs + the
query), extracted, run in the sandbox with the task's profile, scored by the task's
reward. `--style both` compares the completion prompt with the chat-template prompt on
the same questions, which is how the default style was chosen.

Usage: python bench/policy_accuracy.py [--n 100] [--style completion|chat|both]
       [--task shapes] [--split val] [--policy qwen2.5-coder-0.5b] [--model PATH]
       [--engine llamacpp|hf]   (the embedded default's engine: quantisation's cost on accuracy)
Writes the programs and results as JSON lines to --out (default bench/policy_accuracy.jsonl).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from viprog.policy import Prompter, SamplingParams, extract_program, load_policy
from viprog.primitives.apidoc import api_section
from viprog.rollout import execute_programs, load_images
from viprog.tasks import TASKS


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
    parser.add_argument("--out", default="bench/policy_accuracy.jsonl")
    args = parser.parse_args()

    task = TASKS.get(args.task)(progress=False)
    examples = task.examples(args.split, limit=args.n)
    images = load_images(task, examples)
    policy = load_policy(args.policy, model=args.model, batch_size=args.batch, quantize=args.quantize,
                         **({"engine": args.engine} if args.engine else {}))
    report = {}
    with open(args.out, "w") as out:
        for style in (("completion", "chat") if args.style == "both" else (args.style,)):
            prompter = Prompter(api_section(task=args.task), task.seed_programs(), style=style,
                                tokenizer=policy.tokenizer)
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
                                    desc=f"execute ({style})")
            out.writelines(json.dumps({"style": style, **row}) + "\n" for row in rows)
            report[style] = {
                "accuracy": sum(r["reward"] for r in rows) / max(len(rows), 1), "n": len(rows),
                "errors": dict(Counter(r["error_kind"] for r in rows if r["error_kind"])),
                "prompt_tokens": prompter.describe(examples[0].query)["prompt/few_shot_length"],
                "sample_s": round(seconds, 1), "tok_s": round(tokens / seconds, 2),
            }
            print(json.dumps({style: report[style]}), flush=True)
    print(f"programs and results written to {Path(args.out).resolve()}")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
