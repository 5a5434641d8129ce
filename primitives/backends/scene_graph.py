"""`scene-graph`: primitives answered from an example's annotations instead of pixels.

Why: with perfect perception, a program's wrong answer is the program's fault. Running
the same programs under `scene-graph` and under a perceiving profile tells program errors
apart from perception errors. The annotations are `call.patch.meta["scene_graph"]`, one
image's dict in GQA's own format (`{"width", "height", "objects": {id: {"name", "x", "y",
"w", "h", "attributes", "relations"}}}`, boxes in pixels with the origin at the top-left):
the shapes world's graphs and GQA's alike. GQA's names and attributes are free text, so
words are normalised (lower case, shapes-world synonyms, plural "s" dropped) the same way
on both sides, and an object belongs to a patch when at least half of its box is inside.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from viprog.primitives import vocab
from viprog.primitives.backends.objects import MainObjectAnswers
from viprog.primitives.patch import PrimitiveError
from viprog.primitives.profile import Call, PatchData, Profile

_FILLER = frozenset({"a", "an", "the", "of", "this", "that", "these", "those"})
_SHAPE_WORDS = frozenset({"round", "square", "rectangular", "triangular", "oval", "circular"})


def normalise(word: str) -> str:
    """One word as both sides of a match see it: "Balls" → "circle", "cars" → "car"."""
    w = vocab.canonical(word.lower())
    if w.endswith("s") and not w.endswith("ss") and len(w) > 3:
        w = vocab.canonical(w[:-1])
    return w


def tokens(text: str) -> list[str]:
    return [normalise(w) for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _FILLER]


@dataclass(frozen=True)
class Obj:
    """One annotated object: box (x0, y0, x1, y1; origin top-left), its words."""

    id: str
    box: tuple[float, float, float, float]
    name: tuple[str, ...]
    attributes: frozenset[str]
    raw_name: str
    raw_attributes: tuple[str, ...]

    @property
    def terms(self) -> frozenset[str]:
        return self.attributes | frozenset(self.name)

    def matches(self, phrase: str) -> bool:
        """True when `phrase` ("[attributes] noun", generic nouns allowed) names this object."""
        words = tokens(phrase)
        if not words:
            return True
        for split in range(len(words)):
            head, tail = words[:split], words[split:]
            named = tail == list(self.name[-len(tail):]) or (len(tail) == 1 and tail[0] in vocab.GENERIC)
            if named and set(head) <= self.terms:
                return True
        return False


def _objects(graph: Mapping[str, Any]) -> list[Obj]:
    out = []
    for oid, o in graph.get("objects", {}).items():
        attrs = [str(a) for a in o.get("attributes", [])]
        box = (float(o["x"]), float(o["y"]), float(o["x"]) + float(o["w"]), float(o["y"]) + float(o["h"]))
        out.append(Obj(str(oid), box, tuple(tokens(str(o["name"]))), frozenset(t for a in attrs for t in tokens(a)),
                       str(o["name"]).lower(), tuple(a.lower() for a in attrs)))
    return out


def _intersection(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)


def _area(a: tuple[float, ...]) -> float:
    return max(a[2] - a[0], 0) * max(a[3] - a[1], 0)


class SceneGraphProfile(MainObjectAnswers, Profile):
    """Answers primitives from the example's scene graph (GQA format)."""

    name: ClassVar[str] = "scene-graph"
    unsupported: ClassVar[frozenset[str]] = frozenset({"compute_depth", "llm_query"})

    @staticmethod
    def graph(patch: PatchData) -> Mapping[str, Any]:
        graph = patch.meta.get("scene_graph")
        if graph is None:
            raise PrimitiveError("profile 'scene-graph' needs the example's scene graph (Example.meta['scene_graph']); "
                                 "this image has none: use a perceiving profile such as 'shapes' or 'neural'")
        return graph

    def inside(self, patch: PatchData) -> list[Obj]:
        """Objects with at least half of their box inside the patch, left to right."""
        box = patch.box_xyxy
        found = [o for o in _objects(self.graph(patch)) if 2 * _intersection(o.box, box) >= _area(o.box) > 0]
        return sorted(found, key=lambda o: o.box[:2])

    def main_object(self, patch: PatchData) -> Obj | None:
        """The object a crop is about: the best intersection-over-union with the patch."""
        box = patch.box_xyxy

        def iou(o: Obj) -> float:
            inter = _intersection(o.box, box)
            return inter / max(_area(o.box) + _area(box) - inter, 1e-9)

        objs = [o for o in _objects(self.graph(patch)) if iou(o) > 0]
        return max(objs, key=iou) if objs else None

    def _box(self, patch: PatchData, o: Obj) -> list[int]:
        px0, py0, px1, py1 = patch.box_xyxy
        x0, y0 = max(o.box[0], px0), max(o.box[1], py0)
        x1, y1 = min(o.box[2], px1), min(o.box[3], py1)
        height = patch.image.shape[0]
        return [round(x0), round(height - y1), round(x1), round(height - y0)]

    @staticmethod
    def score(text: str, o: Obj) -> float:
        words = tokens(text)
        return sum(w in o.terms for w in words) / max(len(words), 1)

    # -- primitives --------------------------------------------------------------------------
    def find(self, calls: list[Call]) -> list[list[list[int]]]:
        return [[self._box(c.patch, o) for o in self.inside(c.patch) if o.matches(c.args[0])] for c in calls]

    def exists(self, calls: list[Call]) -> list[bool]:
        return [any(o.matches(c.args[0]) for o in self.inside(c.patch)) for c in calls]

    def verify_property(self, calls: list[Call]) -> list[bool]:
        out = []
        for call in calls:
            name, prop = call.args
            candidates = [o for o in self.inside(call.patch) if o.matches(name)]
            main = self.main_object(call.patch)
            if not candidates and main is not None:
                candidates = [main]  # the object is presupposed to be there
            wanted = set(tokens(prop))
            out.append(bool(wanted) and any(wanted <= o.terms for o in candidates))
        return out

    def answer(self, patch: PatchData, question: str) -> str:
        """Answer an attribute, count, yes/no or choice question about the patch's object."""
        text = " ".join(re.findall(r"[a-z0-9]+", question.lower()))
        words = text.split()
        if text.startswith("how many"):
            noun = " ".join(w for w in words[2:] if w not in ("are", "is", "there", "in", "image", "picture", "photo"))
            return str(sum(o.matches(noun) for o in self.inside(patch)))
        main = self.main_object(patch)
        if main is None:
            return "no" if words and words[0] in ("is", "are", "does", "do") else "nothing"
        if " or " in f" {text} ":
            parts = text.split(" or ")
            options = [parts[0].split()[-1], *(p.split()[0] for p in parts[1:] if p.split())]
            return max(options, key=lambda t: self.score(t, main))
        if words[0] in ("is", "are", "does", "do", "can"):
            known = {a for o in _objects(self.graph(patch)) for a in o.attributes}
            asked = {t for t in tokens(text) if t in known or vocab.attribute_kind(t)}
            return "yes" if asked and asked <= main.terms else "no"
        kind = vocab.asked_attribute(words)
        if kind is not None:
            found = [a for a in main.raw_attributes if a.split() and vocab.attribute_kind(a.split()[-1]) == kind
                     or (kind == "shape" and a in _SHAPE_WORDS)]
            if found:
                return found[0]
            if kind == "shape" and vocab.attribute_kind(main.raw_name) == "shape":
                return vocab.canonical(main.raw_name)
        return main.raw_name
