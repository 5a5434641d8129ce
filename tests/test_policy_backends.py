"""The registry of policies, the `scripted` policy, and the `vllm` policy against a fake vLLM."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field

import pytest

from viprog.errors import DataError, UsageError
from viprog.policy import DEFAULT_POLICY, POLICIES, Prompter, SamplingParams, load_policy
from viprog.policy.scripted import query_of
from viprog.registry import UnknownNameError

PROGRAM = "def execute_command(image):\n    return 'yes'\n"


def test_builtin_backends_and_default_are_registered():
    assert {"hf", "vllm", "scripted", DEFAULT_POLICY} <= set(POLICIES.names())


def test_importing_policies_imports_no_torch():
    import subprocess

    code = "import sys, viprog.policy; print(any(m.split('.')[0] in ('torch', 'transformers') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_unknown_policy_suggests_a_close_name():
    with pytest.raises(UnknownNameError, match="did you mean 'scripted'"):
        load_policy("scriptd")


def test_unknown_option_is_a_usage_error():
    with pytest.raises(UsageError, match="scripted") as err:
        load_policy("scripted", programs=[PROGRAM], colour="red")
    assert "unknown option 'colour'; its options: default, path, programs" in str(err.value)


def test_a_misspelt_option_names_the_one_meant():
    with pytest.raises(UsageError, match=r"unknown option 'program' \(did you mean 'programs'\?\)"):
        load_policy("scripted", program=[PROGRAM])


def test_a_misspelt_option_of_the_embedded_default_names_its_engines_options(monkeypatch, tmp_path):
    """The embedded default hands options to the engine's backend: the hint lists the
    backend's options and the default's own (`engine`)."""
    from viprog.policy import embedded
    from viprog.policy.tiny import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny")
    monkeypatch.setattr(embedded, "ensure_model", lambda cache=None, which="", **k: tiny)
    with pytest.raises(UsageError) as err:
        load_policy(engine="hf", batchsize=4)
    message = str(err.value)
    assert "unknown option 'batchsize' (did you mean 'batch_size'?)" in message
    assert all(name in message.split("its options: ")[1].split(", ") for name in ("batch_size", "engine", "quantize"))


# -- scripted ------------------------------------------------------------------------------
def test_scripted_answers_by_query_cycled_to_n():
    policy = load_policy("scripted", programs={"Is there a dog?": [PROGRAM, "B"]})
    prompt = Prompter("API", []).few_shot("is there a dog")
    assert policy.sample([prompt], SamplingParams(n=3)) == [[PROGRAM, "B", PROGRAM]]


def test_scripted_reads_released_programs(tmp_path):
    path = tmp_path / "programs.jsonl"
    path.write_text(json.dumps({"query": "How many cats?", "program": PROGRAM}) + "\n")
    policy = load_policy("scripted", path=path)
    assert policy.sample(["# Query: How many cats?\ndef execute_command(image):"], SamplingParams()) == [[PROGRAM]]


def test_scripted_bad_jsonl_names_the_line(tmp_path):
    path = tmp_path / "programs.jsonl"
    path.write_text(json.dumps({"query": "q", "program": "p"}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"programs.jsonl:2: not valid JSON"):
        load_policy("scripted", path=path)


def test_scripted_query_without_program_is_an_error_unless_defaulted():
    with pytest.raises(UsageError, match="no program"):
        load_policy("scripted", programs={"a": [PROGRAM]}).sample(["Query: b"], SamplingParams())
    assert load_policy("scripted", programs={"a": [PROGRAM]}, default=["X"]).sample(["Query: b"],
                                                                                    SamplingParams()) == [["X"]]


def test_query_of_reads_the_last_query_line():
    assert query_of("# Query: first\nx\n# Query: second?\ndef execute_command(image):") == "second?"


# -- vllm, against a fake of its API ---------------------------------------------------------
@dataclass
class FakeCompletion:
    text: str


@dataclass
class FakeRequestOutput:
    outputs: list[FakeCompletion]


@dataclass
class FakeLLM:
    """Records how it was built and asked; completes with the sampling settings it saw."""

    model: str
    kwargs: dict = field(default_factory=dict)
    calls: list = field(default_factory=list)

    def __init__(self, model, **kwargs):
        self.model, self.kwargs, self.calls = model, kwargs, []

    def generate(self, prompts, sampling_params, lora_request=None, use_tqdm=True):
        self.calls.append((prompts, sampling_params, lora_request))
        tag = lora_request.lora_name if lora_request else "base"
        return [FakeRequestOutput([FakeCompletion(f"{tag}:{p[-3:]}:{i}") for i in range(sampling_params.n)])
                for p in prompts]

    def get_tokenizer(self):
        return "tokenizer"


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeLLM
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = lambda lora_name, lora_int_id, lora_path: types.SimpleNamespace(
        lora_name=lora_name, lora_int_id=lora_int_id, lora_path=lora_path)
    for name, module in {"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": request}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return vllm


@pytest.fixture
def adapter_dir(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    return tmp_path


def test_vllm_engine_has_prefix_caching_lora_and_all_gpus(fake_vllm, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    policy = load_policy("vllm", model="some/model", device="cuda")
    policy.sample(["abc"], SamplingParams())
    kw = policy.llm.kwargs
    assert kw["enable_prefix_caching"] and kw["enable_lora"] and kw["tensor_parallel_size"] == 4


def test_vllm_samples_n_per_prompt_with_our_settings(fake_vllm):
    policy = load_policy("vllm", model="m", device="cuda", tensor_parallel_size=1)
    params = SamplingParams(n=3, temperature=0.7, top_p=0.8, max_new_tokens=50, stop=("\n#",), seed=5)
    out = policy.sample(["p-1", "p-2"], params)
    sp = policy.llm.calls[0][1]
    assert [len(o) for o in out] == [3, 3] and out[1][2] == "base:p-2:2"
    assert (sp.n, sp.temperature, sp.top_p, sp.max_tokens, sp.seed) == (3, 0.7, 0.8, 50, 5)
    assert not hasattr(sp, "stop")  # vLLM would stop at a comment before the code; we cut afterwards


# -- one stop rule: hf stops while decoding, vLLM's text is cut afterwards, scripted is cut too ----
CUTS = [
    ("    return 1\n# Query: next\ndef execute_command(image):\n    return 2", "    return 1"),
    ("# restate the header\ndef execute_command(image):\n    x = 1\n    return x\n\n\n# Query: q",
     "# restate the header\ndef execute_command(image):\n    x = 1\n    return x\n\n"),
    ("\ndef execute_command(image):\n    return 3\ndef helper():\n    pass", "\ndef execute_command(image):\n    return 3"),
    ("  # a comment first\n    return 4\nprint(4)", "  # a comment first\n    return 4"),
    ("\n\n# only comments, no code\n", "\n\n# only comments, no code\n"),
]
PROMPT = "# Query: q\ndef execute_command(image):\n"


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from viprog.policy.hf import HFPolicy
    from viprog.policy.tiny import build_tiny_model

    return HFPolicy(str(build_tiny_model(tmp_path_factory.mktemp("tiny"))), progress=False)


@pytest.mark.parametrize("per_char", [False, True], ids=["bpe", "one-char-tokens"])
@pytest.mark.parametrize(("completion", "program"), CUTS,
                         ids=["after-code", "restated-header", "header-then-helper", "comment-first", "no-code"])
def test_hf_vllm_and_scripted_cut_a_completion_identically(fake_vllm, tiny_hf, monkeypatch, completion, program,
                                                           per_char):
    """The hf decoder is made to write `completion` token by token (one character per token
    too: a header arrives as `d`, `de`, …); vLLM returns it whole, as the engine does
    without stop strings. Both, and the scripted policy, must give the same program."""
    import torch

    from viprog.policy import decode

    tok = tiny_hf.tokenizer
    tokens = [t for c in completion for t in tok(c)["input_ids"]] if per_char else tok(completion)["input_ids"]
    assert tok.decode(tokens) == completion
    stream = iter(tokens)
    monkeypatch.setattr(decode, "pick_tokens", lambda *_: torch.tensor([next(stream, tok.eos_token_id)]))
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=len(tokens) + 1, stop=Prompter("API", []).stop())
    reply = [FakeRequestOutput([FakeCompletion(completion)])]
    monkeypatch.setattr(fake_vllm, "LLM", lambda model, **kw: types.SimpleNamespace(generate=lambda *a, **k: reply))
    vllm_policy = load_policy("vllm", model="m", device="cuda", tensor_parallel_size=1)
    scripted = load_policy("scripted", programs=[completion])
    assert tiny_hf.sample([PROMPT], params) == vllm_policy.sample([PROMPT], params) == scripted.sample(
        [PROMPT], params) == [[program]]


def test_vllm_adapter_goes_with_each_request_under_a_fresh_id(fake_vllm, adapter_dir):
    policy = load_policy("vllm", model="m", device="cuda", tensor_parallel_size=1)
    policy.load_adapter(adapter_dir)
    first = policy.sample(["abc"], SamplingParams())[0][0]
    policy.load_adapter(adapter_dir)
    ids = [policy.llm.calls[0][2].lora_int_id, policy._lora.lora_int_id]
    policy.load_adapter(None)
    assert first.startswith("round1") and ids == [1, 2] and policy.sample(["abc"], SamplingParams())[0][0][:4] == "base"


def test_vllm_engine_is_built_once_across_adapter_switches(fake_vllm, adapter_dir):
    policy = load_policy("vllm", model="m", device="cuda", tensor_parallel_size=1)
    engine = policy.llm
    policy.load_adapter(adapter_dir)
    policy.sample(["abc"], SamplingParams())
    assert policy.llm is engine


def test_vllm_missing_is_a_usage_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(UsageError, match=r"viprog\[gpu\]"):
        load_policy("vllm", model="m", device="cuda").sample(["x"], SamplingParams())


def test_vllm_on_cpu_is_a_usage_error():
    with pytest.raises(UsageError, match="CUDA"):
        load_policy("vllm", model="m", device="cpu")
