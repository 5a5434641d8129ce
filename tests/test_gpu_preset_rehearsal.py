"""The GPU preset's path, rehearsed on the CPU: `python selftrain.py --preset virep-gpu` on a
GQA-format folder (official file names), the `neural` profile on tiny random models set
with `--profile-options`, and a tiny Qwen2 as the policy — every option reaches its
component, every artifact is written, the neural primitives answer without errors.

What stands in for what: the tiny Qwen2 (hf backend, int8 on the CPU as `auto` picks) for
the 7B under vLLM; `build_tiny_models` for OWLv2 / CLIP / BLIP / Depth Anything; a
hand-written GQA folder for GQA. Sizes are shrunk on the command line. Two settings differ
from the preset, both because the stand-ins are random: the base policy is prompted with
the short prompt (the tiny model knows no other), and τ is 0 (random VQA answers are
rarely right, so τ = 1 would keep nothing and train no adapter). Everything else is the
preset's (LoRA r=16, alpha=32, the short prompt for the tuned policy, no library shots).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.selftrain_fixtures import train_tiny_qwen2
from viprog.cli import main as cli_main
from viprog.policy import Prompter
from viprog.primitives.apidoc import api_section
from viprog.primitives.backends.tiny import build_tiny_models
from viprog.runs import read_json, read_jsonl
from viprog.tasks import TASKS

#: what the tiny policy writes for every question: a detector, CLIP and VQA call each
PROGRAM = ('def execute_command(image):\n    image_patch = ImagePatch(image)\n    objects = image_patch.find("object")\n'
           '    if image_patch.verify_property("object", "red"):\n        return "yes"\n'
           '    return image_patch.simple_query("what color is it?")\n')
NEURAL = {"find", "verify_property", "simple_query"}


def question(k: int, image: str) -> dict:
    kinds = [("What color is the ball?", "red", "query"), ("Is there a cat?", "no", "verify"),
             ("What shape is the sign?", "circle", "query")]
    text, answer, kind = kinds[k % len(kinds)]
    return {"imageId": image, "question": text, "answer": answer,
            "types": {"structural": kind, "semantic": "attr", "detailed": kind}}


def write_gqa_folder(root: Path) -> Path:
    """train / val / testdev questions and train / val scene graphs, as GQA ships them."""
    (root / "images").mkdir(parents=True)
    for split, n in (("train", 6), ("val", 3), ("testdev", 2)):
        images = [f"{split}{i % 3}" for i in range(n)]
        (root / f"{split}_balanced_questions.json").write_text(
            json.dumps({f"{split}-{i}": question(i, image) for i, image in enumerate(images)}))
        for image in set(images):
            Image.new("RGB", (48, 40), (200, 40 * len(image), 30)).save(root / "images" / f"{image}.jpg")
        if split != "testdev":
            graphs = {image: {"width": 48, "height": 40, "objects": {"1": {"name": "ball", "x": 4, "y": 4, "w": 20,
                                                                          "h": 20, "attributes": ["red"],
                                                                          "relations": []}}} for image in set(images)}
            (root / f"{split}_sceneGraphs.json").write_text(json.dumps(graphs))
    return root


@pytest.fixture(scope="module")
def gqa_setup(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> dict:
    root = tmp_path_factory.mktemp("rehearsal")
    data = write_gqa_folder(root / "gqa")
    task = TASKS.get("gqa")(data_dir=data)
    prompter = Prompter(api_section(task="gqa"), task.seed_programs())
    queries = sorted({ex.query for split in ("train", "val") for ex in task.examples(split)})
    # trained under the short prompt only: a tiny model on the ~2,000-token few-shot prompt takes minutes
    policy = train_tiny_qwen2(root / "policy", [(prompter.short(q), PROGRAM, 1.0) for q in queries], steps=200)
    options = json.dumps(build_tiny_models(tiny_models_dir / "neural"))
    scripted = root / "programs.jsonl"
    scripted.write_text("".join(json.dumps({"query": q, "program": PROGRAM}) + "\n" for q in queries))
    return {"data": data, "policy": policy, "options": options, "scripted": scripted, "runs": root / "runs"}


def selftrain(*args: str) -> int:
    return cli_main(["selftrain", *args], prog="selftrain.py")


def neural_calls(rows: list[dict]) -> set[str]:
    return {call["primitive"] for row in rows for call in row["trace"]} & NEURAL


@pytest.mark.parametrize("policy", ["hf", "scripted"])
def test_the_gpu_preset_runs_end_to_end_on_stand_in_models(gqa_setup: dict, policy: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from viprog.primitives.backends.neural import NeuralProfile

    loads = []  # (profile, model) each time a model is loaded: once per run, not per rollout
    original = NeuralProfile._model

    def counted(self: NeuralProfile, key: str, *args: object) -> object:
        if key not in self.models:
            loads.append((id(self), key))
        return original(self, key, *args)

    monkeypatch.setattr(NeuralProfile, "_model", counted)
    s = gqa_setup
    model = s["policy"] if policy == "hf" else s["scripted"]
    rounds = "1" if policy == "hf" else "0"
    status = selftrain("--preset", "virep-gpu", "--data-dir", str(s["data"]), "--policy", policy, "--model", str(model),
                       "--device", "cpu", "--profile-options", s["options"], "--rounds", rounds,
                       "--questions-per-round", "3", "--sampling.n", "2", "--eval-size", "3",
                       "--batch-questions", "2", "--workers", "1", "--max-new-tokens", "96", "--train.batch-size", "2",
                       "--train.grad-accum", "1", "--train.max-length", "1024", "--tau", "0", "--runs-dir", str(s["runs"]),
                       "--run-name", policy, "--base-prompt", "short")
    assert status == 0 and len({profile for profile, _ in loads}) == 1 and len(loads) == len(set(loads))
    run = s["runs"] / policy
    config = read_json(run / "config.json")
    # options given on the command line won, the preset's own settings stayed
    assert (config["device"], config["policy"], config["eval_split"], config["preset"]) == ("cpu", policy, "val",
                                                                                          "virep-gpu")
    assert (config["lora"]["r"], config["lora"]["alpha"], config["tuned_prompt"]) == (16, 32, "short")
    assert json.loads(config["profile_options"]) == json.loads(s["options"])
    evaluated = read_jsonl(run / "round_0" / "eval.jsonl")
    assert len(evaluated) == 3 and neural_calls(evaluated) == NEURAL
    assert not [r for r in evaluated if r["error_kind"] == "primitive"]
    assert (run / "report.html").is_file() and len(read_jsonl(run / "metrics.jsonl")) == int(rounds) + 1
    if policy == "scripted":
        return
    for name in ("samples.jsonl", "kept.jsonl", "eval.jsonl", "metrics.json", "adapter/adapter_config.json"):
        assert (run / "round_1" / name).is_file(), name
    assert len(read_jsonl(run / "library.jsonl")) == len(read_jsonl(run / "round_1" / "kept.jsonl")) > 0
    samples = read_jsonl(run / "round_1" / "samples.jsonl")
    assert len(samples) == 6 and neural_calls(samples) == NEURAL
    assert not [r for r in samples if r["error_kind"] == "primitive"]
    adapter = read_json(run / "round_1" / "adapter" / "adapter_config.json")
    assert (adapter["r"], adapter["lora_alpha"]) == (16, 32)
    assert sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert neural_calls(read_jsonl(run / "round_1" / "eval.jsonl")) == NEURAL


def test_a_primitive_model_that_cannot_load_stops_the_run_before_any_round(gqa_setup: dict, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    s = gqa_setup
    options = json.dumps({**json.loads(s["options"]), "vqa": str(tmp_path / "no-such-blip")})
    status = selftrain("--preset", "virep-gpu", "--data-dir", str(s["data"]), "--policy", "scripted", "--model",
                       str(s["scripted"]), "--device", "cpu", "--profile-options", options, "--rounds", "0",
                       "--runs-dir", str(tmp_path / "runs"))
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (progress bars aside)
    assert status == 2 and len(errors) == 1 and errors[0].startswith("viprog selftrain: error:")
    assert "VQA model" in errors[0] and "no-such-blip" in errors[0] and "--profile-options" in errors[0]
    assert not (tmp_path / "runs").exists()  # nothing written half-way


def test_bad_input_found_before_any_step_finished_leaves_no_run_folder(gqa_setup: dict, tmp_path: Path) -> None:
    s = gqa_setup
    programs = tmp_path / "other.jsonl"  # programs for other questions: the scripted policy has none for these
    programs.write_text(json.dumps({"query": "Is the sky blue?", "program": PROGRAM}) + "\n")
    status = selftrain("--preset", "virep-gpu", "--data-dir", str(s["data"]), "--policy", "scripted", "--model",
                       str(programs), "--device", "cpu", "--profile-options", s["options"], "--rounds", "0",
                       "--eval-size", "2", "--runs-dir", str(tmp_path / "runs"), "--run-name", "r")
    assert status == 2 and not (tmp_path / "runs" / "r").exists()
