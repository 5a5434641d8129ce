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

Default splits: train for the self-training pool, testdev for evaluation — the balanced
test-dev split (12,578 questions on 398 images) is what ViperGPT and ViReP report GQA
accuracy on, and it ships with GQA's question files and on the hub; val (132,062
questions) stays free for choosing settings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from viprog.tasks.answers import exact_match
from viprog.tasks.base import TASKS, DataError, Example, Task
from viprog.tasks.hfdata import PREFIX, HFImages, column, is_saved_dataset, load_hub, load_saved

if TYPE_CHECKING:
    from viprog.executor.result import ExecutionResult

IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


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


@TASKS.register("gqa")
class GQATask(Task):
    """GQA balanced questions (compositional VQA); reward: exact match of the normalised answer."""

    name: ClassVar[str] = "gqa"
    default_profile: ClassVar[str] = "neural"
    #: which of the record's `types` names the question type in metrics
    question_type_key: ClassVar[str] = "structural"
    hf_name: ClassVar[str] = "lmms-lab/GQA"
    #: evaluation on testdev, as ViperGPT and ViReP report GQA (see the module docstring)
    default_splits: ClassVar[tuple[str, str]] = ("train", "testdev")

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
        questions = read_json(path)
        if not isinstance(questions, dict):
            raise DataError(f"{path}: expected an object {{question_id: record}}, got a {type(questions).__name__}")
        graph_path = path.with_name(path.name.replace("_balanced_questions.json", "_sceneGraphs.json"))
        graphs = read_json(graph_path) if graph_path.exists() else {}
        image_dir = root / "images"
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: no such folder (GQA's images go in images/<imageId>.jpg)")
        files = {os.path.splitext(name)[0]: name for name in sorted(os.listdir(image_dir), reverse=True)
                 if name.lower().endswith(IMAGE_SUFFIXES)}
        out = []
        for qid, record in questions.items():
            if not isinstance(record, dict) or "question" not in record or "imageId" not in record:
                raise DataError(f"{path}: question {qid!r} lacks a 'question' or 'imageId' field")
            if "answer" not in record:
                raise DataError(f"{path}: question {qid!r} has no 'answer' field (GQA's test/submission "
                                "questions are unanswered; use train, val or testdev)")
            image_id = str(record["imageId"])
            if image_id not in files:
                self.skip("missing_image", f"{image_dir}/{image_id}.jpg: image not found (question {qid})")
                continue
            out.append(self._example(str(qid), record, str(image_dir / files[image_id]), graphs.get(image_id)))
        if questions and not out:
            raise DataError(f"{image_dir}: none of the images of {path.name} are there")
        return out

    def _example(self, qid: str, record: dict[str, Any], image: str, graph: Any) -> Example:
        types = record.get("types") or {}
        qtype = types.get(self.question_type_key) if isinstance(types, dict) else None
        return Example(id=qid, image=image, query=str(record["question"]), answer=str(record["answer"]),
                       question_type=str(qtype or "all"), image_id=str(record["imageId"]),
                       meta={"scene_graph": graph} if graph else {},
                       reference_program=record.get("program"))

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
        from viprog.tasks.seeds import GQA_SEEDS

        return list(GQA_SEEDS)
