"""`sugarcrepe`: image-text retrieval — tell the true caption from a hard negative.

Why SugarCrepe: its negatives (replace / swap / add an attribute, object or relation)
are fluent, so a program has to check the composition, not the grammar. The official
layout of `--data-dir`: one JSON file per negative type (`replace_att.json`,
`swap_obj.json`, ...), each `{id: {"filename", "caption", "negative_caption"}}`, and the
COCO val2017 images in `val2017/` or `images/` (or the `image_dir` option).

Two ways to ask (option `mode`): `choice` (default) — one example per pair, the query
quotes both captions in a fixed pseudo-random order and the program returns the caption
it picks; `yesno` — two examples per pair ("Does this caption describe the image: …?"),
and `pair_accuracy` counts pairs with both right. SugarCrepe ships one evaluation set;
viprog splits it by a hash of the pair id: `train` 30 %, `val` 10 %, `test` 60 %
(`all`: everything).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from viprog.tasks.answers import example_reward
from viprog.tasks.base import TASKS, DataError, Example, Task
from viprog.tasks.gqa import read_json
from viprog.tasks.seeds import SUGARCREPE_SEEDS

if TYPE_CHECKING:
    from viprog.executor.result import ExecutionResult

SPLITS = {"train": range(3), "val": range(3, 4), "test": range(4, 10), "all": range(10)}


def _bucket(key: str) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % 10


def read_sugarcrepe(task: Task, files: Sequence[Path], image_dir: Path, mode: str = "choice",
                    split: str = "all", limit: int | None = None) -> list[Example]:
    """Examples from SugarCrepe JSON files (one per negative type) and their image folder."""
    if mode not in ("choice", "yesno"):
        raise DataError(f"unknown sugarcrepe mode {mode!r}; use 'choice' or 'yesno'")
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: no such image folder (pass image_dir=... or put the images in images/)")
    out: list[Example] = []
    for path in files:
        items = read_json(path)
        if not isinstance(items, dict):
            raise DataError(f"{path}: expected an object {{id: {{filename, caption, negative_caption}}}}")
        for pid, item in items.items():
            if limit is not None and len(out) >= limit:
                return out
            key = f"{path.stem}/{pid}"
            if _bucket(key) not in SPLITS[split]:
                continue
            if not isinstance(item, dict) or not all(isinstance(item.get(k), str)
                                                     for k in ("filename", "caption", "negative_caption")):
                raise DataError(f"{path}: pair {pid!r} needs string fields filename, caption, negative_caption")
            image = image_dir / item["filename"]
            if not image.is_file():
                task.skip("missing_image", f"{image}: image not found (pair {key})")
                continue
            pos, neg = item["caption"], item["negative_caption"]
            common = {"image": str(image), "question_type": path.stem, "image_id": Path(item["filename"]).stem}
            if mode == "choice":
                choices = (pos, neg) if _bucket(key + "/order") % 2 == 0 else (neg, pos)
                out.append(Example(id=key, query=f'Which caption describes the image: "{choices[0]}" or '
                                   f'"{choices[1]}"?', answer=pos, choices=choices,
                                   reference_program=item.get("program"), **common))
            else:
                for tag, caption, answer in (("pos", pos, "yes"), ("neg", neg, "no")):
                    out.append(Example(id=f"{key}:{tag}", query=f'Does this caption describe the image: "{caption}"?',
                                       answer=answer, choices=("yes", "no"), **common))
    return out


@TASKS.register("sugarcrepe")
class SugarCrepeTask(Task):
    """SugarCrepe caption pairs (image-text retrieval); reward: the true caption picked."""

    name: ClassVar[str] = "sugarcrepe"
    default_profile: ClassVar[str] = "neural"

    def splits(self) -> list[str]:
        return list(SPLITS)

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if self.data_dir is None:
            raise DataError("the sugarcrepe task needs --data-dir: the SugarCrepe *.json files and the COCO "
                            "val2017 images (in val2017/ or images/)")
        if not self.data_dir.is_dir():
            raise DataError(f"{self.data_dir}: no such folder")
        if split not in SPLITS:
            raise DataError(f"unknown sugarcrepe split {split!r}; splits: {', '.join(SPLITS)}")
        files = sorted(self.data_dir.glob("*.json"))
        if not files:
            raise DataError(f"{self.data_dir}: no SugarCrepe *.json files (e.g. replace_att.json)")
        found = [self.data_dir / d for d in ("val2017", "images") if (self.data_dir / d).is_dir()]
        image_dir = Path(self.options["image_dir"]) if self.options.get("image_dir") else (
            found[0] if found else self.data_dir / "images")
        return read_sugarcrepe(self, files, image_dir, self.options.get("mode", "choice"), split, limit)

    def reward(self, example: Example, result: ExecutionResult) -> float:
        return example_reward(example, result)

    def metrics(self, examples: Sequence[Example], results: Sequence[ExecutionResult],
                rewards: Sequence[float]) -> dict[str, Any]:
        out = super().metrics(examples, results, rewards)
        pairs: dict[str, list[float]] = defaultdict(list)
        for ex, r in zip(examples, rewards):
            if ":" in ex.id:
                pairs[ex.id.rsplit(":", 1)[0]].append(float(r))
        if pairs:
            out["pair_accuracy"] = sum(min(v) for v in pairs.values()) / len(pairs)
        return out

    def seed_programs(self) -> list[tuple[str, str]]:
        return list(SUGARCREPE_SEEDS)
