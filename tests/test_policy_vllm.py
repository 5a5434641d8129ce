"""The vllm policy's GPU hand-over, against a fake vLLM that keeps an event log: the engine
sleeps before fine-tuning and wakes before the next sample, and fine-tuning gets a
transformers tokenizer from the model folder without waking it. The end-to-end test runs a
self-training round through the real loop with the fake engine (training on the CPU)."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass
from typing import ClassVar

import pytest
import selftrain_fixtures as F

from viprog.config import SamplingSettings
from viprog.finetune import completion_for
from viprog.policy import SamplingParams, load_policy
from viprog.policy.scripted import query_of


@dataclass
class Completion:
    text: str


@dataclass
class RequestOutput:
    outputs: list[Completion]


class EventLLM:
    """Writes what happens to it into a shared log; refuses to generate while asleep, as
    the real engine gives nothing useful then. Completes each prompt with the toy task's
    right program for the shape its query asks about."""

    log: ClassVar[list[str]] = []

    def __init__(self, model: str, **kwargs) -> None:
        self.model, self.kwargs, self.asleep = model, kwargs, False
        self.log.append("start")

    def generate(self, prompts, sampling_params, *, lora_request=None, use_tqdm=True):
        if self.asleep:
            raise RuntimeError("generate while asleep")
        self.log.append("generate")
        return [RequestOutput([Completion(_right_completion(p)) for _ in range(sampling_params.n)]) for p in prompts]

    def sleep(self, level: int = 1) -> None:
        self.log.append(f"sleep:{level}")
        self.asleep = True

    def wake_up(self, tags=None) -> bool:
        self.log.append("wake_up")
        self.asleep = False
        return True

    def get_tokenizer(self):
        raise AssertionError("the policy must not hand out vLLM's tokenizer")


def _right_completion(prompt: str) -> str:
    shape = next((s for s in F.SHAPES if s in query_of(prompt)), F.SHAPES[0])
    return completion_for(prompt, F.right_program(shape))


@pytest.fixture
def events(monkeypatch):
    """A fake `vllm` package in sys.modules; returns the event log (fresh per test)."""
    log: ClassVar[list[str]] = []
    monkeypatch.setattr(EventLLM, "log", log)
    vllm = types.ModuleType("vllm")
    vllm.LLM = EventLLM
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = lambda *, lora_name, lora_int_id, lora_path: types.SimpleNamespace(
        lora_name=lora_name, lora_int_id=lora_int_id, lora_path=lora_path)
    for name, module in {"vllm": vllm, "vllm.lora": types.ModuleType("vllm.lora"), "vllm.lora.request": request}.items():
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # TRL asks find_spec whether vllm is there
        monkeypatch.setitem(sys.modules, name, module)
    return log


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from viprog.policy import Prompter

    return F.build_tiny_policy(tmp_path_factory.mktemp("tiny"), Prompter("", []).short, dict.fromkeys(F.SHAPES, 1.0),
                               steps=0)


PARAMS = SamplingParams(n=2, max_new_tokens=20)


def test_sleep_before_training_and_wake_before_the_next_sample(events):
    policy = load_policy("vllm", model="m", device="cuda", tensor_parallel_size=1)
    policy.release_caches()  # nothing started yet: nothing to put to sleep
    assert events == []
    policy.sample(["# Query: How many stars?\n"], PARAMS)
    policy.release_caches()
    policy.release_caches()  # already asleep: once is enough
    assert events == ["start", "generate", "sleep:1"] and policy._llm.asleep
    policy.sample(["# Query: How many stars?\n"], PARAMS)
    assert events == ["start", "generate", "sleep:1", "wake_up", "generate"]
    assert policy.llm.kwargs["enable_sleep_mode"] is True


def test_without_sleep_mode_the_engine_is_shut_down_and_restarted(events):
    policy = load_policy("vllm", model="m", device="cuda", tensor_parallel_size=1, sleep_mode=False)
    policy.sample(["# Query: How many stars?\n"], PARAMS)
    first = policy.llm
    policy.release_caches()
    assert policy._llm is None
    policy.sample(["# Query: How many stars?\n"], PARAMS)
    assert events == ["start", "generate", "start", "generate"] and policy.llm is not first
    assert first.kwargs["enable_sleep_mode"] is False


def test_close_forgets_a_sleeping_engine(events):
    policy = load_policy("vllm", model="m", device="cuda", tensor_parallel_size=1)
    policy.sample(["x"], PARAMS)
    policy.release_caches()
    policy.close()
    policy.sample(["x"], PARAMS)
    assert events == ["start", "generate", "sleep:1", "start", "generate"]


def test_tokenizer_is_the_folders_transformers_tokenizer_and_wakes_nothing(events, tiny_folder):
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    policy = load_policy("vllm", model=str(tiny_folder), device="cuda", tensor_parallel_size=1)
    policy.sample(["x"], PARAMS)
    policy.release_caches()
    tokenizer = policy.tokenizer
    assert isinstance(tokenizer, PreTrainedTokenizerBase)
    assert tokenizer("How many stars?")["input_ids"] == AutoTokenizer.from_pretrained(tiny_folder)(
        "How many stars?")["input_ids"]
    assert events == ["start", "generate", "sleep:1"] and policy.tokenizer is tokenizer


def test_a_missing_tokenizer_is_a_usage_error(events, tmp_path):
    from viprog.errors import UsageError

    with pytest.raises(UsageError, match="no tokenizer"):
        load_policy("vllm", model=str(tmp_path / "nothing"), device="cuda").tokenizer  # noqa: B018


def test_a_selftrain_round_trains_while_the_engine_sleeps(events, tiny_folder, tmp_path, monkeypatch):
    """The real loop with the fake engine: sample (awake), fine-tune (asleep, with a
    transformers tokenizer), evaluate with the new adapter (woken up)."""
    from transformers import PreTrainedTokenizerBase

    import viprog.selftrain
    from viprog.finetune import LoraSettings, TrainSettings
    from viprog.selftrain import main as selftrain
    from viprog.selftrain_config import SelfTrainConfig

    real_finetune = viprog.selftrain.finetune
    seen = {}

    def recording_finetune(model_path, tokenizer, pairs, out_dir, **kwargs):
        events.append("finetune")
        seen.update(tokenizer=tokenizer, device=kwargs["device"])
        return real_finetune(model_path, tokenizer, pairs, out_dir, **kwargs)

    monkeypatch.setattr(viprog.selftrain, "finetune", recording_finetune)
    monkeypatch.setattr("viprog.rollout.require_device", lambda device: None)  # the fake engine stands in for a GPU
    cfg = SelfTrainConfig(task="toy-count", data_dir=str(tmp_path / "data"), policy="vllm", model=str(tiny_folder),
                          device="cuda", rounds=1, questions_per_round=4, sampling=SamplingSettings(n=1), max_new_tokens=40,
                          base_prompt="short", tuned_prompt="short", train_prompt="short", library_shots=0,
                          eval_size=4, train=TrainSettings(epochs=1.0, batch_size=4), lora=LoraSettings(r=4, alpha=8),
                          workers=1,
                          runs_dir=str(tmp_path / "runs"), run_name="vllm-fake")
    assert selftrain(cfg) == 0
    assert isinstance(seen["tokenizer"], PreTrainedTokenizerBase) and seen["device"] == "cuda"
    trained = events.index("finetune")
    assert events[trained - 1] == "sleep:1" and events[trained + 1] == "wake_up"
    assert events[0] == "start" and events.count("start") == 1 and events[-1] == "generate"
    assert (tmp_path / "runs" / "vllm-fake" / "round_1" / "adapter" / "adapter_config.json").is_file()
