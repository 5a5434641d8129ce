"""`--profile-options`: a JSON object that reaches the primitive profile, checked up front."""

from __future__ import annotations

import json

import pytest

from viprog.errors import UsageError
from viprog.rollout import build, build_profile, parse_profile_options
from viprog.selftrain_config import SelfTrainConfig


def test_options_reach_the_profile_and_its_device_follows_the_policys():
    profile = build_profile("neural", '{"batch_size": 64, "vqa": "/models/blip"}', device="cuda:1", preflight=False)
    assert (profile.batch_size, profile.vqa, profile.device) == (64, "/models/blip", "cuda:1")
    given = build_profile("neural", {"device": "cpu"}, device="cuda", preflight=False)
    assert given.device == "cpu"


@pytest.mark.parametrize(("text", "message"), [("{batch_size: 64}", "not valid JSON"), ("[1, 2]", "JSON object"),
                                               ('{"detektor": "x"}', "no option 'detektor'.*detector")])
def test_bad_options_are_one_line_errors(text, message):
    with pytest.raises(UsageError, match=message):
        build_profile("neural", text, preflight=False)


def test_a_model_that_cannot_load_names_itself(tmp_path):
    with pytest.raises(UsageError, match="detector.*nothing-here.*--profile-options"):
        build_profile("neural", {"detector": str(tmp_path / "nothing-here.pt")})


def test_the_components_are_built_from_the_config_once(tiny_models_dir):
    from viprog.primitives.backends.tiny import build_tiny_models

    options = json.dumps(build_tiny_models(tiny_models_dir / "neural"))
    parts = build(SelfTrainConfig(task="gqa", policy=None, profile_options=options), with_policy=False)
    assert parts.profile_name == "neural" and {"owl", "clip", "vqa"} <= set(parts.profile.models)
    assert parts.policy is None and parse_profile_options(None) == {}


def test_the_library_runs_programs_under_the_options_given_at_load():
    import numpy as np

    from viprog.library import Library

    lib = Library([], config={"task": "shapes", "profile": "neural"}, profile_options={"detector": "missing.pt"})
    with pytest.raises(UsageError, match="missing.pt"):
        lib.run_program("def execute_command(image):\n    return 1\n", np.zeros((8, 8, 3), np.uint8), "q")


def test_a_missing_local_policy_model_is_refused_before_the_profile_loads(tmp_path, monkeypatch):
    from viprog.primitives.backends.neural import NeuralProfile

    monkeypatch.setattr(NeuralProfile, "preflight", lambda self: pytest.fail("the profile was loaded first"))
    for policy in ("scripted", "hf"):
        with pytest.raises(UsageError, match="no such"):
            build(SelfTrainConfig(task="gqa", policy=policy, model=str(tmp_path / "missing")))


def test_a_cuda_run_on_a_machine_without_cuda_is_refused_up_front():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UsageError, match="no CUDA device"):
        build(SelfTrainConfig(task="gqa", policy=None, device="cuda"), with_policy=False)
