"""scripts/check_vllm.py: the vLLM calls it reads from the backend, and its two checkers
(import + inspect, and reading the source) on small fake vllm packages written here —
one that has everything the backend uses and one that lost a few names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_vllm.py"
spec = importlib.util.spec_from_file_location("check_vllm", SCRIPT)
check_vllm = importlib.util.module_from_spec(spec)
sys.modules["check_vllm"] = check_vllm  # dataclasses look their module up while building the class
spec.loader.exec_module(check_vllm)

INIT = '''
from .version import __version__
MODULE_ATTRS = {"LLM": ".entrypoints.llm:LLM", "EngineArgs": ".engine.arg_utils:EngineArgs",
                "SamplingParams": ".sampling_params:SamplingParams"}

def __getattr__(name):
    from importlib import import_module
    if name not in MODULE_ATTRS:
        raise AttributeError(name)
    module, attr = MODULE_ATTRS[name].split(":")
    return getattr(import_module(module, __package__), attr)

from .outputs import CompletionOutput, RequestOutput
'''
LLM = '''
class LLM:
    def __init__(self, model, *, dtype="auto", tensor_parallel_size=1, seed=0, gpu_memory_utilization=0.9, **kwargs):
        pass

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None):
        pass

    def sleep(self, level=1):
        pass

    def wake_up(self, tags=None):
        pass
'''
ENGINE_ARGS = '''
from dataclasses import dataclass

@dataclass
class EngineArgs:
    model: str = ""
    enable_prefix_caching: bool = True
    enable_lora: bool = False
    max_lora_rank: int = 16
    max_loras: int = 1
    enable_sleep_mode: bool = False
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    distributed_executor_backend: str | None = None
'''
SAMPLING = '''
from typing import ClassVar
from dataclasses import dataclass

@dataclass
class SamplingParams:
    limit: ClassVar[int] = 3
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: list | None = None
    seed: int | None = None
'''
LORA = '''
from dataclasses import dataclass

@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""
'''
OUTPUTS = '''
from dataclasses import dataclass

@dataclass
class CompletionOutput:
    index: int
    text: str

class RequestOutput:
    def __init__(self, request_id, prompt, outputs, finished):
        self.outputs = outputs
'''


def write_package(root: Path, **replace: tuple[str, str]) -> Path:
    """A fake vllm package under root/; replace={file key: (old, new)} breaks it on purpose."""
    files = {"__init__.py": INIT, "_version.py": "__version__ = version = '9.9.0'\n",
             "version.py": "from ._version import __version__\n", "entrypoints/llm.py": LLM, "engine/arg_utils.py": ENGINE_ARGS,
             "sampling_params.py": SAMPLING, "lora/request.py": LORA, "outputs.py": OUTPUTS}
    for key, (old, new) in replace.items():
        name = next(n for n in files if n.startswith(key))
        assert old in files[name]
        files[name] = files[name].replace(old, new)
    package = root / "vllm"
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    for sub in ("entrypoints", "engine", "lora"):
        (package / sub / "__init__.py").touch()
    return package


BROKEN = {"engine": ("    enable_sleep_mode: bool = False\n", ""), "sampling": ("max_tokens", "max_new_tokens"),
          "entrypoints": ("def sleep(self, level=1)", "def sleep(self, mode='abort')")}


def test_the_backends_vllm_calls_are_all_found():
    uses = {u.target: u for u in check_vllm.backend_uses()}
    assert set(uses) == {"LLM", "LLM.generate", "LLM.sleep", "LLM.wake_up", "SamplingParams",
                         "lora.request.LoRARequest", "RequestOutput", "CompletionOutput"}
    assert {"enable_sleep_mode", "enable_lora", "max_lora_rank", "gpu_memory_utilization"} <= set(uses["LLM"].keywords)
    assert set(uses["LLM.generate"].keywords) == {"lora_request", "use_tqdm"} and uses["LLM.generate"].positional == 2
    assert uses["LLM.sleep"].keywords == ("level",)
    assert set(uses["lora.request.LoRARequest"].keywords) == {"lora_name", "lora_int_id", "lora_path"}
    assert set(uses["SamplingParams"].keywords) == {"n", "temperature", "top_p", "max_tokens", "seed"}  # stops: ours


def test_reading_the_source_passes_a_complete_package(tmp_path, capsys):
    package = write_package(tmp_path)
    assert check_vllm.main(["--source", str(package)]) == 0
    out = capsys.readouterr().out
    assert "vllm 9.9.0 (source" in out and "0 missing" in out and "MISSING" not in out


def test_reading_the_source_names_what_a_package_lost(tmp_path, capsys):
    package = write_package(tmp_path, **BROKEN)
    assert check_vllm.main(["--source", str(package)]) == 1
    missing = {line.split("(")[0].split()[1]: line for line in capsys.readouterr().out.splitlines()
               if line.startswith("MISSING")}
    assert set(missing) == {"LLM", "LLM.sleep", "SamplingParams"}
    assert "'enable_sleep_mode'" in missing["LLM"] and "'level'" in missing["LLM.sleep"]
    assert "'max_tokens'" in missing["SamplingParams"]


@pytest.fixture
def importable(tmp_path, monkeypatch):
    """Puts tmp_path first on sys.path with no vllm imported; removes the fake's modules afterwards."""
    def vllm_modules():
        return [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]

    monkeypatch.syspath_prepend(str(tmp_path))
    for name in vllm_modules():
        monkeypatch.delitem(sys.modules, name)
    yield tmp_path
    for name in vllm_modules():
        del sys.modules[name]


@pytest.mark.parametrize("broken", [False, True])
def test_importing_agrees_with_reading_the_source(importable, broken):
    package = write_package(importable, **(BROKEN if broken else {}))
    uses = check_vllm.backend_uses()
    by_import = check_vllm.check(uses, check_vllm.inspect_resolver())
    by_source = check_vllm.check(uses, check_vllm.source_resolver(package))
    assert by_import == by_source
    assert sum(line.startswith("MISSING") for line in by_import) == (3 if broken else 0)


def test_positional_arguments_beyond_the_signature_are_reported(tmp_path):
    package = write_package(tmp_path, entrypoints=("def wake_up(self, tags=None)", "def wake_up(self)"))
    use = check_vllm.Use("LLM.wake_up", (), positional=1, line=7)
    [line] = check_vllm.check([use], check_vllm.source_resolver(package))
    assert line.startswith("MISSING") and "1 positional arguments, it takes 0" in line


def test_without_vllm_it_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert check_vllm.main([]) == 2
    assert "make check-vllm" in capsys.readouterr().err
