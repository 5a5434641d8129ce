"""`shapes`: the embedded default task — a generated world in GQA's own file layout.

Why generated and why GQA's layout: a user with no dataset and no network still gets a
task whose questions need composition (attributes, counts, relations, logic), whose
annotations are exact, and which is read back through the `gqa` loader (so that code is
exercised by default). The world is generated once per settings into
`$VIPROG_CACHE/shapes/<settings-digest>/` (or `--data-dir`), atomically (a temporary
folder renamed into place), bit-for-bit deterministic under a seed:

    images/<imageId>.png
    {split}_balanced_questions.json  {split}_sceneGraphs.json     (GQA format)
    {split}_refexps.jsonl                                          (grounding, JSONL format)
    sugarcrepe/{split}/{type}.json                                 (retrieval, SugarCrepe format)
    world.json                                                     (settings and counts; written last)

Three tasks share one world: `shapes` (questions), `shapes-refer` (referring
expressions → boxes) and `shapes-captions` (caption pairs); `shapes-hard` is `shapes` on
the harder world (more objects, relation chains of depth 2).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from tqdm import tqdm

from viprog.cache import cache_root
from viprog.tasks.answers import AnswerOrBoxReward, example_reward
from viprog.tasks.base import TASKS, DataError, Example, Task
from viprog.tasks.gqa import GQATask, read_json
from viprog.tasks.jsonl import read_jsonl
from viprog.tasks.seeds import SHAPES_CAPTION_SEEDS, SHAPES_REFER_SEEDS, SHAPES_SEEDS
from viprog.tasks.shapes_captions import caption_candidates, refexps
from viprog.tasks.shapes_questions import candidates
from viprog.tasks.shapes_world import WorldConfig, render, sample_scene, scene_graph
from viprog.tasks.sugarcrepe import read_sugarcrepe

if TYPE_CHECKING:
    from viprog.executor.result import ExecutionResult

T = TypeVar("T")
MARKER = "world.json"


def balance(rng: random.Random, items: Sequence[T], n: int, kind: Callable[[T], str],
            answer: Callable[[T], str]) -> list[T]:
    """Pick `n` items with equal shares per kind and, within a kind, answers taken in turn
    (so no answer dominates its kind); shortfalls are filled from what is left."""
    by_kind: dict[str, dict[str, list[T]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        by_kind[kind(item)][answer(item)].append(item)
    kinds = sorted(by_kind)
    chosen: list[T] = []
    for i, k in enumerate(kinds):
        quota = n // len(kinds) + (i < n % len(kinds))
        groups = [by_kind[k][a] for a in sorted(by_kind[k])]
        for group in groups:
            rng.shuffle(group)
        taken = 0
        while taken < quota and any(groups):
            order = list(range(len(groups)))
            rng.shuffle(order)
            for g in order:
                if groups[g] and taken < quota:
                    chosen.append(groups[g].pop())
                    taken += 1
    rest = [item for k in kinds for a in sorted(by_kind[k]) for item in by_kind[k][a]]
    rng.shuffle(rest)
    chosen += rest[:max(0, n - len(chosen))]
    rng.shuffle(chosen)
    return chosen


def generate(cfg: WorldConfig, out: Path, progress: bool = True) -> None:
    """Write the world for `cfg` into the new folder `out` (see the module docstring)."""
    seed_queries = {query for query, _ in SHAPES_SEEDS + SHAPES_REFER_SEEDS}  # seeds stay out of val and test
    (out / "images").mkdir(parents=True)
    counts: dict[str, dict[str, int]] = {}
    total = sum(cfg.images_in(s) for s in cfg.questions)
    bar = tqdm(total=total, desc="generating the shapes world", unit="image", disable=not progress)
    for split in cfg.questions:
        rng = random.Random(f"{cfg.seed}/{split}/questions")
        graphs, questions, refs, pairs = {}, [], [], []
        for index in range(cfg.images_in(split)):
            scene = sample_scene(cfg, split, index)
            render(scene).save(out / "images" / f"{scene.image_id}.png", optimize=False)
            graphs[scene.image_id] = scene_graph(scene, cfg.margin)
            questions += [(scene.image_id, x) for x in candidates(rng, scene, cfg.margin, cfg.level)
                          if split == "train" or x.text not in seed_queries]
            refs += [(scene.image_id, x) for x in refexps(rng, scene, cfg.margin, cfg.level)
                     if split == "train" or x.text not in seed_queries]
            pairs += [(scene.image_id, x) for x in caption_candidates(rng, scene, cfg.margin)]
            bar.update()
        n_images = cfg.images_in(split)
        picked = balance(rng, questions, cfg.questions[split], lambda x: x[1].qtype, lambda x: x[1].answer)
        records = {f"{split}_{k:05d}": {
            "imageId": image_id, "question": x.text, "answer": x.answer, "isBalanced": True,
            "types": {"structural": x.structural, "semantic": x.semantic, "detailed": x.qtype},
            "program": x.program} for k, (image_id, x) in enumerate(picked)}
        (out / f"{split}_balanced_questions.json").write_text(json.dumps(records, indent=1))
        (out / f"{split}_sceneGraphs.json").write_text(json.dumps(graphs))
        picked_refs = balance(rng, refs, n_images * cfg.refexps_per_image, lambda x: x[1].qtype, lambda x: "")
        with open(out / f"{split}_refexps.jsonl", "w") as fh:
            fh.writelines(json.dumps({"id": f"{split}_ref_{k:05d}", "image": f"images/{image_id}.png",
                                     "image_id": image_id,
                                     "question": x.text, "box": list(x.box), "question_type": x.qtype,
                                     "program": x.program}) + "\n" for k, (image_id, x) in enumerate(picked_refs))
        picked_pairs = balance(rng, pairs, n_images * cfg.captions_per_image, lambda x: x[1].qtype, lambda x: "")
        by_type: dict[str, dict[str, Any]] = defaultdict(dict)
        for k, (image_id, x) in enumerate(picked_pairs):
            by_type[x.qtype][f"{split}_cap_{k:05d}"] = {"filename": f"{image_id}.png", "caption": x.positive,
                                                         "negative_caption": x.negative, "program": x.program}
        (out / "sugarcrepe" / split).mkdir(parents=True)
        for qtype, items in sorted(by_type.items()):
            (out / "sugarcrepe" / split / f"{qtype}.json").write_text(json.dumps(items, indent=1))
        counts[split] = {"images": n_images, "questions": len(records), "refexps": len(picked_refs),
                         "caption_pairs": len(picked_pairs)}
    bar.close()
    marker = {"settings": dataclasses.asdict(cfg), "digest": cfg.digest(), "counts": counts}
    (out / MARKER).write_text(json.dumps(marker, indent=1))


def ensure_world(cfg: WorldConfig, data_dir: Path | None = None, progress: bool = True) -> Path:
    """The folder holding the world for `cfg`, generating it first when it is not there."""
    target = data_dir if data_dir is not None else cache_root() / "shapes" / cfg.digest()
    if (target / MARKER).exists():
        return target
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataError(f"{target}: not a shapes world (no {MARKER}) and not empty; pass a new or empty folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        generate(cfg, tmp / "world", progress)
        try:
            if target.exists():
                target.rmdir()  # empty, checked above
            os.rename(tmp / "world", target)
        except OSError:
            if not (target / MARKER).exists():  # not a concurrent writer that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"shapes world written to {target}", file=sys.stderr)
    return target


class _ShapesWorld:
    """The settings and folder of the world a shapes task reads."""

    data_dir: Path | None
    options: dict[str, Any]
    world_preset: ClassVar[Callable[..., WorldConfig]] = WorldConfig
    #: the generated world has a test split (unlike GQA, whose held-out default is val)
    default_splits: ClassVar[tuple[str, str]] = ("train", "test")

    def world_config(self) -> WorldConfig:
        fields = {f.name for f in dataclasses.fields(WorldConfig)}
        unknown = sorted(set(self.options) - fields - {"strict", "progress", "box_reward", "mode"})
        if unknown:
            raise DataError(f"unknown shapes-world option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        base = self.world_preset(seed=self.options.get("seed", 0))
        return dataclasses.replace(base, **{k: v for k, v in self.options.items() if k in fields})

    def world(self) -> Path:
        return ensure_world(self.world_config(), self.data_dir, bool(self.options.get("progress", True)))


@TASKS.register("shapes")
class ShapesTask(_ShapesWorld, GQATask):
    """The generated shapes world (default): compositional questions; exact-match reward."""

    name: ClassVar[str] = "shapes"
    default_profile: ClassVar[str] = "shapes"
    question_type_key: ClassVar[str] = "detailed"

    def splits(self) -> list[str]:
        return ["train", "val", "test"]

    def root(self) -> Path:
        return self.world()

    def seed_programs(self) -> list[tuple[str, str]]:
        return list(SHAPES_SEEDS)


@TASKS.register("shapes-hard")
class ShapesHardTask(ShapesTask):
    """The harder shapes world: 6–9 objects per image and relation chains of depth 2."""

    name: ClassVar[str] = "shapes-hard"
    world_preset: ClassVar[Callable[..., WorldConfig]] = WorldConfig.hard


@TASKS.register("shapes-refer")
class ShapesReferTask(_ShapesWorld, AnswerOrBoxReward, Task):
    """Grounding in the shapes world: referring expression → the object's ImagePatch (IoU ≥ 0.5)."""

    name: ClassVar[str] = "shapes-refer"
    default_profile: ClassVar[str] = "shapes"

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        root = self.world()
        graphs = read_json(root / f"{split}_sceneGraphs.json") if split in self.splits() else {}
        found = read_jsonl(self, root / f"{split}_refexps.jsonl", limit)
        return [dataclasses.replace(ex, meta={"scene_graph": graphs[ex.image_id]}) if ex.image_id in graphs else ex
                for ex in found]

    def seed_programs(self) -> list[tuple[str, str]]:
        return list(SHAPES_REFER_SEEDS)


@TASKS.register("shapes-captions")
class ShapesCaptionsTask(_ShapesWorld, Task):
    """Retrieval in the shapes world: pick the true caption of two (SugarCrepe-style negatives)."""

    name: ClassVar[str] = "shapes-captions"
    default_profile: ClassVar[str] = "shapes"

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        root = self.world()
        folder = root / "sugarcrepe" / split
        if not folder.is_dir():
            raise DataError(f"{folder}: no such split folder (splits: {', '.join(self.splits())})")
        graphs = read_json(root / f"{split}_sceneGraphs.json")
        found = read_sugarcrepe(self, sorted(folder.glob("*.json")), root / "images",
                                self.options.get("mode", "choice"), limit=limit)
        return [dataclasses.replace(ex, meta={"scene_graph": graphs[ex.image_id]}) if ex.image_id in graphs else ex
                for ex in found]

    def reward(self, example: Example, result: ExecutionResult) -> float:
        return example_reward(example, result)

    def seed_programs(self) -> list[tuple[str, str]]:
        return list(SHAPES_CAPTION_SEEDS)
