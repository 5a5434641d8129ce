"""The program library: what a self-training run kept, as an API.

Why: the point of self-training is a policy *and* a set of verified programs. Users want
to use both without knowing the run's layout:

    lib = viprog.load("runs/shapes-demo")
    out = lib.solve("scene.png", "How many red circles are there?")
    out.answer, out.program, out.trace          # the program ran in the sandbox
    lib.program("shapes-test-00012")(image)     # one stored program, as a callable

`solve` reuses the stored program of a known query (same words, case and spacing aside)
and otherwise asks the run's tuned policy (base weights + latest adapter) for one, with
similar stored programs as few-shot examples. Programs always run through the sandboxed
`Executor`, never in this process. The library is also where later rounds' few-shot
examples come from (`examples`).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
from PIL import Image

from viprog.errors import DataError, UsageError
from viprog.executor import Job
from viprog.executor.backend import open_executor
from viprog.filtering import normalize_program
from viprog.images import read_rgb
from viprog.policy.prompts import normalize_query
from viprog.rollout import build_policy, greedy_params, prompt_fn, write_program
from viprog.runs import Run, read_json, read_jsonl, write_jsonl_atomic
from viprog.tasks import TASKS


@dataclass(frozen=True)
class Solution:
    """What `solve` or a stored program produced: the answer and how it was obtained."""

    answer: Any
    program: str
    trace: tuple[dict[str, Any], ...] = ()
    error: str | None = None
    error_kind: str | None = None
    source: str = "library"  # "library" (a stored program) or "policy" (written now)
    question_id: str | None = None  # the stored program's question, when reused

    @property
    def ok(self) -> bool:
        return self.error_kind is None


@dataclass(frozen=True)
class StoredProgram:
    """One kept program; call it on an image (path, array or PIL image) to run it."""

    question_id: str
    query: str
    program: str
    reward: float
    round: int
    library: Library | None = field(default=None, repr=False, compare=False)

    def __call__(self, image: Any, query: str | None = None) -> Solution:
        if self.library is None:
            raise UsageError("this program is detached from its library; get it with lib.program(question_id)")
        return self.library.run_program(self.program, image, query or self.query, question_id=self.question_id)


@dataclass(frozen=True)
class Asked:
    """A question asked of `solve`, shaped like an example for the rollout's prompt builder
    (it is no stored question, so no stored program is left out of its few-shot prompt)."""

    query: str
    id: str = ""


class Library:
    """Kept programs of a run, with the means to run them and to write new ones."""

    def __init__(self, rows: Sequence[dict[str, Any]], *, run_dir: str | Path | None = None,
                 config: dict[str, Any] | None = None, profile_options: str | dict[str, Any] | None = None) -> None:
        self.rows = list(rows)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.config = dict(config or {})
        if profile_options is not None:  # e.g. the models' local copies on this machine
            self.config["profile_options"] = profile_options
        self._by_id: dict[str, dict[str, Any]] = {}
        self._by_query: dict[str, dict[str, Any]] = {}
        for row in self.rows:  # later rounds and higher rewards win
            for index, key in ((self._by_id, row["question_id"]), (self._by_query, normalize_query(row["query"]))):
                old = index.get(key)
                if old is None or (row["round"], row["reward"]) >= (old["round"], old["reward"]):
                    index[key] = row
        self._executor: Any = None
        self._policy: Any = None
        self._prompter: Any = None
        self._adapter: Path | None = None

    # -- building -----------------------------------------------------------------------
    @classmethod
    def load(cls, run_dir: str | Path, *, profile_options: str | dict[str, Any] | None = None,
             executor: str | None = None, ray_address: str | None = None) -> Library:
        """The library of the run at `run_dir` (what its finished rounds kept).

        profile_options: the primitive profile's options (a dict or a JSON object), instead
            of those the run was made with (e.g. other model paths or device here).
        executor, ray_address: where its programs run (local, or ray at that address),
            instead of where the run ran them."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.json").exists():
            raise UsageError(f"{run_dir}: not a self-training run (no config.json); pass the folder runs/<name>")
        rows = read_jsonl(run_dir / "library.jsonl") if (run_dir / "library.jsonl").exists() else []
        config = read_json(run_dir / "config.json")
        config |= {k: v for k, v in (("executor", executor), ("ray_address", ray_address)) if v is not None}
        return cls(rows, run_dir=run_dir, config=config, profile_options=profile_options)

    @staticmethod
    def collect(run: Run, rounds: Sequence[int]) -> list[dict[str, Any]]:
        """Library rows from the kept programs of `rounds`: one per (question, distinct
        program), the latest round's copy."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for k in rounds:
            path = run.artifact(k, "kept.jsonl")
            if not path.exists():
                continue
            for row in read_jsonl(path):
                entry = {key: row.get(key) for key in ("question_id", "query", "program", "reward", "answer", "gold",
                                                       "image", "image_id", "question_type", "trace")}
                entry["round"] = k
                rows[(row["question_id"], normalize_program(row["program"]))] = entry
        return list(rows.values())

    @classmethod
    def write(cls, run: Run, rounds: Sequence[int], extra: Sequence[dict[str, Any]] = ()) -> Library:
        """Rebuild `library.jsonl` from `rounds` and the `extra` rows (hand-written
        corrections) atomically, and return the library."""
        rows = [*extra, *cls.collect(run, rounds)]
        write_jsonl_atomic(run.library_path, rows)
        return cls(rows, run_dir=run.root, config=read_json(run.config_path) if run.config_path.exists() else None)

    # -- looking up ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[StoredProgram]:
        return (self._stored(row) for row in self.rows)

    def __contains__(self, question_id: object) -> bool:
        return question_id in self._by_id

    def question_ids(self) -> list[str]:
        return sorted(self._by_id)

    def _stored(self, row: dict[str, Any]) -> StoredProgram:
        return StoredProgram(row["question_id"], row["query"], row["program"], float(row["reward"]), int(row["round"]),
                             library=self)

    def program(self, question_id: str) -> StoredProgram:
        """The stored program for `question_id` (the latest, best-rewarded one)."""
        row = self._by_id.get(question_id)
        if row is None:
            close = difflib.get_close_matches(question_id, self._by_id, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"no stored program for question {question_id!r}{hint} ({len(self._by_id)} questions stored)")
        return self._stored(row)

    def lookup(self, query: str) -> StoredProgram | None:
        """The stored program of a known query (same words), if any."""
        row = self._by_query.get(normalize_query(query))
        return self._stored(row) if row is not None else None

    def examples(self, query: str, k: int, exclude: Sequence[str] = ()) -> list[tuple[str, str]]:
        """Up to `k` (query, program) pairs whose queries share the most words with `query`
        (few-shot examples for later rounds); questions in `exclude` are left out."""
        if k <= 0:
            return []
        words = set(normalize_query(query).split())
        skip = set(exclude)
        scored = []
        for qid, row in self._by_id.items():
            if qid in skip:
                continue
            other = set(normalize_query(row["query"]).split())
            scored.append((len(words & other) / max(len(words | other), 1), qid, row))
        scored.sort(key=lambda t: (-t[0], t[1]))
        return [(row["query"], row["program"]) for _, _, row in scored[:k]]

    # -- running --------------------------------------------------------------------------
    def run_program(self, program: str, image: Any, query: str, *, question_id: str | None = None,
                    source: str = "library") -> Solution:
        """Run `program` on `image` in the sandbox (the run's primitive profile)."""
        pixels = as_pixels(image)
        image_id = hashlib.sha1(pixels.tobytes()).hexdigest()[:16]
        (result,) = self._get_executor().run_many([Job(program, image_id, pixels, query=query)])
        return Solution(answer=result.answer, program=program, trace=tuple(result.trace), error=result.error,
                        error_kind=result.error_kind, source=source, question_id=question_id)

    def solve(self, image: Any, query: str, *, reuse: bool = True) -> Solution:
        """Answer `query` about `image` with a program: the stored one for a known query
        (when `reuse`), else one written now by the run's tuned policy (greedy)."""
        stored = self.lookup(query) if reuse else None
        if stored is not None:
            return self.run_program(stored.program, image, query, question_id=stored.question_id)
        policy, prompter = self._get_policy()
        # the prompt the run's own evaluation gives this policy: tuned or base style, library shots
        style = self.config.get("tuned_prompt" if self._adapter else "base_prompt") or "few-shot"
        shots = self if self.config.get("eval_library", True) else None
        prompt = prompt_fn(prompter, style, shots, int(self.config.get("library_shots", 2)))(Asked(query))
        program = write_program(policy, prompt, greedy_params(prompter, int(self.config.get("max_new_tokens", 256))),
                                self.config.get("prompt_style", "completion"))
        return self.run_program(program, image, query, source="policy")

    def _get_executor(self) -> Any:
        if self._executor is None:
            profile = self.config.get("profile") or TASKS.get(self.config.get("task", "shapes")).default_profile
            self._executor = open_executor(profile, self.config.get("profile_options"),
                                           device=self.config.get("device", "cpu"),
                                           executor=self.config.get("executor") or "local",
                                           ray_address=self.config.get("ray_address"),
                                           model_gpus=self.config.get("ray_model_gpus"),
                                           model_cpus=self.config.get("ray_model_cpus"), workers=1,
                                           timeout=float(self.config.get("timeout", 10.0)))
        return self._executor

    def _get_policy(self) -> tuple[Any, Any]:
        if self._policy is None:
            if self.run_dir is None:
                raise UsageError("this library has no run folder, so no policy to write new programs; "
                                 "load it with viprog.load(run_dir)")
            task = TASKS.get(self.config["task"])(data_dir=self.config.get("data_dir"))
            self._policy, self._prompter = build_policy(self.config, task)
            self._adapter = Run(self.run_dir).latest_adapter()
            self._policy.load_adapter(self._adapter)
        return self._policy, self._prompter

    def close(self) -> None:
        """Stop the sandbox workers and release the policy."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None
        if self._policy is not None:
            self._policy.close()
            self._policy = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def as_pixels(image: Any) -> np.ndarray:
    """H x W x 3 uint8 RGB from a path, a PIL image or an array."""
    if isinstance(image, np.ndarray):
        array = image
    elif isinstance(image, (str, Path)):
        try:
            array = read_rgb(image)
        except DataError as exc:  # a file the user handed us: their input, not a dataset's
            raise UsageError(str(exc)) from None
    elif isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    else:
        raise UsageError(f"an image must be a path, a PIL image or an H x W x 3 array, not {type(image).__name__}")
    if array.ndim != 3 or array.shape[2] != 3:
        raise UsageError(f"an image array must be H x W x 3 RGB, got shape {tuple(array.shape)}")
    return np.ascontiguousarray(array, dtype=np.uint8)
