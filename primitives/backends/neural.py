"""`neural`: the primitives answered by pretrained models, as in ViperGPT and ViReP.

Why this shape: models are big and slow, and programs call primitives many times, so every
model here is loaded lazily (constructing the profile loads nothing; a program that never
calls `simple_query` never loads the VQA model), on the configured device, in half
precision on a GPU, and every primitive works on a *batch* of calls — the PrimitiveServer
gathers requests from all running programs and a batch becomes one forward pass per
`batch_size` crops. Weights are named by hub id or by local folder (a folder saved with
`save_pretrained`, an ultralytics `.pt`, or an open_clip folder with
`open_clip_config.json`), so an offline machine works from local copies.

- `find` / `exists`: OWLv2 (open vocabulary, transformers) when the detector names an
  OWL model, else an ultralytics YOLO checkpoint (closed set: the phrase's last word is
  matched against the model's class names; generic nouns take every class).
- `verify_property`, `best_text_match`, `best_image_match`: CLIP via open_clip.
- `simple_query`: BLIP VQA via transformers.
- `compute_depth` (optional): a transformers depth model (Depth Anything, DPT); relative
  depth in [0, 1] over the image, larger is farther.
- `llm_query` (optional): a transformers causal LM; off unless `llm` is set.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from viprog.primitives import vocab
from viprog.primitives.backends import yolo_class
from viprog.primitives.patch import PrimitiveError
from viprog.primitives.profile import Call, PatchData, Profile

log = logging.getLogger(__name__)


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, max(size, 1))]


def _crop(patch: PatchData) -> np.ndarray:
    pixels = patch.pixels
    return pixels.copy() if pixels.size else np.zeros((1, 1, 3), np.uint8)  # a writable copy for torch


def _local_kind(path: str) -> str | None:
    """The model_type of a local transformers folder, or None."""
    config = Path(path) / "config.json"
    if config.is_file():
        return str(json.loads(config.read_text()).get("model_type", ""))
    return None


class NeuralProfile(Profile):
    """Detector (OWLv2 or YOLO), CLIP, BLIP VQA, optional depth and LLM; lazy and batched."""

    name: ClassVar[str] = "neural"
    model_kinds: ClassVar[Mapping[str, str]] = {
        "find": "detector", "exists": "detector", "verify_property": "clip", "best_text_match": "clip",
        "best_image_match": "clip", "simple_query": "vqa", "compute_depth": "depth", "llm_query": "llm"}

    def __init__(self, device: str = "cpu", detector: str = "google/owlv2-base-patch16-ensemble",
                 clip: str = "ViT-B-32", clip_pretrained: str | None = "openai",
                 vqa: str = "Salesforce/blip-vqa-base", depth: str | None = "depth-anything/Depth-Anything-V2-Small-hf",
                 llm: str | None = None, box_threshold: float = 0.1, nms_iou: float = 0.5, batch_size: int = 32,
                 max_new_tokens: int = 10, yolo_imgsz: int = 640, **options: Any) -> None:
        super().__init__(device, **options)
        self.detector, self.clip, self.clip_pretrained = detector, clip, clip_pretrained
        self.vqa, self.depth, self.llm = vqa, depth, llm
        self.box_threshold, self.nms_iou = box_threshold, nms_iou
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.yolo_imgsz = yolo_imgsz  # YOLO's input side: crops are letterboxed to it
        self.models: dict[str, Any] = {}
        self._depth_cache: dict[str, np.ndarray] = {}

    def supports(self, primitive: str) -> bool:
        if primitive == "compute_depth" and self.depth is None:
            return False
        if primitive == "llm_query" and self.llm is None:
            return False
        return super().supports(primitive)

    # -- lazy loading --------------------------------------------------------------------------
    @property
    def dtype(self) -> Any:
        import torch

        return torch.float16 if str(self.device).startswith("cuda") else torch.float32

    def _model(self, key: str, what: str, name: str, load: Callable[[], Any]) -> Any:
        """Load a model once, on first use, with a clear error when it cannot be had."""
        if key not in self.models:
            start = time.perf_counter()
            try:
                self.models[key] = load()
            except (OSError, ValueError, RuntimeError, FileNotFoundError) as exc:
                raise PrimitiveError(f"profile 'neural' cannot load its {what} {name!r} ({exc.__class__.__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}); give a hub name that can be "
                                     f"downloaded or a local folder (offline: HF_HUB_OFFLINE=1 skips "
                                     f"the download retries)") from exc
            log.info("neural: loaded %s %s on %s in %.1fs", what, name, self.device, time.perf_counter() - start)
        return self.models[key]

    def _clip(self) -> tuple[Any, Any, Any]:
        def load() -> tuple[Any, Any, Any]:
            import open_clip

            name, pretrained = self.clip, self.clip_pretrained
            if Path(name).is_dir():
                name, pretrained = f"local-dir:{Path(name).resolve()}", None
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=self.device,
                precision="fp16" if str(self.device).startswith("cuda") else "fp32")
            return model.eval(), preprocess, open_clip.get_tokenizer(name)

        return self._model("clip", "CLIP model", self.clip, load)

    def _owl(self) -> tuple[Any, Any]:
        def load() -> tuple[Any, Any]:
            from transformers import AutoProcessor, Owlv2ForObjectDetection

            model = Owlv2ForObjectDetection.from_pretrained(self.detector, dtype=self.dtype).to(self.device).eval()
            return model, AutoProcessor.from_pretrained(self.detector)

        return self._model("owl", "detector", self.detector, load)

    def _yolo(self) -> Any:
        def load() -> Any:
            return yolo_class()(self.detector)

        return self._model("yolo", "detector", self.detector, load)

    def _blip(self) -> tuple[Any, Any]:
        def load() -> tuple[Any, Any]:
            from transformers import AutoProcessor, BlipForQuestionAnswering

            model = BlipForQuestionAnswering.from_pretrained(self.vqa, dtype=self.dtype).to(self.device).eval()
            return model, AutoProcessor.from_pretrained(self.vqa)

        return self._model("vqa", "VQA model", self.vqa, load)

    def _depth_model(self) -> tuple[Any, Any]:
        def load() -> tuple[Any, Any]:
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation

            assert self.depth is not None
            model = AutoModelForDepthEstimation.from_pretrained(self.depth, dtype=self.dtype).to(self.device).eval()
            return model, AutoImageProcessor.from_pretrained(self.depth)

        return self._model("depth", "depth model", str(self.depth), load)

    def _llm(self) -> tuple[Any, Any]:
        def load() -> tuple[Any, Any]:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.llm, padding_side="left")
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            model = AutoModelForCausalLM.from_pretrained(self.llm, dtype=self.dtype).to(self.device).eval()
            return model, tokenizer

        return self._model("llm", "language model", str(self.llm), load)

    def preflight(self, kinds: Collection[str] | None = None) -> None:
        """Load the detector, CLIP and the VQA model (and depth / LLM when configured) now,
        or only those of `kinds`: a run learns at its start, not after its first rollout,
        that a name is wrong or that this machine is offline without local copies."""
        loaders: dict[str, Callable[[], Any]] = {
            "detector": self._owl if self.detector_kind() == "owlv2" else self._yolo, "clip": self._clip,
            "vqa": self._blip}
        loaders |= {"depth": self._depth_model} if self.depth is not None else {}
        loaders |= {"llm": self._llm} if self.llm is not None else {}
        for kind, load in loaders.items():
            if kinds is None or kind in kinds:
                load()

    def detector_kind(self) -> str:
        """'owlv2' or 'yolo', from the detector's name or its local folder's config."""
        kind = _local_kind(self.detector) if Path(self.detector).is_dir() else None
        return "owlv2" if "owl" in (kind or self.detector).lower() else "yolo"

    # -- CLIP ---------------------------------------------------------------------------------
    def clip_logits(self, images: Sequence[np.ndarray], texts: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """For each image, CLIP's scaled similarity to each of its own texts (batched:
        all images in chunks of `batch_size`, each distinct text encoded once)."""
        import torch
        from PIL import Image

        model, preprocess, tokenizer = self._clip()
        unique = sorted({t for group in texts for t in group})
        index = {t: i for i, t in enumerate(unique)}
        with torch.inference_mode():
            text_features = torch.cat([model.encode_text(tokenizer([unique[i] for i in chunk]).to(self.device))
                                       for chunk in _chunks(len(unique), self.batch_size)]).float()
            image_features = torch.cat([
                model.encode_image(torch.stack([preprocess(Image.fromarray(images[i])) for i in chunk])
                                   .to(self.device, self.dtype)) for chunk in _chunks(len(images), self.batch_size)]).float()
            text_features = torch.nn.functional.normalize(text_features, dim=-1)
            image_features = torch.nn.functional.normalize(image_features, dim=-1)
            sims = (model.logit_scale.exp().float() * image_features @ text_features.T).cpu().numpy()
        return [sims[i, [index[t] for t in group]] for i, group in enumerate(texts)]

    def verify_property(self, calls: list[Call]) -> list[bool]:
        """True when "a photo of a {property} {object}" beats "a photo of a {object}"."""
        texts = [[f"a photo of a {prop} {name}", f"a photo of a {name}"] for name, prop in (c.args for c in calls)]
        logits = self.clip_logits([_crop(c.patch) for c in calls], texts)
        return [bool(s[0] > s[1]) for s in logits]

    def best_text_match(self, calls: list[Call]) -> list[str]:
        options = [list(c.args[0]) for c in calls]
        asked = [(i, c) for i, c in enumerate(calls) if options[i]]
        logits = self.clip_logits([_crop(c.patch) for _, c in asked],
                                  [[f"{c.args[1] or 'a photo of'} {o}" for o in options[i]] for i, c in asked])
        out = ["" for _ in calls]
        for (i, _), scores in zip(asked, logits):
            out[i] = options[i][int(np.argmax(scores))]
        return out

    def best_image_match(self, calls: list[Call]) -> list[Any]:
        crops, texts, owner = [], [], []
        for k, call in enumerate(calls):
            content = [call.args[0]] if isinstance(call.args[0], str) else list(call.args[0])
            for patch in call.patches:
                crops.append(_crop(patch))
                texts.append([f"a photo of {t}" for t in content])
                owner.append(k)
        logits = self.clip_logits(crops, texts)
        out: list[Any] = []
        for k, call in enumerate(calls):
            scores = [float(np.max(s)) for s, o in zip(logits, owner) if o == k]
            best = int(np.argmax(scores))
            out.append(best if call.args[1] else list(call.patches[best].box))
        return out

    # -- detection ----------------------------------------------------------------------------
    def find(self, calls: list[Call]) -> list[list[list[int]]]:
        crops = [_crop(c.patch) for c in calls]
        phrases = [str(c.args[0]) for c in calls]
        found = self._owl_boxes(crops, phrases) if self.detector_kind() == "owlv2" else self._yolo_boxes(crops, phrases)
        out = []
        for call, boxes in zip(calls, found):
            x0, y0, _, _ = call.patch.box_xyxy
            height = call.patch.image.shape[0]
            pixels = [[int(x0 + a), int(height - (y0 + d)), int(x0 + c), int(height - (y0 + b))] for a, b, c, d in boxes]
            out.append([p for p in pixels if p[2] > p[0] and p[3] > p[1]])  # whole pixels: a box under 1 px is none
        return out

    def exists(self, calls: list[Call]) -> list[bool]:
        return [bool(boxes) for boxes in self.find(calls)]

    def _nms(self, boxes: Any, scores: Any) -> list[list[float]]:
        import torchvision

        keep = torchvision.ops.nms(boxes.float(), scores.float(), self.nms_iou)
        return boxes[keep].tolist()

    def _owl_boxes(self, crops: list[np.ndarray], phrases: list[str]) -> list[list[list[float]]]:
        """Open-vocabulary boxes (x0, y0, x1, y1 in crop pixels) for each crop's phrase."""
        import torch

        model, processor = self._owl()
        out: list[list[list[float]]] = []
        for chunk in _chunks(len(crops), self.batch_size):
            images = [crops[i] for i in chunk]
            inputs = processor(text=[[phrases[i]] for i in chunk], images=images, return_tensors="pt",
                               padding="max_length", truncation=True).to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            with torch.inference_mode():
                outputs = model(**inputs)
            side = [(max(im.shape[:2]),) * 2 for im in images]  # OWLv2 pads each image to a square
            results = processor.image_processor.post_process_object_detection(
                outputs, threshold=self.box_threshold, target_sizes=side)
            for image, result in zip(images, results):
                h, w = image.shape[:2]
                boxes = result["boxes"].float().clone()
                boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
                out.append(self._nms(boxes, result["scores"]) if len(boxes) else [])
        return out

    def _yolo_boxes(self, crops: list[np.ndarray], phrases: list[str]) -> list[list[list[float]]]:
        """Closed-set boxes: detections whose class name is the phrase's noun (any class for
        a generic noun such as "object")."""
        model = self._yolo()
        out: list[list[list[float]]] = []
        for chunk in _chunks(len(crops), self.batch_size):
            half = {"quantize": 16} if str(self.device).startswith("cuda") else {}
            results = model.predict([crops[i][..., ::-1] for i in chunk], conf=self.box_threshold, verbose=False,
                                    device=self.device, imgsz=self.yolo_imgsz, **half)  # ultralytics wants BGR arrays
            for i, result in zip(chunk, results):
                words = phrases[i].lower().split()
                noun = words[-1] if words else "object"
                wanted = {k for k, n in result.names.items()
                          if noun in vocab.GENERIC or n.lower() in (noun, noun.rstrip("s"), " ".join(words))}
                keep = [j for j, cls in enumerate(result.boxes.cls.tolist()) if int(cls) in wanted]
                out.append(self._nms(result.boxes.xyxy[keep], result.boxes.conf[keep]) if keep else [])
        return out

    # -- VQA, depth, LLM ----------------------------------------------------------------------
    def simple_query(self, calls: list[Call]) -> list[str]:
        import torch

        model, processor = self._blip()
        answers: list[str] = []
        for chunk in _chunks(len(calls), self.batch_size):
            questions = [str(calls[i].args[0] or "What is this?") for i in chunk]
            inputs = processor(images=[_crop(calls[i].patch) for i in chunk], text=questions, return_tensors="pt",
                               padding=True).to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            with torch.inference_mode():
                generated = model.generate(**inputs, max_new_tokens=self.max_new_tokens)
            answers += [a.strip().lower() for a in processor.batch_decode(generated, skip_special_tokens=True)]
        return answers

    def compute_depth(self, calls: list[Call]) -> list[float]:
        """Median relative depth of each crop: the image's depth map (one pass per image,
        cached) scaled to [0, 1], 0 nearest; the model's inverse depth is turned around."""
        import torch

        if self.depth is None:
            raise PrimitiveError("primitive 'compute_depth' is not available in profile 'neural' "
                                 "(no depth model configured: set depth=<hub name or local folder>)")
        todo = {c.patch.image_id: np.array(c.patch.image) for c in calls if c.patch.image_id not in self._depth_cache}
        if todo:
            model, processor = self._depth_model()
            ids = list(todo)
            for chunk in _chunks(len(ids), self.batch_size):
                images = [todo[ids[i]] for i in chunk]
                inputs = processor(images=images, return_tensors="pt").to(self.device)
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
                with torch.inference_mode():
                    outputs = model(**inputs)
                maps = processor.post_process_depth_estimation(outputs, target_sizes=[im.shape[:2] for im in images])
                for i, m in zip(chunk, maps):
                    inverse = m["predicted_depth"].float().cpu().numpy()
                    span = float(inverse.max() - inverse.min()) or 1.0
                    self._depth_cache[ids[i]] = 1.0 - (inverse - inverse.min()) / span
        out = []
        for call in calls:
            x0, y0, x1, y1 = call.patch.box_xyxy
            region = self._depth_cache[call.patch.image_id][y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
            out.append(float(np.median(region)))
        return out

    def llm_query(self, calls: list[Call]) -> list[str]:
        import torch

        if self.llm is None:
            raise PrimitiveError("primitive 'llm_query' is not available in profile 'neural' "
                                 "(no language model configured: set llm=<hub name or local folder>)")
        model, tokenizer = self._llm()
        answers: dict[int, str] = {}
        for long_answer in (True, False):
            group = [i for i, c in enumerate(calls) if bool(c.args[1]) is long_answer]
            for chunk in _chunks(len(group), self.batch_size):
                prompts = []
                for k in chunk:
                    question = str(calls[group[k]].args[0])
                    instruction = question if long_answer else f"Answer in a few words. {question}"
                    if tokenizer.chat_template:
                        prompts.append(tokenizer.apply_chat_template([{"role": "user", "content": instruction}],
                                                                     tokenize=False, add_generation_prompt=True))
                    else:
                        prompts.append(f"Question: {instruction}\nAnswer:")
                inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
                with torch.inference_mode():
                    generated = model.generate(**inputs, max_new_tokens=64 if long_answer else 12, do_sample=False,
                                               pad_token_id=tokenizer.pad_token_id)
                texts = tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
                answers.update((group[k], t.strip()) for k, t in zip(chunk, texts))
        return [answers[i] for i in range(len(calls))]
