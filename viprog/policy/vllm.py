"""The `vllm` policy: vLLM on one or more GPUs, LoRA adapters swapped in per request.

Why vLLM on GPUs: paged attention with automatic prefix caching keeps the round's shared
few-shot prefix in GPU memory once for all prompts, `SamplingParams(n=…)` forks the n
samples of a prompt after one prefill, and `LoRARequest` applies each round's adapter
to the loaded base without merging or reloading it. Tensor parallelism spreads the
model over every visible GPU unless told otherwise. vLLM is an optional extra
(`pip install 'viprog[gpu]'`), imported only when the policy first samples.

Why sleep mode: sampling, executing and fine-tuning share one GPU, and the engine holds
`gpu_memory_utilization` of it (weights + KV cache) for as long as it lives. Before
training, `release_caches` puts it to sleep at level 1 (weights copied to CPU memory, KV
cache dropped; the GPU keeps only the CUDA context and graphs), and the next use of the
engine wakes it: a host-to-device copy of the weights instead of a new engine (weights read
from disk, compile and CUDA-graph capture again). Level 2 would drop the weights too, but
waking from it leaves them undefined until reloaded, and ours never change (the adapter is
applied per request). scripts/check_vllm.py checks every vLLM name used here against the
installed package (`make check-vllm`).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from viprog.errors import UsageError
from viprog.policy.base import Policy, SamplingParams
from viprog.policy.stops import cut_all

log = logging.getLogger(__name__)


def _vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise UsageError("the vllm policy needs vLLM on a CUDA machine: pip install 'viprog[gpu]' "
                         "(or use the hf policy)") from None
    return vllm


class VLLMPolicy(Policy):
    """A vLLM engine over a hub name or a local model folder.

    tensor_parallel_size: GPUs to shard over (None: all visible GPUs).
    max_lora_rank: the largest LoRA rank an adapter may have (ViReP uses 16).
    sleep_mode: let `release_caches` put the engine to sleep (level 1) so fine-tuning gets the
        GPU; the weights wait in CPU memory meanwhile (14 GiB for a 7B model in bf16). False:
        `release_caches` shuts the engine down and the next sample starts a new one.
    engine_options: passed to `vllm.LLM` as they are (e.g. max_model_len, enforce_eager).
    """

    name = "vllm"

    def __init__(self, model: str, *, device: str = "cuda", dtype: str = "auto", tensor_parallel_size: int | None = None,
                 max_lora_rank: int = 64, gpu_memory_utilization: float = 0.85, seed: int = 0,
                 adapter: str | Path | None = None, progress: bool = True, sleep_mode: bool = True,
                 **engine_options: Any) -> None:
        if not device.startswith("cuda"):
            raise UsageError(f"the vllm policy runs on CUDA GPUs, not {device!r}; use the hf policy on a CPU")
        self.model_path = str(model)
        self.dtype_name, self.tensor_parallel_size = dtype, tensor_parallel_size
        self.max_lora_rank, self.gpu_memory_utilization, self.seed = max_lora_rank, gpu_memory_utilization, seed
        self.progress, self.sleep_mode, self.engine_options = progress, sleep_mode, engine_options
        self._llm: Any = None
        self._asleep = False
        self._tokenizer: Any = None
        self._lora: Any = None
        self._adapters_loaded = 0
        if adapter is not None:
            self.load_adapter(adapter)

    @property
    def llm(self) -> Any:
        """The `vllm.LLM` engine, started on first use and woken up if `release_caches` put it to sleep."""
        if self._asleep:
            start = time.perf_counter()
            self._llm.wake_up()
            self._asleep = False
            log.info("vllm engine woken up in %.1fs", time.perf_counter() - start)
        if self._llm is None:
            vllm = _vllm()
            tp = self.tensor_parallel_size
            if tp is None:
                import torch

                tp = max(1, torch.cuda.device_count())
            self._llm = vllm.LLM(model=self.model_path, dtype=self.dtype_name, tensor_parallel_size=tp,
                                 enable_prefix_caching=True, enable_lora=True, max_lora_rank=self.max_lora_rank,
                                 max_loras=1, gpu_memory_utilization=self.gpu_memory_utilization, seed=self.seed,
                                 enable_sleep_mode=self.sleep_mode, **self.engine_options)
            log.info("vllm engine on %s (tensor parallel %d)", self.model_path, tp)
        return self._llm

    @property
    def tokenizer(self) -> Any:
        """The model's transformers tokenizer, loaded from its folder as vLLM loads it.

        Not `LLM.get_tokenizer()`: that one is a copy whose special tokens, vocabulary and
        length are frozen when the engine starts (TRL may set a pad token on it), and asking
        for it would start or wake the engine right when fine-tuning needs the GPU."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            source = str(self.engine_options.get("tokenizer") or self.model_path)
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(
                    source, trust_remote_code=bool(self.engine_options.get("trust_remote_code", False)))
            except (OSError, ValueError) as exc:
                raise UsageError(f"no tokenizer at {source!r} ({str(exc).splitlines()[0]}); the vllm policy needs a "
                                 "local model folder or a reachable hub name") from None
        return self._tokenizer

    def sample(self, prompts: Sequence[str], params: SamplingParams) -> list[list[str]]:
        """`params.n` completions per prompt; one request per prompt, the adapter on each.

        The stop strings are not given to vLLM, which would stop at one anywhere (a comment
        before the code, say): each sample runs to its end-of-sequence token or
        `max_new_tokens`, and is then cut by the rule every backend shares (`cut_all`)."""
        if not prompts:
            return []
        vllm = _vllm()
        sampling = vllm.SamplingParams(n=params.n, temperature=params.temperature,
                                       top_p=params.top_p if params.temperature > 0 else 1.0,
                                       max_tokens=params.max_new_tokens, seed=params.seed)
        outputs = self.llm.generate(list(prompts), sampling, lora_request=self._lora, use_tqdm=self.progress)
        return cut_all([[c.text for c in out.outputs] for out in outputs], params.stop)

    def load_adapter(self, path: str | Path | None) -> None:
        """Later requests carry a `LoRARequest` for `path` (None: the base model)."""
        if path is None:
            self._lora = None
            return
        if not (Path(path) / "adapter_config.json").is_file():
            raise UsageError(f"no LoRA adapter at {path} (expected adapter_config.json there)")
        _vllm()
        from vllm.lora.request import LoRARequest

        self._adapters_loaded += 1  # a fresh id per load: vLLM caches adapters by id
        self._lora = LoRARequest(lora_name=f"round{self._adapters_loaded}", lora_int_id=self._adapters_loaded,
                                 lora_path=str(Path(path).resolve()))

    def release_caches(self) -> None:
        """Give the GPU back before fine-tuning: sleep at level 1 (or shut down without sleep mode)."""
        if self._llm is None or self._asleep:
            return
        if not self.sleep_mode:
            self.close()
            log.info("vllm engine shut down to free the GPU (sleep_mode=False); the next sample starts a new one")
            return
        start = time.perf_counter()
        self._llm.sleep(level=1)
        self._asleep = True
        log.info("vllm engine asleep in %.1fs: weights in CPU memory, KV cache released", time.perf_counter() - start)

    def close(self) -> None:
        self._llm, self._asleep = None, False
        gc.collect()  # the engine's finaliser stops its GPU worker processes

    def info(self) -> dict[str, Any]:
        return {"policy": self.name, "engine": "vllm", "model": self.model_path,
                "adapter": getattr(self._lora, "lora_path", None), "tensor_parallel_size": self.tensor_parallel_size,
                "sleep_mode": self.sleep_mode}
