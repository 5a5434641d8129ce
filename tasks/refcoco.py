"""`refcoco`: grounding — a referring expression in, the referred object's patch out.

Why its own loader: RefCOCO, RefCOCO+ and RefCOCOg ship as the `refer` toolkit's files —
a Python-2 pickle of references (`refs(unc).p`, `refs(umd).p`, `refs(google).p`) beside
COCO-format `instances.json` — over the COCO train2014 images. `--data-dir` is the
dataset folder holding both files (or its parent, with `refcoco/`, `refcoco+/`,
`refcocog/` inside; option `dataset`); images are found in `images/mscoco/images/train2014`,
`images/train2014`, `train2014` or `images` under it or its parent (option `image_dir`).
The pickle is read with an unpickler that refuses every class, so a tampered file cannot
run code. One example per sentence; question type = the target's COCO category.
`split="test"` on the unc splits means testA + testB.

Also readable through HF `datasets` (option `hf_name`, default `lmms-lab/RefCOCO`, or a
`save_to_disk` folder as `--data-dir`) with columns `image`, `bbox` (COCO x, y, w, h) and
the expression(s) in `sentences` / `captions` / `answer` / `question`.

Reward: 1 when the returned ImagePatch's box has IoU ≥ 0.5 with the target (option
`box_reward="iou"`: the IoU itself); metrics add `acc@0.5` and `mean_iou`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from viprog.tasks.answers import AnswerOrBoxReward
from viprog.tasks.base import TASKS, DataError, Example, Task
from viprog.tasks.gqa import read_json
from viprog.tasks.hfdata import PREFIX, HFImages, column, is_saved_dataset, load_hub, load_saved
from viprog.tasks.seeds import REFCOCO_SEEDS

SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


class _DataOnly(pickle.Unpickler):
    """Unpickles plain data only (dicts, lists, strings, numbers): any class is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a refs file holds plain data only)")


def read_refs(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, "rb") as fh:
            refs = _DataOnly(fh, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a RefCOCO refs pickle ({exc})") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DataError(f"{path}: expected a list of reference dicts")
    return refs


def _sentences(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [s["sent"] if isinstance(s, dict) else str(s) for s in value]
    return []


@TASKS.register("refcoco")
class RefCOCOTask(AnswerOrBoxReward, Task):
    """RefCOCO / RefCOCO+ / RefCOCOg referring expressions → boxes; reward: IoU ≥ 0.5."""

    name: ClassVar[str] = "refcoco"
    default_profile: ClassVar[str] = "neural"
    #: held out during self-training: val (testA / testB are the reported benchmarks)
    default_splits: ClassVar[tuple[str, str]] = ("train", "val")

    def __init__(self, data_dir: str | Path | None = None, **options: Any) -> None:
        super().__init__(data_dir, **options)
        self.hf_images = HFImages()

    def splits(self) -> list[str]:
        return ["train", "val", "test", "testA", "testB"] if self.dataset != "refcocog" else ["train", "val", "test"]

    @property
    def dataset(self) -> str:
        name = self.options.get("dataset", "refcoco")
        if name not in SPLIT_BY:
            raise DataError(f"unknown RefCOCO dataset {name!r}; use one of {', '.join(SPLIT_BY)}")
        return name

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if self.data_dir is None:
            found = self._from_hf(load_hub(self.options.get("hf_name", "lmms-lab/RefCOCO"), split), split)
        elif is_saved_dataset(self.data_dir):
            found = self._from_hf(load_saved(self.data_dir, split), split)
        else:
            found = self._from_folder(split)
        return found[:limit] if limit is not None else found

    def _folder(self) -> Path:
        assert self.data_dir is not None
        if not self.data_dir.is_dir():
            raise DataError(f"{self.data_dir}: no such folder (RefCOCO's refs(*).p and instances.json go there)")
        if list(self.data_dir.glob("refs(*).p")):
            return self.data_dir
        if (self.data_dir / self.dataset).is_dir():
            return self.data_dir / self.dataset
        raise DataError(f"{self.data_dir}: no refs(*).p file (nor a {self.dataset}/ folder with one)")

    def _image_dir(self, folder: Path) -> Path:
        if self.options.get("image_dir"):
            return Path(self.options["image_dir"])
        for base in (folder, folder.parent):
            for sub in ("images/mscoco/images/train2014", "images/train2014", "train2014", "images"):
                if (base / sub).is_dir():
                    return base / sub
        raise DataError(f"{folder}: no COCO train2014 image folder found near it (pass image_dir=...)")

    def _from_folder(self, split: str) -> list[Example]:
        folder = self._folder()
        split_by = self.options.get("split_by", SPLIT_BY[self.dataset])
        refs_path = folder / f"refs({split_by}).p"
        refs = read_refs(refs_path)
        instances = read_json(folder / "instances.json")
        if not isinstance(instances, dict) or not all(k in instances for k in ("images", "annotations")):
            raise DataError(f"{folder / 'instances.json'}: not COCO instances (needs 'images' and 'annotations')")
        images = {im["id"]: im for im in instances["images"]}
        anns = {a["id"]: a for a in instances["annotations"]}
        categories = {c["id"]: c["name"] for c in instances.get("categories", [])}
        wanted = {"test": {"test", "testA", "testB"}}.get(split, {split})
        image_dir = self._image_dir(folder)
        out = []
        for ref in refs:
            if ref.get("split") not in wanted:
                continue
            ann, image = anns.get(ref.get("ann_id")), images.get(ref.get("image_id"))
            if ann is None or image is None:
                raise DataError(f"{refs_path}: ref {ref.get('ref_id')} names an annotation or image that "
                                f"{folder / 'instances.json'} lacks")
            path = image_dir / image["file_name"]
            if not path.is_file():
                self.skip("missing_image", f"{path}: image not found (ref {ref.get('ref_id')})")
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            for k, sentence in enumerate(_sentences(ref.get("sentences"))):
                sent_id = ref["sentences"][k].get("sent_id", k) if isinstance(ref["sentences"][k], dict) else k
                out.append(Example(id=f"{ref.get('ref_id')}_{sent_id}", image=str(path), query=sentence,
                                   box=(x, y, x + w, y + h), image_id=str(image["id"]),
                                   question_type=categories.get(ref.get("category_id"), "all")))
        if not out and refs:
            have = sorted({str(r.get("split")) for r in refs})
            raise DataError(f"{refs_path}: no references in split {split!r} (it has: {', '.join(have)})")
        return out

    def _from_hf(self, rows: Any, split: str) -> list[Example]:
        where = f"refcoco/{split}"
        self.hf_images.add(where, rows, column(rows, "image", where=where))
        sent_col = column(rows, "sentences", "captions", "answer", "question", where=where)
        box_col = column(rows, "bbox", where=where)
        out = []
        for n, record in enumerate(rows):
            x, y, w, h = (float(v) for v in record[box_col])
            rid = record.get("question_id", record.get("ref_id", n))
            for k, sentence in enumerate(_sentences(record[sent_col])):
                out.append(Example(id=f"{rid}_{k}", image=self.hf_images.ref(where, n), query=sentence,
                                   box=(x, y, x + w, y + h), image_id=str(record.get("image_id", n))))
        return out

    def load_image(self, example: Example) -> np.ndarray:
        if example.image.startswith(PREFIX):
            return self.hf_images.load(example.image)
        return super().load_image(example)

    def seed_programs(self) -> list[tuple[str, str]]:
        return list(REFCOCO_SEEDS)
