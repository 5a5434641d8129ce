"""GQA: compositional visual question answering over real images, in GQA's own files.

Why this loader matters beyond GQA: the shapes world is written in GQA's file layout and
read back through this class, so the default task exercises it on every run. The
official layout of `--data-dir`:

    {split}_balanced_questions.json   {qid: {"imageId", "question", "answer", "types", ...}}
    {split}_sceneGraphs.json          optional: {imageId: {"width", "height", "objects"}}
    images/{imageId}.jpg              (or .png)

Splits are GQA's `train`, `val`, `testdev` (`test` is accepted for `testdev`). Without
`--data-dir`, questions and images come from the Hugging Face hub (`lmms-lab/GQA`); a
folder saved with `datasets`' `save_to_disk` (columns `question`, `answer`, `image`,
optional `id`, `imageId`, `types`) is read the same way. Reward: exact match after
GQA-style answer normalisation; metrics: accuracy, overall and per question type (GQA's
structural type by default: verify / query / choose / logical / compare).

Default splits: train for the self-training pool, val for the held-out evaluation of each
round (it has answers and scene graphs, so the `scene-graph` profile can tell program
errors from perception errors). The balanced test-dev split (12,578 questions on 398
images), on which ViperGPT and ViReP report GQA accuracy, is kept for the final
`viprog eval --split testdev`: choosing rounds or settings on it would fit the benchmark.

At its real size (943k train questions on 72k images, 75k train scene graphs) loading
both files whole with `json.load` peaks above 6 GB for the train split alone, almost all
of it fields a round never reads. So the folder is read without building the files'
objects: questions are parsed one record at a time into `Example`s, and scene graphs are
read per image, on first use, through an index of byte offsets built once per file and
cached under `$VIPROG_CACHE/gqa-index/` (built again when the file's size or modification
time changes). An example's `meta` is then a `SceneGraphMeta`, a mapping equal to
`{"scene_graph": graph}`. `bench/gqa_scale.py` measures both ways side by side on files
of the real sizes (bench/results/gqa_scale.json).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from viprog.cache import cache_root
from viprog.runs import write_json_atomic
from viprog.tasks.answers import exact_match
from viprog.tasks.base import TASKS, DataError, Example, Task, iter_json_object
from viprog.tasks.hfdata import PREFIX, HFImages, column, is_saved_dataset, load_hub, load_saved
from viprog.tasks.seeds import GQA_SEEDS

if TYPE_CHECKING:
    from viprog.executor.result import ExecutionResult

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")
#: parsed scene graphs kept per file (the images a batch of rollouts is working on)
GRAPHS_KEPT = 1024
INDEX_VERSION = 1
#: scene-graph files smaller than this are indexed in memory on every load (a fraction of
#: a second), never cached: no file in the cache per generated shapes world or test folder
CACHE_INDEX_FROM_BYTES = 16 << 20


def read_json(path: Path) -> Any:
    """A JSON file's content, or a one-line DataError naming the file and the problem."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc.__class__.__name__})") from None


def index_file(path: Path) -> Path:
    """Where the byte-offset index of the scene-graph file `path` is cached."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    return cache_root() / "gqa-index" / f"{path.stem}-{digest}.json"


def graph_index(path: Path, progress: bool = True) -> dict[str, tuple[int, int]]:
    """{imageId: (byte offset, length)} of each non-empty scene graph in `path`; for a
    file of `CACHE_INDEX_FROM_BYTES` or more, from the cache when it was built from this
    very file (same path, size and modification time), else built and cached."""
    stat = path.stat()
    cached = index_file(path) if stat.st_size >= CACHE_INDEX_FROM_BYTES else None
    stamp = {"version": INDEX_VERSION, "file": str(path.resolve()), "size": stat.st_size,
             "mtime_ns": stat.st_mtime_ns}
    if cached is not None:
        try:
            saved = json.loads(cached.read_text(encoding="utf-8"))
            if saved["stamp"] == stamp:
                return {key: (int(at[0]), int(at[1])) for key, at in saved["index"].items()}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass  # no cache yet, another file's, or damaged: build it again
    index = {key: (start, end - start)
             for key, value, start, end in iter_json_object(path, "an object {imageId: scene graph}", "latin-1",
                                                            progress) if value}
    if cached is not None:
        try:
            write_json_atomic(cached, {"stamp": stamp, "index": index})
            log.info("scene-graph index of %s written to %s", path, cached)
        except OSError as exc:
            log.warning("cannot cache the scene-graph index of %s in %s (%s); it is built again next time",
                        path, cached, exc)
    return index


class SceneGraphs:
    """The scene graphs of one `{split}_sceneGraphs.json`, read per image through its
    byte-offset index; the last `GRAPHS_KEPT` parsed graphs are kept (and shared)."""

    def __init__(self, path: Path, progress: bool = True) -> None:
        self.path = path
        self.index = graph_index(path, progress)
        self.graph = functools.lru_cache(maxsize=GRAPHS_KEPT)(self._read)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.index

    def _read(self, image_id: str) -> Any:
        offset, length = self.index[image_id]
        try:
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                return json.loads(fh.read(length))
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read ({exc.__class__.__name__})") from None
        except ValueError:
            raise DataError(f"{self.path}: the scene graph of image {image_id} does not parse at byte {offset} "
                            "(the file changed after it was indexed; run again)") from None


class SceneGraphMeta(Mapping[str, Any]):
    """An example's `meta`, `{"scene_graph": graph}`, whose graph is read on first use.

    Equal to the plain dict (Mapping equality); pickles, copies to `dict(meta)` and
    prints as the plain dict."""

    __slots__ = ("graphs", "image_id")

    def __init__(self, graphs: SceneGraphs, image_id: str) -> None:
        self.graphs, self.image_id = graphs, image_id

    def __getitem__(self, key: str) -> Any:
        if key != "scene_graph":
            raise KeyError(key)
        return self.graphs.graph(self.image_id)

    def __iter__(self) -> Iterator[str]:
        return iter(("scene_graph",))

    def __len__(self) -> int:
        return 1

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (dict(self),)

    def __repr__(self) -> str:
        return repr(dict(self))


@TASKS.register("gqa")
class GQATask(Task):
    """GQA balanced questions (compositional VQA); reward: exact match of the normalised answer."""

    name: ClassVar[str] = "gqa"
    default_profile: ClassVar[str] = "neural"
    #: self-training holds out val (it has answers and scene graphs); testdev is for the final `viprog eval`
    default_splits: ClassVar[tuple[str, str]] = ("train", "val")
    #: which of the record's `types` names the question type in metrics
    question_type_key: ClassVar[str] = "structural"
    hf_name: ClassVar[str] = "lmms-lab/GQA"

    def __init__(self, data_dir: str | Path | None = None, **options: Any) -> None:
        super().__init__(data_dir, **options)
        self.hf_images = HFImages()
        self._cache: dict[str, list[Example]] = {}

    def splits(self) -> list[str]:
        return ["train", "val", "testdev"]

    # -- loading ------------------------------------------------------------------------
    def root(self) -> Path | None:
        """The folder to read (None: the hub)."""
        return self.data_dir

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in self._cache:
            root = self.root()
            if root is None:
                self._cache[split] = self._from_hf(split, None)
            elif is_saved_dataset(root):
                self._cache[split] = self._from_hf(split, root)
            else:
                self._cache[split] = self._from_folder(root, split)
        found = self._cache[split]
        return found[:limit] if limit is not None else list(found)

    def questions_file(self, root: Path, split: str) -> Path:
        if not root.is_dir():
            raise DataError(f"{root}: no such folder (pass --data-dir: GQA's *_balanced_questions.json and images/)")
        path = root / f"{split}_balanced_questions.json"
        if split == "test" and not path.exists():
            path = root / "testdev_balanced_questions.json"
        if not path.exists():
            have = sorted(p.name for p in root.glob("*_balanced_questions.json"))
            raise DataError(f"{path}: file not found (this folder has: {', '.join(have) or 'no question files'})")
        return path

    def _from_folder(self, root: Path, split: str) -> list[Example]:
        path = self.questions_file(root, split)
        progress = bool(self.options.get("progress", True))
        records = iter_json_object(path, "an object {question_id: record}", progress=progress)
        first = next(records, None)  # a file that is not an object fails here, before the rest is read
        graph_path = path.with_name(path.name.replace("_balanced_questions.json", "_sceneGraphs.json"))
        graphs = SceneGraphs(graph_path, progress) if graph_path.exists() else None
        image_dir = root / "images"
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: no such folder (GQA's images go in images/<imageId>.jpg)")
        files = {os.path.splitext(name)[0]: name for name in sorted(os.listdir(image_dir), reverse=True)
                 if name.lower().endswith(IMAGE_SUFFIXES)}
        images: dict[str, tuple[str, Mapping[str, Any] | None]] = {}  # imageId -> (path, meta), shared
        out = []
        for qid, record, _, _ in itertools.chain([first] if first else [], records):
            if not isinstance(record, dict) or "question" not in record or "imageId" not in record:
                raise DataError(f"{path}: question {qid!r} lacks a 'question' or 'imageId' field")
            if "answer" not in record:
                raise DataError(f"{path}: question {qid!r} has no 'answer' field (GQA's test/submission "
                                "questions are unanswered; use train, val or testdev)")
            image_id = str(record["imageId"])
            if image_id not in images:
                if image_id not in files:
                    self.skip("missing_image", f"{image_dir}/{image_id}.jpg: image not found (question {qid})")
                    continue
                meta = SceneGraphMeta(graphs, image_id) if graphs is not None and image_id in graphs else None
                images[image_id] = (str(image_dir / files[image_id]), meta)
            image, meta = images[image_id]
            out.append(self._example(qid, record, image, meta))
        if first and not out:
            raise DataError(f"{image_dir}: none of the images of {path.name} are there")
        return out

    def _example(self, qid: str, record: dict[str, Any], image: str, meta: Mapping[str, Any] | None) -> Example:
        types = record.get("types") or {}
        qtype = types.get(self.question_type_key) if isinstance(types, dict) else None
        return Example(id=qid, image=image, query=str(record["question"]), answer=sys.intern(str(record["answer"])),
                       question_type=sys.intern(str(qtype or "all")), image_id=sys.intern(str(record["imageId"])),
                       meta=meta if meta is not None else {}, reference_program=record.get("program"))

    def _from_hf(self, split: str, saved: Path | None) -> list[Example]:
        if saved is not None:
            rows, where = load_saved(saved, split), str(saved)
            images, image_col = rows, "image"
        else:
            name = "testdev" if split == "test" else split
            rows = load_hub(self.hf_name, name, f"{name}_balanced_instructions")
            images, where = load_hub(self.hf_name, name, f"{name}_balanced_images"), self.hf_name
            image_col = "image"
        key = f"{where}/{split}"
        self.hf_images.add(key, images, image_col)
        qcol, acol = column(rows, "question", where=where), column(rows, "answer", where=where)
        id_col = next((c for c in ("id", "question_id", "qid") if c in rows.column_names), None)
        row_of = ({str(i): n for n, i in enumerate(images["id"])} if images is not rows else None)
        out = []
        for n, record in enumerate(rows):
            image_id = str(record.get("imageId", n))
            row = n if row_of is None else row_of.get(image_id)
            if row is None:
                self.skip("missing_image", f"{where}: image {image_id} not found")
                continue
            rec = {"question": record[qcol], "answer": record[acol], "imageId": image_id,
                   "types": record.get("types") or {}}
            out.append(self._example(str(record[id_col]) if id_col else str(n), rec,
                                     self.hf_images.ref(key, row), None))
        return out

    def load_image(self, example: Example) -> np.ndarray:
        if example.image.startswith(PREFIX):
            return self.hf_images.load(example.image)
        return super().load_image(example)

    # -- scoring ------------------------------------------------------------------------
    def reward(self, example: Example, result: ExecutionResult) -> float:
        if not result.ok or example.answer is None:
            return 0.0
        return exact_match(result.answer, example.answer)

    def seed_programs(self) -> list[tuple[str, str]]:
        return list(GQA_SEEDS)
