"""The generated shapes world: layout, determinism, geometry, balance, reference programs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from viprog.executor.result import ExecutionResult
from viprog.primitives import get_profile, vocab
from viprog.primitives.local import run_unsandboxed
from viprog.tasks import TASKS, DataError
from viprog.tasks.shapes import ensure_world
from viprog.tasks.shapes_world import GAP, WorldConfig, render, sample_scene

SMALL = {"questions": {"train": 70, "val": 10, "test": 70}, "progress": False}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return TASKS.get("shapes")(data_dir=tmp_path_factory.mktemp("w") / "world", **SMALL).world()


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_world_is_written_in_gqa_layout(world):
    for split in ("train", "val", "test"):
        assert (world / f"{split}_balanced_questions.json").is_file()
        assert (world / f"{split}_sceneGraphs.json").is_file()
        assert (world / f"{split}_refexps.jsonl").is_file()
    assert list((world / "images").glob("*.png"))
    assert json.loads((world / "world.json").read_text())["counts"]["test"]["questions"] == 70


def test_generation_is_bit_for_bit_deterministic(tmp_path, world):
    again = TASKS.get("shapes")(data_dir=tmp_path / "again", **SMALL).world()
    assert _digest(again) == _digest(world)


def test_another_seed_gives_another_world(tmp_path, world):
    other = TASKS.get("shapes")(data_dir=tmp_path / "other", seed=1, **SMALL).world()
    assert _digest(other)["test_balanced_questions.json"] != _digest(world)["test_balanced_questions.json"]


def test_objects_keep_a_gap_and_the_pinned_sizes():
    cfg = WorldConfig()
    for index in range(40):
        objs = sample_scene(cfg, "train", index).objects
        for a in objs:
            across = max(a.w, a.h)
            assert (14 - 2 <= across <= 18) if a.size == "small" else (26 - 4 <= across <= 34)
            for b in objs:
                if a is not b:
                    assert (a.x + a.w + GAP <= b.x or b.x + b.w + GAP <= a.x or a.y + a.h + GAP <= b.y
                            or b.y + b.h + GAP <= a.y)


def test_scene_graph_boxes_are_tight_around_the_drawn_pixels():
    scene = sample_scene(WorldConfig(), "test", 3)
    pixels = np.asarray(render(scene))
    for o in scene.objects:
        ys, xs = np.nonzero(np.all(np.abs(pixels.astype(int) - o.rgb) < 2, axis=-1))
        inside = (xs >= o.x) & (xs < o.x + o.w) & (ys >= o.y) & (ys < o.y + o.h)
        assert (xs[inside].min(), xs[inside].max() + 1) == (o.x, o.x + o.w)
        assert (ys[inside].min(), ys[inside].max() + 1) == (o.y, o.y + o.h)


def test_scene_graphs_use_the_pinned_vocabulary(world):
    graphs = json.loads((world / "test_sceneGraphs.json").read_text())
    for graph in graphs.values():
        for obj in graph["objects"].values():
            assert obj["name"] in vocab.SHAPES
            color, size = obj["attributes"]
            assert color in vocab.COLORS and size in vocab.SIZES
            assert {r["name"] for r in obj["relations"]} <= {"to the left of", "to the right of", "above", "below"}


def test_examples_carry_types_graphs_and_reference_programs(world):
    examples = TASKS.get("shapes")(data_dir=world).examples("test")
    assert len(examples) == 70
    assert len({ex.question_type for ex in examples}) == 14
    assert all(ex.meta["scene_graph"]["objects"] and "def execute_command" in ex.reference_program for ex in examples)


def test_a_constant_answer_scores_low(world):
    task = TASKS.get("shapes")(data_dir=world)
    baseline = task.majority_baseline(task.examples("train"), task.examples("test"))
    assert baseline["accuracy"] < 0.4


@pytest.mark.parametrize("profile", ["scene-graph", "shapes"])
def test_reference_programs_answer_correctly(world, profile):
    task = TASKS.get("shapes")(data_dir=world)
    examples = task.examples("test")
    right = sum(task.reward(ex, ExecutionResult(answer=run_unsandboxed(
        ex.reference_program, task.load_image(ex), get_profile(profile), ex.meta))) for ex in examples)
    assert right / len(examples) >= (0.99 if profile == "scene-graph" else 0.9)


@pytest.mark.parametrize("name", ["shapes-refer", "shapes-captions"])
def test_grounding_and_retrieval_references_score_under_scene_graph(world, name):
    task = TASKS.get(name)(data_dir=world)
    examples = task.examples("test")
    assert examples
    rewards = [task.reward(ex, ExecutionResult(answer=run_unsandboxed(
        ex.reference_program, task.load_image(ex), get_profile("scene-graph"), ex.meta))) for ex in examples]
    assert sum(rewards) == len(rewards)


def test_a_wrong_box_scores_zero_on_the_grounding_split(world):
    task = TASKS.get("shapes-refer")(data_dir=world)
    ex = task.examples("test", limit=1)[0]
    assert task.reward(ex, ExecutionResult(answer={"type": "ImagePatch", "box": [0, 0, 1, 1]})) == 0.0
    assert task.reward(ex, ExecutionResult(answer={"type": "ImagePatch", "box": list(ex.box)})) == 1.0


def test_caption_examples_offer_both_captions_and_expect_the_true_one(world):
    for ex in TASKS.get("shapes-captions")(data_dir=world).examples("test"):
        assert ex.answer in ex.choices and len(set(ex.choices)) == 2
        assert all(c in ex.query for c in ex.choices)


def test_an_existing_world_is_reused_not_regenerated(world):
    marker = world / "world.json"
    before = marker.stat().st_mtime_ns
    assert ensure_world(WorldConfig(seed=5), world, progress=False) == world
    assert marker.stat().st_mtime_ns == before


def test_a_non_empty_folder_that_is_no_world_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a shapes world"):
        TASKS.get("shapes")(data_dir=tmp_path, **SMALL).examples("test")


def test_the_default_folder_is_named_by_the_settings_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("VIPROG_CACHE", str(tmp_path))
    task = TASKS.get("shapes")(**SMALL)
    assert task.world() == tmp_path / "shapes" / task.world_config().digest()
    assert not [p for p in (tmp_path / "shapes").iterdir() if p.name.startswith(".")]  # no temp folder left


def test_an_unknown_world_option_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="unknown shapes-world option"):
        TASKS.get("shapes")(data_dir=tmp_path, sead=3).examples("test")


def test_the_hard_world_has_more_objects_and_relation_chains(tmp_path):
    cfg = WorldConfig.hard()
    assert min(len(sample_scene(cfg, "train", i).objects) for i in range(20)) >= 6
    task = TASKS.get("shapes-hard")(data_dir=tmp_path / "hard", **SMALL)
    refs = TASKS.get("shapes-refer")(data_dir=task.world()).examples("train")
    assert any(ex.question_type == "refer_chain" for ex in refs)


def test_cli_stats_prints_splits_and_the_majority_baseline(world, capsys):
    from viprog.cli import main

    assert main(["tasks", "shapes", "--stats", "--data-dir", str(world)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["splits"]["test"]["examples"] == 70
    assert 0 <= stats["majority_baseline"]["accuracy"] < 0.5
