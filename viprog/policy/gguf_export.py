"""GGUF files for llama.cpp, written with the `gguf` package: a transformers model folder,
and a PEFT LoRA adapter trained on it.

Why our own writer: the `llamacpp` policy needs (1) a GGUF of any small transformers
checkpoint it is given — the tests' tiny random Qwen2, a user's folder — and (2) each
self-training round's PEFT adapter as a GGUF LoRA that llama.cpp applies on top of the
loaded base (no merge, no re-quantisation, no restart). llama.cpp's own converters ship
only in its source tree, not in the installed `llama-cpp-python`; the `gguf` package they
are built on is a dependency of ours, and it knows the tensor names of every architecture.

Only decoder architectures whose weights need no reshuffling are accepted (`ARCHS`);
anything else is a `UsageError` naming the ones that work.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import gguf
from safetensors.numpy import load_file

from viprog.errors import UsageError

log = logging.getLogger(__name__)

#: transformers `model_type` → gguf architecture (weights copied as they are; rope in NeoX layout)
ARCHS = {"qwen2": "QWEN2"}
PEFT_PREFIX = "base_model.model."


def _arch(model_type: str) -> Any:
    if model_type not in ARCHS:
        raise UsageError(f"cannot export a {model_type!r} model to GGUF; supported: {', '.join(ARCHS)} "
                         "(or give a ready GGUF file)")
    return gguf.MODEL_ARCH[ARCHS[model_type]]


def _rope_theta(config: Any) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def _vocab(tokenizer: Any, size: int) -> tuple[list[str], list[int]]:
    """The token strings in id order and their llama.cpp token types, padded to `size`
    (the embedding's rows) with unused placeholders."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = getattr(tokenizer, "added_tokens_decoder", {})
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _publish(writer: Any, tmp: Path, out: Path) -> Path:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out


def export_model(folder: str | Path, out: str | Path, *, dtype: Literal["f32", "f16"] = "f32") -> Path:
    """Write the transformers causal LM in `folder` (weights and tokenizer) as one GGUF
    file at `out`; matrices in `dtype`, norms and biases in f32. The file appears only
    when complete."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, out = Path(folder), Path(out)
    config = AutoConfig.from_pretrained(folder)
    arch = _arch(config.model_type)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    weights = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(folder.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    tokens, types = _vocab(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_tokenizer_pre(config.model_type)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
    for name, tensor in weights.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd as the output matrix
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise UsageError(f"{folder}: tensor {name!r} has no GGUF name for {config.model_type}; "
                             "the folder is not a plain causal LM checkpoint")
        array = tensor.numpy()
        writer.add_tensor(target, array.astype("float16") if dtype == "f16" and array.ndim == 2 else array)
    out = _publish(writer, tmp, out)
    log.info("exported %s to %s", folder, out)
    return out


def export_lora(adapter: str | Path, out: str | Path, *, model_type: str, layers: int) -> Path:
    """Write the PEFT LoRA adapter in the folder `adapter` as a GGUF LoRA at `out`, for a
    base of `model_type` with `layers` blocks.

    PEFT's scaling (alpha / r, or alpha / sqrt(r) with rsLoRA) is folded into B, and no
    alpha is written, so llama.cpp applies each pair with scale 1: the same product
    B·A·scaling as PEFT, whatever each module's rank."""
    adapter, out = Path(adapter), Path(out)
    arch = _arch(model_type)
    config = json.loads((adapter / "adapter_config.json").read_text())
    unsupported = [k for k in ("use_dora", "alpha_pattern", "modules_to_save") if config.get(k)]
    if unsupported or config.get("peft_type", "LORA") != "LORA":
        raise UsageError(f"adapter {adapter}: cannot convert a {config.get('peft_type')} adapter with "
                         f"{', '.join(unsupported) or 'this type'} for llama.cpp; use a plain LoRA or the hf policy")
    weights = load_file(adapter / "adapter_model.safetensors")
    names = gguf.get_tensor_name_map(arch, layers)
    alpha, rslora = float(config["lora_alpha"]), bool(config.get("use_rslora"))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    for key in sorted(k for k in weights if k.endswith(".lora_A.weight")):
        module = key.removeprefix(PEFT_PREFIX).removesuffix(".lora_A.weight")
        a, b = weights[key], weights[key.replace(".lora_A.", ".lora_B.")]
        target = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if target is None:
            raise UsageError(f"adapter {adapter}: module {module!r} has no GGUF tensor in a {model_type} model")
        rank = a.shape[0]
        scale = alpha / rank ** 0.5 if rslora else alpha / rank
        writer.add_tensor(f"{target}.lora_a", a.astype("float32"))
        writer.add_tensor(f"{target}.lora_b", (b.astype("float32") * scale).astype("float32"))
    return _publish(writer, tmp, out)
