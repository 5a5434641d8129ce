"""Compositional questions about a shapes-world scene, each with its reference program.

Why templates and references built together: a question is generated from a structure
(a referring expression, an attribute, a relation), and the same structure is written
out twice — as English for the policy and as an ImagePatch program for validation. The
program is therefore right by construction under the `scene-graph` profile, and any
failure under the `shapes` profile is a perception error, not a program error.

A referring expression (`Ref`) names one object: by attributes only ("the small red
ball") or through a relation to another `Ref` ("the star to the left of the blue
square"), to a depth set by the world's level. Every reference is unique in its scene,
and every relation it relies on is clear (centres at least `margin` px apart), so a
perceiver whose boxes are off by a pixel or two still gets one answer.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations

from viprog.primitives.vocab import COLORS, SHAPES
from viprog.tasks.shapes_world import RELATIONS, Obj, Scene, ambiguous, relation

NOUN_SYNONYMS = {"circle": ("ball", "sphere"), "square": ("cube", "block"), "triangle": ("pyramid",), "star": ()}
GENERIC_NOUNS = ("object", "thing")
PLURALS = {"box": "boxes"}
#: the condition, in program text, that patch `p` stands in `rel` to anchor patch `a`
CONDITIONS = {
    "to the left of": "{p}.horizontal_center < {a}.horizontal_center",
    "to the right of": "{p}.horizontal_center > {a}.horizontal_center",
    "above": "{p}.vertical_center > {a}.vertical_center",
    "below": "{p}.vertical_center < {a}.vertical_center",
}
OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of",
            "above": "below", "below": "above"}
ATTRS = ("size", "color", "shape")


def q(text: str) -> str:
    """A string literal for program text (double quotes, ViperGPT style)."""
    return json.dumps(text)


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def plural(noun: str) -> str:
    return PLURALS.get(noun, noun + "s")


@dataclass(frozen=True)
class Phrase:
    """Attribute constraints (None: unconstrained) and the head noun used to say them."""

    size: str | None
    color: str | None
    shape: str | None
    noun: str

    def matches(self, o: Obj) -> bool:
        return ((self.size is None or self.size == o.size) and (self.color is None or self.color == o.color)
                and (self.shape is None or self.shape == o.shape))

    def text(self, plural_noun: bool = False) -> str:
        return " ".join(w for w in (self.size, self.color, plural(self.noun) if plural_noun else self.noun) if w)


def say(rng: random.Random, size: str | None, color: str | None, shape: str | None) -> Phrase:
    """A phrase for the constraints, with a synonym or a generic noun now and then."""
    if shape is None:
        noun = rng.choice(GENERIC_NOUNS)
    else:
        noun = rng.choice(NOUN_SYNONYMS[shape]) if NOUN_SYNONYMS[shape] and rng.random() < 0.25 else shape
    return Phrase(size, color, shape, noun)


@dataclass(frozen=True)
class Ref:
    """A referring expression for `target`: a phrase, optionally narrowed by a relation."""

    phrase: Phrase
    target: Obj
    rel: str | None = None
    anchor: Ref | None = None

    def text(self) -> str:
        base = "the " + self.phrase.text()
        return base if self.rel is None else f"{base} {self.rel} {self.anchor.text()}"  # type: ignore[union-attr]

    def locate(self, var: str, lines: list[str], taken: frozenset[str] = frozenset()) -> None:
        """Append program lines that bind `var` to this reference's patch (anchors get
        names of their own, none of `taken`)."""
        if self.rel is None or self.anchor is None:
            lines.append(f"{var} = image_patch.find({q(self.phrase.text())})[0]")
            return
        used = taken | {var} | {line.split(" = ")[0] for line in lines}
        anchor_var, k = f"{self.anchor.phrase.noun}_patch", 2
        while anchor_var in used:
            anchor_var, k = f"{self.anchor.phrase.noun}_patch_{k}", k + 1
        self.anchor.locate(anchor_var, lines, used)
        cond = CONDITIONS[self.rel].format(p="patch", a=anchor_var)
        lines.append(f"{var} = [patch for patch in image_patch.find({q(self.phrase.text())}) if {cond}][0]")


def matching(scene: Scene, phrase: Phrase) -> list[Obj]:
    return [o for o in scene.objects if phrase.matches(o)]


def _constraint_sets(target: Obj, omit: str | None) -> list[dict[str, str | None]]:
    keys = [k for k in ATTRS if k != omit]
    out = []
    for n in range(len(keys) + 1):
        for chosen in combinations(keys, n):
            out.append({k: (getattr(target, k) if k in chosen else None) for k in ATTRS})
    return out


def make_ref(rng: random.Random, scene: Scene, target: Obj, depth: int, margin: float,
             omit: str | None = None) -> Ref | None:
    """A unique reference to `target` using exactly `depth` relations (None if there is
    none); `omit` keeps one attribute out of the target's own phrase (the one asked for)."""
    sets = _constraint_sets(target, omit)
    if depth == 0:
        unique = [c for c in sets if matching(scene, Phrase(c["size"], c["color"], c["shape"], "x")) == [target]]
        if not unique:
            return None
        shortest = min(sum(v is not None for v in c.values()) for c in unique)
        pick = rng.choice([c for c in unique if sum(v is not None for v in c.values()) <= shortest + 1])
        return Ref(say(rng, pick["size"], pick["color"], pick["shape"]), target)
    options = []
    matched = [(c, matching(scene, Phrase(c["size"], c["color"], c["shape"], "x"))) for c in sets]
    for anchor in scene.objects:
        if anchor is target:
            continue
        for rel in sorted(relation(target, anchor, margin)):
            for c, found in matched:
                cands = [o for o in found if o is not anchor]
                if len(cands) < 2 or any(ambiguous(o, anchor, rel, margin) for o in cands):
                    continue  # a unique phrase needs no relation; a borderline one is unfair
                if [o for o in cands if rel in relation(o, anchor, margin)] == [target]:
                    options.append((anchor, rel, c))
    rng.shuffle(options)
    for anchor, rel, c in options[:4]:
        anchor_ref = make_ref(rng, scene, anchor, depth - 1, margin)
        if anchor_ref is not None:
            return Ref(say(rng, c["size"], c["color"], c["shape"]), target, rel, anchor_ref)
    return None


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    qtype: str
    structural: str  # GQA's structural type: verify / query / choose / logical / compare
    semantic: str  # GQA's semantic type: obj / attr / rel
    program: str


def program(lines: list[str], returns: str = "str") -> str:
    body = "\n".join("    " + line for line in ["image_patch = ImagePatch(image)", *lines])
    return f"def execute_command(image) -> {returns}:\n{body}\n"


def _random_phrase(rng: random.Random, scene: Scene) -> Phrase:
    """Half the time the words of an object in the scene (a subset), else random words."""
    if rng.random() < 0.5:
        o = rng.choice(scene.objects)
        c = rng.choice([c for c in _constraint_sets(o, None) if any(c.values())])
        return say(rng, c["size"], c["color"], c["shape"])
    return say(rng, rng.choice((None, "small", "large")), rng.choice((None, *COLORS)), rng.choice(SHAPES))


def _value_words(kind: str) -> tuple[str, ...]:
    return {"color": COLORS, "shape": SHAPES, "size": ("small", "large")}[kind]


def t_exist(rng: random.Random, scene: Scene, margin: float, level: int) -> Question | None:
    p = _random_phrase(rng, scene)
    answer = "yes" if matching(scene, p) else "no"
    return Question(f"Is there {article(p.text())}?", answer, "exist", "verify", "obj",
                    program([f"return bool_to_yesno(image_patch.exists({q(p.text())}))"]))


def t_count(rng: random.Random, scene: Scene, margin: float, level: int) -> Question | None:
    p = _random_phrase(rng, scene) if rng.random() < 0.8 else say(rng, None, None, None)
    return Question(f"How many {p.text(plural_noun=True)} are there?", str(len(matching(scene, p))), "count",
                    "query", "obj", program([f"return len(image_patch.find({q(p.text())}))"], "int"))


def _query(kind: str, qtype: str, depth: int, semantic: str) -> Callable[..., Question | None]:
    def template(rng: random.Random, scene: Scene, margin: float, level: int) -> Question | None:
        target = rng.choice(scene.objects)
        ref = make_ref(rng, scene, target, rng.randint(1, level) if depth else 0, margin, omit=kind)
        if ref is None:
            return None
        lines: list[str] = []
        ref.locate(f"{ref.phrase.noun}_patch", lines)
        lines.append(f"return {ref.phrase.noun}_patch.simple_query({q(f'What {kind} is the {ref.phrase.noun}?')})")
        return Question(f"What {kind} is {ref.text()}?", getattr(target, kind), qtype, "query", semantic,
                        program(lines))

    return template


def t_verify_attr(rng: random.Random, scene: Scene, margin: float, level: int) -> Question | None:
    kind = rng.choice(("color", "size", "shape"))
    target = rng.choice(scene.objects)
    ref = make_ref(rng, scene, target, 0, margin, omit=kind)
    if ref is None:
        return None
    value = getattr(target, kind) if rng.random() < 0.5 else rng.choice(
        [v for v in _value_words(kind) if v != getattr(target, kind)])
    text = f"Is {ref.text()} {article(value) if kind == 'shape' else value}?"
    lines: list[str] = []
    ref.locate("patch", lines)
    lines.append(f"return bool_to_yesno(patch.verify_property({q(ref.phrase.noun)}, {q(value)}))")
    return Question(text, "yes" if value == getattr(target, kind) else "no", "verify_attr", "verify", "attr",
                    program(lines))


def t_choose_attr(rng: random.Random, scene: Scene, margin: float, level: int) -> Question | None:
    kind = rng.choice(("color", "shape"))
    target = rng.choice(scene.objects)
    ref = make_ref(rng, scene, target, 0, margin, omit=kind)
    if ref is None:
        return None
    true = getattr(target, kind)
    options = [true, rng.choice([v for v in _value_words(kind) if v != true])]
    rng.shuffle(options)
    said = " or ".join(article(v) if kind == "shape" else v for v in options)
    lines: list[str] = []
    ref.locate("patch", lines)
    lines.append(f"return patch.best_text_match([{q(options[0])}, {q(options[1])}])")
    return Question(f"Is {ref.text()} {said}?", true, "choose_attr", "choose", "attr", program(lines))


def _two_refs(rng: random.Random, scene: Scene, margin: float, level: int,
              omit: str | None = None) -> tuple[Ref, Ref] | None:
    """References to two objects; with `omit`, half the time two that share that attribute
    (so "same colour?" is not almost always "no"). Above level 1 a reference may use a
    relation when attributes alone cannot single the object out."""
    if len(scene.objects) < 2:
        return None
    a, b = rng.sample(scene.objects, 2)
    if omit is not None and rng.random() < 0.5:
        alike = [o for o in scene.objects if o is not a and getattr(o, omit) == getattr(a, omit)]
        b = rng.choice(alike) if alike else b
    ra, rb = (make_ref(rng, scene, o, 0, margin, omit) or (make_ref(rng, scene, o, 1, margin, omit) if level > 1
                                                           else None) for o in (a, b))
    return (ra, rb) if ra is not None and rb is not None else None


def t_relation(rng: random.Random, scene: Scene, margin: float, level: int) -> Question | None:
    refs = _two_refs(rng, scene, margin, level)
    rel = rng.choice(RELATIONS)
    if refs is None or ambiguous(refs[0].target, refs[1].target, rel, margin):
        return None
    ra, rb = refs
    lines: list[str] = []
    ra.locate("first_patch", lines)
    rb.locate("second_patch", lines)
    lines.append(f"return bool_to_yesno({CONDITIONS[rel].format(p='first_patch', a='second_patch')})")
    answer = "yes" if rel in relation(ra.target, rb.target, margin) else "no"
    return Question(f"Is {ra.text()} {rel} {rb.text()}?", answer, "relation", "verify", "rel", program(lines))


def t_compare_attr(rng: random.Random, scene: Scene, margin: float, level: int) -> Question | None:
    kind = rng.choice(("color", "shape", "size"))
    refs = _two_refs(rng, scene, margin, level, omit=kind)
    if refs is None:
        return None
    ra, rb = refs
    lines: list[str] = []
    ra.locate("first_patch", lines)
    rb.locate("second_patch", lines)
    lines.append(f"first_{kind} = first_patch.simple_query({q(f'What {kind} is the {ra.phrase.noun}?')})")
    lines.append(f"second_{kind} = second_patch.simple_query({q(f'What {kind} is the {rb.phrase.noun}?')})")
    lines.append(f"return bool_to_yesno(first_{kind} == second_{kind})")
    text = (f"Do {ra.text()} and {rb.text()} have the same color?" if kind == "color"
            else f"Are {ra.text()} and {rb.text()} the same {kind}?")
    answer = "yes" if getattr(ra.target, kind) == getattr(rb.target, kind) else "no"
    return Question(text, answer, "compare_attr", "compare", "attr", program(lines))


def _logic(op: str) -> Callable[..., Question | None]:
    def template(rng: random.Random, scene: Scene, margin: float, level: int) -> Question | None:
        p1, p2 = _random_phrase(rng, scene), _random_phrase(rng, scene)
        if p1.text() == p2.text():
            return None
        e1, e2 = bool(matching(scene, p1)), bool(matching(scene, p2))
        value = (e1 and e2) if op == "and" else (e1 or e2)
        text = (f"Are there both {article(p1.text())} and {article(p2.text())}?" if op == "and"
                else f"Is there {article(p1.text())} or {article(p2.text())}?")
        line = f"return bool_to_yesno(image_patch.exists({q(p1.text())}) {op} image_patch.exists({q(p2.text())}))"
        return Question(text, "yes" if value else "no", f"logic_{op}", "logical", "obj", program([line]))

    return template


def _relational_set(rng: random.Random, scene: Scene, margin: float,
                    level: int) -> tuple[Phrase, str, Ref, list[Obj]] | None:
    """A phrase, a relation and an anchor reference, with the objects that stand in it."""
    anchor = rng.choice(scene.objects)
    ref = make_ref(rng, scene, anchor, rng.randint(0, level - 1), margin)
    if ref is None:
        return None
    p, rel = _random_phrase(rng, scene), rng.choice(RELATIONS)
    cands = [o for o in matching(scene, p) if o is not anchor]
    if any(ambiguous(o, anchor, rel, margin) for o in cands):
        return None
    return p, rel, ref, [o for o in cands if rel in relation(o, anchor, margin)]


def _related_lines(p: Phrase, rel: str, ref: Ref) -> list[str]:
    lines: list[str] = []
    ref.locate("anchor_patch", lines)
    cond = CONDITIONS[rel].format(p="patch", a="anchor_patch")
    lines.append(f"related_patches = [patch for patch in image_patch.find({q(p.text())}) if {cond}]")
    return lines


def t_exist_relation(rng: random.Random, scene: Scene, margin: float, level: int) -> Question | None:
    found = _relational_set(rng, scene, margin, level)
    if found is None:
        return None
    p, rel, ref, objs = found
    lines = _related_lines(p, rel, ref) + ["return bool_to_yesno(len(related_patches) > 0)"]
    return Question(f"Is there {article(p.text())} {rel} {ref.text()}?", "yes" if objs else "no",
                    "exist_relation", "verify", "rel", program(lines))


def t_count_relation(rng: random.Random, scene: Scene, margin: float, level: int) -> Question | None:
    found = _relational_set(rng, scene, margin, level)
    if found is None:
        return None
    p, rel, ref, objs = found
    lines = _related_lines(p, rel, ref) + ["return len(related_patches)"]
    return Question(f"How many {p.text(plural_noun=True)} are {rel} {ref.text()}?", str(len(objs)),
                    "count_relation", "query", "rel", program(lines, "int"))


def t_relate_query(rng: random.Random, scene: Scene, margin: float, level: int) -> Question | None:
    return _query(rng.choice(("color", "shape")), "relate_query", 1, "rel")(rng, scene, margin, level)


TEMPLATES: dict[str, Callable[[random.Random, Scene, float, int], Question | None]] = {
    "exist": t_exist,
    "count": t_count,
    "query_color": _query("color", "query_color", 0, "attr"),
    "query_shape": _query("shape", "query_shape", 0, "attr"),
    "query_size": _query("size", "query_size", 0, "attr"),
    "verify_attr": t_verify_attr,
    "choose_attr": t_choose_attr,
    "relation": t_relation,
    "compare_attr": t_compare_attr,
    "logic_and": _logic("and"),
    "logic_or": _logic("or"),
    "exist_relation": t_exist_relation,
    "count_relation": t_count_relation,
    "relate_query": t_relate_query,
}


def candidates(rng: random.Random, scene: Scene, margin: float, level: int, tries: int = 2) -> list[Question]:
    """A few candidate questions of every type about `scene` (the split builder balances them)."""
    out, seen = [], set()
    for template in TEMPLATES.values():
        for _ in range(tries):
            question = template(rng, scene, margin, level)
            if question is not None and question.text not in seen:
                seen.add(question.text)
                out.append(question)
    return out
