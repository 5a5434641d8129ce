"""Policy sampling benchmarks: ratios measured side by side in one run (CPU).

1. Shared-prefix KV reuse vs plain `generate`, questions × samples on a ~1,000-token
   few-shot prompt: on a tiny random Qwen2 (16 × 8, the issue's setting) and on the
   embedded Qwen2.5-Coder-0.5B (a smaller grid, since plain `generate` re-encodes the
   prompt for every sample and would take half an hour at 16 × 8 on two cores).
2. Embedded-model sampling throughput (tokens/s aggregate, 64 new tokens, the ~360-token
   few-shot prompt of the issue): plain fp32 `generate` at 4 sequences vs the shared-prefix
   decoder at larger batches, fp32 and int8 (dynamically quantised copy).
3. The engines in the embedded setting: a round's sampling step — `--calls` calls (default
   3) of 4 shapes questions × 4 samples over the real few-shot prompt (~2,060 tokens), 96 new
   tokens, temperature 1.0, top-p 0.9 — on hf (shared prefix, int8: the default before the
   engine), llama.cpp (the shipped Q4_K_M GGUF) and CTranslate2 (the folder converted to
   int8, its `static_prompt` cached; measured here only, when installed). Each side runs in
   its own child process, one after the other, so its peak RSS is its own; the first call
   encodes the prefix, later ones reuse it.
4. The engines on the larger sibling's evaluation (`--only greedy-large`): Qwen2.5-Coder-1.5B,
   greedy, `--calls` calls of 4 shapes questions over the same few-shot prompt (how a
   round's evaluation and the study's frozen-1.5B arm call the policy), hf against
   llama.cpp, each in its own child process. hf runs fp32 here: with its int8 copy the
   1.5B's process reached 22.9 GB RSS on this 23 GiB machine and swapped (2026-12-01).
5. Greedy evaluation batch size (`--only eval-batch`): llama.cpp writing one greedy program
   for each of the first 32 shapes test questions, the prompts sent `batch_questions` at a
   time as the rollout sends them (4, the default; 16; 32), each size twice in the
   order 4, 16, 32, 32, 16, 4 so that a drifting load falls on every size alike; seconds per
   question (the rollout's stop strings apply here), and how many programs differ between a
   size's two passes (run-to-run) and from batch 4's first pass (greedy: a difference between
   sizes but not between passes is llama.cpp's arithmetic depending on the batch).

Usage: python bench/policy.py [--only tiny|embedded|throughput|engines|greedy-large|eval-batch] [--quick] [--calls N]
Completions are not stopped early (no stop strings; only end-of-sequence), so both sides
generate comparable token counts; tokens/s counts the tokens actually generated.
Results are merged into bench/results/policy.json with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from viprog.policy import Policy, SamplingParams
from viprog.policy.hf import HFPolicy

RESULTS = Path(__file__).parent / "results" / "policy.json"
#: the embedded setting: calls × questions per call × samples per question
CALLS, QUESTIONS, SAMPLES, NEW_TOKENS = 3, 4, 4, 96
#: the engines measured in the embedded setting, hf (the reference) first
SIDES = ("hf", "llamacpp", "ctranslate2")

API_LINE = ("    def find(self, object_name: str) -> list[ImagePatch]:\n"
            "        \"\"\"All objects inside this patch that object_name describes, one patch each.\"\"\"\n")
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


def timed(fn: Callable[[], list[list[str]]], policy: Policy) -> tuple[float, int]:
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


def shapes_prompts(tokenizer: object, questions: int) -> list[str]:
    """The real few-shot prompts of the embedded run for the first `questions` shapes
    training questions."""
    from viprog.policy import Prompter
    from viprog.primitives.apidoc import api_section
    from viprog.tasks import TASKS

    task = TASKS.get("shapes")(progress=False)
    prompter = Prompter(api_section(task="shapes"), task.seed_programs(), tokenizer=tokenizer)
    return [prompter.few_shot(ex.query) for ex in task.examples("train", limit=questions)]


class CTranslate2Sampler(Policy):
    """CTranslate2 on the embedded folder converted to int8 (measured only, not a backend):
    the prompts' common token prefix is its cached `static_prompt`, each query's tokens
    the start tokens, `num_hypotheses` samples per query."""

    def __init__(self, folder: str, workdir: str) -> None:
        import ctranslate2
        from transformers import AutoTokenizer

        start = time.perf_counter()
        out = Path(workdir) / "ct2-int8"
        ctranslate2.converters.TransformersConverter(folder).convert(str(out), quantization="int8")
        self.convert_s = round(time.perf_counter() - start, 1)
        self.ct2, self.tokenizer = ctranslate2, AutoTokenizer.from_pretrained(folder)
        self.generator = ctranslate2.Generator(str(out), device="cpu", compute_type="int8",
                                               intra_threads=len(os.sched_getaffinity(0)))
        self.static: list[str] | None = None
        self.stats = {"generated_tokens": 0}

    def sample(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        from viprog.policy.decode import common_prefix

        tokens = [self.tokenizer.convert_ids_to_tokens(self.tokenizer(p)["input_ids"]) for p in prompts]
        if self.static is None and len(tokens) > 1:  # fixed once, so that later calls hit the cached prefix
            self.static = tokens[0][:min(common_prefix(tokens), min(map(len, tokens)) - 1)]
        static = self.static if self.static and all(t[:len(self.static)] == self.static for t in tokens) else None
        cut = len(static or ())
        if params.seed is not None:
            self.ct2.set_random_seed(params.seed)
        results = self.generator.generate_batch(
            [t[cut:] for t in tokens], static_prompt=static, cache_static_prompt=True,
            num_hypotheses=params.n, sampling_topk=0 if params.temperature > 0 else 1, sampling_topp=params.top_p,
            sampling_temperature=max(params.temperature, 1e-6), max_length=params.max_new_tokens,
            include_prompt_in_result=False, end_token=[self.tokenizer.eos_token, "<|endoftext|>"])
        self.stats["generated_tokens"] += sum(len(ids) for r in results for ids in r.sequences_ids)
        return [[self.tokenizer.decode(ids) for ids in r.sequences_ids] for r in results]


def engine_side(side: str, calls: int, large: bool = False) -> dict[str, object]:
    """One backend on the embedded setting, or (`large`) on the 1.5B's greedy evaluation
    (run in a child process): tokens/s per call, in all, and the process's peak RSS."""
    from viprog.policy.embedded import NAME, ensure_gguf, ensure_model
    from viprog.policy.llamacpp import LlamaCppPolicy

    which = "qwen2.5-coder-1.5b" if large else NAME
    folder = str(ensure_model(progress=False, which=which))
    samples = 1 if large else SAMPLES
    batch = QUESTIONS * samples
    workdir = tempfile.mkdtemp(prefix="bench-engine-")
    policy: Policy = (
        HFPolicy(folder, quantize="none" if large else "int8", batch_size=batch, progress=False) if side == "hf"
        else CTranslate2Sampler(folder, workdir) if side == "ctranslate2"
        else LlamaCppPolicy(folder, gguf=ensure_gguf(progress=False, which=which), batch_size=batch, progress=False))
    prompts = shapes_prompts(policy.tokenizer, QUESTIONS * calls)
    policy.sample(["def f():"], SamplingParams(n=1, max_new_tokens=2))  # warm-up: loads, builds the int8 copy
    rows = []
    for c in range(calls):
        params = (SamplingParams(n=1, temperature=0.0, max_new_tokens=NEW_TOKENS, seed=c) if large else
                  SamplingParams(n=SAMPLES, temperature=1.0, top_p=0.9, max_new_tokens=NEW_TOKENS, seed=c))
        seconds, tokens = timed(partial(policy.sample, prompts[c * QUESTIONS:(c + 1) * QUESTIONS], params), policy)
        rows.append({"call": c + 1, "sequences": batch, "tokens": tokens, "seconds": round(seconds, 1),
                     "tok_s": round(tokens / seconds, 2)})
        print(json.dumps({side: rows[-1]}), file=sys.stderr, flush=True)
    seconds, tokens = sum(r["seconds"] for r in rows), sum(r["tokens"] for r in rows)
    shutil.rmtree(workdir, ignore_errors=True)
    return {"prompt_tokens": len(policy.tokenizer(prompts[0])["input_ids"]), "calls": rows,
            **({"convert_s": policy.convert_s} if isinstance(policy, CTranslate2Sampler) else {}),
            "tok_s": round(tokens / seconds, 2), "first_call_tok_s": rows[0]["tok_s"],
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}


def uptime() -> str:
    return subprocess.run(["uptime"], check=False, stdout=subprocess.PIPE, text=True).stdout.strip()


def engines(quick: bool, calls: int, large: bool = False) -> dict[str, object]:
    """hf (int8, shared prefix), llama.cpp and CTranslate2 (when installed, not for `large`)
    on the embedded setting or the 1.5B's greedy evaluation, each in a child, one after the
    other; ratios against hf."""
    import importlib.util

    calls = 1 if quick else calls
    sides = [s for s in SIDES if s != "ctranslate2" or (not large and importlib.util.find_spec("ctranslate2"))]
    setting = (f"Qwen2.5-Coder-1.5B, {calls} calls × {QUESTIONS} questions, greedy, {NEW_TOKENS} new tokens" if large
               else f"{calls} calls × {QUESTIONS} questions × {SAMPLES} samples, {NEW_TOKENS} new tokens, "
                    "temperature 1.0, top-p 0.9")
    out: dict[str, object] = {"setting": setting, "uptime_before": uptime()}
    for side in sides:
        done = subprocess.run([sys.executable, __file__, "--side", side, "--calls", str(calls),
                               *(["--large"] if large else [])], check=True, stdout=subprocess.PIPE, text=True)
        out[side] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps({side: out[side]}), flush=True)
    out["uptime_after"] = uptime()
    hf = out["hf"]
    for side in sides[1:]:
        engine = out[side]
        out[f"{side}_vs_hf"] = {key: round(engine[key] / hf[key], 2)  # type: ignore[index]
                                for key in ("tok_s", "first_call_tok_s", "peak_rss_gb")}
    return out


def eval_batch(quick: bool) -> dict[str, object]:
    """Section 5: seconds per question of greedy evaluation at each `batch_questions`, one process."""
    from viprog.policy import Prompter
    from viprog.policy.embedded import ensure_gguf, ensure_model
    from viprog.policy.llamacpp import LlamaCppPolicy
    from viprog.primitives.apidoc import api_section
    from viprog.rollout import greedy_params
    from viprog.tasks import TASKS

    sizes, questions = ((4, 16), 8) if quick else ((4, 16, 32), 32)
    policy = LlamaCppPolicy(str(ensure_model(progress=False)), gguf=ensure_gguf(progress=False),
                            batch_size=max(sizes), progress=False)
    task = TASKS.get("shapes")(progress=False)
    prompter = Prompter(api_section(task="shapes"), task.seed_programs(), tokenizer=policy.tokenizer)
    prompts = [prompter.few_shot(ex.query) for ex in task.examples("test", limit=questions)]
    params = greedy_params(prompter, NEW_TOKENS)
    policy.sample(prompts[:1], params)  # warm-up: loads the model, fills the shared prefix
    out: dict[str, object] = {"setting": f"{questions} shapes test questions, greedy, {NEW_TOKENS} new tokens, "
                                         "the real few-shot prompt and stops", "uptime_before": uptime()}
    seconds: dict[int, list[float]] = {b: [] for b in sizes}
    programs: dict[int, list[list[str]]] = {b: [] for b in sizes}
    for b in (*sizes, *reversed(sizes)):
        start = time.perf_counter()
        written = [c[0] for i in range(0, questions, b) for c in policy.sample(prompts[i:i + b], params)]
        seconds[b].append(time.perf_counter() - start)
        programs[b].append(written)
        print(json.dumps({"batch_questions": b, "s_per_question": round(seconds[b][-1] / questions, 2)}),
              file=sys.stderr, flush=True)
    per_q = {b: sum(s) / len(s) / questions for b, s in seconds.items()}
    ref = programs[sizes[0]][0]
    out.update({f"batch_{b}": {"s_per_question": round(per_q[b], 3), "runs_s": [round(x, 1) for x in seconds[b]],
                               "programs_differing_between_its_two_passes": sum(
                                   p != q for p, q in zip(*programs[b], strict=True)),
                               "programs_differing_from_batch_4": [sum(p != q for p, q in zip(run, ref, strict=True))
                                                                   for run in programs[b]]}
                for b in sizes})
    out.update({f"speedup_{b}_vs_4": round(per_q[sizes[0]] / per_q[b], 2) for b in sizes[1:]})
    out["uptime_after"] = uptime()
    policy.close()
    return out


def save(results: dict[str, object]) -> None:
    """Merge this run's sections into bench/results/policy.json, with the load."""
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    now = uptime()
    saved.update({k: {**v, "uptime": now} if isinstance(v, dict) else {"rows": v, "uptime": now}
                  for k, v in results.items()})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(saved, indent=1) + "\n")
    print(f"results merged into {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("tiny", "embedded", "throughput", "engines", "greedy-large", "eval-batch"))
    parser.add_argument("--quick", action="store_true", help="smaller grids (a smoke run)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # a child of `engines`
    parser.add_argument("--large", action="store_true", help=argparse.SUPPRESS)  # a child of greedy-large
    parser.add_argument("--calls", type=int, default=CALLS, help="sampling calls per engine (engines)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.side:
        print(json.dumps(engine_side(args.side, args.calls, args.large)))
        return
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
    if args.only in (None, "engines"):
        results["engines_embedded"] = engines(args.quick, args.calls)
    if args.only == "eval-batch":
        results["eval_batch_questions"] = eval_batch(args.quick)
    if args.only == "greedy-large":
        results["engines_greedy_1_5b"] = engines(args.quick, args.calls, large=True)
    print(json.dumps(results, indent=1))
    save(results)


if __name__ == "__main__":
    main()
