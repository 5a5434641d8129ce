"""Policy sampling benchmarks: ratios measured side by side in one run (CPU).

1. Shared-prefix KV reuse vs plain `generate`, questions × samples on a ~1,000-token
   few-shot prompt: on a tiny random Qwen2 (16 × 8, the issue's setting) and on the
   embedded Qwen2.5-Coder-0.5B (a smaller grid, since plain `generate` re-encodes the
   prompt for every sample and would take half an hour at 16 × 8 on two cores).
2. Embedded-model sampling throughput (tokens/s aggregate, 64 new tokens, the ~360-token
   few-shot prompt of the issue): plain fp32 `generate` at 4 sequences vs the shared-prefix
   decoder at larger batches, fp32 and int8 (dynamically quantised copy).

Usage: python bench/policy.py [--only tiny|embedded|throughput] [--quick]
Completions are not stopped early (no stop strings; only end-of-sequence), so both sides
generate comparable token counts; tokens/s counts the tokens actually generated.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from viprog.policy import SamplingParams
from viprog.policy.hf import HFPolicy

API_LINE = ("    def find(self, object_name: str) -> list[ImagePatch]:\n"
            "        \"\"\"Returns a list of ImagePatch objects matching object_name contained in the crop.\"\"\"\n")
QUERIES = ["How many red circles are there?", "Is there a large blue square?", "What color is the small star?",
           "Is the green triangle to the left of the yellow circle?", "What shape is the purple object?",
           "Are there both a red cube and a small triangle?", "Is the large star green or blue?",
           "How many objects are above the orange square?"]


def prompts_of(tokens: int, policy: HFPolicy, questions: int) -> list[str]:
    """`questions` prompts sharing a prefix of about `tokens` tokens, differing in the query."""
    prefix = "class ImagePatch:\n"
    while len(policy.tokenizer(prefix)["input_ids"]) < tokens:
        prefix += API_LINE
    return [f"{prefix}\n# Query: {QUERIES[i % len(QUERIES)]} (#{i})\ndef execute_command(image):"
            for i in range(questions)]


def timed(fn: Callable[[], list[list[str]]], policy: HFPolicy) -> tuple[float, int]:
    before = policy.stats["generated_tokens"]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, int(policy.stats["generated_tokens"] - before)


def reuse_vs_plain(model: str, questions: int, samples: int, prompt_tokens: int, new_tokens: int,
                   batch_size: int) -> dict[str, float]:
    fast = HFPolicy(model, batch_size=batch_size, progress=False)
    plain = HFPolicy(model, batch_size=batch_size, prefix_cache=False, progress=False)
    plain._model = fast.model  # one copy of the weights for both paths
    prompts = prompts_of(prompt_tokens, fast, questions)
    params = SamplingParams(n=samples, temperature=1.0, top_p=0.9, max_new_tokens=new_tokens, seed=0)
    fast.sample(prompts[:1], SamplingParams(n=1, max_new_tokens=2))  # warm-up (first-call costs)
    fast._prefix = None  # ... but the measured run encodes its prefix itself
    t_plain, n_plain = timed(lambda: plain.sample(prompts, params), plain)
    t_fast, n_fast = timed(lambda: fast.sample(prompts, params), fast)
    return {"questions": questions, "samples": samples,
            "prompt_tokens": len(fast.tokenizer(prompts[0])["input_ids"]), "new_tokens": new_tokens,
            "plain_s": round(t_plain, 2), "reuse_s": round(t_fast, 2),
            "plain_tok_s": round(n_plain / t_plain, 2), "reuse_tok_s": round(n_fast / t_fast, 2),
            "speedup": round(t_plain / t_fast, 2)}


def throughput(model: str, quick: bool) -> list[dict[str, float]]:
    """Tokens/s aggregate at several settings on the ~360-token prompt, 64 new tokens."""
    rows = []
    base = HFPolicy(model, prefix_cache=False, batch_size=4, progress=False)
    prompts = prompts_of(360, base, 8)
    settings = [("plain generate fp32", {"prefix_cache": False}, 4, 1),
                ("shared prefix fp32", {}, 4, 4 if quick else 8),
                ("shared prefix int8", {"quantize": "int8"}, 4, 4 if quick else 8)]
    if not quick:
        settings.insert(1, ("plain generate int8", {"prefix_cache": False, "quantize": "int8"}, 4, 1))
    for label, options, questions, samples in settings:
        policy = HFPolicy(model, batch_size=max(4, questions * samples), progress=False, **options)
        policy._model = base.model
        params = SamplingParams(n=samples, temperature=1.0, top_p=0.9, max_new_tokens=64, seed=0)
        policy.sample(prompts[:1], SamplingParams(n=1, max_new_tokens=2))  # warm-up, builds the int8 copy
        policy._prefix = None
        seconds, tokens = timed(partial(policy.sample, prompts[:questions], params), policy)
        rows.append({"setting": label, "sequences": questions * samples, "tokens": tokens,
                     "seconds": round(seconds, 1), "tok_s": round(tokens / seconds, 2)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("tiny", "embedded", "throughput"))
    parser.add_argument("--quick", action="store_true", help="smaller grids (a smoke run)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, object] = {}
    if args.only in (None, "tiny"):
        from viprog.policy.tiny import build_tiny_model

        with tempfile.TemporaryDirectory() as tmp:
            tiny = str(build_tiny_model(Path(tmp), hidden_size=128, layers=4, heads=4, kv_heads=2))
            results["reuse_tiny"] = reuse_vs_plain(tiny, 16, 8, 1000, 32, batch_size=32)
        print(json.dumps({"reuse_tiny": results["reuse_tiny"]}), flush=True)
    if args.only in (None, "embedded", "throughput"):
        from viprog.policy.embedded import ensure_model

        embedded = str(ensure_model())
        if args.only in (None, "embedded"):
            q, n = (2, 2) if args.quick else (4, 4)
            results["reuse_embedded"] = reuse_vs_plain(embedded, q, n, 1000, 16, batch_size=16)
            print(json.dumps({"reuse_embedded": results["reuse_embedded"]}), flush=True)
        if args.only in (None, "throughput"):
            results["throughput_embedded"] = throughput(embedded, args.quick)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
