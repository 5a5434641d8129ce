"""The embedded default: parts found without importing them, verified while assembled,
missing or damaged parts named in one line; the real model in a `slow` test."""

from __future__ import annotations

import hashlib
import os

import pytest

from viprog.errors import UsageError
from viprog.policy import embedded


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Three data-only packages on sys.path, and the constants of their concatenation."""
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
    monkeypatch.setattr(embedded, "PARTS", tuple(names))
    monkeypatch.setattr(embedded, "SIZE", len(whole))
    monkeypatch.setattr(embedded, "SHA256", hashlib.sha256(whole).hexdigest())
    return tmp_path, whole


def test_assembled_file_is_the_parts_in_order(fake_parts, tmp_path):
    _, whole = fake_parts
    out = embedded.assemble(tmp_path / "out" / "model.gguf", progress=False)
    assert out.read_bytes() == whole


def test_missing_part_names_the_package_to_install(fake_parts, monkeypatch):
    monkeypatch.setattr(embedded, "PARTS", (*embedded.PARTS, "fake_model_part9"))
    with pytest.raises(UsageError, match=r"fake-model-part9.*pip install") as err:
        embedded.part_files()
    assert "\n" not in str(err.value)


def test_corrupt_part_fails_the_checksum_and_leaves_no_file(fake_parts, tmp_path):
    root, _ = fake_parts
    part = root / "fake_model_part1" / "data" / "part01.bin"
    part.write_bytes(bytes(b ^ 1 for b in part.read_bytes()))
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(UsageError, match="sha256"):
        embedded.assemble(dest, progress=False)
    assert not list(dest.parent.iterdir())


def test_wrong_size_is_reported_before_hashing(fake_parts):
    root, _ = fake_parts
    (root / "fake_model_part2" / "data" / "part02.bin").write_bytes(b"short")
    with pytest.raises(UsageError, match="bytes, expected"):
        embedded.assemble(root / "x.gguf", progress=False)


def test_cache_dir_follows_viprog_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("VIPROG_CACHE", str(tmp_path))
    assert embedded.model_dir() == tmp_path / "models" / embedded.NAME


def test_converted_folder_is_reused_without_touching_the_parts(monkeypatch, tmp_path):
    folder = embedded.model_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / embedded.STAMP).write_text("{}")
    monkeypatch.setattr(embedded, "assemble", lambda *a, **k: pytest.fail("assembled again"))
    assert embedded.ensure_model(tmp_path) == folder


@pytest.mark.slow
def test_embedded_model_writes_a_program_that_runs():
    """Assemble + verify + convert (once, into the cache), then one greedy program for a
    shapes question, run in the sandbox on the question's image."""
    from viprog.executor import Executor, Job
    from viprog.policy import Prompter, SamplingParams, extract_program, load_policy
    from viprog.primitives.apidoc import api_section
    from viprog.tasks import TASKS

    task = TASKS.get("shapes")(progress=False)
    example = next(ex for ex in task.examples("val", limit=20) if ex.question_type.startswith("exist"))
    policy = load_policy(progress=False)
    prompter = Prompter(api_section(task="shapes"), task.seed_programs(), tokenizer=policy.tokenizer)
    params = SamplingParams(temperature=0.0, max_new_tokens=96, stop=prompter.stop())
    program = extract_program(policy.sample([prompter.few_shot(example.query)], params)[0][0])
    with Executor("shapes", workers=1, timeout=30.0) as executor:
        [result] = executor.run_many([Job(program, example.image_key, task.load_image(example), query=example.query)])
    assert result.ok, f"{result.error_kind}: {result.error}\n{program}"
