"""The shared words of the shapes world: shape names, synonyms, colours, sizes.

One module so that the world generator (`viprog.tasks.shapes`), the pixel-perceiving
`shapes` profile and the annotation-reading `scene-graph` profile parse a noun phrase such
as "small red ball" the same way. Colours here are the world's palette; the `shapes`
profile judges colours on images it did not generate against a broader named-colour table.
"""

from __future__ import annotations

from dataclasses import dataclass

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "large")

#: the world's palette (RGB), before per-object jitter
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}

#: shape words beyond the world's, for flat-shape images the world did not generate
EXTRA_SHAPES: tuple[str, ...] = ("ellipse", "rectangle", "pentagon", "hexagon")
#: colour words beyond the world's palette (the `shapes` profile names colours among all of them)
EXTRA_COLORS: tuple[str, ...] = ("pink", "brown", "cyan", "black", "white", "gray")
#: a shape word that also covers other shapes ("find rectangles" includes squares)
COVERS: dict[str, frozenset[str]] = {"rectangle": frozenset({"rectangle", "square"}),
                                     "ellipse": frozenset({"ellipse", "circle"})}

SYNONYMS: dict[str, str] = {
    "circle": "circle", "circles": "circle", "sphere": "circle", "spheres": "circle", "ball": "circle",
    "balls": "circle", "disk": "circle", "disc": "circle", "dot": "circle", "round": "circle",
    "square": "square", "squares": "square", "cube": "square", "cubes": "square", "box": "square",
    "boxes": "square", "block": "square", "blocks": "square",
    "triangle": "triangle", "triangles": "triangle", "pyramid": "triangle", "pyramids": "triangle",
    "star": "star", "stars": "star",
    "ellipse": "ellipse", "ellipses": "ellipse", "oval": "ellipse", "ovals": "ellipse",
    "rectangle": "rectangle", "rectangles": "rectangle", "pentagon": "pentagon", "pentagons": "pentagon",
    "hexagon": "hexagon", "hexagons": "hexagon",
}
GENERIC: frozenset[str] = frozenset({"object", "objects", "shape", "shapes", "thing", "things", "item", "items"})
SIZE_SYNONYMS: dict[str, str] = {"small": "small", "little": "small", "tiny": "small",
                                 "large": "large", "big": "large", "huge": "large"}
COLOR_SYNONYMS: dict[str, str] = {c: c for c in COLORS + EXTRA_COLORS} | {
    "violet": "purple", "magenta": "pink", "grey": "gray", "crimson": "red", "scarlet": "red", "navy": "blue",
    "teal": "cyan", "turquoise": "cyan", "gold": "yellow", "golden": "yellow", "lime": "green", "tan": "brown"}
_FILLER = frozenset({"a", "an", "the", "of", "colored", "coloured", "shaped"})


@dataclass(frozen=True)
class Phrase:
    """A parsed noun phrase: each field None when the phrase does not constrain it."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    unknown: tuple[str, ...] = ()  # words that are none of the above

    def matches(self, shape: str, color: str, size: str) -> bool:
        """True when an object of this shape, colour and size fits every constraint."""
        return ((self.shape is None or shape in COVERS.get(self.shape, (self.shape,)))
                and (self.color is None or self.color == color) and (self.size is None or self.size == size))


def parse(phrase: str) -> Phrase:
    """Parse "[size] [colour] noun" (any order, generic nouns allowed): "small red ball"."""
    shape = color = size = None
    unknown = []
    for word in phrase.lower().replace("-", " ").split():
        if word in SYNONYMS:
            shape = SYNONYMS[word]
        elif word in COLOR_SYNONYMS:
            color = COLOR_SYNONYMS[word]
        elif word in SIZE_SYNONYMS:
            size = SIZE_SYNONYMS[word]
        elif word not in GENERIC and word not in _FILLER:
            unknown.append(word)
    return Phrase(shape, color, size, tuple(unknown))


def attribute_kind(word: str) -> str | None:
    """'color', 'size' or 'shape' for a property word, None when it is none of them."""
    w = word.lower().strip()
    if w in COLOR_SYNONYMS:
        return "color"
    if w in SIZE_SYNONYMS:
        return "size"
    if w in SYNONYMS:
        return "shape"
    return None


_ASKED = {"color": "color", "colour": "color", "shape": "shape", "size": "size"}


def asked_attribute(words: list[str]) -> str | None:
    """Which property an open question asks for: the first of color / shape / size it
    names ("What shape is the large blue object?" → shape, although it says "large"),
    size for "how big" / "how large", None when it names none ("What is this?")."""
    if words[:2] in (["how", "big"], ["how", "large"], ["how", "small"]):
        return "size"
    return next((_ASKED[w] for w in words if w in _ASKED), None)


def canonical(word: str) -> str:
    """The world's word for a property or noun word ("ball" → "circle", "big" → "large")."""
    w = word.lower().strip()
    return SYNONYMS.get(w) or COLOR_SYNONYMS.get(w) or SIZE_SYNONYMS.get(w) or w
