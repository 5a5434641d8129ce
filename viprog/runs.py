"""A self-training run on disk: atomic artifacts, so that `--resume` can trust what it finds.

Why this module: a run is killed (Ctrl-C, OOM killer, SIGKILL, a pre-empted GPU) in the
middle of sampling or training, and must continue without redoing finished work and
without reading a half-written file. The rule is simple: every artifact is written to a
temporary name beside its final name and renamed into place (`os.replace` is atomic on
POSIX), so an artifact either exists complete or not at all; a step is finished exactly
when its artifact exists. Long steps (sampling, evaluation) also append one JSON line per
finished question to a `*.partial.jsonl` file, flushed and fsync'ed, so a resumed step
skips the questions already done (a torn last line is ignored).

Layout: `runs/<name>/config.json`, `metrics.jsonl` (one line per finished round, rebuilt
from the rounds), `library.jsonl` (the kept programs so far), `report.html`, and
`round_<k>/{samples.jsonl, kept.jsonl, adapter/, eval.jsonl, metrics.json}`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Self

from viprog.errors import DataError, UsageError

TMP_MARK = ".tmp-"


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file and a rename."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename: a reader (or a kill)
    sees the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


class AtomicJsonl:
    """Write JSONL rows one at a time to a temporary file that becomes `path` on `close`
    (a rename): rows go to disk as they come, and the artifact still appears whole or not
    at all. Leaving the `with` block by an exception removes the temporary file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f"{self.path.name}{TMP_MARK}{os.getpid()}")
        self.file = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 (closed by close / __exit__)
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps(row, default=str) + "\n")
        self.rows += 1

    def close(self) -> Path:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:
            self.close()
        else:
            self.file.close()
            self.tmp.unlink(missing_ok=True)


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The rows of a JSONL artifact one at a time (a file too large to hold as a list)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    raise UsageError(f"{path}:{n}: not a JSON line; the artifact is damaged") from None


def json_lines(path: Path, shape: str) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a hand-written JSONL file; a file that
    is not UTF-8 or a line that is not JSON is a `DataError` naming the file, the line and
    the `shape` each line should have."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file (expected JSONL of {shape} lines)") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not valid JSON ({exc.msg} at character {exc.pos}); "
                            f"each line must be {shape}") from None


def read_programs(path: str | Path, key: str) -> list[tuple[str, str]]:
    """(row[key], program) for each line of a programs file, a JSONL file of
    {key: ..., "program": str} rows (`viprog eval --programs` keys them by "question_id",
    the scripted policy by "query"). Anything else is a `DataError` naming the file and line."""
    path = Path(path)
    shape = f'{{"{key}": ..., "program": ...}}'
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a JSONL file of {shape} lines)")
    pairs = []
    for n, row in json_lines(path, shape):
        if not isinstance(row, dict) or not isinstance(row.get("program"), str) or key not in row:
            raise DataError(f'{path}:{n}: each line needs "{key}" and a string "program"')
        pairs.append((str(row[key]), row["program"]))
    if not pairs:
        raise DataError(f"{path}: no programs in the file")
    return pairs


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str | Path, *, tolerate_torn_tail: bool = False) -> list[dict[str, Any]]:
    """Rows of a JSONL file. With `tolerate_torn_tail`, a last line cut short by a kill is
    dropped (append-only partial files); anywhere else a bad line is an error."""
    path = Path(path)
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if tolerate_torn_tail and i == len(lines) and not line.endswith("\n"):
                break
            raise
    return rows


class Appender:
    """Append-only JSONL writer whose every line is on disk before `write` returns.

    Opening it first truncates a torn last line left by a kill, so the file stays valid.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(keep)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 — held open until close()

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row, default=str) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_partial(path: str | Path) -> list[dict[str, Any]]:
    """The complete lines of an append-only partial file (none if it does not exist)."""
    path = Path(path)
    return read_jsonl(path, tolerate_torn_tail=True) if path.exists() else []


def publish_dir(tmp_dir: Path, final_dir: Path) -> Path:
    """Move a fully written directory into place (replacing an older one)."""
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    return final_dir


def tmp_dir_for(final_dir: Path) -> Path:
    """A fresh temporary directory beside `final_dir` (left-overs of a kill are removed)."""
    tmp = final_dir.with_name(f"{final_dir.name}{TMP_MARK}{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


class Run:
    """The folder of one run: `runs/<name>/`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- opening ------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, *, resume: bool, overwrite: bool) -> Run:
        """Create a new run folder, or reopen one with `resume`; refuse to clobber one."""
        root = Path(root)
        started = (root / "config.json").exists()
        if resume and overwrite:
            raise UsageError("--resume and --overwrite contradict each other; pass one of them")
        if resume and not started:
            raise UsageError(f"{root}: no run to resume here (no config.json); drop --resume to start it")
        if started and not resume and not overwrite:
            raise UsageError(f"{root} already holds a run; pass --resume to continue it, --overwrite to "
                             "start it again, or choose another --run-name")
        if overwrite and root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        run = cls(root)
        run.remove_leftovers()
        return run

    def remove_leftovers(self) -> None:
        """Delete temporary files and folders that a killed process left behind."""
        for path in self.root.rglob(f"*{TMP_MARK}*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()

    # -- paths --------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def library_path(self) -> Path:
        return self.root / "library.jsonl"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def report_path(self) -> Path:
        return self.root / "report.html"

    def round_dir(self, k: int) -> Path:
        return self.root / f"round_{k}"

    def artifact(self, k: int, name: str) -> Path:
        return self.round_dir(k) / name

    def has(self, k: int, name: str) -> bool:
        """Whether round k's artifact `name` is complete (it exists under its final name)."""
        return self.artifact(k, name).exists()

    def rounds_done(self) -> list[int]:
        """Rounds whose metrics.json exists (a round writes it last), in order."""
        done = []
        for path in self.root.glob("round_*/metrics.json"):
            suffix = path.parent.name.removeprefix("round_")
            if suffix.isdigit():
                done.append(int(suffix))
        return sorted(done)

    def round_metrics(self) -> Iterator[dict[str, Any]]:
        for k in self.rounds_done():
            yield read_json(self.artifact(k, "metrics.json"))

    def latest_adapter(self, before: int | None = None) -> Path | None:
        """The adapter of the last round (before round `before`) that trained one."""
        for path in sorted(self.root.glob("round_*/adapter"), key=lambda p: int(p.parent.name[6:]), reverse=True):
            k = int(path.parent.name[6:])
            if (before is None or k < before) and (path / "adapter_config.json").exists():
                return path
        return None

    def rebuild_metrics_log(self) -> Path:
        """`metrics.jsonl`: one line per finished round, rewritten whole (never duplicated on resume)."""
        return write_jsonl_atomic(self.metrics_path, self.round_metrics())
