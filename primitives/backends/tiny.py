"""Tiny randomly initialised models for the `neural` profile, saved as local folders.

Why: tests, benchmarks and offline demos need the real loading and batching code paths
(`from_pretrained` on a folder, open_clip's `local-dir:`, an ultralytics `.pt`) without a
download. `build_tiny_models(folder)` writes one small model of each kind from a config
(weights random, tokenizers built from a word list) and returns the `NeuralProfile`
options that point at them: `get_profile("neural", **build_tiny_models(path))`.
Answers are meaningless; shapes, types, batching and timings are real.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from viprog.primitives.backends import yolo_class

WORDS = [
    "a", "photo", "of", "the", "this", "that", "is", "what", "color", "shape", "size", "how", "many", "object",
    "thing", "circle", "square", "triangle", "star", "red", "green", "blue", "yellow", "purple", "orange", "small",
    "large", "big", "yes", "no", "dog", "car", "person", "food", "made",
]


def _clip(folder: Path) -> str:
    import open_clip
    import torch

    model_cfg = {"embed_dim": 32,
                 "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    model = open_clip.CLIP(**model_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return str(folder)


def _owl(folder: Path) -> str:
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    vocab: dict[str, int] = {}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    for w in WORDS:
        vocab.setdefault(w + "</w>", len(vocab))
    vocab["<|startoftext|>"] = len(vocab)  # OWL masks queries whose first id is 0: specials go last
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    text = {"vocab_size": len(vocab), "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 16, "bos_token_id": len(vocab) - 2,
            "eos_token_id": len(vocab) - 1, "pad_token_id": len(vocab) - 1}
    vision = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": 64, "patch_size": 16}
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
    model.save_pretrained(folder)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                   tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


def _yolo(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    yolo_class()("yolov8n.yaml").save(folder / "yolo.pt")
    return str(folder / "yolo.pt")


def _blip(folder: Path) -> str:
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", *WORDS]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    text = {"vocab_size": len(words), "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 64, "bos_token_id": 2, "sep_token_id": 3,
            "pad_token_id": 0}
    vision = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": 32, "patch_size": 8}
    BlipForQuestionAnswering(BlipConfig(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


def _depth(folder: Path) -> str:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=56, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16,
                                 head_hidden_size=8, reassemble_hidden_size=32, patch_size=14)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=False, ensure_multiple_of=14,
                      do_pad=False).save_pretrained(folder)
    return str(folder)


def _llm(folder: Path) -> str:
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    words = ["<unk>", "<pad>", "<eos>", "Question", "Answer", ":", ".", "?", "Answer in a few words", *WORDS]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<eos>")
    tokenizer.save_pretrained(folder)
    config = Qwen2Config(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         pad_token_id=1, eos_token_id=2, bos_token_id=2)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return str(folder)


def build_tiny_models(folder: str | Path, llm: bool = True, depth: bool = True) -> dict[str, str | None]:
    """Write tiny models under `folder` (reused when already there); return NeuralProfile
    options: detector (OWLv2), clip, vqa, depth and llm folders — as they are, the JSON of
    `--profile-options`. `tiny_yolo(folder)` is the YOLO .pt for the closed-set detector."""
    return {k: v for k, v in _built(folder, llm, depth).items() if k != "yolo"}


def tiny_yolo(folder: str | Path) -> str:
    """The tiny YOLO checkpoint under `folder` (pass it as the `detector` option)."""
    return str(_built(folder)["yolo"])


def _built(folder: str | Path, llm: bool = True, depth: bool = True) -> dict[str, str | None]:
    import torch

    torch.manual_seed(0)
    root = Path(folder)
    done = root / "options.json"
    if done.is_file():
        return json.loads(done.read_text())
    options: dict[str, str | None] = {
        "detector": _owl(root / "owlv2"), "yolo": _yolo(root / "yolo"), "clip": _clip(root / "clip"),
        "vqa": _blip(root / "blip"), "depth": _depth(root / "depth") if depth else None,
        "llm": _llm(root / "llm") if llm else None,
    }
    done.write_text(json.dumps(options))
    return options
