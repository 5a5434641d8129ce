"""The `vllm` policy: vLLM on one or more GPUs, LoRA adapters swapped in per request.

Why vLLM on GPUs: paged attention with automatic prefix caching keeps the round's shared
few-shot prefix in GPU memory once for all prompts, `SamplingParams(n=…)` forks the n
samples of a prompt after one prefill, and `LoRARequest` applies each round's adapter
to the loaded base without merging or reloading it. Tensor parallelism spreads the
model over every visible GPU unless told otherwise. vLLM is an optional extra
(`pip install 'viprog[gpu]'`), imported only when the policy first samples.
"""

from __future__ import annotations

import logging
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
    engine_options: passed to `vllm.LLM` as they are (e.g. max_model_len, gpu_memory_utilization).
    """

    name = "vllm"

    def __init__(self, model: str, *, device: str = "cuda", dtype: str = "auto", tensor_parallel_size: int | None = None,
                 max_lora_rank: int = 64, gpu_memory_utilization: float = 0.85, seed: int = 0,
                 adapter: str | Path | None = None, progress: bool = True, **engine_options: Any) -> None:
        if not device.startswith("cuda"):
            raise UsageError(f"the vllm policy runs on CUDA GPUs, not {device!r}; use the hf policy on a CPU")
        self.model_path = str(model)
        self.dtype_name, self.tensor_parallel_size = dtype, tensor_parallel_size
        self.max_lora_rank, self.gpu_memory_utilization, self.seed = max_lora_rank, gpu_memory_utilization, seed
        self.progress, self.engine_options = progress, engine_options
        self._llm: Any = None
        self._lora: Any = None
        self._adapters_loaded = 0
        if adapter is not None:
            self.load_adapter(adapter)

    @property
    def llm(self) -> Any:
        """The `vllm.LLM` engine, started on first use."""
        if self._llm is None:
            vllm = _vllm()
            tp = self.tensor_parallel_size
            if tp is None:
                import torch

                tp = max(1, torch.cuda.device_count())
            self._llm = vllm.LLM(model=self.model_path, dtype=self.dtype_name, tensor_parallel_size=tp,
                                 enable_prefix_caching=True, enable_lora=True, max_lora_rank=self.max_lora_rank,
                                 max_loras=1, gpu_memory_utilization=self.gpu_memory_utilization, seed=self.seed,
                                 **self.engine_options)
            log.info("vllm engine on %s (tensor parallel %d)", self.model_path, tp)
        return self._llm

    @property
    def tokenizer(self) -> Any:
        return self.llm.get_tokenizer()

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
        self._lora = LoRARequest(f"round{self._adapters_loaded}", self._adapters_loaded, str(Path(path).resolve()))

    def close(self) -> None:
        self._llm = None

    def info(self) -> dict[str, Any]:
        return {"policy": self.name, "model": self.model_path,
                "adapter": getattr(self._lora, "lora_path", None), "tensor_parallel_size": self.tensor_parallel_size}
