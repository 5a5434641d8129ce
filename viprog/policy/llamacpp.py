"""The `llamacpp` policy: llama.cpp (through llama-cpp-python) as the CPU inference engine.

Why: on a CPU a self-training round mostly waits for the LLM, and transformers is not a
CPU inference engine — llama.cpp runs the quantised GGUF we ship natively, with many
sequences in one batch over one KV cache (bench/policy.py measures it against `hf`).

How a call runs, with the token ids of the transformers tokenizer (so prompts, stops and
end-of-sequence tokens are exactly those of the `hf` backend, and fine-tuning uses the
same tokenizer):

1. the prompts' longest common token prefix lives in sequence 0 of one unified KV cache,
   kept across calls and only extended (or cut back) by the tokens that differ;
2. for each prompt its first sample's sequence shares the prefix cells (`seq_cp`, no
   copy), the prompt's own tokens are decoded once into it, and its other samples share
   those cells too;
3. every live sequence then advances one token per `llama_decode`, sampled by its own
   llama.cpp sampler (temperature → top-p → a draw seeded with seed + the sample's index,
   or greedy); end-of-sequence tokens, `max_new_tokens` and stop strings (the shared rule of `viprog.policy.stops`)
   end a sequence, whose cells are freed at once. Sequences beyond `batch_size` wait for
   the next wave.

A LoRA adapter is a PEFT folder converted to a GGUF LoRA (`gguf_export.export_lora`) and
applied to the context on top of the loaded base: switching adapters reloads nothing but
the adapter, and drops the prefix cache, whose keys and values the adapter changes.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from viprog.errors import UsageError
from viprog.policy.base import Policy, SamplingParams
from viprog.policy.decode import common_prefix
from viprog.policy.gguf_export import export_lora, export_model
from viprog.policy.hf import HFPolicy
from viprog.policy.stops import cut_at_stop, eos_ids_of, stopped

log = logging.getLogger(__name__)

#: llama.cpp's limit on sequence ids in one context (LLAMA_MAX_SEQ), sequence 0 being the prefix
MAX_SEQUENCES = 255
#: tokens per `llama_decode` while prefilling
PREFILL_CHUNK = 512
#: the probe may take this long (loading a 0.5B model and decoding a few tokens takes seconds)
PROBE_TIMEOUT_S = 180
_probed: dict[str, str | None] = {}


def unavailable(gguf: str | Path) -> str | None:
    """Why the engine cannot run the model `gguf` here (one line), or None when it can.

    The check runs in a child process — loading the model and decoding a few tokens — since
    a llama.cpp build for the wrong CPU dies of an illegal instruction rather than raising;
    its answer is remembered for the rest of the process."""
    key = str(Path(gguf).resolve())
    if key not in _probed:
        if importlib.util.find_spec("llama_cpp") is None:
            _probed[key] = "llama-cpp-python is not installed (bash scripts/env.sh engine builds it)"
        else:
            try:
                done = subprocess.run([sys.executable, "-m", __name__, key], check=False, capture_output=True, text=True,
                                      timeout=PROBE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _probed[key] = f"the llama.cpp engine did not answer within {PROBE_TIMEOUT_S} s"
            else:
                last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                _probed[key] = None if done.returncode == 0 else (
                    f"the llama.cpp engine failed on {Path(gguf).name} (exit {done.returncode}: {last})")
    return _probed[key]


def _import_llama() -> Any:
    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its load-time chatter goes to stderr otherwise
    llama_cpp.llama_backend_init()
    return llama_cpp


class LlamaCppPolicy(Policy):
    """A causal LM run by llama.cpp on the CPU: `model` is its transformers folder (the
    tokenizer, and the weights fine-tuning starts from), `gguf` the same model as a GGUF
    file (exported from `model` into a temporary folder when not given; dtype "float16"
    exports f16 matrices, otherwise f32).

    batch_size: sequences decoded together (at most 255). threads: CPU threads (default:
    the cores this process may use; they wait for each other asleep, not spinning, which a
    shared machine needs: see `viprog/__init__.py`). context: KV cache cells to start with (grown when a
    call needs more). flash_attn: llama.cpp's fused attention (off by default: it decoded 16
    sequences over the ~1,900-token few-shot prompt a third slower on our CPUs). adapter: a
    PEFT LoRA adapter to start with.
    """

    name = "llamacpp"

    def __init__(self, model: str, *, gguf: str | Path | None = None, device: str = "cpu", dtype: str = "auto",
                 batch_size: int = 32, threads: int | None = None, context: int = 8192, flash_attn: bool = False,
                 adapter: str | Path | None = None, progress: bool = True) -> None:
        if device != "cpu":
            raise UsageError(f"the llamacpp policy runs on the CPU, not {device!r}; on a GPU use hf or vllm")
        if not 1 <= int(batch_size) <= MAX_SEQUENCES:
            raise UsageError(f"batch_size {batch_size} is out of range for llama.cpp; use 1 to {MAX_SEQUENCES}")
        self.model_path = str(model)
        self.gguf_path = Path(gguf) if gguf is not None else None
        if self.gguf_path is not None and not self.gguf_path.is_file():
            raise UsageError(f"no GGUF file at {self.gguf_path}")
        self.dtype_name, self.batch_size, self.progress = dtype, int(batch_size), progress
        self.threads = threads or len(os.sched_getaffinity(0))
        self.context, self.flash_attn = int(context), flash_attn
        self._workdir = Path(tempfile.mkdtemp(prefix="viprog-llamacpp-"))
        self._tokenizer: Any = None
        self._eos: set[int] = set()
        self._lib: Any = None
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._prefix: list[int] = []  # the tokens held by sequence 0
        self._adapter: str | None = None  # the PEFT folder in use
        self._pending: tuple[Path | None] | None = None  # a switch to this GGUF LoRA (None: none), not yet applied
        self._lora: Any = None  # the llama.cpp adapter applied to the context
        self._adapters_loaded = 0
        self.stats: dict[str, float] = {"prefill_tokens": 0, "generated_tokens": 0, "seconds": 0.0}
        if adapter is not None:
            self.load_adapter(adapter)

    # -- loading --------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = HFPolicy(self.model_path).tokenizer  # loaded (and refused) exactly as hf does
            self._eos = eos_ids_of(self.model_path, self._tokenizer)  # the rule every backend shares
        return self._tokenizer

    def _config(self) -> Any:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.model_path)

    def _engine(self, cells: int = 0) -> Any:
        """The llama.cpp context, created (model loaded, adapter applied) on first use and
        recreated larger when a call needs more than `cells` KV cells."""
        if self._model is None:
            self._lib = _import_llama()
            if self.gguf_path is None:
                dtype = "f16" if self.dtype_name in ("float16", "bfloat16") else "f32"
                self.gguf_path = export_model(self.model_path, self._workdir / "model.gguf", dtype=dtype)
            params = self._lib.llama_model_default_params()
            self._model = self._lib.llama_model_load_from_file(str(self.gguf_path).encode(), params)
            if not self._model:
                raise UsageError(f"llama.cpp cannot load {self.gguf_path} (not a GGUF model it supports)")
        if self._ctx is not None and cells > self._lib.llama_n_ctx(self._ctx):
            self._free_context()
        if self._ctx is None:
            self.context = max(self.context, -(-cells // 1024) * 1024)
            params = self._lib.llama_context_default_params()
            params.n_ctx, params.n_batch, params.n_ubatch = self.context, PREFILL_CHUNK, PREFILL_CHUNK
            params.n_seq_max, params.kv_unified = self.batch_size + 1, True
            params.n_threads = params.n_threads_batch = self.threads
            params.flash_attn_type = (self._lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn
                                      else self._lib.LLAMA_FLASH_ATTN_TYPE_DISABLED)
            self._ctx = self._lib.llama_init_from_model(self._model, params)
            if not self._ctx:
                raise RuntimeError(f"llama.cpp could not create a context of {self.context} cells")
            self._batch = self._lib.llama_batch_init(PREFILL_CHUNK, 0, 1)
            self._prefix = []
            if self._lora is not None:
                self._apply(self._lora)
        if self._pending is not None:
            self._switch_adapter()
        return self._ctx

    def _switch_adapter(self) -> None:
        lib, (path,) = self._lib, self._pending
        new = None
        if path is not None:
            new = lib.llama_adapter_lora_init(self._model, str(path).encode())
            if not new:
                raise UsageError(f"llama.cpp rejected the LoRA adapter {self._adapter} (converted to {path})")
            Path(path).unlink(missing_ok=True)  # loaded; GRPO's policy rollout converts one per step
        self._apply(new)
        if self._lora is not None:
            lib.llama_adapter_lora_free(self._lora)
        self._lora, self._pending = new, None
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)  # keys and values of the old weights
        self._prefix = []

    def _apply(self, lora: Any) -> None:
        lib = self._lib
        if lora is None:
            rc = lib.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(lora)
            rc = lib.llama_set_adapters_lora(self._ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
        if rc != 0:
            raise RuntimeError(f"llama.cpp could not set the LoRA adapter ({rc})")

    def load_adapter(self, path: str | Path | None) -> None:
        """Sample with the PEFT LoRA adapter at `path` (None: the bare base model), converted
        to a GGUF LoRA and applied on top of the loaded base at the next `sample`."""
        if path is not None and not (Path(path) / "adapter_config.json").is_file():
            raise UsageError(f"no LoRA adapter at {path} (expected adapter_config.json there)")
        if path is None:
            self._pending = (None,)
        else:
            config = self._config()
            self._adapters_loaded += 1
            self._pending = (export_lora(path, self._workdir / f"adapter{self._adapters_loaded}.gguf",
                                         model_type=config.model_type, layers=config.num_hidden_layers),)
        self._adapter = str(path) if path is not None else None
        if self._ctx is not None:
            self._switch_adapter()
        log.info("policy %s: adapter %s", self.name, path if path is not None else "none (base model)")

    def _free_context(self) -> None:
        if self._ctx is not None:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
        self._ctx, self._batch, self._prefix = None, None, []

    def release_caches(self) -> None:
        """Free the KV cache (the context); the model and adapter stay loaded."""
        self._free_context()

    def close(self) -> None:
        self._free_context()
        if self._model is not None:
            if self._lora is not None:
                self._lib.llama_adapter_lora_free(self._lora)
            self._lib.llama_model_free(self._model)
        self._model = self._lora = None
        shutil.rmtree(self._workdir, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        return {"policy": self.name, "engine": "llama.cpp", "model": self.model_path,
                "gguf": str(self.gguf_path) if self.gguf_path else None, "adapter": self._adapter,
                "threads": self.threads, "batch_size": self.batch_size}

    # -- sampling -------------------------------------------------------------------------
    def sample(self, prompts: Sequence[str], params: SamplingParams) -> list[list[str]]:
        """`params.n` completions per prompt (text after the prompt, cut at a stop string)."""
        if not prompts:
            return []
        tok = self.tokenizer
        ids = [list(tok(p)["input_ids"]) for p in prompts]
        if min(map(len, ids)) == 0:
            raise UsageError("an empty prompt cannot be continued; give each prompt some text")
        copies = params.n if params.temperature <= 0 else 1  # greedy samples are all the same
        params = replace(params, n=params.n // copies)
        start = time.perf_counter()
        outputs = self._sample_ids(ids, params)
        self.stats["seconds"] += time.perf_counter() - start
        texts = []
        for per_prompt in outputs:
            self.stats["generated_tokens"] += sum(len(t) for t in per_prompt)
            texts.append([cut_at_stop(tok.decode(t, skip_special_tokens=True), params.stop)[0]
                          for t in per_prompt] * copies)
        return texts

    def _sample_ids(self, ids: list[list[int]], params: SamplingParams) -> list[list[list[int]]]:
        shared = min(common_prefix(ids), min(map(len, ids)) - 1)  # every prompt keeps a token to decode
        jobs = [(q, j) for q in range(len(ids)) for j in range(params.n)]
        waves = [jobs[w:w + self.batch_size] for w in range(0, len(jobs), self.batch_size)]
        cells = max(shared + sum(len(ids[q]) - shared for q in {q for q, _ in wave})
                    + len(wave) * (params.max_new_tokens + 1) for wave in waves)
        self._engine(cells)
        self._extend_prefix(ids[0][:shared])
        seed = params.seed if params.seed is not None else random.randrange(2 ** 31)
        out: list[list[list[int]]] = [[[] for _ in range(params.n)] for _ in ids]
        bar = tqdm(total=len(jobs), desc="sample", unit="prog", disable=not self.progress)
        for w, wave in enumerate(waves):
            first = w * self.batch_size
            for (q, j), tokens in zip(wave, self._decode_wave(ids, wave, shared, params, seed + first, bar)):
                out[q][j] = tokens
        bar.close()
        return out

    def _run(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """One `llama_decode` of (token, position, sequence, wants logits) entries."""
        batch = self._batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(entries)
        rc = self._lib.llama_decode(self._ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc}): the KV cache is full or the batch is invalid")

    def _prefill(self, entries: Sequence[tuple[int, int, int]]) -> None:
        """Decode (token, position, sequence) entries into the cache, no logits wanted."""
        for c in range(0, len(entries), PREFILL_CHUNK):
            self._run([(t, p, s, False) for t, p, s in entries[c:c + PREFILL_CHUNK]])
        self.stats["prefill_tokens"] += len(entries)

    def _extend_prefix(self, tokens: list[int]) -> None:
        """Make sequence 0 hold exactly `tokens`, keeping what it shares with them."""
        keep = common_prefix([self._prefix, tokens]) if self._prefix and tokens else 0
        memory = self._lib.llama_get_memory(self._ctx)
        self._lib.llama_memory_seq_rm(memory, 0, keep, -1)
        self._prefill([(t, keep + i, 0) for i, t in enumerate(tokens[keep:])])
        self._prefix = list(tokens)

    def _sampler(self, params: SamplingParams, seed: int) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if params.temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(params.temperature))
        if params.top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed % 2 ** 32))
        return chain

    def _decode_wave(self, ids: list[list[int]], wave: list[tuple[int, int]], shared: int, params: SamplingParams,
                     seed: int, bar: Any) -> list[list[int]]:
        """Decode the samples `wave` ((prompt, sample) pairs) together; sequence k+1 is the
        wave's k-th sample, seeded with `seed + k`."""
        lib, tok = self._lib, self.tokenizer
        memory = lib.llama_get_memory(self._ctx)
        seqs = list(range(1, len(wave) + 1))
        owner: dict[int, int] = {}  # prompt → the sequence its own tokens are decoded into
        for seq, (q, _) in zip(seqs, wave):
            lib.llama_memory_seq_rm(memory, seq, -1, -1)
            if q not in owner:
                owner[q] = seq
                lib.llama_memory_seq_cp(memory, 0, seq, 0, shared)
        self._prefill([(t, shared + i, seq) for q, seq in owner.items() for i, t in enumerate(ids[q][shared:-1])])
        for seq, (q, _) in zip(seqs, wave):
            if owner[q] != seq:
                lib.llama_memory_seq_cp(memory, owner[q], seq, -1, -1)
        pending = {seq: ids[q][-1] for seq, (q, _) in zip(seqs, wave)}  # the token each sequence decodes next
        pos = {seq: len(ids[q]) - 1 for seq, (q, _) in zip(seqs, wave)}
        samplers = {seq: self._sampler(params, seed + k) for k, seq in enumerate(seqs)}
        generated: dict[int, list[int]] = {seq: [] for seq in seqs}
        live = list(seqs)
        try:
            while live:
                self._run([(pending[s], pos[s], s, True) for s in live])
                still = []
                for i, s in enumerate(live):
                    token = lib.llama_sampler_sample(samplers[s], self._ctx, i)
                    done = token in self._eos
                    if not done:
                        generated[s].append(token)
                        done = len(generated[s]) >= params.max_new_tokens or bool(
                            params.stop and stopped(tok.decode(generated[s]), params.stop))
                    if done:
                        lib.llama_memory_seq_rm(memory, s, -1, -1)
                        bar.update(1)
                    else:
                        pending[s], pos[s] = token, pos[s] + 1
                        still.append(s)
                live = still
        finally:
            for s in seqs:
                lib.llama_sampler_free(samplers[s])
                lib.llama_memory_seq_rm(memory, s, -1, -1)
        return [generated[s] for s in seqs]


def _probe(gguf: str) -> None:
    """Load `gguf` and decode a few tokens (run in a child process by `unavailable`)."""
    lib = _import_llama()
    model = lib.llama_model_load_from_file(gguf.encode(), lib.llama_model_default_params())
    if not model:
        raise SystemExit("cannot load the model")
    params = lib.llama_context_default_params()
    params.n_ctx, params.n_threads, params.n_threads_batch = 64, 1, 1
    ctx = lib.llama_init_from_model(model, params)
    tokens = (lib.llama_token * 4)(0, 1, 2, 3)
    if not ctx or lib.llama_decode(ctx, lib.llama_batch_get_one(tokens, 4)) != 0:
        raise SystemExit("cannot decode")


if __name__ == "__main__":
    _probe(sys.argv[1])
