"""The embedded models (the 0.5B default and the 1.5B): parts found without importing them,
verified while assembled, missing or damaged parts named in one line; the real model in a
`slow` test."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from viprog.errors import UsageError
from viprog.policy import embedded


@pytest.fixture(params=sorted(embedded.MODELS))
def fake_parts(request, tmp_path, monkeypatch):
    """Three data-only packages on sys.path standing in for the parts of one `MODELS` entry
    (each entry in turn), pinned to the size and digest of their concatenation."""
    which = request.param
    blobs = [os.urandom(1000 + i) for i in range(3)]
    names = []
    for i, blob in enumerate(blobs):
        name = f"fake_model_part{i}"
        (tmp_path / name / "data").mkdir(parents=True)
        (tmp_path / name / "__init__.py").write_text("raise RuntimeError('part code must not be imported')\n")
        (tmp_path / name / "data" / f"part{i:02d}.bin").write_bytes(blob)
        names.append(name)
    monkeypatch.syspath_prepend(str(tmp_path))
    whole = b"".join(blobs)
    fake = dataclasses.replace(embedded.MODELS[which], parts=tuple(names), size=len(whole),
                               sha256=hashlib.sha256(whole).hexdigest())
    monkeypatch.setitem(embedded.MODELS, which, fake)
    return tmp_path, whole, which


def test_the_table_pins_each_model_and_its_extra():
    small, large = embedded.MODELS["qwen2.5-coder-0.5b"], embedded.MODELS["qwen2.5-coder-1.5b"]
    assert len(small.parts) == 6 and len(large.parts) == 22 and large.size > 2 * small.size
    assert len({m.sha256 for m in embedded.MODELS.values()}) == 2
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    for model in embedded.MODELS.values():
        for part in model.parts:
            assert f'"{part.replace("_", "-")}=={model.version}"' in pyproject
    with pytest.raises(UsageError, match="embedded models: qwen2.5-coder-0.5b"):
        embedded.embedded_model("qwen-7b")


def test_assembled_file_is_the_parts_in_order(fake_parts, tmp_path):
    _, whole, which = fake_parts
    out = embedded.assemble(tmp_path / "out" / "model.gguf", which=which, progress=False)
    assert out.read_bytes() == whole


def test_missing_part_names_the_package_and_the_extra_to_install(fake_parts, monkeypatch):
    _, _, which = fake_parts
    model = embedded.MODELS[which]
    monkeypatch.setitem(embedded.MODELS, which, dataclasses.replace(model, parts=(*model.parts, "fake_model_part9")))
    with pytest.raises(UsageError, match=rf"fake-model-part9.*viprog\[{model.extra}\]") as err:
        embedded.part_files(which)
    assert "\n" not in str(err.value)


def test_corrupt_part_fails_the_checksum_and_leaves_no_file(fake_parts, tmp_path):
    root, _, which = fake_parts
    part = root / "fake_model_part1" / "data" / "part01.bin"
    part.write_bytes(bytes(b ^ 1 for b in part.read_bytes()))
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(UsageError, match="sha256"):
        embedded.assemble(dest, which=which, progress=False)
    assert not list(dest.parent.iterdir())


def test_wrong_size_is_reported_before_hashing(fake_parts):
    root, _, which = fake_parts
    (root / "fake_model_part2" / "data" / "part02.bin").write_bytes(b"short")
    with pytest.raises(UsageError, match="bytes, expected"):
        embedded.assemble(root / "x.gguf", which=which, progress=False)


def test_cache_dir_follows_viprog_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("VIPROG_CACHE", str(tmp_path))
    assert embedded.model_dir() == tmp_path / "models" / embedded.NAME
    assert embedded.gguf_path(which="qwen2.5-coder-1.5b") == tmp_path / "models" / embedded.MODELS[
        "qwen2.5-coder-1.5b"].gguf_name


@pytest.mark.parametrize("which", sorted(embedded.MODELS))
def test_converted_folder_is_reused_without_touching_the_parts(monkeypatch, tmp_path, which):
    folder = embedded.model_dir(tmp_path, which)
    folder.mkdir(parents=True)
    (folder / embedded.STAMP).write_text("{}")
    monkeypatch.setattr(embedded, "assemble", lambda *a, **k: pytest.fail("assembled again"))
    assert embedded.ensure_model(tmp_path, which=which) == folder


def test_the_1_5b_is_a_registered_policy_of_its_own_name(monkeypatch, tmp_path):
    """`load_policy("qwen2.5-coder-1.5b", engine="hf")` builds the hf policy on the 1.5B's folder."""
    from viprog.policy import load_policy
    from viprog.policy.tiny import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny")
    asked = []
    monkeypatch.setattr(embedded, "ensure_model", lambda cache=None, which="", **k: asked.append(which) or tiny)
    policy = load_policy("qwen2.5-coder-1.5b", engine="hf")
    assert asked == ["qwen2.5-coder-1.5b"] and policy.name == "qwen2.5-coder-1.5b"
    assert policy.model_path == str(tiny)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["auto", "hf"])
def test_the_embedded_model_answers_shapes_questions(engine):
    """Assemble + verify + convert (once, into the cache), then greedy few-shot programs for
    10 shapes val questions, run in the sandbox: at least 3 answered. On a CPU the default
    ("auto") is llama.cpp on the shipped GGUF; both engines scored 55 % on 100 val
    questions (docs/policy.md), and a broken engine, prompt or tokenizer scores near 0."""
    from viprog.executor import Executor, Job
    from viprog.policy import Prompter, SamplingParams, extract_program, load_policy
    from viprog.policy.llamacpp import LlamaCppPolicy
    from viprog.primitives.apidoc import api_section
    from viprog.tasks import TASKS

    if engine == "auto":
        pytest.importorskip("llama_cpp")
    task = TASKS.get("shapes")(progress=False)
    examples = task.examples("val", limit=10)
    policy = load_policy(engine=engine, progress=False)
    assert isinstance(policy, LlamaCppPolicy) == (engine == "auto")
    prompter = Prompter(api_section(task="shapes"), task.seed_programs(), tokenizer=policy.tokenizer)
    params = SamplingParams(temperature=0.0, max_new_tokens=96, stop=prompter.stop())
    completions = policy.sample([prompter.few_shot(ex.query) for ex in examples], params)
    jobs = [Job(extract_program(c[0]), ex.image_key, task.load_image(ex), query=ex.query)
            for c, ex in zip(completions, examples)]
    with Executor("shapes", workers=1, timeout=30.0) as executor:
        results = executor.run_many(jobs)
    correct = sum(float(task.reward(ex, r)) == 1.0 for ex, r in zip(examples, results))
    policy.close()
    assert correct >= 3, f"{correct} of 10 answered"
