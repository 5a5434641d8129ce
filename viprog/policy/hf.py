"""The `hf` policy: transformers on CPU or GPU, with the shared prompt prefix encoded once.

Why not just `model.generate`: in a self-training round every prompt is the same long
few-shot prefix (API section + examples, ~1,000 tokens) followed by a short query, and
each prompt is sampled n times. `generate` expands every prompt n times before prefill,
so the prefix is encoded prompts × n times. Here the prefix is encoded once (and kept
across calls until the model or adapter changes), each query's suffix once, and only the
decoding runs per sample: the prefix's KV cache is shared by every sample of every
question. Decoding is batched, finished sequences leave the batch, and a sequence ends as
soon as the stop rule of `viprog.policy.stops` fires. `prefix_cache=False` runs plain
`generate` with the same rule (the reference path the tests and benchmarks compare against).

LoRA adapters are loaded with PEFT into the one base model and switched by name (the
base is never reloaded); `quantize="int8"` samples from a dynamically quantised copy
with the adapter merged in before quantising (CPU). `tokenizer` and `model` are public
so the self-training loop fine-tunes the same weights (`model_path` names the base).
"""

from __future__ import annotations

import copy
import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from viprog.errors import UsageError
from viprog.policy.base import Policy, SamplingParams
from viprog.policy.decode import SharedPrefixDecoder
from viprog.policy.stops import cut_all, eos_ids, stopped

log = logging.getLogger(__name__)

class HFPolicy(Policy):
    """A transformers causal LM (hub name or local folder) as a program-writing policy.

    device: "cpu", "cuda", "cuda:1", …; dtype: "auto" (fp32 on CPU, bf16/fp16 on GPU),
    "float32", "bfloat16" or "float16". batch_size: sequences decoded together.
    prefix_cache: share the prompts' common prefix (False: plain `generate`).
    quantize: "int8" samples from a dynamically quantised copy (CPU only).
    adapter: a PEFT LoRA adapter to start with.
    """

    name = "hf"

    def __init__(self, model: str, *, device: str = "cpu", dtype: str = "auto", batch_size: int = 32,
                 prefix_cache: bool = True, quantize: Literal["none", "int8"] = "none",
                 adapter: str | Path | None = None, progress: bool = True, trust_remote_code: bool = False) -> None:
        if quantize not in ("none", "int8"):
            raise UsageError(f"unknown quantize option {quantize!r}; use 'none' or 'int8'")
        if quantize == "int8" and device != "cpu":
            raise UsageError("quantize='int8' is a CPU option; on a GPU use dtype='bfloat16' (or the vllm policy)")
        self.model_path = str(model)
        self.device, self.dtype_name, self.batch_size = device, dtype, max(1, int(batch_size))
        self.prefix_cache, self.quantize, self.progress = prefix_cache, quantize, progress
        self.trust_remote_code = trust_remote_code
        self._tokenizer: Any = None
        self._model: Any = None  # the base, or the PeftModel wrapping it once an adapter was loaded
        self._sampler: Any = None  # what sampling runs on (the model, or its int8 copy)
        self._adapter: str | None = None  # active adapter name inside the PeftModel
        self._adapters_loaded = 0
        self._prefix: tuple[tuple[int, ...], Any] | None = None  # (token ids, per-layer (k, v))
        self.stats: dict[str, float] = {"prefill_tokens": 0, "generated_tokens": 0, "seconds": 0.0}
        if adapter is not None:
            self.load_adapter(adapter)

    # -- loading --------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=self.trust_remote_code)
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot load the tokenizer of {self.model_path!r}: {str(exc).splitlines()[0]} "
                                 "(give a local model folder, or a hub name when the hub is reachable)") from None
            if self._tokenizer.pad_token_id is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
        return self._tokenizer

    @property
    def model(self) -> Any:
        if self._model is None:
            from transformers import AutoModelForCausalLM

            try:
                self._model = AutoModelForCausalLM.from_pretrained(
                    self.model_path, dtype=self._torch_dtype(), trust_remote_code=self.trust_remote_code)
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot load the model {self.model_path!r}: {str(exc).splitlines()[0]} "
                                 "(give a local model folder, or a hub name when the hub is reachable)") from None
            self._model.to(self.device).eval()
        return self._model

    def _torch_dtype(self) -> Any:
        import torch

        if self.dtype_name == "auto":
            if not self.device.startswith("cuda"):
                return torch.float32
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype_name]
        except KeyError:
            raise UsageError(f"unknown dtype {self.dtype_name!r}; use auto, float32, bfloat16 or float16") from None

    def load_adapter(self, path: str | Path | None) -> None:
        """Sample with the PEFT LoRA adapter at `path` (None: the bare base model). The
        base weights stay loaded; the previous adapter is unloaded."""
        from peft import PeftModel

        if path is not None and not (Path(path) / "adapter_config.json").is_file():
            raise UsageError(f"no LoRA adapter at {path} (expected adapter_config.json there)")
        previous = self._adapter
        if path is None:
            if isinstance(self._model, PeftModel):
                self._model = self._model.unload()  # the base, LoRA layers removed
            self._adapter = None
        else:
            self._adapters_loaded += 1
            name = f"round{self._adapters_loaded}"
            if isinstance(self.model, PeftModel):
                self._model.load_adapter(str(path), adapter_name=name)
                self._model.set_adapter(name)
                self._model.delete_adapter(previous)
            else:
                self._model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
                self._model.eval()
            self._adapter = name
        self._sampler, self._prefix = None, None  # caches of the old weights
        log.info("policy %s: adapter %s", self.name, path if path is not None else "none (base model)")

    def _sampling_model(self) -> Any:
        """The module sampling runs on: the (adapted) model, or its int8 copy."""
        if self._sampler is None:
            model = self.model
            if self.quantize == "int8":
                import torch
                from peft import PeftModel

                copied = copy.deepcopy(model)
                if isinstance(copied, PeftModel):
                    copied = copied.merge_and_unload()  # the LoRA folded into the weights before quantising
                self._sampler = torch.ao.quantization.quantize_dynamic(copied, {torch.nn.Linear}, dtype=torch.qint8)
            else:
                self._sampler = model
        return self._sampler

    def close(self) -> None:
        self._model = self._sampler = self._prefix = None

    def release_caches(self) -> None:
        self._sampler, self._prefix = None, None
        gc.collect()

    def info(self) -> dict[str, Any]:
        return {"policy": self.name, "engine": "transformers", "model": self.model_path, "device": self.device,
                "adapter": self._adapter,
                "quantize": self.quantize, "prefix_cache": self.prefix_cache}

    # -- sampling -------------------------------------------------------------------------
    def sample(self, prompts: Sequence[str], params: SamplingParams) -> list[list[str]]:
        """`params.n` completions per prompt (text after the prompt, cut at a stop string)."""
        import torch

        if not prompts:
            return []
        if params.seed is not None:
            torch.manual_seed(params.seed)
        ids = [list(self.tokenizer(p)["input_ids"]) for p in prompts]
        copies = params.n if params.temperature <= 0 else 1  # greedy samples are all the same
        params = replace(params, n=params.n // copies)
        start = time.perf_counter()
        flushed = self.device == "cpu" and torch.set_flush_denormal(True)  # subnormal floats are slow on CPUs
        try:
            with torch.no_grad():  # local: a global switch would break training in the same process
                outputs = self._sample_ids(ids, params)
        finally:
            if flushed:
                torch.set_flush_denormal(False)
        self.stats["seconds"] += time.perf_counter() - start
        self.stats["generated_tokens"] += sum(len(t) for per_prompt in outputs for t in per_prompt)
        texts = [[self.tokenizer.decode(t, skip_special_tokens=True) for t in per_prompt] * copies
                 for per_prompt in outputs]
        return cut_all(texts, params.stop)

    def _sample_ids(self, ids: list[list[int]], params: SamplingParams) -> list[list[list[int]]]:
        if self.prefix_cache:
            decoder = SharedPrefixDecoder(self._sampling_model(), self.tokenizer, self.device, self.batch_size,
                                          self.progress)
            self._prefix, outputs = decoder.run(ids, params, self._prefix)
            self.stats["prefill_tokens"] += decoder.prefill_tokens
            return outputs
        return self._generate(ids, params)

    def _generate(self, ids: list[list[int]], params: SamplingParams) -> list[list[list[int]]]:
        """Plain `generate`: left-padded batches of whole prompts, n return sequences each."""
        import torch

        model, tok = self._sampling_model(), self.tokenizer
        per_batch = max(1, self.batch_size // params.n)
        out: list[list[list[int]]] = []
        bar = tqdm(total=len(ids) * params.n, desc="sample", unit="prog", disable=not self.progress)
        for b in range(0, len(ids), per_batch):
            chunk = ids[b:b + per_batch]
            width = max(map(len, chunk))
            input_ids = torch.tensor([[tok.pad_token_id] * (width - len(s)) + s for s in chunk], device=self.device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in chunk], device=self.device)
            kwargs: dict[str, Any] = {"do_sample": params.temperature > 0, "max_new_tokens": params.max_new_tokens,
                                      "num_return_sequences": params.n, "pad_token_id": tok.pad_token_id}
            if params.temperature > 0:
                kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
            if params.stop:  # our rule, not `stop_strings`: that one would stop on a comment before the code
                kwargs.update(stopping_criteria=_stop_rule(tok, width, params.stop))
            gen = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)[:, width:]
            eos = eos_ids(tok, getattr(model, "generation_config", None))
            for i in range(len(chunk)):
                rows = []
                for row in gen[i * params.n:(i + 1) * params.n].tolist():
                    end = next((k for k, t in enumerate(row) if t in eos), len(row))
                    rows.append(row[:end])
                out.append(rows)
            bar.update(len(chunk) * params.n)
        bar.close()
        return out


def _stop_rule(tokenizer: Any, width: int, stops: Sequence[str]) -> Any:
    """`generate`'s stopping criteria for `stopped` on the tokens after the first `width`."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopRule(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = [stopped(tokenizer.decode(row[width:], skip_special_tokens=True), stops) for row in input_ids.tolist()]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopRule()])
