"""Rollout: sample programs from the policy, run them in the sandbox, score them.

Why its own module: the training round and the evaluation (and `viprog eval`, and the
library's `solve`) all do the same three things — prompts → completions, completions →
programs → `ExecutionResult`s through the sandboxed `Executor`, results → task rewards —
and differ only in sampling parameters and in which split they read. Sampling is the
expensive part (minutes on a CPU), so it records each finished question on disk as it
goes (`viprog.runs.Appender`) and a resumed rollout samples only what is missing.

The components (task, primitive profile, policy, prompter, and with `--executor ray` the
open Ray executor) are built here once per run (`build`): the profile's models load once
— in this process, or in the Ray model actors and only there — and serve every rollout of
the run, and a model that cannot load stops the run before any round is spent
(`Profile.preflight`).

Rows are plain dicts (one JSON line each in `samples.jsonl` / `eval.jsonl`): the
question (`question_id`, `query`, `image`, `question_type`, `gold`), the `sample` index,
the `completion`, the extracted `program`, and the result (`answer`, `error`,
`error_kind`, `trace`, `seconds`) with its `reward`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from viprog.errors import UsageError
from viprog.executor import Job
from viprog.executor.backend import check_executor, make_executor, open_executor
from viprog.executor.result import ExecutionResult
from viprog.policy import EMBEDDED_POLICIES, Prompter, extract_program, load_policy
from viprog.policy.base import Policy, SamplingParams
from viprog.primitives.apidoc import api_section
from viprog.primitives.profile import Profile, build_profile, parse_profile_options
from viprog.runs import Appender, AtomicJsonl, read_partial
from viprog.tasks import TASKS
from viprog.tasks.base import Example, Task

log = logging.getLogger(__name__)

#: (example) -> prompt text
PromptFn = Callable[[Example], str]

#: question id -> its (completion, extracted program) pairs
Programs = dict[str, list[tuple[str, str]]]


class ShotSource(Protocol):
    """Where few-shot prompts find stored programs of similar questions (`viprog.library.Library`)."""

    def __len__(self) -> int: ...

    def examples(self, query: str, k: int, exclude: Sequence[str] = ()) -> list[tuple[str, str]]: ...


# -- the components of a run, built once ---------------------------------------------------
def round_questions(pool: Sequence[Any], k: int, n: int, seed: int) -> list[Any]:
    """Round k's train questions: the k-th slice of a seeded shuffle (wrapping around)."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    start = ((k - 1) * n) % max(len(order), 1)
    return [pool[order[(start + i) % len(order)]] for i in range(min(n, len(order)))]


def _config_dict(config: Any) -> dict[str, Any]:
    return asdict(config) if is_dataclass(config) and not isinstance(config, type) else dict(config)


def load_scripted_or(name: str, model: str | None, device: str, quantize: str = "none",
                     options: Mapping[str, Any] | None = None) -> Policy:
    """`load_policy`, where `--policy scripted --model FILE.jsonl` reads the scripted programs from FILE."""
    if name == "scripted":
        return load_policy(name, **({"path": model} if model else {}))
    if quantize == "auto":
        quantize = "int8" if device == "cpu" and name in ("hf", *EMBEDDED_POLICIES) else "none"
    return load_policy(name, model=model, device=device, **({"quantize": quantize} if quantize != "none" else {}),
                       **(options or {}))


def build_prompter(task_name: str, task: Task, policy: Policy | None, style: str = "completion") -> Prompter:
    """The Prompter of a task: the API section generated from the registry, the task's seed programs."""
    return Prompter(api_section(task=task_name), task.seed_programs(), style=style,
                    tokenizer=getattr(policy, "tokenizer", None))


def require_device(device: str) -> None:
    """A `UsageError` for a CUDA device on a machine without one (found now, not after a
    round has run on the CPU instead)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}, but this machine has no CUDA device; use --device cpu")


def _check_model_path(policy: str, model: str | None) -> None:
    """A `UsageError` for a policy model given as a local path that is not there (a hub name,
    `namespace/name`, is left to the loader)."""
    if model is None:
        return
    local = policy == "scripted" or model.startswith(("/", "./", "../", "~"))
    if local and not Path(model).expanduser().exists():
        what = "programs file" if policy == "scripted" else "model folder"
        raise UsageError(f"--model {model}: no such {what}")


@dataclass
class Components:
    """What a rollout needs, built once per run: the task, its primitive profile (models
    loaded, unless they live in the executor's actors), the policy and its prompter (None
    when programs come from elsewhere), and where programs run: `"local"` (an executor per
    rollout) or an executor held open for the whole run (Ray's; `close` closes it)."""

    task: Task
    profile_name: str
    profile: Profile
    policy: Policy | None
    prompter: Prompter | None
    executor: Any = "local"

    def close(self) -> None:
        """Close the policy and the executor held for the run (the executor even when closing
        the policy fails)."""
        try:
            if self.policy is not None:
                self.policy.close()
        finally:
            if not isinstance(self.executor, str):
                executor, self.executor = self.executor, "local"
                executor.close()

    @contextmanager
    def closed_on_error(self) -> Iterator[None]:
        """Close these components when the block raises (e.g. a run folder refused after the
        models loaded on the cluster), then let the error through."""
        try:
            yield
        except BaseException:
            self.close()
            raise


def build(config: Any, *, task: Task | None = None, with_policy: bool = True,
          profile_options: str | Mapping[str, Any] | None = None) -> Components:
    """Components from a `TaskPolicyConfig` (or its saved dict): task, profile (options from
    `profile_options` or the config's `profile_options`), policy and prompter, and for the
    `ray` executor the open `RayExecutor`, whose model actors load the profile's models
    (here the profile is built without them). The profile is built (and checked) before the
    policy, the cheaper failure first."""
    c = _config_dict(config)
    device = c.get("device") or "cpu"
    require_device(device)
    if task is None:
        task = TASKS.get(c["task"])(data_dir=c.get("data_dir"), strict=bool(c.get("strict", False)))
    name = c.get("profile") or task.default_profile
    options = profile_options if profile_options is not None else c.get("profile_options")
    if with_policy and c.get("policy"):
        _check_model_path(c["policy"], c.get("model"))  # cheap, before the profile's models load
    where = c.get("executor") or "local"
    check_executor(where)
    profile = build_profile(name, options, device=device, preflight=where == "local")
    executor = where if where == "local" else open_executor(
        name, options, device=device, executor=where, ray_address=c.get("ray_address"),
        model_gpus=c.get("ray_model_gpus"), model_cpus=c.get("ray_model_cpus"), workers=int(c.get("workers", 2)), timeout=float(c.get("timeout", 10.0)))
    try:
        policy, prompter = build_policy(c, task) if with_policy and c.get("policy") else (None, None)
    except BaseException:
        if not isinstance(executor, str):
            executor.close()
        raise
    return Components(task, name, profile, policy, prompter, executor)


def build_policy(config: Any, task: Task) -> tuple[Policy, Prompter]:
    """The config's policy (base weights, no adapter) and the prompter for its task."""
    c = _config_dict(config)
    policy = load_scripted_or(c["policy"], c.get("model"), c.get("device") or "cpu", c.get("quantize", "none"),
                              parse_profile_options(c.get("policy_options"), "--policy-options"))
    return policy, build_prompter(c["task"], task, policy, c.get("prompt_style", "completion"))


# -- prompts and sampling parameters -------------------------------------------------------
def prompt_fn(prompter: Prompter, style: str, library: ShotSource | None = None, shots: int = 0) -> PromptFn:
    """example → prompt: the short prompt (query only), or the few-shot prompt, with up to
    `shots` stored programs of similar questions from `library` (never the question's own)."""
    if style == "short":
        return lambda ex: prompter.short(ex.query)
    if library is None or not len(library) or shots <= 0:
        return lambda ex: prompter.few_shot(ex.query)
    return lambda ex: prompter.few_shot(ex.query, extra=library.examples(ex.query, shots, exclude=[ex.id]))


def greedy_params(prompter: Prompter, max_new_tokens: int, seed: int | None = None) -> SamplingParams:
    """One greedy program per question, cut at the prompter's stops: how evaluation and the
    library write programs."""
    return SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens,
                          stop=tuple(prompter.stop()), seed=seed)


def write_program(policy: Policy, prompt: str, params: SamplingParams, style: str = "completion") -> str:
    """The program of the policy's first completion of one prompt."""
    (completions,) = policy.sample([prompt], replace(params, n=1))
    return extract_program(completions[0], style)


# -- sample → extract → execute → reward ---------------------------------------------------
@dataclass
class SampleStats:
    """Throughput of one rollout (what was sampled now, not what a resume skipped)."""

    seconds: float = 0.0
    programs: int = 0
    tokens: int | None = None
    execute_seconds: float = 0.0


def sample_completions(policy: Policy, examples: Sequence[Example], prompt: PromptFn, params: SamplingParams, *,
                       partial: str | Path, batch_questions: int = 4, desc: str = "sample",
                       ) -> tuple[dict[str, list[str]], SampleStats]:
    """`params.n` completions per example, keyed by question id.

    Questions already recorded in `partial` (a previous, killed attempt) are not sampled
    again. Questions are sampled `batch_questions` at a time, each batch with its own
    seed derived from `params.seed` and its position, so a run is reproducible.
    """
    done = {row["question_id"]: row["completions"] for row in read_partial(partial)}
    tokenizer = getattr(policy, "tokenizer", None)
    stats = SampleStats(tokens=0 if tokenizer is not None else None)
    todo = [i for i, ex in enumerate(examples) if ex.id not in done]
    bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc=desc, unit="q", dynamic_ncols=True)
    with Appender(partial) as out:
        for start in range(0, len(todo), batch_questions):
            batch = [examples[i] for i in todo[start:start + batch_questions]]
            seed = None if params.seed is None else params.seed + todo[start]
            t0 = time.perf_counter()
            completions = policy.sample([prompt(ex) for ex in batch], replace(params, seed=seed))
            stats.seconds += time.perf_counter() - t0
            for ex, outs in zip(batch, completions):
                outs = [str(c) for c in outs]
                out.write({"question_id": ex.id, "completions": outs})
                done[ex.id] = outs
                stats.programs += len(outs)
                if tokenizer is not None and stats.tokens is not None:
                    stats.tokens += sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in outs)
            bar.update(len(batch))
            bar.set_postfix(programs_per_s=f"{stats.programs / max(stats.seconds, 1e-9):.2f}")
    bar.close()
    return {ex.id: done[ex.id] for ex in examples}, stats


def sample_programs(policy: Policy, examples: Sequence[Example], prompt: PromptFn, params: SamplingParams, *,
                    partial: str | Path, style: str = "completion", batch_questions: int = 4, desc: str = "sample",
                    ) -> tuple[Programs, SampleStats]:
    """`sample_completions`, each completion paired with the program extracted from it."""
    completions, stats = sample_completions(policy, examples, prompt, params, partial=partial,
                                            batch_questions=batch_questions, desc=desc)
    return {qid: [(c, extract_program(c, style)) for c in outs] for qid, outs in completions.items()}, stats


def rollout(parts: Components, examples: Sequence[Example], prompt: PromptFn, params: SamplingParams, *,
            partial: str | Path, style: str = "completion", batch_questions: int = 4, workers: int = 2,
            timeout: float = 10.0, desc: str = "rollout", out: str | Path | None = None, check: bool = True,
            ) -> tuple[list[dict[str, Any]], SampleStats]:
    """The whole pipeline on `examples`: sample programs from `parts.policy` (resumably,
    through `partial`), run them in the sandbox under `parts.profile` on `parts.executor`,
    reward them by `parts.task`. Returns the rows (their summaries when they stream to `out`, see
    `execute_programs`) and the stats, execution time included. A rollout in which every
    program failed inside a primitive is a `UsageError` (`check_primitives_answered`; `check=False`
    skips that for a rollout of questions chosen for having failed)."""
    if parts.policy is None:
        raise UsageError("a rollout needs a policy; build the components with_policy=True")
    programs, stats = sample_programs(parts.policy, examples, prompt, params, partial=partial, style=style,
                                      batch_questions=batch_questions, desc=desc)
    start = time.perf_counter()
    rows = execute_programs(parts.task, examples, programs, profile=parts.profile,
                            images=load_images(parts.task, examples), workers=workers, timeout=timeout,
                            desc=f"{desc} execute", out=out, executor=parts.executor)
    stats.execute_seconds = time.perf_counter() - start
    if check:
        check_primitives_answered(rows, desc)
    return rows, stats


def load_images(task: Task, examples: Sequence[Example]) -> dict[str, np.ndarray]:
    """Pixels per image key. An unreadable image is left out and counted in `task.skipped`
    (fatal when the task is strict: `Task.try_load_image`)."""
    images: dict[str, np.ndarray] = {}
    tried: set[str] = set()
    for ex in examples:
        if ex.image_key in tried:
            continue
        tried.add(ex.image_key)
        pixels = task.try_load_image(ex)
        if pixels is not None:
            images[ex.image_key] = pixels
    return images


def question_row(ex: Example) -> dict[str, Any]:
    return {"question_id": ex.id, "query": ex.query, "image": str(ex.image), "image_id": ex.image_key,
            "question_type": ex.question_type, "gold": ex.answer if ex.answer is not None else ex.box}


#: what `execute_programs` returns per row when the rows themselves go to a file
SUMMARY_FIELDS = ("question_id", "question_type", "sample", "program", "reward", "error_kind", "error", "seconds")


def summary(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its answer, trace and completion (the parts that can be large)."""
    out = {key: row.get(key) for key in SUMMARY_FIELDS}
    if isinstance(out["error"], str) and len(out["error"]) > 500:
        out["error"] = out["error"][:500] + "…"
    return out


def execute_programs(task: Task, examples: Sequence[Example], programs: Programs, *,
                     profile: str | Profile, images: dict[str, np.ndarray], workers: int = 2,
                     timeout: float = 10.0, desc: str = "execute", out: str | Path | None = None,
                     executor: Any = "local") -> list[dict[str, Any]]:
    """Run every (completion, program) of every example in the sandbox and reward it.

    `programs` maps a question id to its (completion, program) pairs; examples whose
    image is missing from `images` are left out. Returns one row per program, in order.
    `profile` is a built `Profile` (its models kept across calls) or a profile name.
    With `out`, each row is written to that JSONL file as its program finishes (the file
    appears whole, by a rename, at the end) and only its `summary` is returned, so the
    parent holds no answers or traces however many programs a rollout has.
    `executor`: where the programs run — `"local"` or `"ray"` (`viprog.executor.backend`;
    Ray at `$RAY_ADDRESS`) opens one for this call with `workers` and `timeout`; an open
    executor (the run's `Components.executor`, or one serving every step of an online RL
    round) runs them and stays open.
    """
    owners = [(ex, i, completion, program) for ex in examples if ex.image_key in images
              for i, (completion, program) in enumerate(programs.get(ex.id, ()))]
    if not owners:
        if out is not None:
            AtomicJsonl(out).close()
        return []
    jobs = [Job(program, ex.image_key, images[ex.image_key], query=ex.query, meta=dict(ex.meta))
            for ex, _, _, program in owners]  # light: the pixels are the ones `images` holds

    def row(index: int, result: ExecutionResult) -> dict[str, Any]:
        ex, i, completion, program = owners[index]
        return {**question_row(ex), "sample": i, "completion": completion, "program": program, **result.to_json(),
                "reward": float(task.reward(ex, result))}

    with make_executor(profile, executor=executor, workers=workers, timeout=timeout) if isinstance(
            executor, str) else nullcontext(executor) as running:
        results = running.run_iter(jobs, progress=desc, ordered=True)
        if out is None:
            return [row(index, result) for index, result in results]
        rows = []
        with AtomicJsonl(out) as sink:
            for index, result in results:
                full = row(index, result)
                sink.write(full)
                rows.append(summary(full))
        return rows


def check_primitives_answered(rows: Sequence[dict[str, Any]], where: str) -> None:
    """A `UsageError` when every program failed inside a primitive: the profile does not work
    on this data or machine (a model, an annotation it needs), and scoring or training on such
    rows would only report zeros."""
    failed = [r for r in rows if r.get("error_kind") == "primitive"]
    if rows and len(failed) == len(rows):
        raise UsageError(f"every program of {where} failed inside a primitive, e.g. {failed[0]['error']}; "
                         "the profile cannot answer here (check --profile and --profile-options)")


def rows_to_results(rows: Sequence[dict[str, Any]]) -> list[ExecutionResult]:
    return [ExecutionResult.from_json(r) for r in rows]
