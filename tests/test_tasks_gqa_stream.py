"""GQA's streamed loader: the same Examples as loading the files whole, JSON read in
chunks (values across chunk borders, json.load's error messages), the scene-graph index
and its cache (reuse, invalidation, damage), lazy graphs, the benchmark's files."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from viprog.tasks import TASKS, DataError, Example, gqa
from viprog.tasks import base as task_base
from viprog.tasks.base import iter_json_object
from viprog.tasks.gqa import SceneGraphMeta, read_json

QUESTIONS = {
    "q1": {"imageId": "i1", "question": "Is the café sign red?", "answer": "yes", "fullAnswer": "Yes.",
           "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"},
           "semantic": [{"operation": "select", "dependencies": [], "argument": "sign (5)"}], "entailed": ["q2"]},
    "q2": {"imageId": "i1", "question": "What is left of the sign?", "answer": "tree", "types": {"structural": "query"}},
    "q3": {"imageId": "i2", "question": "How many cups?", "answer": 2, "program": "def execute_command(image):\n"
                                                                              "    return 2\n"},
    "q4": {"imageId": "i3", "question": "Is there a dog?", "answer": "no", "types": []},
    "q5": {"imageId": "gone", "question": "Where?", "answer": "here"},
    "q6": {"imageId": "i4", "question": "Empty graph?", "answer": "no", "types": {"structural": "logical"}},
}
GRAPHS = {
    "i1": {"width": 8, "height": 6, "location": "café ☕", "objects": {
        "5": {"name": "sign", "x": 1, "y": 1, "w": 3, "h": 2, "attributes": ["red"], "relations": [
            {"name": "to the right of", "object": "6"}]},
        "6": {"name": "tree", "x": 0, "y": 0, "w": 1, "h": 5, "attributes": [], "relations": []}}},
    "i2": {"width": 8, "height": 6, "objects": {"9": {"name": "cup", "x": 2, "y": 2, "w": 1, "h": 1,
                                                     "attributes": ["white"], "relations": []}}},
    "i4": {},
    "unused": {"width": 1, "height": 1, "objects": {}},
}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VIPROG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write(root: Path, questions: dict | None = None, graphs: dict | None = None, indent: int | None = None) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "val_balanced_questions.json").write_text(json.dumps(questions or QUESTIONS, indent=indent),
                                                      encoding="utf-8")
    (root / "val_sceneGraphs.json").write_text(json.dumps(GRAPHS if graphs is None else graphs, ensure_ascii=False),
                                               encoding="utf-8")
    for k, image_id in enumerate(("i1", "i2", "i3", "i4")):
        Image.new("RGB", (8, 6), (k * 40, 10, 10)).save(root / "images" / f"{image_id}.jpg")
    return root


def eager_examples(root: Path) -> list[Example]:
    """The examples as the loader built them when it read both files whole."""
    questions = json.loads((root / "val_balanced_questions.json").read_text(encoding="utf-8"))
    graphs = json.loads((root / "val_sceneGraphs.json").read_text(encoding="utf-8"))
    out = []
    for qid, r in questions.items():
        if not (root / "images" / f"{r['imageId']}.jpg").exists():
            continue
        types = r.get("types") or {}
        graph = graphs.get(r["imageId"])
        out.append(Example(id=qid, image=str(root / "images" / f"{r['imageId']}.jpg"), query=r["question"],
                           answer=str(r["answer"]), question_type=str((types.get("structural") if isinstance(types, dict)
                                                                      else None) or "all"),
                           image_id=r["imageId"], meta={"scene_graph": graph} if graph else {},
                           reference_program=r.get("program")))
    return out


@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 22])
def test_streamed_examples_equal_the_eager_ones_for_any_chunk_size(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(task_base, "_CHUNK_CHARS", chunk)
    root = write(tmp_path, indent=1)
    task = TASKS.get("gqa")(data_dir=root)
    assert task.examples("val") == eager_examples(root)
    assert task.skipped["missing_image"] == 1
    q1, q2, q3, _, q6 = task.examples("val")
    assert isinstance(q1.meta, SceneGraphMeta) and q1.meta is q2.meta  # one lazy graph per image
    assert q1.meta["scene_graph"]["location"] == "café ☕" and q6.meta == {}
    assert q3.reference_program.startswith("def execute_command") and q3.answer == "2"


def test_lazy_meta_behaves_as_the_plain_dict(tmp_path):
    task = TASKS.get("gqa")(data_dir=write(tmp_path))
    meta = task.examples("val")[0].meta
    plain = {"scene_graph": GRAPHS["i1"]}
    assert dict(meta) == plain and meta == plain and plain == meta and bool(meta)
    assert pickle.loads(pickle.dumps(meta)) == plain and type(pickle.loads(pickle.dumps(meta))) is dict
    assert copy.deepcopy(meta) == plain and repr(meta) == repr(plain)
    assert meta.get("counts") is None and list(meta) == ["scene_graph"]
    with pytest.raises(KeyError):
        meta["objects"]


@settings(max_examples=60, deadline=None)
@given(members=st.dictionaries(st.text(max_size=6), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8), max_size=6), indent=st.sampled_from([None, 0, 2]), chunk=st.integers(1, 40),
    ascii_only=st.booleans())
def test_members_and_byte_offsets_match_json_loads(tmp_path_factory, members, indent, chunk, ascii_only):
    path = tmp_path_factory.mktemp("j") / "x.json"
    path.write_text(json.dumps(members, indent=indent, ensure_ascii=ascii_only), encoding="utf-8")
    data = path.read_bytes()
    old = task_base._CHUNK_CHARS
    task_base._CHUNK_CHARS = chunk
    try:
        items = [(key, value) for key, value, _, _ in iter_json_object(path)]
        spans = [(key, json.loads(data[start:end])) for key, _, start, end in iter_json_object(path, encoding="latin-1")]
    finally:
        task_base._CHUNK_CHARS = old
    assert items == list(members.items()) and spans == list(members.items())


@pytest.mark.parametrize("text", [
    '{"a": {"b": 1}, "c": [1, 2', '{"a": 1 "b": 2}', '{"a": 1, "b": tru}', '{"a": 1}\n\n  x', '',
    '{\n "a": 1,\n "b": {"c": "unterminated}\n}', '{"a" 1}', '{1: 2}', '{"a": 1,\n\n   "b": [1,, 2]}', 'nope'])
def test_bad_json_is_one_line_with_json_loads_position_and_message(tmp_path, monkeypatch, text):
    monkeypatch.setattr(task_base, "_CHUNK_CHARS", 3)
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError) as eager:
        read_json(path)
    with pytest.raises(DataError) as streamed:
        list(iter_json_object(path))
    assert str(streamed.value) == str(eager.value) and "\n" not in str(streamed.value)


def test_a_file_that_is_not_an_object_says_what_it_holds(tmp_path):
    root = write(tmp_path)
    (root / "val_balanced_questions.json").write_text('[{"imageId": "i1"}]')
    with pytest.raises(DataError, match=r"expected an object \{question_id: record\}, got a list"):
        TASKS.get("gqa")(data_dir=root).examples("val")


def test_a_corrupt_scene_graph_file_is_a_one_line_error(tmp_path):
    root = write(tmp_path)
    (root / "val_sceneGraphs.json").write_text('{"i1": {"width": 8,, "height": 6}}')
    with pytest.raises(DataError, match=r"val_sceneGraphs.json: not valid JSON \(line 1, column 20"):
        TASKS.get("gqa")(data_dir=root).examples("val")


def test_a_bad_question_far_into_the_file_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(task_base, "_CHUNK_CHARS", 16)
    questions = {f"q{k}": {"imageId": "i2", "question": "Q?", "answer": "a"} for k in range(50)}
    questions["q40"] = {"imageId": "i2", "answer": "a"}
    with pytest.raises(DataError, match="question 'q40' lacks a 'question'"):
        TASKS.get("gqa")(data_dir=write(tmp_path, questions)).examples("val")


def index_files(cache: Path) -> list[Path]:
    return sorted((cache / "gqa-index").glob("*.json"))


def test_the_index_is_cached_for_large_files_and_reused(tmp_path, monkeypatch, _cache):
    monkeypatch.setattr(gqa, "CACHE_INDEX_FROM_BYTES", 0)
    root = write(tmp_path)
    first = TASKS.get("gqa")(data_dir=root).examples("val")
    [cached] = index_files(_cache)
    assert json.loads(cached.read_text())["stamp"]["size"] == (root / "val_sceneGraphs.json").stat().st_size

    def no_rebuild(*args, **kwargs):
        if "sceneGraphs" in str(args[0]):
            raise AssertionError("the index was built again")
        return iter_json_object(*args, **kwargs)

    monkeypatch.setattr(gqa, "iter_json_object", no_rebuild)
    assert TASKS.get("gqa")(data_dir=root).examples("val") == first


def test_small_files_leave_nothing_in_the_cache(tmp_path, _cache):
    TASKS.get("gqa")(data_dir=write(tmp_path)).examples("val")
    assert index_files(_cache) == []


@pytest.mark.parametrize("same_size", [False, True])
def test_a_changed_scene_graph_file_is_indexed_again(tmp_path, monkeypatch, same_size):
    monkeypatch.setattr(gqa, "CACHE_INDEX_FROM_BYTES", 0)
    root = write(tmp_path)
    assert TASKS.get("gqa")(data_dir=root).examples("val")[0].meta["scene_graph"]["width"] == 8
    graphs = copy.deepcopy(GRAPHS)
    graphs["i1"]["width"] = 9 if same_size else 1000
    path = root / "val_sceneGraphs.json"
    before = path.stat()
    path.write_text(json.dumps(graphs, ensure_ascii=False), encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert (path.stat().st_size == before.st_size) is same_size
    again = TASKS.get("gqa")(data_dir=root).examples("val")
    assert again == eager_examples(root) and again[0].meta["scene_graph"]["width"] == graphs["i1"]["width"]


def test_a_damaged_cached_index_is_rebuilt(tmp_path, monkeypatch, _cache):
    monkeypatch.setattr(gqa, "CACHE_INDEX_FROM_BYTES", 0)
    root = write(tmp_path)
    TASKS.get("gqa")(data_dir=root).examples("val")
    [cached] = index_files(_cache)
    cached.write_text('{"stamp": ')
    assert TASKS.get("gqa")(data_dir=root).examples("val") == eager_examples(root)
    assert json.loads(cached.read_text())["index"]["i2"][1] > 0


def test_a_file_changed_during_the_run_is_a_one_line_error(tmp_path):
    root = write(tmp_path)
    examples = TASKS.get("gqa")(data_dir=root).examples("val")
    path = root / "val_sceneGraphs.json"
    path.write_text("x" * path.stat().st_size)
    with pytest.raises(DataError, match="the scene graph of image i1 does not parse .* changed after it was indexed"):
        examples[0].meta["scene_graph"]


def test_the_benchmark_writes_files_this_loader_reads(tmp_path):
    spec = importlib.util.spec_from_file_location("gqa_scale", Path(__file__).parents[1] / "bench" / "gqa_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    made = bench.write_dataset(tmp_path / "gqa", scale=0.0005)
    task = TASKS.get("gqa")(data_dir=tmp_path / "gqa", progress=False)
    for split in ("train", "val", "testdev"):
        examples = task.examples(split)
        assert len(examples) == made[split]["questions"] == round(bench.OFFICIAL[split][0] * 0.0005)
        assert all(bool(ex.meta) == (split != "testdev") for ex in examples)
    ex = task.examples("train")[0]
    assert ex.meta["scene_graph"]["objects"] and task.load_image(ex).shape == (48, 64, 3)
