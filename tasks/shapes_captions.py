"""The shapes world's grounding and retrieval items, each with its reference program.

Why beside the questions: ViReP self-trains on three kinds of task, and the shapes world
offers all three on the same images. Referring expressions (grounding) reuse the
questions' `Ref`s and ask for the object's patch; caption pairs (retrieval) are
SugarCrepe-style — a true caption and a hard negative made by replacing an attribute,
swapping attributes between the two objects, replacing an object, or reversing a
relation — and only pairs whose truth is clear-cut (no borderline relation) are kept.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from viprog.primitives.vocab import COLORS, SHAPES
from viprog.tasks.shapes_questions import CONDITIONS, OPPOSITE, Phrase, article, make_ref, matching, program, q
from viprog.tasks.shapes_world import Scene, ambiguous, relation

REFER_TYPES = ("refer_attr", "refer_relation", "refer_chain")
CAPTION_TYPES = ("replace_att", "swap_att", "replace_obj", "replace_rel")


@dataclass(frozen=True)
class Refexp:
    text: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (origin top-left)
    qtype: str
    program: str


def refexps(rng: random.Random, scene: Scene, margin: float, level: int) -> list[Refexp]:
    """Candidate referring expressions, two tries per depth the level allows (0 .. level)."""
    out: list[Refexp] = []
    for depth in [d for d in range(level + 1) for _ in range(2)]:
        target = rng.choice(scene.objects)
        ref = make_ref(rng, scene, target, depth, margin)
        if ref is None or any(r.text == ref.text() or r.text == ref.text()[len("the "):] for r in out):
            continue
        lines: list[str] = []
        ref.locate(f"{ref.phrase.noun}_patch", lines)
        lines.append(f"return {ref.phrase.noun}_patch")
        o = ref.target
        out.append(Refexp(ref.text()[len("the "):] if depth == 0 else ref.text(), (o.x, o.y, o.x + o.w, o.y + o.h),
                          REFER_TYPES[min(depth, 2)], program(lines, "ImagePatch")))
    return out


@dataclass(frozen=True)
class Caption:
    """'a red circle to the left of a blue square' (rel) or '... and ...' (rel None)."""

    first: Phrase
    second: Phrase
    rel: str | None

    def text(self) -> str:
        join = "and" if self.rel is None else self.rel
        return f"{article(self.first.text())} {join} {article(self.second.text())}"

    def truth(self, scene: Scene, margin: float) -> bool | None:
        """True / False, or None when a borderline pair makes it a judgement call."""
        firsts, seconds = matching(scene, self.first), matching(scene, self.second)
        if self.rel is None:
            return bool(firsts) and bool(seconds)
        pairs = [(a, b) for a in firsts for b in seconds if a is not b]
        if any(self.rel in relation(a, b, margin) for a, b in pairs):
            return True
        return None if any(ambiguous(a, b, self.rel, margin) for a, b in pairs) else False

    def check_lines(self) -> list[str]:
        """Program lines that leave `holds` True when this caption describes the image."""
        if self.rel is None:
            first, second = q(self.first.text()), q(self.second.text())
            return [f"holds = image_patch.exists({first}) and image_patch.exists({second})"]
        cond = CONDITIONS[self.rel].format(p="first_patch", a="second_patch")
        return ["holds = False",
                f"for first_patch in image_patch.find({q(self.first.text())}):",
                f"    for second_patch in image_patch.find({q(self.second.text())}):",
                f"        if {cond}:",
                "            holds = True"]


@dataclass(frozen=True)
class CaptionPair:
    positive: str
    negative: str
    qtype: str
    program: str


def _negative(rng: random.Random, pos: Caption, kind: str) -> Caption | None:
    a, b = pos.first, pos.second
    if kind == "replace_att":
        color = rng.choice([c for c in COLORS if c != a.color])
        return Caption(Phrase(a.size, color, a.shape, a.noun), b, pos.rel)
    if kind == "swap_att":
        if a.color == b.color:
            return None
        return Caption(Phrase(a.size, b.color, a.shape, a.noun), Phrase(b.size, a.color, b.shape, b.noun), pos.rel)
    if kind == "replace_obj":
        shape = rng.choice([s for s in SHAPES if s != a.shape])
        return Caption(Phrase(a.size, a.color, shape, shape), b, pos.rel)
    if pos.rel is None:  # replace_rel needs a relation
        return None
    return Caption(a, b, OPPOSITE[pos.rel])


def caption_pair(rng: random.Random, scene: Scene, margin: float) -> CaptionPair | None:
    """A true caption about two objects and a hard negative that is clearly false."""
    if len(scene.objects) < 2:
        return None
    x, y = rng.sample(scene.objects, 2)
    first, second = Phrase(None, x.color, x.shape, x.shape), Phrase(None, y.color, y.shape, y.shape)
    kind = rng.choice(CAPTION_TYPES)
    rels = sorted(relation(x, y, margin))
    rel = rng.choice(rels) if rels and (kind == "replace_rel" or rng.random() < 0.5) else None
    pos = Caption(first, second, rel)
    neg = _negative(rng, pos, kind)
    if neg is None or pos.truth(scene, margin) is not True or neg.truth(scene, margin) is not False:
        return None
    if neg.text() == pos.text():
        return None
    lines = pos.check_lines() + [f"if holds:\n        return {q(pos.text())}", f"return {q(neg.text())}"]
    return CaptionPair(pos.text(), neg.text(), kind, program(lines))


def caption_candidates(rng: random.Random, scene: Scene, margin: float, tries: int = 6) -> list[CaptionPair]:
    out, seen = [], set()
    for _ in range(tries):
        pair = caption_pair(rng, scene, margin)
        if pair is not None and pair.positive not in seen:
            seen.add(pair.positive)
            out.append(pair)
    return out

